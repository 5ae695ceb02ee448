//! The door every call passes: client version, access token, per-caller rate and
//! concurrency limits, and load shedding — one async tower layer in front of every service.
//!
//! Health and reflection are open. Accounts' sign-in calls (SignIn, EnrollDevice,
//! RefreshToken) need no token and are limited per client address. Everything else
//! needs a valid token and is limited per device (or per account for password
//! sign-ins). Over a limit the answer is immediate — RESOURCE_EXHAUSTED with reason
//! RATE_LIMITED or OVERLOADED and a `retry_after_ms` — never a queue that grows.

use crate::ApiError;
use crate::auth::{Authenticator, Identity};
use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tonic::body::Body;
use tonic::server::NamedService;

/// Limits applied by the guard.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Sustained calls per second per caller.
    pub calls_per_second: f64,
    /// Calls a caller may make in a burst.
    pub burst: f64,
    /// Calls one caller may have in flight (streams count until they end).
    pub concurrent_per_caller: usize,
    /// Calls in flight across all callers before new ones are shed.
    pub concurrent_total: usize,
    /// Open WatchChanges streams one caller may hold.
    pub watches_per_caller: usize,
    /// Open WatchChanges streams across all callers before new ones are shed. A watch
    /// waits idle for hours: counted with the calls that work, a thousand watching phones
    /// would have shut every upload out.
    pub watches_total: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            calls_per_second: 200.0,
            burst: 400.0,
            concurrent_per_caller: 32,
            concurrent_total: 1024,
            watches_per_caller: 4,
            watches_total: 20_000,
        }
    }
}

/// Calls that need no token.
const SIGN_IN_PATHS: &[&str] = &[
    "/keepsake.v1.Accounts/SignIn",
    "/keepsake.v1.Accounts/EnrollDevice",
    "/keepsake.v1.Accounts/RefreshToken",
];

/// What a call costs from its caller's bucket: one, except a batch of up to 1000 edits,
/// whose one transaction is worth about that many single calls of server time, and a
/// report of corrupt chunks, each of which the store reads and hashes again.
fn cost_of(path: &str) -> f64 {
    match path {
        "/keepsake.v1.Library/ApplyEdits" => BATCH_COST,
        "/keepsake.v1.Library/ReportCorruptChunks" => REPORT_COST,
        _ => 1.0,
    }
}

/// A ReportCorruptChunks call's cost in calls: one per chunk it may name, so a device that
/// reports sound chunks on purpose makes the store re-read a few hundred a second at most,
/// never its whole disk (a real one reports the chunk a download met, every few seconds).
#[allow(clippy::cast_precision_loss)]
const REPORT_COST: f64 = crate::library_service::REPORT_MAX_IDS as f64;

/// An ApplyEdits call's cost in calls: at the default 200 calls/s a device may apply some
/// 10,000 edits a second, not 200,000.
const BATCH_COST: f64 = 10.0;

fn is_open(path: &str) -> bool {
    path.starts_with("/grpc.health.") || path.starts_with("/grpc.reflection.")
}

struct Bucket {
    tokens: f64,
    at_ms: i64,
}

struct State {
    auth: Authenticator,
    limits: Limits,
    buckets: Mutex<HashMap<String, Bucket>>,
    per_caller: Mutex<HashMap<String, Arc<Semaphore>>>,
    total: Arc<Semaphore>,
    watches_per_caller: Mutex<HashMap<String, Arc<Semaphore>>>,
    watches: Arc<Semaphore>,
}

/// The one streaming call that mostly waits.
const WATCH_PATH: &str = "/keepsake.v1.Library/WatchChanges";

/// The tower layer; add it with `Server::builder().layer(..)`.
#[derive(Clone)]
pub struct GuardLayer {
    state: Arc<State>,
}

impl GuardLayer {
    /// A guard checking tokens with `auth` and enforcing `limits`.
    pub fn new(auth: Authenticator, limits: Limits) -> Self {
        let total = Arc::new(Semaphore::new(limits.concurrent_total));
        let watches = Arc::new(Semaphore::new(limits.watches_total));
        Self {
            state: Arc::new(State {
                auth,
                limits,
                buckets: Mutex::new(HashMap::new()),
                per_caller: Mutex::new(HashMap::new()),
                total,
                watches_per_caller: Mutex::new(HashMap::new()),
                watches,
            }),
        }
    }
}

