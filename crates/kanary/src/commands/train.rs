//! `kanary train`: fit per-service models on a file and save them; a streaming model learns
//! the file instead and its states are saved.

use std::collections::HashMap;

use anyhow::{Context, Result, bail};
use kanary_core::engine::Engine;
use kanary_core::event::Event;
use kanary_core::persist::ModelFile;

use crate::cli::TrainArgs;
use crate::input::read_events;
use crate::modelio;

pub fn run(args: TrainArgs) -> Result<()> {
    let file = read_events(&args.input)?;
    if file.events.is_empty() {
        bail!("{} holds no valid events", args.input.display());
    }
    // At most the first N events of each service.
    let events: Vec<Event> = match args.train {
        None => file.events,
        Some(n) => {
            let mut seen: HashMap<String, usize> = HashMap::new();
            file.events
                .into_iter()
                .filter(|e| {
                    let c = seen.entry(e.service.clone()).or_default();
                    *c += 1;
                    *c <= n
                })
                .collect()
        }
    };
    let mut engine = Engine::new(args.opts.engine_config(args.model, 0)?);
    let now = modelio::now();
    let invalid = engine
        .fit_all(&events, now)
        .map_err(|(svc, e)| anyhow::anyhow!("cannot fit service `{svc}`: {e}"))?;
    let mut detectors: Vec<(String, _)> = engine
        .models()
        .map(|(s, m)| (s.to_string(), (**m).clone()))
        .collect();
    detectors.sort_by(|a, b| a.0.cmp(&b.0));
    for (svc, m) in &detectors {
        eprintln!(
            "{svc}: {} fitted on {} rows of [{}], threshold {:.6} ({})",
            m.kind,
            m.train_rows,
            m.features.join(", "),
            m.threshold,
            m.threshold_method
        );
    }
    let streams = engine.streams();
    for (svc, st) in &streams {
        eprintln!(
            "{svc}: {} learnt [{}] from the file",
            st.state.kind(),
            st.features.join(", ")
        );
    }
    for (reason, n) in invalid {
        eprintln!("skipped {n} events: {reason}");
    }
    let out = ModelFile {
        detectors,
        streams,
        ..ModelFile::new(args.model, now)
    };
    modelio::save(&args.output, &out)
        .with_context(|| format!("cannot save {}", args.output.display()))?;
    eprintln!("wrote {}", args.output.display());
    Ok(())
}
