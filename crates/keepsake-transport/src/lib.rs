//! Everything on the wire: tonic servers and clients for Keepsake's services,
//! proto <-> domain conversion, auth, limits, and the one domain-error -> status
//! mapping. Domain crates never see tonic or prost; this crate is where their
//! types meet the wire.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use keepsake_transport::{client, server, auth};
//! use keepsake_store::{Store, StoreConfig, SystemClock, OsEntropy};
//! use std::sync::Arc;
//!
//! let store = Arc::new(Store::open_local(
//!     std::path::Path::new("data"), Arc::new(SystemClock), Arc::new(OsEntropy), StoreConfig::default())?);
//! let tokens = auth::TokenTable::new(&auth::TokenFile { tokens: vec![auth::TokenEntry {
//!     token: "secret".into(), account: "me".into(), admin: false }] });
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! let url = format!("http://{}", listener.local_addr()?);
//! tokio::spawn(server::serve(listener, server::Services { store: Some(store), policy: None, delta: false }, tokens,
//!     server::ServerConfig::default(), std::future::pending()));
//! let mut store = client::store_client(client::connect(&url).await?, "secret");
//! # Ok(()) }
//! ```

pub mod auth;
pub mod client;
pub mod convert;
mod delta_service;
mod error;
mod policy_service;
pub mod server;
mod store_service;

pub use delta_service::DeltaService;
pub use error::{ApiError, ERROR_DOMAIN, reason_of, to_status};
pub use policy_service::PolicyService;
pub use store_service::StoreService;
