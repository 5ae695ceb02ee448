//! Everything on the wire: tonic servers and clients for Keepsake's services,
//! proto <-> domain conversion, auth, limits, and the one domain-error -> status
//! mapping. Domain crates never see tonic or prost; this crate is where their
//! types meet the wire.
//!
//! By job: the device's side — [`client`], [`cloud_client`], the device port, DeviceControl
//! ([`serve_device`]), [`tls`], and the shared [`wire`] forms — is always built; the cloud's
//! side — [`server`], [`guard`], [`auth`], the services and the domain [`convert`]ers — comes
//! with the default `cloud` feature. An app that only syncs depends on this crate with
//! `default-features = false` and links no password hashing, token signing or server.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use keepsake_transport::{auth::Authenticator, client, server};
//! use keepsake_library::{ClientVersion, Cloud, Library, LibraryConfig};
//! use keepsake_store::{Store, StoreConfig, SystemClock, OsEntropy};
//! use std::sync::Arc;
//!
//! let store = Arc::new(Store::open_local(
//!     std::path::Path::new("data"), Arc::new(SystemClock), Arc::new(OsEntropy), StoreConfig::default())?);
//! let library = Library::open(Some("data/library.sqlite".into()), Arc::new(SystemClock),
//!     Arc::new(OsEntropy), LibraryConfig::default())?;
//! let cloud = Arc::new(Cloud::new(library, store.clone())?);
//! cloud.create_account("me", "correct horse", None, true)?;
//! let token = cloud.sign_in("me", "correct horse")?.token;
//! let auth = Authenticator::new(cloud.verifier(), Arc::new(SystemClock), ClientVersion::default());
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! let url = format!("http://{}", listener.local_addr()?);
//! let services = server::Services { store: Some(store), cloud: Some(cloud), ..Default::default() };
//! tokio::spawn(server::serve(listener, services, auth, server::ServerConfig::default(),
//!     std::future::pending()));
//! let mut store = client::store_client(client::connect(&url).await?, &token);
//! # Ok(()) }
//! ```
//!
//! # In detail
//!
//! `server::serve` (health, reflection v1 + v1alpha, tracing, limits, tcp_nodelay), `auth`
//! (`Authenticator`: client-version check, then signed-token check; the token comes in
//! `authorization: Bearer` or, from Keepsake's own clients, `x-keepsake-token`, which HTTP/2
//! header compression indexes so it costs bytes once per connection, not per call), `guard`
//! (`GuardLayer`, the async tower layer in front of every service: open health/reflection,
//! token-free sign-in calls limited per address, everything else per device or account; token
//! bucket → RATE_LIMITED (an ApplyEdits call, up to 1000 edits in one transaction, costs ten
//! calls), per-caller and server-wide concurrency → OVERLOADED, both with `retry_after_ms`;
//! streams hold their permits until their body ends), `convert` (proto ↔ domain),
//! `error::to_status` (the one mapping), `StoreService`, `PolicyService`, `DeltaService`
//! (rebuilds versions next to the store; `SpanSignature`/`PutChunksByDelta` for a stretch of
//! whole chunks, at most 2 MiB), `LibraryService` (with `WatchChanges` woken by a
//! `ChangeNotifier`), `AccountsService`, `client` helpers and `CallError` (every status typed:
//! transient — UNAVAILABLE, DEADLINE_EXCEEDED, RATE_LIMITED, OVERLOADED, cut connections — or
//! permanent, with reason, metadata, retry hint and missing chunk ids),
//! `cloud_client::CloudClient` (typed calls with client-side deadlines; uploads keep a bounded
//! number of bytes in flight and ask for durable acks before the window closes), `tls`
//! (self-signed certificates for a home server, SHA-256 fingerprints, a client connector that
//! trusts exactly one pinned certificate; `client::connect` refuses plaintext off loopback),
//! `device_port` (`keepsake_device::Cloud` for `CloudClient`), `DeviceService`/`serve_device`
//! (DeviceControl over a `FolderControl`: status, settings, conditions, import, delete, list,
//! edits, diagnose; loopback only, for callers presenting the secret in the device's data
//! directory). The fault proxy tests use lives in `keepsake-testkit`.

// The device's side: what an app or agent links with `default-features = false`.
pub mod client;
pub mod cloud_client;
mod device_port;
mod device_service;
mod error;
pub mod throttle;
pub mod tls;
pub mod wire;

pub use device_service::{CONTROL_SECRET_HEADER, DeviceService, serve_device};
pub use error::{ApiError, ERROR_DOMAIN, reason_of, to_status};

// The cloud's side, behind the default `cloud` feature: the servers, their guard and
// token checks, and the domain conversions (these link the library: password hashing,
// token signing, SQLite).
#[cfg(feature = "cloud")]
mod accounts_service;
#[cfg(feature = "cloud")]
pub mod auth;
#[cfg(feature = "cloud")]
pub mod convert;
#[cfg(feature = "cloud")]
mod delta_service;
#[cfg(feature = "cloud")]
pub mod guard;
#[cfg(feature = "cloud")]
mod library_service;
#[cfg(feature = "cloud")]
mod policy_service;
#[cfg(feature = "cloud")]
pub mod remote_store;
#[cfg(feature = "cloud")]
pub mod server;
#[cfg(feature = "cloud")]
mod store_service;

#[cfg(feature = "cloud")]
pub use accounts_service::AccountsService;
#[cfg(feature = "cloud")]
pub use delta_service::{DeltaService, DeltaStore};
#[cfg(feature = "cloud")]
pub use library_service::{ChangeNotifier, LibraryService};
#[cfg(feature = "cloud")]
pub use policy_service::PolicyService;
#[cfg(feature = "cloud")]
pub use remote_store::{RemoteStore, RemoteStoreConfig, StoreAddress};
#[cfg(feature = "cloud")]
pub use store_service::StoreService;