impl<S> tower::Layer<S> for GuardLayer {
    type Service = Guard<S>;
    fn layer(&self, inner: S) -> Guard<S> {
        Guard {
            inner,
            state: self.state.clone(),
        }
    }
}

/// The service the layer wraps around the router.
#[derive(Clone)]
pub struct Guard<S> {
    inner: S,
    state: Arc<State>,
}

impl<S: NamedService> NamedService for Guard<S> {
    const NAME: &'static str = S::NAME;
}

/// A refusal, already shaped as a gRPC response.
fn refuse(err: ApiError) -> http::Response<Body> {
    tonic::Status::from(err).into_http()
}

impl State {
    /// Takes `cost` calls from the caller's bucket, or says how long until they are there.
    fn take_tokens(&self, key: &str, cost: f64) -> Result<(), u64> {
        let now = self.auth.now_ms();
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if buckets.len() > 100_000 {
            // Idle callers' full buckets carry no information; forget them.
            let burst = self.limits.burst;
            let rate = self.limits.calls_per_second;
            buckets.retain(|_, b| b.tokens + (now - b.at_ms) as f64 / 1000.0 * rate < burst);
        }
        let bucket = buckets.entry(key.to_string()).or_insert(Bucket {
            tokens: self.limits.burst,
            at_ms: now,
        });
        let refill = (now - bucket.at_ms).max(0) as f64 / 1000.0 * self.limits.calls_per_second;
        bucket.tokens = (bucket.tokens + refill).min(self.limits.burst);
        bucket.at_ms = now;
        // A limit set below one call's cost still lets that call through once full.
        let cost = cost.min(self.limits.burst);
        if bucket.tokens >= cost {
            bucket.tokens -= cost;
            Ok(())
        } else {
            let wait = (cost - bucket.tokens) / self.limits.calls_per_second * 1000.0;
            Err(wait.ceil() as u64)
        }
    }

    fn caller_permit(&self, key: &str, watch: bool) -> Option<OwnedSemaphorePermit> {
        let (callers, capacity) = if watch {
            (&self.watches_per_caller, self.limits.watches_per_caller)
        } else {
            (&self.per_caller, self.limits.concurrent_per_caller)
        };
        let semaphore = {
            let mut map = callers.lock().unwrap_or_else(|p| p.into_inner());
            if map.len() > 100_000 {
                map.retain(|_, s| s.available_permits() < capacity);
            }
            map.entry(key.to_string())
                .or_insert_with(|| Arc::new(Semaphore::new(capacity)))
                .clone()
        };
        semaphore.try_acquire_owned().ok()
    }

    /// Everything the door checks; on success, the identity (if any) and the permits to hold.
    fn admit<B>(
        &self,
        req: &http::Request<B>,
    ) -> Result<(Option<Identity>, [OwnedSemaphorePermit; 2]), ApiError> {
        let path = req.uri().path();
        self.auth.check_version(req.headers())?;
        let identity = self.auth.identify(path, req.headers())?;
        let key = match &identity {
            Some(who) if req.headers().contains_key(crate::auth::SERVICE_HEADER) => {
                format!("service:{}", who.account)
            }
            Some(who) => match &who.device {
                Some(device) => format!("device:{device}"),
                None => format!("account:{}", who.account),
            },
            None if SIGN_IN_PATHS.contains(&path) => {
                use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
                let ext = req.extensions();
                let peer = ext
                    .get::<TcpConnectInfo>()
                    .or_else(|| {
                        ext.get::<TlsConnectInfo<TcpConnectInfo>>()
                            .map(|t| t.get_ref())
                    })
                    .and_then(|c| c.remote_addr())
                    .map(|a| a.ip().to_string())
                    .unwrap_or_default();
                // A device trading its token (cheap, no password) has a bucket of its own:
                // a password flood from the same address never slows it.
                if path == "/keepsake.v1.Accounts/RefreshToken" {
                    format!("refresh:{peer}")
                } else {
                    format!("address:{peer}")
                }
            }
            None => {
                return Err(ApiError::Unauthenticated(
                    "no access token: sign in, then send `authorization: Bearer <token>`".into(),
                ));
            }
        };
        self.take_tokens(&key, cost_of(path))
            .map_err(|retry_after_ms| ApiError::RateLimited { retry_after_ms })?;
        let watch = path == WATCH_PATH;
        let caller = self
            .caller_permit(&key, watch)
            .ok_or(ApiError::Overloaded {
                retry_after_ms: 100,
            })?;
        let total = if watch { &self.watches } else { &self.total };
        let total = total
            .clone()
            .try_acquire_owned()
            .map_err(|_| ApiError::Overloaded {
                retry_after_ms: 250,
            })?;
        Ok((identity, [caller, total]))
    }
}

