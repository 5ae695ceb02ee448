//! Clients for Keepsake's services: a tuned channel and bearer-token auth.

use keepsake_proto::v1::accounts_client::AccountsClient;
use keepsake_proto::v1::chunk_store_client::ChunkStoreClient;
use keepsake_proto::v1::library_client::LibraryClient;
use keepsake_store::ChunkId;
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Status};

/// The generated message types, for callers that build requests by hand.
pub use keepsake_proto::v1 as pb;

/// The metadata key every client sends its version in.
pub const CLIENT_VERSION_HEADER: &str = "x-keepsake-client-version";

/// Where Keepsake's own clients send the access token (the bare token), beside the standard
/// `authorization: Bearer <token>` that every client may use. HTTP/2 never enters
/// `authorization` into its header compression table, so it costs ~250 bytes on every
/// call; this header is entered once per connection and costs two bytes after that —
/// a third of what a photo edit puts on the wire. Compression attacks on an indexed value
/// need the attacker to guess the whole value (HPACK matches whole fields), and a signed
/// token cannot be guessed.
pub const TOKEN_HEADER: &str = "x-keepsake-token";

/// Why a channel could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// Plaintext to another machine would expose tokens and photos on the network.
    #[error(
        "refusing plaintext gRPC to {0}: it is not this machine; use the server's https:// address with its fingerprint"
    )]
    PlaintextOffLoopback(String),
    /// The URL or the connection failed.
    #[error(transparent)]
    Transport(#[from] tonic::transport::Error),
    /// TLS set-up failed.
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
}

/// The channel settings every client uses: large HTTP/2 frames and windows, no Nagle
/// delay, keepalives that notice a dead link, bounded connect time.
pub fn tuned(endpoint: Endpoint) -> Endpoint {
    endpoint
        .connect_timeout(Duration::from_secs(5))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(30))
        .keep_alive_timeout(Duration::from_secs(20))
        // A link that died silently (a partition, a NAT that forgot the flow) holds no
        // call open for long: calls time out one by one. Pinging only while calls are
        // open would then never notice, and sync would stall until TCP gave up, many
        // minutes later. Found by the simulation (seed 29).
        .keep_alive_while_idle(true)
        .initial_stream_window_size(8 << 20)
        .initial_connection_window_size(16 << 20)
        .max_frame_size(1 << 20)
}

/// Whether `url`'s host is this machine (`localhost` or a loopback address).
pub fn is_loopback(url: &str) -> bool {
    let Ok(uri) = url.parse::<http::Uri>() else {
        return false;
    };
    match uri.host() {
        Some("localhost") => true,
        Some(host) => host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback()),
        None => false,
    }
}

/// Connects to a plaintext `http://` server on this machine.
pub async fn connect(url: &str) -> Result<Channel, ConnectError> {
    if !is_loopback(url) {
        return Err(ConnectError::PlaintextOffLoopback(url.to_string()));
    }
    connect_plaintext_anywhere(url).await
}

/// Connects in plaintext even off this machine — only for networks the user vouches for.
pub async fn connect_plaintext_anywhere(url: &str) -> Result<Channel, ConnectError> {
    Ok(tuned(Endpoint::from_shared(url.to_string())?)
        .connect()
        .await?)
}

/// Why a plaintext (`http://`) server gives no gRPC answer, when the reason is that it
/// serves TLS: a sentence saying what to use instead.
pub async fn plaintext_problem(url: &str) -> Option<String> {
    let host_port = url.strip_prefix("http://")?.trim_end_matches('/');
    crate::tls::speaks_tls(host_port).await.then(|| {
        format!(
            "the server at {url} speaks TLS: use https://{host_port} with the certificate \
             fingerprint `keepsake serve` printed (--fingerprint)"
        )
    })
}

/// Connects to an `https://` server whose certificate has the pinned fingerprint.
pub async fn connect_tls(url: &str, fingerprint: &str) -> Result<Channel, ConnectError> {
    Ok(crate::tls::connect_pinned(url, fingerprint).await?)
}

/// Adds the access token (when there is one, in [`TOKEN_HEADER`]) and the client version
/// to every call.
#[derive(Clone)]
pub struct BearerAuth {
    // Shared by every clone (each client holds one), so a token refreshed during a long
    // upload reaches the calls already set up with the old one.
    header: Option<Arc<RwLock<MetadataValue<Ascii>>>>,
    version: MetadataValue<Ascii>,
}

