//! Model files on disk: atomic writes and clear errors on load.

use std::fs::{self, File};
use std::io::{BufWriter, Seek, SeekFrom, Write};
use std::path::Path;

use anyhow::{Context, Result, bail};
use kanary_core::detector::ModelKind;
use kanary_core::persist::{HEADER_LEN, ModelFile};

/// Writes `file` to `path` atomically: a temporary file in the same directory, fsynced, then
/// renamed over the target (and the directory fsynced), so a crash leaves the old file or the
/// new one, never a torn one.
pub fn save(path: &Path, file: &ModelFile) -> Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let name = path
        .file_name()
        .with_context(|| format!("{} is not a file path", path.display()))?;
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    let result = (|| -> Result<()> {
        let f = File::create(&tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
        // Streamed to the file (a snapshot of many services is never whole in memory); the
        // header, which holds the payload's length and checksum, is written last.
        let write = |mut out: BufWriter<File>| -> Result<File> {
            out.write_all(&[0; HEADER_LEN])?;
            let (len, crc) = file.encode_payload(&mut out)?;
            let mut f = out.into_inner().map_err(|e| e.into_error())?;
            f.seek(SeekFrom::Start(0))?;
            f.write_all(&ModelFile::header(len, crc))?;
            Ok(f)
        };
        let f = write(BufWriter::with_capacity(1 << 16, f))
            .with_context(|| format!("cannot write {}", tmp.display()))?;
        f.sync_all()
            .with_context(|| format!("cannot sync {}", tmp.display()))?;
        fs::rename(&tmp, path)
            .with_context(|| format!("cannot rename {} to {}", tmp.display(), path.display()))?;
        if let Ok(d) = File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Reads a model file, checking that it holds models of `expected` kind when given.
pub fn load(path: &Path, expected: Option<ModelKind>) -> Result<ModelFile> {
    let bytes =
        fs::read(path).with_context(|| format!("cannot read model file {}", path.display()))?;
    let file = ModelFile::decode(&bytes)
        .with_context(|| format!("cannot load model file {}", path.display()))?;
    if let Some(kind) = expected
        && file.kind != kind
    {
        bail!(
            "model file {} holds `{}` models, but `{}` was requested",
            path.display(),
            file.kind,
            kind
        );
    }
    Ok(file)
}

/// Seconds since the Unix epoch.
pub fn now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use kanary_core::detector::{DetectorConfig, FittedDetector};

    fn sample(kind: ModelKind) -> ModelFile {
        let data: Vec<f64> = (0..60).map(|i| (i % 7) as f64).collect();
        let m = FittedDetector::fit(
            &DetectorConfig::new(kind),
            vec!["a".into(), "b".into()],
            &data,
            1.0,
        )
        .unwrap();
        ModelFile {
            kanary_version: env!("CARGO_PKG_VERSION").into(),
            kind,
            created_at: 1.0,
            offsets: Vec::new(),
            detectors: vec![("svc".into(), m)],
            streams: Vec::new(),
        }
    }

    #[test]
    fn save_then_load_and_mismatch_errors() {
        let dir = std::env::temp_dir().join(format!("kanary-modelio-{}", std::process::id()));
        let path = dir.join("nested").join("m.kanary");
        let f = sample(ModelKind::named("zscore").unwrap());
        save(&path, &f).unwrap();
        assert_eq!(
            load(&path, Some(ModelKind::named("zscore").unwrap())).unwrap(),
            f
        );
        let err = load(&path, Some(ModelKind::named("if").unwrap()))
            .unwrap_err()
            .to_string();
        assert!(err.contains("holds `zscore` models"), "{err}");
        fs::write(&path, b"garbage").unwrap();
        let err = format!("{:#}", load(&path, None).unwrap_err());
        assert!(err.contains("not a kanary model file"), "{err}");
        let err = format!("{:#}", load(&dir.join("missing"), None).unwrap_err());
        assert!(err.contains("cannot read model file"), "{err}");
        // No temporary files are left behind.
        let leftovers: Vec<_> = fs::read_dir(path.parent().unwrap()).unwrap().collect();
        assert_eq!(leftovers.len(), 1);
        fs::remove_dir_all(&dir).unwrap();
    }
}
