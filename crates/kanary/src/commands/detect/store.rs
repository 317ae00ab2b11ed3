//! The states `detect` keeps out of memory: services evicted to stay within `--max-services` /
//! `--memory-budget`, and models fitted on the stream. Saving one service never rewrites
//! another's state.
//!
//! Layout: `<state-dir>/<model>.services/states-<N>.log`, append-only segments of records
//!
//! ```text
//! "KSR1" | name length (u32 LE) | state length (u32 LE) | CRC-32 of name and state (u32 LE)
//!        | service name (UTF-8) | state (a model file, the format of `kanary train`, one service)
//! ```
//!
//! The newest record of a service wins. An index in memory maps each service to its newest
//! record (about a hundred bytes per service); a state is read with one positioned read when
//! its service comes back. Each start appends to a new segment. When the segments hold more
//! than twice the bytes of the newest records (and over [`COMPACT_MIN`]), the newest records
//! are copied to a new segment and the old segments are deleted.
//!
//! Records are appended by a background thread, so the scoring thread never waits on the disk
//! to save; until a record is written, its state is served from memory. Records are not
//! fsynced: after a power cut a segment may end in a torn record, which ends the scan of that
//! segment with a warning (its later services come back older or warm up again, which costs
//! detection quality for a while, never events).
//!
//! Earlier versions wrote one file per service (`<name>.kanary` in the same folder); such
//! files are moved into a segment when the store opens.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{BufReader, BufWriter, ErrorKind, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, SyncSender, TryRecvError};
use std::sync::{Arc, Mutex, OnceLock};

use anyhow::{Context, Result, bail};
use kanary_core::detector::ModelKind;
use kanary_core::persist::{ModelFile, crc32};

/// States handed to the writer and not on disk yet, at most.
const MAX_PENDING: usize = 2048;

/// States appended between two flushes of the segment, at most.
const MAX_BATCH: usize = 4096;

/// Segments smaller than this in total are never compacted.
const COMPACT_MIN: u64 = 64 << 20;

const MAGIC: &[u8; 4] = b"KSR1";
const HEADER: u64 = 16;

type Key = (ModelKind, String);

/// Where the newest state of a service is: its segment, and the offset and length of the
/// state's bytes there.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Loc {
    segment: u32,
    offset: u64,
    len: u32,
}

impl Loc {
    /// Bytes of the whole record.
    fn record(&self, name: &str) -> u64 {
        HEADER + name.len() as u64 + u64::from(self.len)
    }
}

struct Inner {
    /// Services with a saved state, per model: where it is on disk, or `None` while its only
    /// state is on its way.
    index: Mutex<HashMap<ModelKind, HashMap<String, Option<Loc>>>>,
    /// Open segments, for reading.
    segments: Mutex<HashMap<(ModelKind, u32), Arc<File>>>,
    /// States handed to the writer and not yet on disk.
    /// Encoded by the thread that hands them over: the writer then frees one buffer per state,
    /// not the many small allocations of a decoded state (frees across threads contend in
    /// the allocator).
    pending: Mutex<HashMap<Key, Arc<Vec<u8>>>>,
    /// The first write error: the service must stop (its states would be lost).
    failed: OnceLock<String>,
}

/// The per-service states of `detect` (cheap to clone; one writer thread).
#[derive(Clone)]
pub(super) struct ServiceStore {
    inner: Arc<Inner>,
    tx: SyncSender<Key>,
}

/// The segment records are appended to.
struct Active {
    id: u32,
    path: PathBuf,
    out: BufWriter<File>,
    len: u64,
}

/// What the writer thread knows of one model's segments.
struct Segments {
    kind: ModelKind,
    dir: PathBuf,
    next_id: u32,
    /// Opened on the first write, so a state directory that went away is noticed then.
    active: Option<Active>,
    /// Bytes in all segments, and in the newest records among them.
    total: u64,
    live: u64,
    /// Segments smaller than this in total are never compacted.
    compact_min: u64,
}

impl ServiceStore {
    /// Opens the store under `state_dir` for `kinds`, indexing the segments already there
    /// (and moving per-service files of earlier versions into one), and starts its writer.
    pub(super) fn open(state_dir: &Path, kinds: &[ModelKind]) -> Result<Self> {
        Self::open_with(state_dir, kinds, COMPACT_MIN)
    }