/// The token a [`BearerAuth`] sends, replaceable while calls are made with it.
#[derive(Clone)]
pub struct TokenCell(Arc<RwLock<MetadataValue<Ascii>>>);

impl TokenCell {
    /// Every call made from now on carries `token`.
    pub fn set(&self, token: &str) {
        if let Ok(value) = token.parse() {
            *self.0.write().unwrap_or_else(|p| p.into_inner()) = value;
        }
    }
}

impl BearerAuth {
    /// Auth for `token`; panics only if the token holds characters HTTP headers cannot carry.
    pub fn new(token: &str) -> Self {
        Self::anonymous().token(token)
    }

    /// No token (sign-in and enrolment), only the client version.
    pub fn anonymous() -> Self {
        Self::with_version(env!("CARGO_PKG_VERSION"))
    }

    /// No token, and a client version of the caller's choosing.
    pub fn with_version(version: &str) -> Self {
        Self {
            header: None,
            version: version
                .parse()
                .unwrap_or_else(|_| MetadataValue::from_static("0.0.0")),
        }
    }

    /// This auth with `token` attached.
    pub fn token(mut self, token: &str) -> Self {
        self.header = Some(Arc::new(RwLock::new(
            token.parse().expect("tokens are printable ASCII"),
        )));
        self
    }

    /// The cell to replace the token through, if this auth has one.
    pub fn cell(&self) -> Option<TokenCell> {
        self.header.clone().map(TokenCell)
    }
}

impl Interceptor for BearerAuth {
    fn call(&mut self, mut req: Request<()>) -> Result<Request<()>, Status> {
        if let Some(header) = &self.header {
            let value = header.read().unwrap_or_else(|p| p.into_inner()).clone();
            req.metadata_mut().insert(TOKEN_HEADER, value);
        }
        req.metadata_mut()
            .insert(CLIENT_VERSION_HEADER, self.version.clone());
        Ok(req)
    }
}

/// A DeviceControl client presenting the device's control secret.
pub type ControlApi = keepsake_proto::v1::device_control_client::DeviceControlClient<
    InterceptedService<Channel, ControlSecret>,
>;

/// Adds the DeviceControl secret (`DATA/control-secret`) to every call.
#[derive(Clone)]
pub struct ControlSecret(MetadataValue<Ascii>);

impl Interceptor for ControlSecret {
    fn call(&mut self, mut req: Request<()>) -> Result<Request<()>, Status> {
        req.metadata_mut()
            .insert(crate::CONTROL_SECRET_HEADER, self.0.clone());
        Ok(req)
    }
}

/// A DeviceControl client over `channel`, with the secret read from the agent's data
/// directory.
pub fn control_client(channel: Channel, data_dir: &std::path::Path) -> std::io::Result<ControlApi> {
    let secret = std::fs::read_to_string(data_dir.join(keepsake_device::CONTROL_SECRET))?;
    let value = secret
        .trim()
        .parse()
        .map_err(|_| std::io::Error::other("the control secret is not printable ASCII"))?;
    Ok(
        keepsake_proto::v1::device_control_client::DeviceControlClient::with_interceptor(
            channel,
            ControlSecret(value),
        )
        .max_encoding_message_size(80 << 20),
    )
}

/// The generated Library client with auth attached.
pub type LibraryApi = LibraryClient<InterceptedService<Channel, BearerAuth>>;

/// A Library client over `channel` acting with `auth`.
pub fn library_client(channel: Channel, auth: BearerAuth) -> LibraryApi {
    LibraryClient::with_interceptor(channel, auth)
        .max_decoding_message_size(16 << 20)
        .max_encoding_message_size(16 << 20)
}

/// The generated Accounts client with auth attached.
pub type AccountsApi = AccountsClient<InterceptedService<Channel, BearerAuth>>;

/// An Accounts client over `channel` acting with `auth`.
pub fn accounts_client(channel: Channel, auth: BearerAuth) -> AccountsApi {
    AccountsClient::with_interceptor(channel, auth)
}

/// The generated ChunkStore client with auth attached.
pub type StoreClient = ChunkStoreClient<InterceptedService<Channel, BearerAuth>>;