impl<S, B> tower::Service<http::Request<B>> for Guard<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<Body>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    B: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        if is_open(req.uri().path()) {
            return Box::pin(self.inner.call(req));
        }
        let (identity, permits) = match self.state.admit(&req) {
            Ok(admitted) => admitted,
            Err(err) => {
                tracing::debug!(path = %req.uri().path(), reason = err_reason(&err), "call refused at the door");
                return Box::pin(std::future::ready(Ok(refuse(err))));
            }
        };
        if let Some(identity) = identity {
            req.extensions_mut().insert(identity);
        }
        // The ready service is taken and a fresh clone left in its place (tower's rule
        // for services called from a future).
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        Box::pin(async move {
            let mut response = inner.call(req).await?;
            reclassify_undecodable(response.headers_mut());
            // Streams hold their permits until the body ends, so a caller's open streams count.
            Ok(response.map(|body| {
                Body::new(PermitBody {
                    inner: body,
                    _permits: permits,
                })
            }))
        })
    }
}

/// tonic answers a request it cannot decode with INTERNAL, as if the server were at fault.
/// The caller sent bytes that are not the message the method takes, so the answer is
/// INVALID_ARGUMENT (a bad-request violation on `request`), keeping the decoder's words.
fn reclassify_undecodable(headers: &mut http::HeaderMap) {
    // tonic's own parser percent-decodes the message; decoding only spaces by hand left
    // other escapes in, to be escaped a second time on the way out.
    let Some(status) = tonic::Status::from_header_map(headers) else {
        return;
    };
    let Some(said) = status.message().strip_prefix("failed to decode") else {
        return;
    };
    if status.code() != tonic::Code::Internal {
        return;
    }
    let status = tonic::Status::from(ApiError::InvalidField {
        field: "request",
        why: format!(
            "the request is not a valid message for this method ({})",
            said.trim_start_matches(" Protobuf message: ")
        ),
    });
    headers.remove("grpc-status-details-bin");
    let _ = status.add_header(headers);
}

fn err_reason(err: &ApiError) -> &'static str {
    match err {
        ApiError::RateLimited { .. } => "RATE_LIMITED",
        ApiError::Overloaded { .. } => "OVERLOADED",
        ApiError::Unauthenticated(_) => "UNAUTHENTICATED",
        _ => "REFUSED",
    }
}

/// A response body that releases the call's permits when it is finished or dropped.
struct PermitBody {
    inner: Body,
    _permits: [OwnedSemaphorePermit; 2],
}

impl HttpBody for PermitBody {
    type Data = Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let mut polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &mut polled
            && let Some(trailers) = frame.trailers_mut()
        {
            reclassify_undecodable(trailers);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_report_of_corrupt_chunks_costs_a_call_per_chunk_it_may_name() {
        assert_eq!(cost_of("/keepsake.v1.Library/ListChanges"), 1.0);
        assert_eq!(cost_of("/keepsake.v1.Library/ApplyEdits"), BATCH_COST);
        #[allow(clippy::cast_precision_loss)]
        let per_chunk = crate::library_service::REPORT_MAX_IDS as f64;
        assert_eq!(
            cost_of("/keepsake.v1.Library/ReportCorruptChunks"),
            per_chunk
        );
        // The bucket's burst still lets a device report the chunk a download met.
        assert!(per_chunk < Limits::default().burst);
    }
}
