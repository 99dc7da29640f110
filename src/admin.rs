//! The HTTP admin endpoint (README "Admin endpoint and logs", `admin.listen`): `/healthz` (the process answers),
//! `/readyz` (connected, tasks assigned and restored, caught up; 503 with the reason
//! otherwise), `/metrics` (OpenMetrics text) and `/customers/{id}` (one customer
//! explained, as `inspect` does; loopback only, contact data redacted unless
//! `?personal=true` comes with the bearer token of `admin.token_file`).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::extract::{ConnectInfo, Path, State};
use axum::http::{header, HeaderMap, StatusCode, Uri};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::health::Health;
use crate::metrics::Metrics;
use crate::secret::Secret;

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
    /// The bearer token that unlocks personal data (None: it stays redacted).
    pub token: Option<Arc<Secret>>,
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

/// Whether a request's `Authorization` header carries `token`: None without the header,
/// so an unauthenticated request is answered redacted and a wrong token refused.
fn bearer_matches(headers: &HeaderMap, token: Option<&Secret>) -> Option<bool> {
    let given = headers.get(header::AUTHORIZATION)?.as_bytes();
    let given = given.strip_prefix(b"Bearer ").unwrap_or(b"");
    // Digests of equal length compared in constant time: neither the token's bytes nor
    // its length can be found by timing the answers.
    Some(token.is_some_and(|t| {
        let want = Sha256::digest(t.expose().as_bytes());
        bool::from(Sha256::digest(given).ct_eq(&want))
    }))
}

