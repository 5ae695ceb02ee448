//! Everything on the wire: tonic servers and clients for Keepsake's services,
//! proto <-> domain conversion, auth, limits, and the one domain-error -> status
//! mapping. Domain crates never see tonic or prost; this crate is where their
//! types meet the wire.
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

pub mod auth;
pub mod client;
pub mod cloud_client;
pub mod convert;
mod delta_service;
mod device_port;
mod device_service;
mod error;
pub mod fault_proxy;
pub mod guard;
mod library_service;
mod policy_service;
pub mod server;
mod store_service;
pub mod tls;

pub use delta_service::DeltaService;
pub use device_service::{CONTROL_SECRET_HEADER, DeviceService, serve_device};
pub use error::{ApiError, ERROR_DOMAIN, reason_of, to_status};
pub use library_service::{AccountsService, ChangeNotifier, LibraryService};
pub use policy_service::PolicyService;
pub use store_service::StoreService;
