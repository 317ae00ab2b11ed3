//! Versioned model files.
//!
//! Layout: 8 magic bytes `KANARY\0M`, the format version (u32 LE), the payload length (u64 LE),
//! the payload's CRC-32 (u32 LE), then the payload: a [`ModelFile`] in postcard. Decoding checks
//! each in turn so that a file of another kind, a newer format, a truncated write or a flipped
//! bit each gets its own clear error. The caller does the I/O; atomic writes (temporary file,
//! fsync, rename) live in the binary.

use std::cell::Cell;

use serde::{Deserialize, Serialize};

use crate::detector::{FittedDetector, ModelKind};
use crate::engine::{Engine, StreamSnapshot};
use crate::registry::encode_reusing;

/// First bytes of every model file.
pub const MAGIC: &[u8; 8] = b"KANARY\0M";
/// Format written by this build (2: models saved through the registry, streaming states).
pub const FORMAT_VERSION: u32 = 2;
/// Bytes of a model file's header (magic, format, payload length, CRC-32).
pub const HEADER_LEN: usize = 8 + 4 + 8 + 4;

/// The fitted detectors of one model kind, or the states of a streaming one, per service.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelFile {
    /// Version of kanary that wrote the file.
    pub kanary_version: String,
    pub kind: ModelKind,
    /// Seconds since the epoch when the file was written.
    pub created_at: f64,
    /// Kafka offsets (topic, partition, next offset) the models reflect, when saved by the
    /// service; empty otherwise.
    pub offsets: Vec<(String, i32, i64)>,
    pub detectors: Vec<(String, FittedDetector)>,
    /// Streaming models' states, one per service (empty for fitted kinds).
    pub streams: Vec<(String, StreamSnapshot)>,
}

/// Why a model file could not be read.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PersistError {
    #[error("not a kanary model file (bad magic bytes)")]
    NotAModelFile,
    #[error(
        "model file format {found} is not supported by this build (it reads format {FORMAT_VERSION}); refit or upgrade kanary"
    )]
    UnsupportedVersion { found: u32 },
    #[error("model file is truncated: expected {expected} bytes of payload, found {found}")]
    Truncated { expected: u64, found: u64 },
    #[error(
        "model file is corrupt: checksum mismatch (stored {stored:08x}, computed {computed:08x})"
    )]
    Checksum { stored: u32, computed: u32 },
    #[error("model file payload cannot be decoded: {0}")]
    Decode(String),
    #[error("model file holds an inconsistent model: {0}")]
    Invalid(String),
    #[error("model file cannot be encoded: {0}")]
    Encode(String),
}

impl ModelFile {
    /// An empty file of `kind` written by this version of kanary, created at `created_at`.
    pub fn new(kind: ModelKind, created_at: f64) -> Self {
        ModelFile {
            kanary_version: env!("CARGO_PKG_VERSION").to_string(),
            kind,
            created_at,
            offsets: Vec::new(),
            detectors: Vec::new(),
            streams: Vec::new(),
        }
    }

    /// Installs every service's model or streaming state in `engine`, which must run the
    /// file's kind. Returns the number of services installed.
    pub fn install(&self, engine: &mut Engine) -> Result<usize, String> {
        self.clone().install_owned(engine)
    }

    /// [`install`](Self::install) without copying the models (a service restored from disk).
    pub fn install_owned(self, engine: &mut Engine) -> Result<usize, String> {
        let kind = engine.config().detector.kind;
        if kind != self.kind {
            return Err(format!(
                "the file holds `{}` models, the engine runs `{kind}`",
                self.kind
            ));
        }
        let n = self.detectors.len() + self.streams.len();
        for (service, m) in self.detectors {
            engine.insert_model(service, m);
        }
        for (service, st) in self.streams {
            engine.insert_stream(service, st)?;
        }
        Ok(n)
    }

    /// Serialises to the versioned binary format.
    pub fn encode(&self) -> Result<Vec<u8>, PersistError> {
        thread_local! {
            static SCRATCH: Cell<Vec<u8>> = const { Cell::new(Vec::new()) };
        }
        let mut out = encode_reusing(&SCRATCH, &[0; HEADER_LEN], self)
            .map_err(|e| PersistError::Encode(e.to_string()))?;
        let (head, payload) = out.split_at_mut(HEADER_LEN);
        head.copy_from_slice(&Self::header(payload.len() as u64, crc32(payload)));
        Ok(out)
    }

