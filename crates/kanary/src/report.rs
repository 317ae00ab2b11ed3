//! Self-contained HTML reports (`kanary eval --report`).

use kanary_core::event::Event;

use crate::commands::eval::ModelRun;

/// Renders the comparison report.
pub fn render(title: &str, events: &[Event], runs: &[ModelRun]) -> String {
    let _ = (events, runs);
    format!("<!doctype html><title>{title}</title>")
}
