//! The HTTP admin endpoint (README "Admin endpoint and logs", `admin.listen`): `/healthz` (the process answers),
//! `/readyz` (connected, tasks assigned and restored, caught up; 503 with the reason
//! otherwise), `/metrics` (OpenMetrics text) and `/customers/{id}` (one customer
//! explained, as `inspect` does; loopback only, contact data redacted unless
//! `?personal=true`).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::extract::{ConnectInfo, Path, State};
use axum::http::{header, StatusCode, Uri};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;

use crate::health::Health;
use crate::metrics::Metrics;

/// What the worker answers a customer query with: the explanation, `None` for a
/// customer none of its tasks holds, or an error text.
pub type Answer = Result<Option<serde_json::Value>, String>;

/// A question for the worker thread, which alone holds the customers' state.
pub struct CustomerQuery {
    /// The customer id.
    pub id: String,
    /// Show email address and name instead of redacting them.
    pub personal: bool,
    /// Where the answer goes.
    pub reply: tokio::sync::oneshot::Sender<Answer>,
}

/// Customer queries waiting for the worker loop, which takes them once per round.
#[derive(Default)]
pub struct Queries(Mutex<Vec<CustomerQuery>>);

impl std::fmt::Debug for Queries {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Queries")
    }
}

impl Queries {
    /// Queues a query.
    pub fn push(&self, q: CustomerQuery) {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(q);
    }

    /// Takes every waiting query.
    pub fn take(&self) -> Vec<CustomerQuery> {
        std::mem::take(&mut *self.0.lock().unwrap_or_else(PoisonError::into_inner))
    }
}

/// What the routes share.
#[derive(Clone)]
pub struct Shared {
    /// Readiness.
    pub health: Arc<Health>,
    /// The metrics served.
    pub metrics: Arc<Metrics>,
    /// The worker's customer query queue.
    pub queries: Arc<Queries>,
}

/// How long `/customers/{id}` waits for the worker loop.
const QUERY_TIMEOUT: Duration = Duration::from_secs(10);

/// The admin routes over the worker's health, metrics and state.
pub fn router(shared: Shared) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .route("/customers/{id}", get(customer))
        .with_state(shared)
}

async fn customer(
    State(s): State<Shared>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(id): Path<String>,
    uri: Uri,
) -> impl IntoResponse {
    let json = [(header::CONTENT_TYPE, "application/json")];
    let text = [(header::CONTENT_TYPE, "text/plain; charset=utf-8")];
    // Personal data: never to another host, whatever address the listener is on.
    if !peer.ip().is_loopback() {
        return (
            StatusCode::FORBIDDEN,
            text,
            "customers are shown on loopback only\n".to_string(),
        );
    }
    let personal = uri.query().is_some_and(|q| {
        q.split('&')
            .any(|p| matches!(p, "personal" | "personal=true" | "personal=1"))
    });
    let (tx, rx) = tokio::sync::oneshot::channel();
    s.queries.push(CustomerQuery {
        id: id.clone(),
        personal,
        reply: tx,
    });
    match tokio::time::timeout(QUERY_TIMEOUT, rx).await {
        Ok(Ok(Ok(Some(v)))) => (
            StatusCode::OK,
            json,
            serde_json::to_string_pretty(&v).unwrap_or_default() + "\n",
        ),
        Ok(Ok(Ok(None))) => (
            StatusCode::NOT_FOUND,
            text,
            format!("no customer {id:?} in this worker's tasks\n"),
        ),
        Ok(Ok(Err(e))) => (StatusCode::INTERNAL_SERVER_ERROR, text, format!("{e}\n")),
        _ => (
            StatusCode::SERVICE_UNAVAILABLE,
            text,
            "the worker did not answer in time\n".to_string(),
        ),
    }
}

async fn readyz(State(s): State<Shared>) -> impl IntoResponse {
    match s.health.readiness() {
        Ok(()) => (StatusCode::OK, "ready\n".to_string()),
        Err(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {why}\n"),
        ),
    }
}

async fn metrics_text(State(s): State<Shared>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        s.metrics.render(),
    )
}

/// Binds `listen`; the error names the key, so a taken port stops the start clearly.
pub async fn bind(listen: SocketAddr) -> anyhow::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| anyhow::anyhow!("admin.listen: cannot listen on {listen}: {e}"))
}

/// Serves the admin routes until the runtime stops.
pub async fn serve(listener: tokio::net::TcpListener, shared: Shared) -> std::io::Result<()> {
    if let Ok(a) = listener.local_addr() {
        tracing::info!(listen = %a, "admin endpoint: /healthz /readyz /metrics /customers/{{id}}");
    }
    axum::serve(
        listener,
        router(shared).into_make_service_with_connect_info::<SocketAddr>(),
    )
    .await
}