    /// The header of a file whose payload has `len` bytes and CRC-32 `crc`.
    pub fn header(len: u64, crc: u32) -> [u8; HEADER_LEN] {
        let mut head = [0; HEADER_LEN];
        for (at, bytes) in [
            (0, &MAGIC[..]),
            (8, &FORMAT_VERSION.to_le_bytes()),
            (12, &len.to_le_bytes()),
            (20, &crc.to_le_bytes()),
        ] {
            head[at..at + bytes.len()].copy_from_slice(bytes);
        }
        head
    }

    /// Serialises the payload of [`encode`](Self::encode) into `out` as it goes, without the
    /// whole file in memory (a snapshot of many services). Returns the payload's length and
    /// CRC-32, for [`header`](Self::header), which goes in the first [`HEADER_LEN`] bytes.
    pub fn encode_payload<W: std::io::Write>(&self, out: W) -> Result<(u64, u32), PersistError> {
        struct Summed<W> {
            out: W,
            len: u64,
            crc: crc32fast::Hasher,
            /// The writer's error (postcard reports only that serialising failed).
            error: Option<std::io::Error>,
        }
        impl<W: std::io::Write> std::io::Write for Summed<W> {
            fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
                match self.out.write(buf) {
                    Ok(n) => {
                        self.crc.update(&buf[..n]);
                        self.len += n as u64;
                        Ok(n)
                    }
                    Err(e) => {
                        let copy = std::io::Error::new(e.kind(), e.to_string());
                        self.error = Some(e);
                        Err(copy)
                    }
                }
            }
            fn flush(&mut self) -> std::io::Result<()> {
                self.out.flush()
            }
        }
        let mut summed = Summed {
            out,
            len: 0,
            crc: crc32fast::Hasher::new(),
            error: None,
        };
        if let Err(e) = postcard::to_io(self, &mut summed) {
            return Err(PersistError::Encode(
                summed
                    .error
                    .map_or_else(|| e.to_string(), |io| io.to_string()),
            ));
        }
        Ok((summed.len, summed.crc.finalize()))
    }

    /// Parses and checks a file written by [`encode`](Self::encode).
    pub fn decode(bytes: &[u8]) -> Result<ModelFile, PersistError> {
        if bytes.len() < 8 || &bytes[..8] != MAGIC {
            return Err(PersistError::NotAModelFile);
        }
        if bytes.len() < HEADER_LEN {
            return Err(PersistError::Truncated {
                expected: HEADER_LEN as u64,
                found: bytes.len() as u64,
            });
        }
        let version = u32::from_le_bytes(bytes[8..12].try_into().expect("4 bytes"));
        if version != FORMAT_VERSION {
            return Err(PersistError::UnsupportedVersion { found: version });
        }
        let len = u64::from_le_bytes(bytes[12..20].try_into().expect("8 bytes"));
        let stored = u32::from_le_bytes(bytes[20..24].try_into().expect("4 bytes"));
        let payload = &bytes[HEADER_LEN..];
        if payload.len() as u64 != len {
            return Err(PersistError::Truncated {
                expected: len,
                found: payload.len() as u64,
            });
        }
        let computed = crc32(payload);
        if computed != stored {
            return Err(PersistError::Checksum { stored, computed });
        }
        let file: ModelFile =
            postcard::from_bytes(payload).map_err(|e| PersistError::Decode(e.to_string()))?;
        for (service, d) in &file.detectors {
            d.validate()
                .map_err(|e| PersistError::Invalid(format!("service `{service}`: {e}")))?;
            if d.kind != file.kind {
                return Err(PersistError::Invalid(format!(
                    "service `{service}` holds a `{}` model in a `{}` file",
                    d.kind, file.kind
                )));
            }
        }
        for (service, st) in &file.streams {
            if st.state.kind() != file.kind {
                return Err(PersistError::Invalid(format!(
                    "service `{service}` holds a `{}` state in a `{}` file",
                    st.state.kind(),
                    file.kind
                )));
            }
            let dim = st.state.dim().map_err(PersistError::Invalid)?;
            if dim != st.features.len() {
                return Err(PersistError::Invalid(format!(
                    "service `{service}`: state has {dim} columns but {} are named",
                    st.features.len()
                )));
            }
        }
        Ok(file)
    }
}

