//! The agent's HTTP endpoints: /healthz and /livez (kube-proxy's meaning) on
//! --healthz-bind-address, /metrics on --metrics-bind-address, and the health-check node ports
//! of externalTrafficPolicy=Local Services.

use std::{
    collections::BTreeMap,
    convert::Infallible,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{Instant, SystemTime},
};

use http_body_util::Full;
use hyper::{
    body::{Bytes, Incoming},
    header, Method, Request, Response, StatusCode,
};
use hyper_util::rt::TokioIo;
use tokio::{net::TcpListener, task::JoinHandle};
use tracing::{debug, info, warn};

use crate::{metrics::Telemetry, plan::HealthCheck};

/// Errors of the HTTP servers.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("binding {addr}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

type Handler = Arc<dyn Fn(&Request<Incoming>) -> Response<Full<Bytes>> + Send + Sync>;

/// Binds `addr` and serves `handler` on every connection until the task is aborted.
pub async fn serve(addr: SocketAddr, handler: Handler) -> Result<JoinHandle<()>, HttpError> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| HttpError::Bind { addr, source })?;
    Ok(tokio::spawn(accept_loop(listener, handler)))
}

/// Serves `handler` on `addr` from a task that keeps trying to bind every 5 s while the address
/// is taken (as kube-proxy's healthz and metrics servers do: e.g. while kube-proxy itself still
/// holds 10256 during a migration), logging the first failure and the recovery.
pub fn serve_retrying(addr: SocketAddr, what: &'static str, handler: Handler) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut failed = false;
        loop {
            match TcpListener::bind(addr).await {
                Ok(listener) => {
                    info!(%addr, "serving {what}");
                    return accept_loop(listener, handler).await;
                }
                Err(e) => {
                    if !failed {
                        warn!(%addr, error = %e, "cannot serve {what} yet; retrying every 5 s");
                        failed = true;
                    }
                    tokio::time::sleep(std::time::Duration::from_secs(5)).await;
                }
            }
        }
    })
}

async fn accept_loop(listener: TcpListener, handler: Handler) {
    loop {
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                warn!(error = %e, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let handler = handler.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                let resp = handler(&req);
                async move { Ok::<_, Infallible>(resp) }
            });
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                debug!(error = %e, "http connection");
            }
        });
    }
}

fn response(status: StatusCode, content_type: &str, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    let h = r.headers_mut();
    if let Ok(v) = content_type.parse() {
        h.insert(header::CONTENT_TYPE, v);
    }
    h.insert(
        "X-Content-Type-Options",
        header::HeaderValue::from_static("nosniff"),
    );
    r
}

fn not_found() -> Response<Full<Bytes>> {
    response(
        StatusCode::NOT_FOUND,
        "text/plain",
        "404 page not found\n".into(),
    )
}

fn rfc3339(t: SystemTime) -> String {
    k8s_openapi::jiff::Timestamp::try_from(t).map_or_else(|_| String::new(), |t| t.to_string())
}

/// /healthz and /livez as kube-proxy answers them: 200 while no update has waited longer than
/// the health timeout, 503 otherwise; /healthz is also 503 while the node is being deleted.
pub fn health_handler(telemetry: Arc<Telemetry>) -> Handler {
    Arc::new(move |req| {
        let h = telemetry.health();
        let healthy = h.is_healthy(Instant::now());
        let last = h.last_updated.map(rfc3339).unwrap_or_default();
        let now = rfc3339(SystemTime::now());
        let (ok, body) = match req.uri().path() {
            "/healthz" => (
                healthy && h.node_eligible,
                format!(
                    "{{\"lastUpdated\": {last:?},\"currentTime\": {now:?}, \"nodeEligible\": {}}}",
                    h.node_eligible
                ),
            ),
            "/livez" => (
                healthy,
                format!("{{\"lastUpdated\": {last:?},\"currentTime\": {now:?}}}"),
            ),
            _ => return not_found(),
        };
        let status = if ok {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        };
        response(status, "application/json", body)
    })
}

/// /metrics in the Prometheus text format.
pub fn metrics_handler(telemetry: Arc<Telemetry>) -> Handler {
    Arc::new(move |req| {
        if req.uri().path() != "/metrics" || req.method() != Method::GET {
            return not_found();
        }
        response(
            StatusCode::OK,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            telemetry.encode(),
        )
    })
}

/// The health-check node ports: one listener per externalTrafficPolicy=Local LoadBalancer
/// Service with a healthCheckNodePort, answering as kube-proxy's service health server does:
/// 200 with the number of local ready endpoints, 503 when there are none (or the agent is
/// unhealthy), so a cloud load balancer skips this node.
pub struct HealthCheckServers {
    telemetry: Arc<Telemetry>,
    state: Arc<Mutex<BTreeMap<u16, HealthCheck>>>,
    listeners: BTreeMap<u16, JoinHandle<()>>,
}

impl HealthCheckServers {
    pub fn new(telemetry: Arc<Telemetry>) -> Self {
        Self {
            telemetry,
            state: Arc::default(),
            listeners: BTreeMap::new(),
        }
    }

    /// Opens listeners for new ports, closes those no longer wanted and updates the counts.
    pub async fn update(&mut self, checks: Vec<HealthCheck>) {
        let wanted: BTreeMap<u16, HealthCheck> = checks.into_iter().map(|c| (c.port, c)).collect();
        *self.state.lock().unwrap_or_else(|e| e.into_inner()) = wanted.clone();
        self.listeners.retain(|port, task| {
            let keep = wanted.contains_key(port);
            if !keep {
                task.abort();
                info!(port, "health-check node port closed");
            }
            keep
        });
        for (port, check) in &wanted {
            if self.listeners.contains_key(port) {
                continue;
            }
            let addr = SocketAddr::from(([0, 0, 0, 0], *port));
            match serve(addr, self.handler(*port)).await {
                Ok(task) => {
                    info!(port, service = %check.service, "health-check node port open");
                    self.listeners.insert(*port, task);
                }
                Err(e) => warn!(port, service = %check.service, error = %e,
                    "health-check node port not opened; will retry at the next sync"),
            }
        }
    }

    fn handler(&self, port: u16) -> Handler {
        let state = self.state.clone();
        let telemetry = self.telemetry.clone();
        Arc::new(move |_req| {
            let check = state
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(&port)
                .cloned();
            let Some(check) = check else {
                return not_found();
            };
            let healthy = telemetry.health().is_healthy(Instant::now());
            let body = format!(
                "{{\"service\":{{\"namespace\":{:?},\"name\":{:?}}},\"localEndpoints\":{},\"serviceProxyHealthy\":{}}}",
                check.namespace, check.name, check.local_endpoints, healthy
            );
            let status = if check.local_endpoints > 0 && healthy {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            let mut r = response(status, "application/json", body);
            if let Ok(v) = check.local_endpoints.to_string().parse() {
                r.headers_mut()
                    .insert("X-Load-Balancing-Endpoint-Weight", v);
            }
            r
        })
    }
}
