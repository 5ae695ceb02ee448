//! The web library: a person's way into their Keepsake library from a browser — the
//! timeline, folders, albums, favourites, hidden, Recently Deleted, uploads, devices and
//! the account — served as one page and a small JSON API.
//!
//! It holds no library of its own. Every call becomes the same gRPC call a device or the
//! CLI makes, with the signed-in person's token, so the cloud's rules (quota, ownership,
//! idempotency, the feed) apply once, wherever this runs: beside the cloud in `keepsake
//! serve`, or alone, pointed at a cloud elsewhere. A browser's sign-in is an enrolment of a
//! device of platform `web`; the session cookie carries that device's id and token
//! (`HttpOnly`, `SameSite=Strict`, `Secure` off loopback), so the server keeps no session
//! table and a restart signs nobody out. Every change needs the session's CSRF token in the
//! `x-csrf-token` header.
//!
//! ```no_run
//! # async fn run() -> std::io::Result<()> {
//! use std::sync::Arc;
//! let cloud = keepsake_transport::client::connect("http://127.0.0.1:50051").await.unwrap();
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
//! let config = keepsake_web::WebConfig::new(cloud, "keepsake-data/web".into());
//! keepsake_web::serve(
//!     listener,
//!     config,
//!     Arc::new(keepsake_core::SystemClock),
//!     Arc::new(keepsake_core::OsEntropy),
//!     std::future::pending(),
//! )
//! .await
//! # }
//! ```

mod api;
mod error;
mod media;
mod session;
mod upload;

pub use error::WebError;

use axum::Router;
use axum::routing::{get, post, put};
use keepsake_core::{Clock, Entropy};
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use tonic::transport::Channel;

/// How the web library reaches the cloud and where it keeps uploads in flight.
#[derive(Clone)]
pub struct WebConfig {
    /// A channel to the cloud's Accounts, Library and ChunkStore services.
    pub cloud: Channel,
    /// Where uploads wait for their last byte (each file beside a small description, so
    /// an upload resumes after a restart too).
    pub spool: PathBuf,
    /// Mark the session cookie `Secure` (set when the page is served off loopback).
    pub secure_cookies: bool,
    /// Sign-in attempts one address may make per minute.
    pub sign_ins_per_minute: u32,
}

impl WebConfig {
    /// Defaults for a page served on loopback.
    pub fn new(cloud: Channel, spool: PathBuf) -> Self {
        Self {
            cloud,
            spool,
            secure_cookies: false,
            sign_ins_per_minute: 10,
        }
    }
}

/// What every handler shares.
pub(crate) struct Web {
    pub(crate) config: WebConfig,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) entropy: Arc<dyn Entropy>,
    pub(crate) sessions: session::Sessions,
    pub(crate) uploads: upload::Uploads,
}

/// The page and its API as a router (for embedding in another server or a test).
pub fn router(config: WebConfig, clock: Arc<dyn Clock>, entropy: Arc<dyn Entropy>) -> Router {
    let web = Arc::new(Web {
        sessions: session::Sessions::new(config.sign_ins_per_minute),
        uploads: upload::Uploads::new(config.spool.clone()),
        config,
        clock,
        entropy,
    });
    Router::new()
        .route("/", get(media::page))
        .route("/app.js", get(media::script))
        .route("/app.css", get(media::style))
        .route("/api/session", get(session::current))
        .route("/api/sign-in", post(session::sign_in))
        .route("/api/sign-out", post(session::sign_out))
        .route("/api/assets", get(api::assets))
        .route("/api/assets/{id}", get(api::asset))
        .route("/api/assets/{id}/favorite", post(api::favorite))
        .route("/api/assets/{id}/hidden", post(api::hidden))
        .route("/api/assets/{id}/trash", post(api::trash))
        .route("/api/assets/{id}/restore", post(api::restore))
        .route("/api/assets/{id}/purge", post(api::purge))
        .route("/api/assets/{id}/revert", post(api::revert))
        .route("/api/assets/{id}/album", post(api::album_member))
        .route("/api/folders", get(api::folders))
        .route("/api/albums", get(api::albums).post(api::new_album))
        .route("/api/devices", get(api::devices))
        .route("/api/devices/{id}/revoke", post(api::revoke))
        .route("/api/account", get(api::account))
        .route("/api/events", get(api::events))
        .route("/api/uploads", post(upload::begin))
        .route("/api/uploads/{id}", put(upload::part).get(upload::status))
        .route("/media/{manifest}", get(media::derivative))
        .route("/original/{id}", get(media::original))
        .with_state(web)
}

/// Serves the web library on `listener` until `shutdown` completes.
pub async fn serve(
    listener: tokio::net::TcpListener,
    config: WebConfig,
    clock: Arc<dyn Clock>,
    entropy: Arc<dyn Entropy>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = router(config, clock, entropy);
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown)
    .await
}
