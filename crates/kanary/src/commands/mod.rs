//! One module per subcommand.

pub mod bench;
pub mod demo;
pub mod detect;
pub mod eval;
pub mod gateway;
pub mod models;
pub mod nab;
pub mod simulate;
pub mod train;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

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
        Command::Gateway(a) => gateway::run(*a),
    }
}

/// A multi-threaded tokio runtime for the commands that do network I/O.
pub fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("kanary")
        .build()?)
}

/// One shutdown for a command's threads and tasks: a flag that threads poll, a wake-up that
/// async tasks await, set once by a signal (SIGINT or SIGTERM), a stage that fails, or the
/// command itself. `detect` and `demo` share it.
#[derive(Clone, Default)]
pub struct Shutdown(Arc<ShutdownInner>);

#[derive(Default)]
struct ShutdownInner {
    flag: AtomicBool,
    notify: tokio::sync::Notify,
}

impl Shutdown {
    pub fn new() -> Self {
        Self::default()
    }

    /// Asks everything to stop (idempotent).
    pub fn trigger(&self) {
        self.0.flag.store(true, Ordering::Release);
        self.0.notify.notify_waiters();
    }

    pub fn is_triggered(&self) -> bool {
        self.0.flag.load(Ordering::Acquire)
    }

    /// Resolves once [`trigger`](Self::trigger) has been called.
    pub async fn wait(&self) {
        loop {
            let notified = self.0.notify.notified();
            let mut notified = std::pin::pin!(notified);
            notified.as_mut().enable();
            if self.is_triggered() {
                return;
            }
            notified.await;
        }
    }

    /// Triggers on SIGINT or SIGTERM (spawned on the current runtime), logging `message`.
    pub fn on_signal(&self, message: &'static str) {
        let me = self.clone();
        tokio::spawn(async move {
            signal().await;
            tracing::info!("{message}");
            me.trigger();
        });
    }
}

/// Resolves on SIGINT (Ctrl-C) or SIGTERM.
async fn signal() {
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
