//! The server builder every Keepsake service is served through.

use crate::accounts_service::AccountsService;
use crate::auth::Authenticator;
use crate::delta_service::{DeltaService, DeltaStore};
use crate::guard::{GuardLayer, Limits};
use crate::library_service::{ChangeNotifier, LibraryService};
use crate::policy_service::PolicyService;
use crate::store_service::StoreService;
use keepsake_delta::rsync::RsyncLimits;
use keepsake_library::Cloud;
use keepsake_policy::PolicyConfig;
use keepsake_proto::v1::accounts_server::AccountsServer;
use keepsake_proto::v1::chunk_store_server::ChunkStoreServer;
use keepsake_proto::v1::delta_server::DeltaServer;
use keepsake_proto::v1::library_server::LibraryServer;
use keepsake_proto::v1::policy_server::PolicyServer;
use keepsake_store::Store;
use std::future::Future;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::transport::{Identity, Server, ServerTlsConfig};

/// Largest Policy or Accounts request or response: a few hundred bytes each.
const SMALL_MESSAGE_BYTES: usize = 64 << 10;

/// Wire limits and tuning.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Largest message decoded or encoded; bigger ones are refused before being buffered.
    pub max_message_bytes: usize,
    /// PutChunks makes a batch durable (one pack, one fsync) once this much arrived.
    pub batch_bytes: usize,
    /// HTTP/2 frame size; large frames roughly double streaming throughput on loopback.
    pub http2_frame_bytes: u32,
    /// Feed watchers re-read the feed this often even without a notification.
    pub watch_poll: std::time::Duration,
    /// Per-caller rate and concurrency limits, and the server-wide concurrency bound.
    pub limits: Limits,
    /// Serve TLS with this certificate; `None` serves plaintext (for loopback).
    pub tls: Option<crate::tls::CertifiedKey>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            max_message_bytes: 16 << 20,
            batch_bytes: 8 << 20,
            http2_frame_bytes: 1 << 20,
            watch_poll: std::time::Duration::from_secs(5),
            limits: Limits::default(),
            tls: None,
        }
    }
}

/// Which services this process serves.
#[derive(Clone, Default)]
pub struct Services {
    /// The chunk store, if served here.
    pub store: Option<Arc<Store>>,
    /// The policy service and its configuration, if served here.
    pub policy: Option<PolicyConfig>,
    /// Whether to serve the delta service (it works against `remote_store` when set, else
    /// against `store`, one of which must be set).
    pub delta: bool,
    /// A store in another process, for the delta service (the library reaches it through
    /// its own `ChunkStore`).
    pub remote_store: Option<Arc<dyn DeltaStore>>,
    /// The library and accounts, if served here.
    pub cloud: Option<Arc<Cloud>>,
    /// Where library changes are announced to feed watchers.
    pub changes: ChangeNotifier,
}

/// Serves `services` on `listener` until `shutdown` resolves.
///
/// Every call passes the [`GuardLayer`]: health and reflection (v1 and v1alpha) are
/// open; every Keepsake call has its client version and access token checked (Accounts'
/// sign-in calls need no token) and is rate- and concurrency-limited per caller.
pub async fn serve(
    listener: TcpListener,
    services: Services,
    tokens: Authenticator,
    config: ServerConfig,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), tonic::transport::Error> {
    // tonic does not apply tcp_nodelay to sockets from serve_with_incoming; small
    // messages stall behind Nagle's algorithm without it.
    let incoming = TcpListenerStream::new(listener).map(|conn| {
        conn.inspect(|s| {
            let _ = s.set_nodelay(true);
        })
    });
    serve_connections(incoming, services, tokens, config, shutdown).await
}

/// Serves `services` on connections from any source — the simulation's network, say —
/// exactly as [`serve`] does on a TCP listener.
pub async fn serve_connections<I, IO, IE>(
    incoming: I,
    services: Services,
    tokens: Authenticator,
    config: ServerConfig,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), tonic::transport::Error>
