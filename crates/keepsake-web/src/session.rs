//! Signing in from a browser. A sign-in enrols a device of platform `web` with the account's
//! credentials (the cloud checks the password and throttles per account); the cookie holds
//! that device's id and token, which this process trades for short access tokens as a
//! device agent does. Nothing about a session lives here but a cache of those access
//! tokens, so any number of these processes serve the same sessions, and a restart signs
//! nobody out. Sign-out removes the device; revoking it from the devices page signs that
//! browser out at its next request.

use crate::{Web, WebError};
use axum::Json;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use governor::{Quota, RateLimiter};
use keepsake_transport::client::{self, BearerAuth, pb};
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};

/// The cookie that carries `DEVICE_ID.DEVICE_TOKEN`.
pub(crate) const COOKIE: &str = "keepsake_session";
/// The header every change must carry.
pub(crate) const CSRF_HEADER: &str = "x-csrf-token";
/// A session lasts this long without a new sign-in (the device token itself does not expire).
const COOKIE_MAX_AGE_S: u64 = 30 * 24 * 3600;
/// Access tokens cached at most (one per signed-in browser).
const CACHED_AT_MOST: usize = 10_000;

type SignInLimiter = RateLimiter<
    IpAddr,
    governor::state::keyed::HashMapStateStore<IpAddr>,
    governor::clock::DefaultClock,
>;

/// Access tokens of the sessions seen lately, and the sign-in limit per address.
pub(crate) struct Sessions {
    cached: Mutex<HashMap<String, Cached>>,
    sign_ins: SignInLimiter,
}

struct Cached {
    /// BLAKE3 of the device token the access token was issued for.
    device_token: blake3::Hash,
    access: String,
    expires_at_ms: i64,
}

/// A signed-in browser: the token to act with and the CSRF token its changes carry.
pub(crate) struct Session {
    pub(crate) device_id: String,
    pub(crate) access: String,
    pub(crate) csrf: blake3::Hash,
}

impl Session {
    /// A Library client acting for this session.
    pub(crate) fn library(&self, web: &Web) -> client::LibraryApi {
        client::library_client(web.config.cloud.clone(), BearerAuth::new(&self.access))
    }

    /// An Accounts client acting for this session.
    pub(crate) fn accounts(&self, web: &Web) -> client::AccountsApi {
        client::accounts_client(web.config.cloud.clone(), BearerAuth::new(&self.access))
    }

    /// The device's clock for an edit made now (the session's device breaks ties).
    pub(crate) fn clock(&self, web: &Web) -> pb::Clock {
        pb::Clock {
            wall_ms: web.clock.now_ms(),
            counter: 0,
            device: self.device_id.clone(),
        }
    }

    /// Refuses a change without this session's CSRF token: a page of another site can make
    /// the browser send the cookie, never read the token.
    pub(crate) fn check_csrf(&self, headers: &HeaderMap) -> Result<(), WebError> {
        let sent = headers
            .get(CSRF_HEADER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| blake3::Hash::from_hex(v).ok());
        // blake3::Hash compares in constant time.
        if sent == Some(self.csrf) {
            Ok(())
        } else {
            Err(WebError::new(
                StatusCode::FORBIDDEN,
                "CSRF",
                "this change did not come from the library's own page; reload it and try again",
            ))
        }
    }
}

/// The CSRF token of a session: derived from its device token, so it needs no storage and
/// changes with every sign-in.
fn csrf_of(device_token: &str) -> blake3::Hash {
    blake3::Hash::from(blake3::derive_key(
        "keepsake web library 2026-12 csrf token",
        device_token.as_bytes(),
    ))
}

/// `(device id, device token)` from the cookie header, if it holds a well-formed session.
fn from_cookie(headers: &HeaderMap) -> Option<(String, String)> {
    let plain = |s: &str| {
        !s.is_empty()
            && s.len() <= 256
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    };
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .and_then(|(_, value)| value.split_once('.'))
        .filter(|(id, token)| plain(id) && plain(token))
        .map(|(id, token)| (id.to_string(), token.to_string()))
}

impl Sessions {
    pub(crate) fn new(per_minute: u32) -> Self {
        let per_minute = NonZeroU32::new(per_minute.max(1)).unwrap_or(NonZeroU32::MIN);
        Self {
            cached: Mutex::new(HashMap::new()),
            sign_ins: RateLimiter::hashmap(Quota::per_minute(per_minute)),
        }
    }