async fn customer(
    State(s): State<Shared>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(id): Path<String>,
    uri: Uri,
    headers: HeaderMap,
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
    let asked = uri.query().is_some_and(|q| {
        q.split('&')
            .any(|p| matches!(p, "personal" | "personal=true" | "personal=1"))
    });
    let personal = match bearer_matches(&headers, s.token.as_deref()) {
        Some(true) => asked,
        None => false,
        Some(false) => {
            return (
                StatusCode::UNAUTHORIZED,
                text,
                "the bearer token is not admin.token_file's (or none is configured)\n".to_string(),
            )
        }
    };
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

/// Connections served with the full header-read timeout; past this many, new ones get
/// [`CROWDED_HEADER_TIMEOUT`] (a probe sends its request at once; a slow client does not).
pub const MAX_CONNECTIONS: usize = 64;

/// Connections open at most: past this, new ones are closed at once (file descriptors
/// stay bounded whatever a flood does).
pub const MAX_OPEN: usize = 256;

/// How long a connection may take to send a request's headers (and to start the next
/// one on a kept-alive connection).
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(5);

/// The same for connections beyond [`MAX_CONNECTIONS`].
pub const CROWDED_HEADER_TIMEOUT: Duration = Duration::from_millis(250);

/// Most bytes buffered for one request's head (the routes take no body).
const MAX_REQUEST_BYTES: usize = 16 * 1024;

/// Serves the admin routes until the runtime stops, with bounds no client can stretch:
/// a header-read timeout, a small request buffer, and a cap on open connections, so that
/// a flood of half-sent requests cannot starve `/healthz`.
pub async fn serve(listener: tokio::net::TcpListener, shared: Shared) -> std::io::Result<()> {
    if let Ok(a) = listener.local_addr() {
        tracing::info!(listen = %a, "admin endpoint: /healthz /readyz /metrics /customers/{{id}}");
    }
    let app = router(shared);
    let open = Arc::new(tokio::sync::Semaphore::new(MAX_OPEN));
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(c) => c,
            // Out of descriptors or a reset before accept: wait a little, go on.
            Err(e) => {
                tracing::debug!(error = %e, "admin endpoint: accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = open.clone().try_acquire_owned() else {
            drop(stream);
            continue;
        };
        let crowded = MAX_OPEN - open.available_permits() > MAX_CONNECTIONS;
        let timeout = if crowded {
            CROWDED_HEADER_TIMEOUT
        } else {
            HEADER_TIMEOUT
        };
        let app = app.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let svc = tower::ServiceExt::map_request(
                app,
                move |mut req: axum::extract::Request<hyper::body::Incoming>| {
                    req.extensions_mut().insert(ConnectInfo(peer));
                    req
                },
            );
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(timeout)
                .max_buf_size(MAX_REQUEST_BYTES)
                .serve_connection(
                    hyper_util::rt::TokioIo::new(stream),
                    hyper_util::service::TowerToHyperService::new(svc),
                );
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, %peer, "admin endpoint: connection ended");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::TcpStream;
    use std::time::Instant;

    /// An endpoint on a free loopback port, served by a runtime of its own.
    fn start() -> (tokio::runtime::Runtime, SocketAddr) {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
        let listener = rt
            .block_on(bind("127.0.0.1:0".parse().expect("address")))
            .expect("bind");
        let addr = listener.local_addr().expect("local address");
        let shared = Shared {
            health: Arc::new(Health::new()),
            metrics: Arc::new(Metrics::default()),
            queries: Arc::new(Queries::default()),
            token: None,
        };
        rt.spawn(serve(listener, shared));
        (rt, addr)
    }

    /// A whole `GET` and the status line of its answer.
    fn get(addr: SocketAddr, path: &str) -> String {
        let mut s = TcpStream::connect(addr).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        .expect("write");
        let mut answer = String::new();
        let _ = s.read_to_string(&mut answer);
        answer.lines().next().unwrap_or_default().to_string()
    }

    /// Connections that start a request and never finish its headers.
    fn half_open(addr: SocketAddr, n: usize) -> Vec<TcpStream> {
        (0..n)
            .filter_map(|_| {
                let mut s = TcpStream::connect(addr).ok()?;
                s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n").ok()?;
                Some(s)
            })
            .collect()
    }

    #[test]
    fn healthz_answers_while_more_half_sent_requests_than_the_cap_are_open() {
        let (_rt, addr) = start();
        // More than the open limit: the crowded ones must be let go quickly, or the
        // probe finds every place taken.
        let flood = half_open(addr, MAX_OPEN + 50);
        std::thread::sleep(CROWDED_HEADER_TIMEOUT * 2);
        let t = Instant::now();
        assert_eq!(get(addr, "/healthz"), "HTTP/1.1 200 OK");
        assert!(
            t.elapsed() < Duration::from_secs(1),
            "/healthz took {:?} under the flood",
            t.elapsed()
        );
        drop(flood);
    }

    #[test]
    fn a_request_whose_headers_never_end_is_closed_at_the_header_timeout() {
        let (_rt, addr) = start();
        let mut slow = half_open(addr, 1).pop().expect("one connection");
        slow.set_read_timeout(Some(HEADER_TIMEOUT * 3))
            .expect("timeout");
        let t = Instant::now();
        let mut buf = Vec::new();
        // The server ends the connection (an answer then EOF, or EOF): the read returns.
        let read = slow.read_to_end(&mut buf);
        assert!(read.is_ok(), "still open after {:?}: {read:?}", t.elapsed());
        assert!(
            t.elapsed() < HEADER_TIMEOUT + Duration::from_secs(2),
            "closed only after {:?}",
            t.elapsed()
        );
    }

    #[test]
    fn connections_past_the_open_limit_are_closed_at_once() {
        let (_rt, addr) = start();
        let _held = half_open(addr, MAX_OPEN);
        std::thread::sleep(Duration::from_millis(100));
        let mut extra = TcpStream::connect(addr).expect("the kernel accepts");
        extra
            .set_read_timeout(Some(Duration::from_secs(2)))
            .expect("timeout");
        let mut buf = [0u8; 16];
        // Closed by the server without an answer: EOF (or a reset), not a timeout.
        match extra.read(&mut buf) {
            Ok(n) => assert_eq!(n, 0, "an answer past the limit"),
            Err(e) => assert_ne!(e.kind(), std::io::ErrorKind::WouldBlock, "left open: {e}"),
        }
    }
}