where
    I: tokio_stream::Stream<Item = Result<IO, IE>>,
    IO: tokio::io::AsyncRead
        + tokio::io::AsyncWrite
        + tonic::transport::server::Connected
        + Unpin
        + Send
        + 'static,
    IE: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let (reporter, health) = tonic_health::server::health_reporter();
    // Reflection lists only what this process serves (it once listed DeviceControl, which
    // only an agent serves, so a client found it and got UNIMPLEMENTED).
    let mut served = vec!["grpc.health.v1.Health"];
    let delta_store: Option<Arc<dyn DeltaStore>> = match (&services.remote_store, &services.store) {
        _ if !services.delta => None,
        (Some(remote), _) => Some(remote.clone()),
        (None, Some(store)) => Some(store.clone()),
        (None, None) => None,
    };
    if delta_store.is_some() {
        served.push("keepsake.v1.Delta");
    }
    if services.store.is_some() {
        served.push("keepsake.v1.ChunkStore");
    }
    if services.policy.is_some() {
        served.push("keepsake.v1.Policy");
    }
    if services.cloud.is_some() {
        served.extend(["keepsake.v1.Library", "keepsake.v1.Accounts"]);
    }
    let reflection = || {
        let mut builder = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(keepsake_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET);
        for name in &served {
            builder = builder.with_service_name(*name);
        }
        builder
    };
    let reflection_v1 = reflection()
        .build_v1()
        .expect("the committed descriptor set is valid");
    let reflection_v1alpha = reflection()
        .build_v1alpha()
        .expect("the committed descriptor set is valid");
    let mut builder = Server::builder();
    if let Some(tls) = &config.tls {
        // tonic's server TLS takes rustls's process-wide provider; with both ring (ours)
        // and aws-lc-rs (object_store's) compiled in, rustls cannot pick one and panics at
        // the first handshake. Ours is ring, as on the client side; a provider the
        // embedding program installed first is kept.
        let _ = rustls::crypto::CryptoProvider::install_default(
            rustls::crypto::ring::default_provider(),
        );
        builder = builder.tls_config(
            ServerTlsConfig::new().identity(Identity::from_pem(&tls.cert_pem, &tls.key_pem)),
        )?;
    }
    let mut router = builder
        .layer(GuardLayer::new(tokens, config.limits.clone()))
        .max_frame_size(config.http2_frame_bytes)
        // hyper's 16 KiB default answered a longer authorization header with HTTP 431 and
        // no gRPC status, and reset the connection above 64 KiB; up to 1 MiB reaches the
        // guard, which says what is wrong.
        .http2_max_header_list_size(1 << 20)
        .initial_stream_window_size(8 << 20)
        .initial_connection_window_size(16 << 20)
        .http2_keepalive_interval(Some(std::time::Duration::from_secs(30)))
        .trace_fn(|req| {
            tracing::info_span!(
                "rpc",
                method = %req.uri().path(),
                account = tracing::field::Empty,
                device = tracing::field::Empty
            )
        })
        .add_service(health)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha);
    if let Some(store) = delta_store {
        reporter.set_serving::<DeltaServer<DeltaService>>().await;
        let service = DeltaServer::new(DeltaService::new(store, RsyncLimits::default()))
            .max_decoding_message_size(config.max_message_bytes)
            .max_encoding_message_size(config.max_message_bytes);
        router = router.add_service(service);
    }
    if let Some(store) = services.store {
        reporter
            .set_serving::<ChunkStoreServer<StoreService>>()
            .await;
        let service = ChunkStoreServer::new(StoreService::new(store, config.batch_bytes))
            .max_decoding_message_size(config.max_message_bytes)
            .max_encoding_message_size(config.max_message_bytes);
        router = router.add_service(service);
    }
    if let Some(policy_config) = services.policy {
        reporter.set_serving::<PolicyServer<PolicyService>>().await;
        // Snapshots are a few hundred bytes; nothing bigger has any business here.
        let service = PolicyServer::new(PolicyService::new(policy_config))
            .max_decoding_message_size(SMALL_MESSAGE_BYTES)
            .max_encoding_message_size(SMALL_MESSAGE_BYTES);
        router = router.add_service(service);
    }
    if let Some(cloud) = services.cloud {
        reporter
            .set_serving::<LibraryServer<LibraryService>>()
            .await;
        reporter
            .set_serving::<AccountsServer<AccountsService>>()
            .await;
        let library = LibraryServer::new(LibraryService::new(
            cloud.clone(),
            services.changes.clone(),
            config.watch_poll,
        ))
        .max_decoding_message_size(config.max_message_bytes)
        .max_encoding_message_size(config.max_message_bytes);
        router = router.add_service(library);
        let accounts = AccountsServer::new(AccountsService::new(cloud, services.changes))
            .max_decoding_message_size(SMALL_MESSAGE_BYTES)
            .max_encoding_message_size(SMALL_MESSAGE_BYTES);
        router = router.add_service(accounts);
    }
    router
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await
}