/// CRC-32 (IEEE 802.3, reflected, as zlib's `crc32`).
pub fn crc32(data: &[u8]) -> u32 {
    crc32fast::hash(data)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detector::{DetectorConfig, FittedDetector};
    use crate::rng::Rng;

    fn sample(kind: ModelKind) -> ModelFile {
        let mut r = Rng::new(1);
        let data: Vec<f64> = (0..300).map(|_| r.standard_normal()).collect();
        let mut cfg = DetectorConfig::new(kind);
        if kind.name() == "ae" {
            cfg.params.insert("epochs".into(), serde_json::json!(3));
        }
        let m = FittedDetector::fit(&cfg, vec!["a".into(), "b".into(), "c".into()], &data, 5.0)
            .unwrap();
        ModelFile {
            kanary_version: "test".into(),
            kind,
            created_at: 1.0,
            offsets: vec![("t".into(), 0, 42)],
            detectors: vec![("svc".into(), m)],
            streams: Vec::new(),
        }
    }

    #[test]
    fn crc32_known_value() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
    }

    #[test]
    fn round_trips_every_model_kind() {
        for kind in ModelKind::all().filter(|k| !k.is_streaming()) {
            let f = sample(kind);
            let bytes = f.encode().unwrap();
            assert_eq!(ModelFile::decode(&bytes).unwrap(), f);
        }
    }

    #[test]
    fn a_streamed_file_is_the_encoded_file_and_a_failing_writer_says_why() {
        use crate::engine::{Engine, EngineConfig};
        use crate::event::Event;
        // Every model kind, and streaming states held as saved bytes (as snapshots hold them).
        let codev = ModelKind::named("codev").unwrap();
        let mut engine = Engine::new(EngineConfig::new(DetectorConfig::new(codev)));
        // Past the probe of a new service (60 events) for two of them, in it for the third.
        for i in 0..300 {
            let ev = Event::new(60.0 * i as f64, format!("s{}", i % 3 + i / 290))
                .with_field("cpu", (i % 7) as f64)
                .with_field("mem", 1.5 * (i % 5) as f64);
            engine.process(&ev, 0.0);
        }
        let mut streams = ModelFile::new(codev, 1.0);
        streams.streams = engine.streams();
        let files = ModelKind::all()
            .filter(|k| !k.is_streaming())
            .map(sample)
            .chain([streams]);
        for f in files {
            let mut out = vec![0; HEADER_LEN];
            let (len, crc) = f.encode_payload(&mut out).unwrap();
            out[..HEADER_LEN].copy_from_slice(&ModelFile::header(len, crc));
            assert_eq!(out, f.encode().unwrap(), "{}", f.kind);
            assert_eq!(ModelFile::decode(&out).unwrap(), f);
        }
        struct Full;
        impl std::io::Write for Full {
            fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
                Err(std::io::Error::other("no space left on device"))
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let err = sample(ModelKind::named("zscore").unwrap())
            .encode_payload(Full)
            .unwrap_err();
        assert!(err.to_string().contains("no space left"), "{err}");
    }

    #[test]
    fn each_corruption_has_a_clear_error() {
        let bytes = sample(ModelKind::named("zscore").unwrap())
            .encode()
            .unwrap();
        assert_eq!(
            ModelFile::decode(b"{\"json\": true}").unwrap_err(),
            PersistError::NotAModelFile
        );
        let mut v = bytes.clone();
        v[8] = 9;
        assert_eq!(
            ModelFile::decode(&v).unwrap_err(),
            PersistError::UnsupportedVersion { found: 9 }
        );
        assert!(matches!(
            ModelFile::decode(&bytes[..bytes.len() - 3]).unwrap_err(),
            PersistError::Truncated { .. }
        ));
        let mut v = bytes.clone();
        let last = v.len() - 1;
        v[last] ^= 0x40;
        assert!(matches!(
            ModelFile::decode(&v).unwrap_err(),
            PersistError::Checksum { .. }
        ));
    }
}