    fn open_with(state_dir: &Path, kinds: &[ModelKind], compact_min: u64) -> Result<Self> {
        let inner = Arc::new(Inner {
            index: Mutex::new(HashMap::new()),
            segments: Mutex::new(HashMap::new()),
            pending: Mutex::new(HashMap::new()),
            failed: OnceLock::new(),
        });
        let mut all = Vec::with_capacity(kinds.len());
        for &kind in kinds {
            all.push(Segments::open(&inner, state_dir, kind, compact_min)?);
        }
        let (tx, rx) = std::sync::mpsc::sync_channel::<Key>(100_000);
        let writer = inner.clone();
        std::thread::Builder::new()
            .name("kanary-store".into())
            .spawn(move || {
                if let Err(e) = write_loop(&writer, rx, &mut all) {
                    let _ = writer
                        .failed
                        .set(format!("cannot save service states: {e:#}"));
                }
            })?;
        Ok(ServiceStore { inner, tx })
    }

    /// Services with a saved state, for `kind`.
    pub(super) fn count(&self, kind: ModelKind) -> usize {
        self.inner
            .index
            .lock()
            .unwrap()
            .get(&kind)
            .map_or(0, |s| s.len())
    }

    /// Saves `file` (one service of `kind`) in the background.
    pub(super) fn put(&self, kind: ModelKind, service: String, file: ModelFile) {
        let bytes = match file.encode() {
            Ok(b) => b,
            Err(e) => {
                let _ = self
                    .inner
                    .failed
                    .set(format!("cannot save the state of service `{service}`: {e}"));
                return;
            }
        };
        drop(file);
        let key = (kind, service);
        self.inner
            .index
            .lock()
            .unwrap()
            .entry(kind)
            .or_default()
            .entry(key.1.clone())
            .or_insert(None);
        // Bounded memory for states on their way: wait for the writer when it is this far
        // behind (the scoring thread then runs at the disk's pace).
        while self.inner.pending.lock().unwrap().len() >= MAX_PENDING
            && self.inner.failed.get().is_none()
        {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        let fresh = self
            .inner
            .pending
            .lock()
            .unwrap()
            .insert(key.clone(), Arc::new(bytes))
            .is_none();
        // A state already queued is written in its newest version by the queued job.
        if fresh && self.tx.send(key).is_err() {
            let _ = self.inner.failed.set("the state writer stopped".into());
        }
    }

    /// The saved state of `service`, if there is one (from memory while its write is pending,
    /// else from its segment). An unreadable state is logged and treated as absent.
    pub(super) fn get(&self, kind: ModelKind, service: &str) -> Option<ModelFile> {
        let key = (kind, service.to_string());
        // Pending first: the writer records a state's place before it drops it from pending.
        let pending = self.inner.pending.lock().unwrap().get(&key).cloned();
        let bytes = match pending {
            Some(bytes) => Ok(bytes),
            None => {
                // The index is held while the segment is looked up: a compaction points the
                // index at the new segment before it drops the old one.
                let (loc, segment) = {
                    let index = self.inner.index.lock().unwrap();
                    let loc = (*index.get(&kind)?.get(service)?)?;
                    let segments = self.inner.segments.lock().unwrap();
                    (loc, segments.get(&(kind, loc.segment)).cloned()?)
                };
                read_record(&segment, loc)
                    .map(Arc::new)
                    .context("cannot read its segment")
            }
        };
        match bytes.and_then(|b| check_state(&b, kind, service)) {
            Ok(f) => Some(f),
            Err(e) => {
                tracing::warn!(service, "saved state not usable, starting afresh: {e:#}");
                None
            }
        }
    }

    /// Waits until every state handed over is on disk. An error names the failed write, or
    /// says that `timeout` passed first.
    pub(super) fn flush(&self, timeout: std::time::Duration) -> Result<(), String> {
        let start = std::time::Instant::now();
        loop {
            if self.inner.pending.lock().unwrap().is_empty() {
                return Ok(());
            }
            if let Some(e) = self.failure() {
                return Err(e);
            }
            if start.elapsed() >= timeout {
                return Err(format!(
                    "service states not written after {} s",
                    timeout.as_secs_f64()
                ));
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }

    /// The first write error, if any.
    pub(super) fn failure(&self) -> Option<String> {
        self.inner.failed.get().cloned()
    }
}

/// The state bytes of the record at `loc`.
fn read_record(segment: &File, loc: Loc) -> std::io::Result<Vec<u8>> {
    let mut bytes = vec![0u8; loc.len as usize];
    segment.read_exact_at(&mut bytes, loc.offset)?;
    Ok(bytes)
}

fn check_state(bytes: &[u8], kind: ModelKind, service: &str) -> Result<ModelFile> {
    let file = ModelFile::decode(bytes)?;
    if file.kind != kind || service_of(&file).as_deref() != Some(service) {
        bail!("its record holds another model or service");
    }
    Ok(file)
}

impl Segments {
    fn open(inner: &Inner, state_dir: &Path, kind: ModelKind, compact_min: u64) -> Result<Self> {
        let dir = services_dir(state_dir, kind);
        fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let mut ids = Vec::new();
        let mut legacy = Vec::new();
        for entry in fs::read_dir(&dir).with_context(|| format!("cannot read {}", dir.display()))? {
            let entry = entry?;
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if let Some(id) = segment_id(&name) {
                ids.push(id);
            } else if name.ends_with(".kanary") {
                legacy.push(entry.path());
            }
        }
        ids.sort_unstable();
        let mut index: HashMap<String, Option<Loc>> = HashMap::new();
        let mut total = 0;
        for &id in &ids {
            let path = dir.join(segment_name(id));
            let file =
                File::open(&path).with_context(|| format!("cannot open {}", path.display()))?;
            let size = file.metadata()?.len();
            total += size;
            let (records, end) = scan(&file, id, size, |name, loc| {
                index.insert(name, Some(loc));
            })
            .with_context(|| format!("cannot read {}", path.display()))?;
            if let Some(end) = end {
                tracing::warn!(
                    path = %path.display(), records, offset = end,
                    "saved states end in a torn or corrupt record; the states after it are lost \
                     (their services warm up again)"
                );
            }
            inner
                .segments
                .lock()
                .unwrap()
                .insert((kind, id), Arc::new(file));
        }
        let live = index
            .iter()
            .map(|(n, l)| l.map_or(0, |l| l.record(n)))
            .sum();
        inner.index.lock().unwrap().insert(kind, index);
        let mut s = Segments {
            kind,
            dir,
            next_id: ids.last().map_or(0, |i| i + 1),
            active: None,
            total,
            live,
            compact_min,
        };
        s.migrate(inner, &legacy)?;
        Ok(s)
    }

    /// Moves per-service files of earlier versions into the active segment.
    fn migrate(&mut self, inner: &Inner, files: &[PathBuf]) -> Result<()> {
        if files.is_empty() {
            return Ok(());
        }
        let mut placed = Vec::new();
        for path in files {
            let f = match crate::modelio::load(path, Some(self.kind)) {
                Ok(f) => f,
                Err(e) => {
                    tracing::warn!("saved state not usable, its service starts afresh: {e:#}");
                    continue;
                }
            };
            let Some(name) = service_of(&f) else { continue };
            let bytes = fs::read(path)?;
            placed.push((name.clone(), self.append(inner, &name, &bytes)?));
        }
        self.sync_batch(inner, placed)?;
        for path in files {
            fs::remove_file(path).with_context(|| format!("cannot remove {}", path.display()))?;
        }
        tracing::info!(
            dir = %self.dir.display(), files = files.len(),
            "moved per-service state files into a segment"
        );
        Ok(())
    }

    /// Appends one record to the active segment (opening one if there is none).
    fn append(&mut self, inner: &Inner, name: &str, state: &[u8]) -> Result<Loc> {
        if self.active.is_none() {
            let id = self.next_id;
            self.next_id += 1;
            let path = self.dir.join(segment_name(id));
            let file = OpenOptions::new()
                .create_new(true)
                .append(true)
                .open(&path)
                .with_context(|| format!("cannot create {}", path.display()))?;
            let reader =
                File::open(&path).with_context(|| format!("cannot open {}", path.display()))?;
            inner
                .segments
                .lock()
                .unwrap()
                .insert((self.kind, id), Arc::new(reader));
            self.active = Some(Active {
                id,
                path,
                out: BufWriter::with_capacity(1 << 20, file),
                len: 0,
            });
        }
        let a = self.active.as_mut().expect("opened above");
        let len = u32::try_from(state.len()).context("a service state over 4 GiB")?;
        let name_len = u32::try_from(name.len()).context("a service name over 4 GiB")?;
        let mut checked = Vec::with_capacity(name.len() + state.len());
        checked.extend_from_slice(name.as_bytes());
        checked.extend_from_slice(state);
        let mut header = [0u8; HEADER as usize];
        header[..4].copy_from_slice(MAGIC);
        header[4..8].copy_from_slice(&name_len.to_le_bytes());
        header[8..12].copy_from_slice(&len.to_le_bytes());
        header[12..].copy_from_slice(&crc32(&checked).to_le_bytes());
        let write = |out: &mut BufWriter<File>| -> std::io::Result<()> {
            out.write_all(&header)?;
            out.write_all(&checked)
        };
        write(&mut a.out).with_context(|| format!("cannot write {}", a.path.display()))?;
        let loc = Loc {
            segment: a.id,
            offset: a.len + HEADER + name.len() as u64,
            len,
        };
        a.len += HEADER + checked.len() as u64;
        self.total += HEADER + checked.len() as u64;
        Ok(loc)
    }

    /// Makes a batch of appended records readable: flushes the segment, checks that it is
    /// still where it was written, and points the index at the new records.
    fn sync_batch(&mut self, inner: &Inner, placed: Vec<(String, Loc)>) -> Result<()> {
        let Some(a) = self.active.as_mut() else {
            return Ok(());
        };
        a.out
            .flush()
            .with_context(|| format!("cannot write {}", a.path.display()))?;
        // Writes to an open file succeed after its folder is deleted or replaced; the states
        // would be lost with the process.
        fs::metadata(&a.path).with_context(|| {
            format!(
                "the state segment {} is gone (was the state directory removed?)",
                a.path.display()
            )
        })?;
        let mut index = inner.index.lock().unwrap();
        let index = index.entry(self.kind).or_default();
        for (name, loc) in placed {
            let old = index.insert(name.clone(), Some(loc));
            if let Some(Some(old)) = old {
                self.live = self.live.saturating_sub(old.record(&name));
            }
            self.live += loc.record(&name);
        }
        Ok(())
    }

    /// Copies the newest records to a new segment and deletes the old ones, when the old
    /// versions outweigh them.
    fn maybe_compact(&mut self, inner: &Inner) -> Result<()> {
        if self.total < self.compact_min || self.total <= 2 * self.live {
            return Ok(());
        }
        let started = std::time::Instant::now();
        let before = self.total;
        let mut old: Vec<u32> = inner
            .segments
            .lock()
            .unwrap()
            .keys()
            .filter(|(k, _)| *k == self.kind)
            .map(|&(_, id)| id)
            .collect();
        old.sort_unstable();
        if let Some(a) = self.active.take() {
            let mut out = a.out;
            out.flush()
                .with_context(|| format!("cannot write {}", a.path.display()))?;
        }
        let live: Vec<(String, Loc)> = inner
            .index
            .lock()
            .unwrap()
            .get(&self.kind)
            .into_iter()
            .flatten()
            .filter_map(|(n, l)| Some((n.clone(), (*l)?)))
            .collect();
        // The live bytes stay: each record is replaced by a copy of the same size.
        self.total = 0;
        let mut placed = Vec::with_capacity(live.len());
        for (name, loc) in live {
            let segment = inner
                .segments
                .lock()
                .unwrap()
                .get(&(self.kind, loc.segment))
                .cloned()
                .context("a saved state's segment is not open")?;
            let bytes =
                read_record(&segment, loc).context("cannot read a segment to compact it")?;
            let new = self.append(inner, &name, &bytes)?;
            placed.push((name, new));
        }
        self.sync_batch(inner, placed)?;
        let mut segments = inner.segments.lock().unwrap();
        for id in old {
            segments.remove(&(self.kind, id));
            let path = self.dir.join(segment_name(id));
            fs::remove_file(&path).with_context(|| format!("cannot remove {}", path.display()))?;
        }
        tracing::info!(
            dir = %self.dir.display(), before, after = self.total,
            seconds = started.elapsed().as_secs_f64(),
            "compacted the saved service states"
        );
        Ok(())
    }
}

/// Reads the records of a segment in order, handing each to `found`. Returns how many were
/// read and, if the segment (`size` bytes) ends in a torn or corrupt record, the offset where
/// it starts.
fn scan(
    file: &File,
    id: u32,
    size: u64,
    mut found: impl FnMut(String, Loc),
) -> Result<(u64, Option<u64>)> {
    let mut r = BufReader::with_capacity(1 << 20, file);
    let mut offset = 0u64;
    let mut records = 0;
    let mut body = Vec::new();
    loop {
        let mut header = [0u8; HEADER as usize];
        match read_full(&mut r, &mut header)? {
            0 => return Ok((records, None)),
            n if n < header.len() => return Ok((records, Some(offset))),
            _ => {}
        }
        let word = |i: usize| u32::from_le_bytes(header[i..i + 4].try_into().expect("4 bytes"));
        let (name_len, len, crc) = (word(4), word(8), word(12));
        if &header[..4] != MAGIC {
            return Ok((records, Some(offset)));
        }
        // Lengths past the end of the file: a torn record, or a corrupt header (not a reason
        // to allocate gigabytes).
        let body_len = u64::from(name_len) + u64::from(len);
        if offset + HEADER + body_len > size {
            return Ok((records, Some(offset)));
        }
        body.resize(body_len as usize, 0);
        if read_full(&mut r, &mut body)? < body.len() || crc32(&body) != crc {
            return Ok((records, Some(offset)));
        }
        let Ok(name) = std::str::from_utf8(&body[..name_len as usize]) else {
            return Ok((records, Some(offset)));
        };
        found(
            name.to_string(),
            Loc {
                segment: id,
                offset: offset + HEADER + u64::from(name_len),
                len,
            },
        );
        records += 1;
        offset += HEADER + body.len() as u64;
    }
}

/// Reads until `buf` is full or the input ends; returns the bytes read.
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(n)
}

fn write_loop(inner: &Inner, rx: Receiver<Key>, all: &mut [Segments]) -> Result<()> {
    // States replaced while their older version was being written: written again.
    let mut again: Vec<Key> = Vec::new();
    loop {
        let mut keys = std::mem::take(&mut again);
        if keys.is_empty() {
            match rx.recv() {
                Ok(k) => keys.push(k),
                Err(_) => return Ok(()),
            }
        }
        while keys.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(k) => keys.push(k),
                Err(TryRecvError::Empty | TryRecvError::Disconnected) => break,
            }
        }
        // Take the newest version of each state (and keep serving it until it is on disk).
        let files: Vec<(Key, Arc<Vec<u8>>)> = {
            let pending = inner.pending.lock().unwrap();
            keys.into_iter()
                .filter_map(|k| {
                    let f = pending.get(&k)?.clone();
                    Some((k, f))
                })
                .collect()
        };
        let mut placed: HashMap<ModelKind, Vec<(String, Loc)>> = HashMap::new();
        for ((kind, name), file) in &files {
            let s = all
                .iter_mut()
                .find(|s| s.kind == *kind)
                .context("a state of a model the store was not opened for")?;
            let loc = s.append(inner, name, file)?;
            placed.entry(*kind).or_default().push((name.clone(), loc));
        }
        for s in all.iter_mut() {
            if let Some(p) = placed.remove(&s.kind) {
                s.sync_batch(inner, p)?;
            }
        }
        {
            let mut pending = inner.pending.lock().unwrap();
            for (key, file) in &files {
                // A newer version that arrived meanwhile was not queued (its key was pending):
                // it goes in the next batch.
                match pending.get(key) {
                    Some(f) if Arc::ptr_eq(f, file) => {
                        pending.remove(key);
                    }
                    Some(_) => again.push(key.clone()),
                    None => {}
                }
            }
        }
        for s in all.iter_mut() {
            s.maybe_compact(inner)?;
        }
    }
}