/// A ChunkStore client over `channel` acting with `token`.
pub fn store_client(channel: Channel, token: &str) -> StoreClient {
    ChunkStoreClient::with_interceptor(channel, BearerAuth::new(token))
        .max_decoding_message_size(16 << 20)
        .max_encoding_message_size(16 << 20)
}

/// Every row of the account's feed, page by page from the start.
pub async fn whole_feed(lib: &mut LibraryApi) -> Result<Vec<pb::Change>, Status> {
    let (mut cursor, mut all) = (0, Vec::new());
    loop {
        let page = lib
            .list_changes(pb::ListChangesRequest {
                cursor,
                page_size: 1000,
            })
            .await?
            .into_inner();
        all.extend(page.changes);
        cursor = page.cursor;
        if !page.more {
            return Ok(all);
        }
    }
}

/// Whether trying the same call again can succeed without anyone acting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    /// A passing condition (connection lost, deadline, shed load): retry after the hint,
    /// or with backoff when there is none.
    Transient {
        /// The server's hint for when to retry.
        after: Option<Duration>,
    },
    /// Retrying the same call fails the same way until something changes (the user frees
    /// space, updates the app, signs in again, or the request is fixed).
    Permanent,
}

/// A failed call, typed: the retry class, the stable reason and its details, so no
/// caller ever parses a message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{} ({code:?}): {}", .details.reason, .details.message)]
pub struct CallError {
    /// The gRPC code.
    pub code: tonic::Code,
    /// Whether to retry.
    pub retry: Retry,
    details: Box<CallDetails>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct CallDetails {
    reason: String,
    message: String,
    metadata: std::collections::HashMap<String, String>,
    missing_chunks: Vec<ChunkId>,
}

impl CallError {
    /// Whether a retry can succeed without anyone acting.
    pub fn is_transient(&self) -> bool {
        matches!(self.retry, Retry::Transient { .. })
    }

    /// The stable UPPER_SNAKE reason (`QUOTA_EXCEEDED`, `CLIENT_TOO_OLD`, …); for failures
    /// below gRPC (a cut connection) the code's name.
    pub fn reason(&self) -> &str {
        &self.details.reason
    }

    /// The server's sentence (or the transport's).
    pub fn message(&self) -> &str {
        &self.details.message
    }

    /// `ErrorInfo` metadata: `limit_bytes`, `required_version`, `retry_after_ms`, …
    pub fn metadata(&self) -> &std::collections::HashMap<String, String> {
        &self.details.metadata
    }