    fn remember(&self, device_id: &str, device_token: &str, access: &pb::AccessToken) {
        let mut cached = self.cached.lock().unwrap_or_else(|p| p.into_inner());
        if cached.len() >= CACHED_AT_MOST {
            // Sessions are cheap to look up again; memory is not to be grown by a flood.
            cached.clear();
        }
        cached.insert(
            device_id.to_string(),
            Cached {
                device_token: blake3::hash(device_token.as_bytes()),
                access: access.token.clone(),
                expires_at_ms: access.expires_at_ms,
            },
        );
    }

    fn forget(&self, device_id: &str) {
        self.cached
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(device_id);
    }

    /// The session the request's cookie names, with a fresh access token.
    pub(crate) async fn authenticate(
        &self,
        web: &Web,
        headers: &HeaderMap,
    ) -> Result<Session, WebError> {
        let (device_id, device_token) = from_cookie(headers).ok_or_else(WebError::signed_out)?;
        let csrf = csrf_of(&device_token);
        let now = web.clock.now_ms();
        {
            let cached = self.cached.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(hit) = cached.get(&device_id)
                && hit.device_token == blake3::hash(device_token.as_bytes())
                && hit.expires_at_ms - 30_000 > now
            {
                return Ok(Session {
                    device_id,
                    access: hit.access.clone(),
                    csrf,
                });
            }
        }
        let mut accounts =
            client::accounts_client(web.config.cloud.clone(), BearerAuth::anonymous());
        let reply = accounts
            .refresh_token(pb::RefreshTokenRequest {
                device_id: device_id.clone(),
                device_token: device_token.clone(),
                client_version: env!("CARGO_PKG_VERSION").to_string(),
            })
            .await;
        let access = match reply {
            Ok(reply) => reply.into_inner().access.ok_or_else(|| {
                WebError::new(
                    StatusCode::BAD_GATEWAY,
                    "BAD_REPLY",
                    "the cloud sent no token",
                )
            })?,
            Err(status) => {
                self.forget(&device_id);
                let e = WebError::from(status);
                // A revoked, removed or unknown session is simply signed out.
                return Err(match e.status {
                    StatusCode::UNAUTHORIZED | StatusCode::NOT_FOUND | StatusCode::FORBIDDEN => {
                        WebError::signed_out()
                    }
                    _ => e,
                });
            }
        };
        self.remember(&device_id, &device_token, &access);
        Ok(Session {
            device_id,
            access: access.token,
            csrf,
        })
    }
}

