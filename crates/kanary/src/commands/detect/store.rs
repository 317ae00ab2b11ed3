//! One file per service for the states `detect` keeps out of memory: services evicted to stay
//! within `--max-services` / `--memory-budget`, and models fitted on the stream. Saving one
//! service never rewrites another's file.
//!
//! Layout: `<state-dir>/<model>.services/<name>.kanary`, each a model file (the format of
//! `kanary train`) holding one service. `<name>` is the service name with every byte outside
//! `[A-Za-z0-9._-]` written as `%XX`; a name longer than [`MAX_NAME`] bytes that way is
//! written `#<16 hex digits of its hash>` (the file holds the real name, checked on load).
//!
//! Files are written by a background thread, so the scoring thread never waits on the disk
//! to save; until a file is written, its state is served from memory. Writes are atomic
//! (temporary file, rename) but not fsynced one by one: after a power cut a service may come
//! back older or warm up again, which costs detection quality for a while, never events.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, SyncSender};
use std::sync::{Arc, Mutex, OnceLock};

use anyhow::{Context, Result};
use kanary_core::detector::ModelKind;
use kanary_core::persist::ModelFile;

/// States handed to the writer and not on disk yet, at most.
const MAX_PENDING: usize = 2048;

/// Longest escaped service name used as a file name as is.
const MAX_NAME: usize = 180;

type Key = (ModelKind, String);

struct Inner {
    state_dir: PathBuf,
    /// Services with a saved state (on disk or on its way), per model.
    index: Mutex<HashMap<ModelKind, HashSet<String>>>,
    /// States handed to the writer and not yet on disk.
    pending: Mutex<HashMap<Key, Arc<ModelFile>>>,
    /// The first write error: the service must stop (its states would be lost).
    failed: OnceLock<String>,
}

/// The per-service state files of `detect` (cheap to clone; one writer thread).
#[derive(Clone)]
pub(super) struct ServiceStore {
    inner: Arc<Inner>,
    tx: SyncSender<Key>,
}

impl ServiceStore {
    /// Opens the store under `state_dir` for `kinds`, indexing the files already there, and
    /// starts its writer thread.
    pub(super) fn open(state_dir: &Path, kinds: &[ModelKind]) -> Result<Self> {
        let mut index = HashMap::new();
        for &kind in kinds {
            let dir = services_dir(state_dir, kind);
            fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
            let mut names = HashSet::new();
            for entry in
                fs::read_dir(&dir).with_context(|| format!("cannot read {}", dir.display()))?
            {
                let entry = entry?;
                let file = entry.file_name();
                let file = file.to_string_lossy();
                let Some(stem) = file.strip_suffix(".kanary") else {
                    continue; // temporary files of an interrupted write, and the like
                };
                if stem.starts_with('#') {
                    // A hashed name: the file knows the service.
                    if let Ok(f) = crate::modelio::load(&entry.path(), Some(kind))
                        && let Some(name) = service_of(&f)
                    {
                        names.insert(name);
                    }
                } else if let Some(name) = unescape(stem) {
                    names.insert(name);
                }
            }
            index.insert(kind, names);
        }
        let inner = Arc::new(Inner {
            state_dir: state_dir.to_path_buf(),
            index: Mutex::new(index),
            pending: Mutex::new(HashMap::new()),
            failed: OnceLock::new(),
        });
        let (tx, rx) = std::sync::mpsc::sync_channel::<Key>(100_000);
        let writer = inner.clone();
        std::thread::Builder::new()
            .name("kanary-store".into())
            .spawn(move || write_loop(&writer, rx))?;
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
        let key = (kind, service);
        self.inner
            .index
            .lock()
            .unwrap()
            .entry(kind)
            .or_default()
            .insert(key.1.clone());
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
            .insert(key.clone(), Arc::new(file))
            .is_none();
        // A state already queued is written in its newest version by the queued job.
        if fresh && self.tx.send(key).is_err() {
            let _ = self.inner.failed.set("the state writer stopped".into());
        }
    }