    /// Chunks the account must send before committing (reason MISSING_CHUNKS).
    pub fn missing_chunks(&self) -> &[ChunkId] {
        &self.details.missing_chunks
    }
}

/// `DeadlineExceeded` → `DEADLINE_EXCEEDED`, the style of every other reason.
fn upper_snake(camel: &str) -> String {
    let mut out = String::new();
    for (i, c) in camel.chars().enumerate() {
        if c.is_uppercase() && i > 0 {
            out.push('_');
        }
        out.push(c.to_ascii_uppercase());
    }
    out
}

/// Reasons that clear by themselves.
const TRANSIENT_REASONS: &[&str] = &[
    "RATE_LIMITED",
    "OVERLOADED",
    "UNAVAILABLE",
    "INDEX_IO",
    "TRANSFER_STALLED",
    // The server's disk, not the plan: it clears when its administrator makes room.
    "STORAGE_FULL",
    "TOO_MANY_ATTEMPTS",
];

impl From<tonic::Status> for CallError {
    fn from(status: tonic::Status) -> Self {
        use tonic::Code;
        use tonic_types::StatusExt;
        let info = status.get_details_error_info();
        let retry_after = status.get_details_retry_info().and_then(|r| r.retry_delay);
        let missing_chunks = status
            .get_details_precondition_failure()
            .map(|f| {
                f.violations
                    .iter()
                    .filter(|v| v.r#type == "MISSING_CHUNK")
                    .filter_map(|v| {
                        let bytes = hex::decode(&v.subject).ok()?;
                        ChunkId::from_slice(&bytes).ok()
                    })
                    .collect()
            })
            .unwrap_or_default();
        let reason = info
            .as_ref()
            .map(|i| i.reason.clone())
            .unwrap_or_else(|| upper_snake(&format!("{:?}", status.code())));
        let transient = match status.code() {
            Code::Unavailable | Code::DeadlineExceeded | Code::Aborted | Code::Cancelled => true,
            // The server's own shedding and its disk are transient; an exhausted plan waits for a person.
            Code::ResourceExhausted => TRANSIENT_REASONS.contains(&reason.as_str()),
            // Without a Keepsake reason these come from below gRPC: a reset stream, a cut connection.
            Code::Unknown | Code::Internal => info.is_none(),
            _ => false,
        };
        Self {
            code: status.code(),
            retry: if transient {
                Retry::Transient { after: retry_after }
            } else {
                Retry::Permanent
            },
            details: Box::new(CallDetails {
                reason,
                message: status.message().to_string(),
                metadata: info.map(|i| i.metadata).unwrap_or_default(),
                missing_chunks,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ApiError, to_status};
    use keepsake_library::LibraryError as L;
    use keepsake_store::StoreError;

    #[tokio::test]
    async fn plaintext_is_refused_off_this_machine() {
        for url in ["http://192.168.1.20:50051", "http://photos.example:50051"] {
            assert!(matches!(
                connect(url).await,
                Err(ConnectError::PlaintextOffLoopback(_))
            ));
        }
        for url in ["http://127.0.0.1:1", "http://localhost:1", "http://[::1]:1"] {
            assert!(is_loopback(url), "{url}");
        }
    }

    #[test]
    fn transient_and_permanent_errors_are_told_apart_without_reading_messages() {
        let transient: Vec<tonic::Status> = vec![
            to_status(&ApiError::RateLimited { retry_after_ms: 20 }),
            to_status(&ApiError::Overloaded { retry_after_ms: 20 }),
            to_status(&ApiError::Unavailable("restarting".into())),
            tonic::Status::unavailable("connection refused"),
            tonic::Status::deadline_exceeded("too slow"),
            tonic::Status::unknown("transport error"),
            tonic::Status::internal("h2 protocol error: stream reset"),
            tonic::Status::cancelled("the connection was reset"),
        ];
        for status in transient {
            let err = CallError::from(status.clone());
            assert!(err.is_transient(), "{status:?}");
        }
        assert_eq!(
            CallError::from(tonic::Status::deadline_exceeded("slow")).reason(),
            "DEADLINE_EXCEEDED"
        );
        let shed = CallError::from(to_status(&ApiError::RateLimited { retry_after_ms: 20 }));
        assert_eq!(
            shed.retry,
            Retry::Transient {
                after: Some(Duration::from_millis(20))
            }
        );
        let permanent: Vec<ApiError> = vec![
            L::QuotaExceeded {
                used_bytes: 5,
                reserved_bytes: 0,
                needed_bytes: 1,
                limit_bytes: 5,
            }
            .into(),
            L::ClientTooOld {
                required: "2.0.0".into(),
                got: "1.0.0".into(),
            }
            .into(),
            L::ClockSkew { ahead_ms: 600_000 }.into(),
            ApiError::Unauthenticated("expired".into()),
            ApiError::field("kind", "must be PHOTO or VIDEO"),
            L::NotFound {
                kind: "asset",
                id: "x".into(),
            }
            .into(),
        ];
        for err in permanent {
            let call = CallError::from(to_status(&err));
            assert_eq!(call.retry, Retry::Permanent, "{err}");
            assert_eq!(
                Some(call.reason().to_string()),
                crate::reason_of(&to_status(&err))
            );
        }
        // The server's full disk clears when its administrator makes room: the device waits
        // the hint and tries again. It used to be permanent, and each pass re-sent at once.
        let full = CallError::from(to_status(&StoreError::StorageFull.into()));
        assert_eq!(
            full.retry,
            Retry::Transient {
                after: Some(Duration::from_millis(15_000))
            }
        );
        assert_eq!(full.reason(), "STORAGE_FULL");
        let missing = ChunkId::of(b"gone");
        let call = CallError::from(to_status(&StoreError::MissingChunks(vec![missing]).into()));
        assert_eq!(call.missing_chunks(), &[missing]);
        assert_eq!(call.metadata()["missing_count"], "1");
    }
}
