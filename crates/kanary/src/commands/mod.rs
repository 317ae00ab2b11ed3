//! One module per subcommand.

pub mod bench;
pub mod demo;
pub mod detect;
pub mod eval;
pub mod models;
pub mod nab;
pub mod simulate;
pub mod train;

use anyhow::Result;

use crate::cli::Command;

/// Runs a parsed command to completion.
pub fn run(cmd: Command) -> Result<()> {
    match cmd {
        Command::Simulate(a) => simulate::run(a),
        Command::Detect(a) => detect::run(*a),
        Command::Eval(a) => eval::run(a),
        Command::Train(a) => train::run(a),
        Command::Nab(a) => nab::run(a),
        Command::Models(a) => models::run(a),
        Command::Bench(a) => bench::run(a),
        Command::Demo(a) => demo::run(a),
    }
}

/// A multi-threaded tokio runtime for the commands that do network I/O.
pub fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("kanary")
        .build()?)
}

/// Resolves on SIGINT (Ctrl-C) or SIGTERM.
pub async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