    /// The saved state of `service`, if there is one (from memory while its write is pending,
    /// else from its file). An unreadable file is logged and treated as absent.
    pub(super) fn get(&self, kind: ModelKind, service: &str) -> Option<ModelFile> {
        if !self
            .inner
            .index
            .lock()
            .unwrap()
            .get(&kind)
            .is_some_and(|s| s.contains(service))
        {
            return None;
        }
        let key = (kind, service.to_string());
        if let Some(f) = self.inner.pending.lock().unwrap().get(&key) {
            return Some((**f).clone());
        }
        let path = file_of(&self.inner.state_dir, kind, service);
        match crate::modelio::load(&path, Some(kind)) {
            Ok(f) if service_of(&f).as_deref() == Some(service) => Some(f),
            Ok(_) => None, // a hash collision: another service's file
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

fn write_loop(inner: &Inner, rx: Receiver<Key>) {
    while let Ok(key) = rx.recv() {
        // Take the newest version of the state (and keep serving it until it is on disk).
        let Some(file) = inner.pending.lock().unwrap().get(&key).cloned() else {
            continue;
        };
        let path = file_of(&inner.state_dir, key.0, &key.1);
        if let Err(e) = write(&path, &file) {
            let _ = inner
                .failed
                .set(format!("cannot save {}: {e:#}", path.display()));
            return;
        }
        let mut pending = inner.pending.lock().unwrap();
        // Only if no newer version arrived meanwhile (that one is queued again).
        if pending.get(&key).is_some_and(|f| Arc::ptr_eq(f, &file)) {
            pending.remove(&key);
        }
    }
}

/// Atomic (temporary file, rename), without an fsync per file: see the module docs.
fn write(path: &Path, file: &ModelFile) -> Result<()> {
    let bytes = file.encode()?;
    let tmp = path.with_extension("kanary.tmp");
    fs::write(&tmp, &bytes).with_context(|| format!("cannot write {}", tmp.display()))?;
    fs::rename(&tmp, path).with_context(|| format!("cannot rename {}", tmp.display()))?;
    Ok(())
}

/// The one service a per-service file holds.
fn service_of(f: &ModelFile) -> Option<String> {
    f.detectors
        .first()
        .map(|(s, _)| s.clone())
        .or_else(|| f.streams.first().map(|(s, _)| s.clone()))
}

pub(super) fn services_dir(state_dir: &Path, kind: ModelKind) -> PathBuf {
    state_dir.join(format!("{}.services", kind.name()))
}

fn file_of(state_dir: &Path, kind: ModelKind, service: &str) -> PathBuf {
    services_dir(state_dir, kind).join(format!("{}.kanary", file_stem(service)))
}

fn file_stem(service: &str) -> String {
    let mut out = String::with_capacity(service.len());
    for b in service.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    // "." and ".." are not names a file can have.
    if out.len() > MAX_NAME || out.chars().all(|c| c == '.') {
        // FNV-1a: stable across builds, unlike the standard library's hasher.
        let h = service.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
        });
        return format!("#{h:016x}");
    }
    out
}

fn unescape(stem: &str) -> Option<String> {
    let bytes = stem.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = stem.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names_round_trip_and_stay_short_and_safe() {
        for name in [
            "checkout",
            "a b/c",
            "../etc",
            "é",
            "%41",
            ".",
            "x".repeat(300).as_str(),
        ] {
            let stem = file_stem(name);
            assert!(stem.len() <= MAX_NAME + 1, "{stem}");
            assert!(!stem.contains('/') && stem != "." && stem != "..", "{stem}");
            if !stem.starts_with('#') {
                assert_eq!(unescape(&stem).as_deref(), Some(name));
            }
        }
        assert_eq!(file_stem("a b"), "a%20b");
        assert!(file_stem(&"y".repeat(300)).starts_with('#'));
    }
}
