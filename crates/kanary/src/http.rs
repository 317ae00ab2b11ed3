//! The HTTP endpoints of `kanary detect` and `kanary demo`: `/metrics` (Prometheus text),
//! `/healthz`, `/readyz`, `/api/summary` (JSON for the live page) and the live page itself
//! (`/`, `/app.js`, `/style.css`, embedded in the binary).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use anyhow::{Context, Result};
use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use crate::live::Live;
use crate::telemetry::Metrics;

const INDEX_HTML: &str = include_str!("../assets/index.html");
const APP_JS: &str = include_str!("../assets/app.js");
const STYLE_CSS: &str = include_str!("../assets/style.css");

/// What `/readyz` and `/healthz` report. Ready: a Kafka broker answers, partitions are
/// assigned and every model exists. Healthy: no stage has failed.
#[derive(Debug, Default)]
pub struct Readiness {
    pub brokers_up: AtomicBool,
    pub partitions_assigned: AtomicBool,
    pub models_ready: AtomicBool,
    /// Set once when a stage fails for good; the process is then on its way out.
    pub failed: OnceLock<String>,
}

impl Readiness {
    /// Why the service is not ready, if it is not.
    pub fn not_ready(&self) -> Option<&'static str> {
        if self.failed.get().is_some() {
            Some("a stage failed; stopping")
        } else if !self.brokers_up.load(Ordering::Acquire) {
            Some("no Kafka broker reachable")
        } else if !self.partitions_assigned.load(Ordering::Acquire) {
            Some("no partitions assigned")
        } else if !self.models_ready.load(Ordering::Acquire) {
            Some("models not fitted yet (warming up)")
        } else {
            None
        }
    }
}

/// Limits of the HTTP server: a connection that has not sent a complete request head within
/// `timeout` (a half-sent request, or a keep-alive connection left idle) is closed, and at
/// most `max_connections` are served at once (more wait in the listen backlog).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub timeout: Duration,
    pub max_connections: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            timeout: Duration::from_secs(10),
            max_connections: 256,
        }
    }
}

#[derive(Clone)]
pub struct AppState {
    pub metrics: Arc<Metrics>,
    pub live: Arc<Live>,
    pub readiness: Arc<Readiness>,
}

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/", get(index))
        .route("/app.js", get(app_js))
        .route("/style.css", get(style_css))
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/api/summary", get(summary))
        .with_state(state)
}

/// Binds `addr` and serves until `shutdown` resolves (then stops accepting; open connections
/// end with the process). Returns the bound address (useful with port 0) and the accept task.
pub async fn serve(
    addr: SocketAddr,
    state: AppState,
    limits: Limits,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    serve_router(addr, router(state), limits, None, shutdown).await
}

/// [`serve`] for any router (the gateway's), over TLS when `tls` is given: the handshake
/// must finish within the header-read timeout too.
pub async fn serve_router(
    addr: SocketAddr,
    app: Router,
    limits: Limits,
    tls: Option<Arc<rustls::ServerConfig>>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    use hyper_util::rt::{TokioIo, TokioTimer};
    use hyper_util::service::TowerToHyperService;

    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr}"))?;
    let bound = listener.local_addr()?;
    let service = TowerToHyperService::new(app);
    let permits = Arc::new(tokio::sync::Semaphore::new(limits.max_connections.max(1)));
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.timeout)
        .keep_alive(true);
    let task = tokio::spawn(async move {
        let mut shutdown = std::pin::pin!(shutdown);
        loop {
            // A connection slot first, then a connection: over the limit, clients wait in the
            // listen backlog instead of costing memory and file descriptors.
            let permit = tokio::select! {
                _ = &mut shutdown => return,
                p = permits.clone().acquire_owned() => p.expect("semaphore never closed"),
            };
            let stream = tokio::select! {
                _ = &mut shutdown => return,
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => stream,
                    Err(e) => {
                        // Out of file descriptors and the like: back off instead of spinning.
                        tracing::warn!("HTTP accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
            };
            let service = service.clone();
            let http = http.clone();
            let acceptor = tls.clone().map(tokio_rustls::TlsAcceptor::from);
            tokio::spawn(async move {
                // Errors here are the client's (reset, timed out, bad handshake): nothing to
                // log.
                match acceptor {
                    None => {
                        let _ = http.serve_connection(TokioIo::new(stream), service).await;
                    }
                    Some(acceptor) => {
                        let handshake =
                            tokio::time::timeout(limits.timeout, acceptor.accept(stream));
                        if let Ok(Ok(stream)) = handshake.await {
                            let _ = http.serve_connection(TokioIo::new(stream), service).await;
                        }
                    }
                }
                drop(permit);
            });
        }
    });
    Ok((bound, task))
}

async fn index() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        INDEX_HTML,
    )
        .into_response()
}

async fn app_js() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        APP_JS,
    )
        .into_response()
}

async fn style_css() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        STYLE_CSS,
    )
        .into_response()
}

async fn metrics(State(s): State<AppState>) -> Response {
    (
        [(header::CONTENT_TYPE, crate::telemetry::CONTENT_TYPE)],
        s.metrics.encode(),
    )
        .into_response()
}

async fn healthz(State(s): State<AppState>) -> Response {
    match s.readiness.failed.get() {
        None => (StatusCode::OK, "ok\n").into_response(),
        Some(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("unhealthy: {why}\n"),
        )
            .into_response(),
    }
}

async fn readyz(State(s): State<AppState>) -> Response {
    match s.readiness.not_ready() {
        None => (StatusCode::OK, "ready\n").into_response(),
        Some(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {why}\n"),
        )
            .into_response(),
    }
}

async fn summary(State(s): State<AppState>) -> Response {
    (
        [(header::CACHE_CONTROL, "no-store")],
        axum::Json(s.live.summary()),
    )
        .into_response()
}

/// A TLS server configuration from PEM files: a certificate chain and its private key.
pub fn tls_config(
    cert: &std::path::Path,
    key: &std::path::Path,
) -> Result<Arc<rustls::ServerConfig>> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs = CertificateDer::pem_file_iter(cert)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .with_context(|| format!("cannot read certificates from {}", cert.display()))?;
    if certs.is_empty() {
        anyhow::bail!("no certificate in {}", cert.display());
    }
    let key = PrivateKeyDer::from_pem_file(key)
        .with_context(|| format!("cannot read a private key from {}", key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS set-up")?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .context("the certificate and the key do not go together")?;
    Ok(Arc::new(config))
}
