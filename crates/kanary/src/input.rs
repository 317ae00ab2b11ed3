//! Reading JSONL event files, plain or gzip-compressed (`.gz`).

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::Path;

use anyhow::{Context, Result};
use kanary_core::event::Event;

/// Events of a file, and the invalid lines counted by reason.
pub struct EventFile {
    pub events: Vec<Event>,
    pub invalid: BTreeMap<&'static str, u64>,
    /// Line number (1-based) and error of the first few invalid lines, for messages.
    pub first_errors: Vec<(usize, String)>,
}

/// Reads every line of a JSONL file; bad lines are counted, not fatal. Blank lines are skipped.
/// A file whose name ends in `.gz` is decompressed on the fly.
pub fn read_events(path: &Path) -> Result<EventFile> {
    let file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let gz = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("gz"));
    let source: Box<dyn Read> = if gz {
        Box::new(flate2::read::MultiGzDecoder::new(BufReader::new(file)))
    } else {
        Box::new(file)
    };
    let mut reader = BufReader::with_capacity(1 << 20, source);
    let mut out = EventFile {
        events: Vec::new(),
        invalid: BTreeMap::new(),
        first_errors: Vec::new(),
    };
    let mut line = Vec::with_capacity(256);
    let mut lineno = 0;
    loop {
        line.clear();
        let n = reader
            .read_until(b'\n', &mut line)
            .with_context(|| format!("cannot read {}", path.display()))?;
        if n == 0 {
            break;
        }
        lineno += 1;
        let trimmed = line.trim_ascii();
        if trimmed.is_empty() {
            continue;
        }
        match Event::parse(trimmed) {
            Ok(ev) => out.events.push(ev),
            Err(e) => {
                *out.invalid.entry(e.reason()).or_default() += 1;
                if out.first_errors.len() < 5 {
                    out.first_errors.push((lineno, e.to_string()));
                }
            }
        }
    }
    for (line, err) in &out.first_errors {
        tracing::warn!("{}:{line}: skipped: {err}", path.display());
    }
    Ok(out)
}