/// The one service a per-service state holds.
fn service_of(f: &ModelFile) -> Option<String> {
    f.detectors
        .first()
        .map(|(s, _)| s.clone())
        .or_else(|| f.streams.first().map(|(s, _)| s.clone()))
}

pub(super) fn services_dir(state_dir: &Path, kind: ModelKind) -> PathBuf {
    state_dir.join(format!("{}.services", kind.name()))
}

fn segment_name(id: u32) -> String {
    format!("states-{id:08}.log")
}

fn segment_id(file: &str) -> Option<u32> {
    file.strip_prefix("states-")?
        .strip_suffix(".log")?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use kanary_core::detector::DetectorConfig;
    use kanary_core::engine::{Engine, EngineConfig};
    use kanary_core::event::Event;
    use std::time::Duration;

    /// A streaming model: its state differs after every event.
    fn kind() -> ModelKind {
        ModelKind::named("codev").unwrap()
    }

    /// A one-service state of `service` after `n` events (so versions differ by `n`).
    fn state(service: &str, n: usize) -> ModelFile {
        let mut engine = Engine::new(EngineConfig {
            train_events: 5,
            ..EngineConfig::new(DetectorConfig::new(kind()))
        });
        for i in 0..n {
            let json = format!(r#"{{"service":"{service}","ts":{i},"cpu":{}}}"#, i % 7);
            engine.process(&Event::parse(json.as_bytes()).unwrap(), 0.0);
        }
        let mut streams = engine.streams();
        let (name, st) = streams.pop().expect("one service");
        let mut f = ModelFile::new(kind(), 0.0);
        f.streams.push((name, st));
        f
    }

    fn temp(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("kanary-store-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        dir
    }

    fn segments(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(services_dir(dir, kind()))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn states_come_back_in_their_newest_version_after_a_restart() {
        let dir = temp("restart");
        let names = ["checkout", "a b/c", "../etc", "é", ""];
        {
            let store = ServiceStore::open(&dir, &[kind()]).unwrap();
            for (i, name) in names.iter().enumerate() {
                store.put(kind(), name.to_string(), state(name, 10 + i));
            }
            // A second version of one service, while the first may still be on its way.
            store.put(kind(), "checkout".into(), state("checkout", 40));
            assert_eq!(store.count(kind()), names.len());
            // Served from memory or disk alike.
            assert_eq!(store.get(kind(), "checkout"), Some(state("checkout", 40)));
            store.flush(Duration::from_secs(10)).unwrap();
            assert_eq!(store.get(kind(), "checkout"), Some(state("checkout", 40)));
            assert_eq!(store.get(kind(), "absent"), None);
        }
        let store = ServiceStore::open(&dir, &[kind()]).unwrap();
        assert_eq!(store.count(kind()), names.len());
        assert_eq!(store.get(kind(), "checkout"), Some(state("checkout", 40)));
        for (i, name) in names.iter().enumerate().skip(1) {
            assert_eq!(store.get(kind(), name), Some(state(name, 10 + i)), "{name}");
        }
        // All in one segment file, whatever the names.
        assert_eq!(segments(&dir), ["states-00000000.log"]);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_torn_last_record_loses_only_that_record() {
        let dir = temp("torn");
        {
            let store = ServiceStore::open(&dir, &[kind()]).unwrap();
            store.put(kind(), "one".into(), state("one", 10));
            store.flush(Duration::from_secs(10)).unwrap();
            store.put(kind(), "two".into(), state("two", 10));
            store.flush(Duration::from_secs(10)).unwrap();
        }
        let path = services_dir(&dir, kind()).join("states-00000000.log");
        let len = fs::metadata(&path).unwrap().len();
        let f = OpenOptions::new().write(true).open(&path).unwrap();
        f.set_len(len - 5).unwrap(); // a power cut in the middle of the second write
        drop(f);
        let store = ServiceStore::open(&dir, &[kind()]).unwrap();
        assert_eq!(store.get(kind(), "one"), Some(state("one", 10)));
        assert_eq!(store.get(kind(), "two"), None);
        // New records go to a new segment, after the torn one.
        store.put(kind(), "two".into(), state("two", 12));
        store.flush(Duration::from_secs(10)).unwrap();
        drop(store);
        let store = ServiceStore::open(&dir, &[kind()]).unwrap();
        assert_eq!(store.get(kind(), "two"), Some(state("two", 12)));
        assert_eq!(
            segments(&dir),
            ["states-00000000.log", "states-00000001.log"]
        );
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_corrupt_length_loses_the_records_from_there_only() {
        let dir = temp("length");
        {
            let store = ServiceStore::open(&dir, &[kind()]).unwrap();
            store.put(kind(), "one".into(), state("one", 10));
            store.put(kind(), "two".into(), state("two", 10));
            store.flush(Duration::from_secs(10)).unwrap();
        }
        let path = services_dir(&dir, kind()).join("states-00000000.log");
        let mut bytes = fs::read(&path).unwrap();
        let first = HEADER as usize
            + u32::from_le_bytes(bytes[4..8].try_into().unwrap()) as usize
            + u32::from_le_bytes(bytes[8..12].try_into().unwrap()) as usize;
        // The second record's state length becomes 4 GiB - 1.
        bytes[first + 8..first + 12].copy_from_slice(&u32::MAX.to_le_bytes());
        fs::write(&path, &bytes).unwrap();
        let store = ServiceStore::open(&dir, &[kind()]).unwrap();
        assert_eq!(store.count(kind()), 1);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn compaction_keeps_the_newest_states_and_deletes_old_segments() {
        let dir = temp("compact");
        let store = ServiceStore::open_with(&dir, &[kind()], 4096).unwrap();
        for round in 0..6 {
            for s in 0..20 {
                let name = format!("svc-{s}");
                store.put(kind(), name.clone(), state(&name, 10 + round));
            }
            store.flush(Duration::from_secs(10)).unwrap();
        }
        let check = |store: &ServiceStore| {
            for s in 0..20 {
                let name = format!("svc-{s}");
                assert_eq!(store.get(kind(), &name), Some(state(&name, 15)), "{name}");
            }
        };
        check(&store);
        drop(store);
        let files = segments(&dir);
        assert_eq!(files.len(), 1, "{files:?}");
        assert_ne!(files[0], "states-00000000.log");
        let bytes = fs::metadata(services_dir(&dir, kind()).join(&files[0]))
            .unwrap()
            .len();
        let one = state("svc-0", 15).encode().unwrap().len() as u64;
        // Compacted at most a round or two ago: far from six versions of every state.
        assert!(bytes < 20 * 3 * (one + 32), "{bytes} bytes");
        check(&ServiceStore::open(&dir, &[kind()]).unwrap());
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn per_service_files_of_earlier_versions_move_into_a_segment() {
        let dir = temp("migrate");
        let sub = services_dir(&dir, kind());
        fs::create_dir_all(&sub).unwrap();
        fs::write(sub.join("a%20b.kanary"), state("a b", 9).encode().unwrap()).unwrap();
        fs::write(
            sub.join("#0123456789abcdef.kanary"),
            state("long", 8).encode().unwrap(),
        )
        .unwrap();
        fs::write(sub.join("bad.kanary"), b"not a model").unwrap();
        let store = ServiceStore::open(&dir, &[kind()]).unwrap();
        assert_eq!(store.count(kind()), 2);
        assert_eq!(store.get(kind(), "a b"), Some(state("a b", 9)));
        assert_eq!(store.get(kind(), "long"), Some(state("long", 8)));
        assert_eq!(segments(&dir), ["states-00000000.log"]);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_removed_state_directory_is_a_write_failure() {
        let dir = temp("removed");
        let store = ServiceStore::open(&dir, &[kind()]).unwrap();
        store.put(kind(), "one".into(), state("one", 10));
        store.flush(Duration::from_secs(10)).unwrap();
        fs::remove_dir_all(&dir).unwrap();
        store.put(kind(), "two".into(), state("two", 10));
        let e = store.flush(Duration::from_secs(10)).unwrap_err();
        assert!(e.contains("is gone"), "{e}");
        assert_eq!(store.failure(), Some(e));
    }
}
