//! `kanary`: real-time anomaly detection for microservice telemetry.
//!
//! Layout of the binary crate (the pure model code lives in `kanary-core`):
//! - `cli`: the command line (clap derive); `config`: the optional TOML file for `detect`.
//! - `commands/`: one module per subcommand.
//! - `pipeline`: the online path shared by `detect` and `demo` (engines, outputs, metrics).
//! - `kafka`: consumer, producer and admin set-up (rdkafka).
//! - `telemetry`: every Prometheus metric name, in one place (see docs/metrics.md).
//! - `http`: `/metrics`, `/healthz`, `/readyz`, `/api/summary` and the live page (axum).
//! - `live`: the rolling state behind the live page.
//! - `modelio`: model files on disk (atomic writes, clear errors).
//! - `input`: reading JSONL event files (plain or gzip).
//! - `records`: the one JSON writer of a scored event (anomaly records, `eval --scores` lines).
//! - `summary`: what an evaluation run produced; `report`: its self-contained HTML page.

mod cli;
mod commands;
mod config;
mod http;
mod input;
mod kafka;
mod live;
mod modelio;
mod pipeline;
mod records;
mod report;
mod summary;
mod telemetry;

use clap::Parser;
use tracing_subscriber::EnvFilter;

fn main() -> std::process::ExitCode {
    let cli = cli::Cli::parse();
    let filter = EnvFilter::try_new(&cli.log).unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .init();
    match commands::run(cli.command) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