fn session_cookie(web: &Web, value: &str, max_age: u64) -> HeaderValue {
    let secure = if web.config.secure_cookies {
        "; Secure"
    } else {
        ""
    };
    HeaderValue::from_str(&format!(
        "{COOKIE}={value}; Path=/; HttpOnly; SameSite=Strict; Max-Age={max_age}{secure}"
    ))
    .unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// "Chrome on Linux", from the browser's own description of itself.
fn browser_name(headers: &HeaderMap) -> String {
    let agent = headers
        .get(header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let browser = [
        ("Edg/", "Edge"),
        ("Firefox/", "Firefox"),
        ("Chromium/", "Chromium"),
        ("Chrome/", "Chrome"),
        ("Safari/", "Safari"),
    ]
    .iter()
    .find(|(mark, _)| agent.contains(mark))
    .map_or("A browser", |(_, name)| name);
    let system = [
        ("Android", "Android"),
        ("iPhone", "iPhone"),
        ("iPad", "iPad"),
        ("Mac OS X", "macOS"),
        ("Windows", "Windows"),
        ("Linux", "Linux"),
    ]
    .iter()
    .find(|(mark, _)| agent.contains(mark))
    .map(|(_, name)| format!(" on {name}"))
    .unwrap_or_default();
    format!("{browser}{system}")
}

#[derive(serde::Deserialize)]
pub(crate) struct SignIn {
    account: String,
    password: String,
}

/// `POST /api/sign-in {account, password}`.
pub(crate) async fn sign_in(
    State(web): State<Arc<Web>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Json(form): Json<SignIn>,
) -> Result<Response, WebError> {
    if web.sessions.sign_ins.check_key(&peer.ip()).is_err() {
        return Err(WebError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "RATE_LIMITED",
            "too many sign-in attempts from here; wait a minute and try again",
        ));
    }
    if web.sessions.sign_ins.len() > CACHED_AT_MOST {
        web.sessions.sign_ins.retain_recent();
    }
    if form.account.len() > 64 || form.password.len() > 1024 {
        return Err(WebError::bad("account or password too long"));
    }
    let mut accounts = client::accounts_client(web.config.cloud.clone(), BearerAuth::anonymous());
    let enrolled = accounts
        .enroll_device(pb::EnrollDeviceRequest {
            account: form.account.trim().to_string(),
            password: form.password,
            device_name: format!("Web: {}", browser_name(&headers)),
            platform: "web".into(),
            client_version: env!("CARGO_PKG_VERSION").into(),
        })
        .await
        .map_err(WebError::from)?
        .into_inner();
    let access = enrolled
        .access
        .ok_or_else(|| WebError::new(StatusCode::BAD_GATEWAY, "BAD_REPLY", "no token"))?;
    web.sessions
        .remember(&enrolled.device_id, &enrolled.device_token, &access);
    tracing::info!(device = %enrolled.device_id, "web library: signed in");
    let cookie = session_cookie(
        &web,
        &format!("{}.{}", enrolled.device_id, enrolled.device_token),
        COOKIE_MAX_AGE_S,
    );
    let body = serde_json::json!({
        "account": form.account.trim(),
        "csrf": csrf_of(&enrolled.device_token).to_hex().to_string(),
    });
    Ok(([(header::SET_COOKIE, cookie)], Json(body)).into_response())
}

/// `GET /api/session`: who is signed in, and the CSRF token for changes.
pub(crate) async fn current(
    State(web): State<Arc<Web>>,
    headers: HeaderMap,
) -> Result<Json<serde_json::Value>, WebError> {
    let session = web.sessions.authenticate(&web, &headers).await?;
    let reply = session
        .accounts(&web)
        .get_account(pb::GetAccountRequest {})
        .await?
        .into_inner();
    let account = reply.account.unwrap_or_default();
    Ok(Json(serde_json::json!({
        "account": account.account,
        "admin": account.admin,
        "trash_days": (reply.trash_retention_ms as f64 / 86_400_000.0).round(),
        "device_id": session.device_id,
        "csrf": session.csrf.to_hex().to_string(),
    })))
}

/// `POST /api/sign-out`: the browser's device is removed, the cookie cleared.
pub(crate) async fn sign_out(
    State(web): State<Arc<Web>>,
    headers: HeaderMap,
) -> Result<Response, WebError> {
    let session = web.sessions.authenticate(&web, &headers).await?;
    session.check_csrf(&headers)?;
    session
        .accounts(&web)
        .remove_device(pb::RemoveDeviceRequest {
            device_id: session.device_id.clone(),
            account: String::new(),
        })
        .await?;
    web.sessions.forget(&session.device_id);
    let cookie = session_cookie(&web, "", 0);
    // Thumbnails are cached for good while signed in; whoever uses this browser next
    // must not find them there.
    let clear = HeaderValue::from_static("\"cache\", \"storage\"");
    Ok((
        [
            (header::SET_COOKIE, cookie),
            (header::HeaderName::from_static("clear-site-data"), clear),
        ],
        StatusCode::NO_CONTENT,
    )
        .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cookie_with_anything_but_plain_characters_is_no_session() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::COOKIE,
            HeaderValue::from_static("other=1; keepsake_session=dev_1.tok-2"),
        );
        assert_eq!(
            from_cookie(&headers),
            Some(("dev_1".to_string(), "tok-2".to_string()))
        );
        for bad in [
            "keepsake_session=dev.",
            "keepsake_session=.tok",
            "keepsake_session=dev.t\"ok",
            "keepsake_session=devtok",
            "keepsake_sessionx=dev.tok",
        ] {
            headers.insert(header::COOKIE, HeaderValue::from_static(bad));
            assert_eq!(from_cookie(&headers), None, "{bad}");
        }
    }

    #[test]
    fn every_device_token_has_its_own_csrf_token() {
        assert_ne!(csrf_of("a"), csrf_of("b"));
        assert_eq!(csrf_of("a"), csrf_of("a"));
    }

    #[test]
    fn a_browser_is_named_as_people_know_it() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::USER_AGENT,
            HeaderValue::from_static(
                "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36",
            ),
        );
        assert_eq!(browser_name(&headers), "Chrome on Linux");
        assert_eq!(browser_name(&HeaderMap::new()), "A browser");
    }
}
