//! Uploads from the browser, resumable: the page asks first (the quota is checked before
//! any byte), then sends the file in byte ranges; each range is on disk before it is
//! acknowledged, so after a dropped connection — or a restart of this server — the page
//! asks how much arrived and sends the rest. The last byte hands the file to the device's
//! own upload path (`keepsake_device::upload_incoming`: chunked, hashed, only missing
//! chunks sent, quota-checked again, committed idempotently), so a photo uploaded here is
//! exactly a photo a device took.

use crate::{Web, WebError};
use axum::Json;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use futures::StreamExt;
use keepsake_core::random_hex;
use keepsake_device::{Incoming, IncomingBytes, Overrides, upload_incoming};
use keepsake_transport::client::{BearerAuth, pb};
use keepsake_transport::cloud_client::{ClientConfig, CloudClient};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use tokio::io::AsyncWriteExt;

/// The largest file the page may send (a long 8K video is far less).
const FILE_AT_MOST: u64 = 64 << 30;
/// Uploads waiting at once, over every session.
const WAITING_AT_MOST: usize = 10_000;
/// An upload not finished in this long is swept when the server starts.
const ABANDONED_AFTER: std::time::Duration = std::time::Duration::from_secs(7 * 24 * 3600);

/// Uploads in flight: a part file and its description per upload, in the spool folder.
pub(crate) struct Uploads {
    dir: PathBuf,
    // One request at a time per upload: two ranges racing would interleave bytes.
    busy: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

/// What an upload is, written when it begins.
#[derive(serde::Serialize, serde::Deserialize)]
struct Description {
    /// The browser session (device) that may continue it.
    device_id: String,
    path: String,
    size: u64,
    modified_ms: i64,
}

impl Uploads {
    pub(crate) fn new(dir: PathBuf) -> Self {
        if let Ok(entries) = std::fs::read_dir(&dir) {
            for entry in entries.flatten() {
                let old = entry
                    .metadata()
                    .and_then(|m| m.modified())
                    .ok()
                    .and_then(|t| t.elapsed().ok())
                    .is_some_and(|age| age > ABANDONED_AFTER);
                if old {
                    let _ = std::fs::remove_file(entry.path());
                }
            }
        }
        Self {
            dir,
            busy: Mutex::new(HashMap::new()),
        }
    }

    fn part(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}.part"))
    }

    fn description(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}.json"))
    }

    fn lock(&self, id: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut busy = self.busy.lock().unwrap_or_else(|p| p.into_inner());
        if busy.len() > WAITING_AT_MOST {
            busy.retain(|_, lock| Arc::strong_count(lock) > 1);
        }
        busy.entry(id.to_string()).or_default().clone()
    }

    /// The upload `id` of this session, or 404 (another session's is as good as none).
    fn open(&self, id: &str, device_id: &str) -> Result<Description, WebError> {
        if id.len() != 32 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(WebError::not_found());
        }
        let text = std::fs::read(self.description(id)).map_err(|_| WebError::not_found())?;
        let described: Description =
            serde_json::from_slice(&text).map_err(|_| WebError::not_found())?;
        if described.device_id != device_id {
            return Err(WebError::not_found());
        }
        Ok(described)
    }

    fn received(&self, id: &str) -> u64 {
        std::fs::metadata(self.part(id)).map_or(0, |m| m.len())
    }
}

fn human(bytes: u64) -> String {
    let units = ["bytes", "KB", "MB", "GB", "TB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1000.0 && unit + 1 < units.len() {
        value /= 1000.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} bytes")
    } else {
        format!("{value:.1} {}", units[unit])
    }
}

#[derive(serde::Deserialize)]
pub(crate) struct Begin {
    name: String,
    #[serde(default)]
    folder: String,
    size: u64,
    #[serde(default)]
    modified_ms: i64,
}

/// `POST /api/uploads {name, folder, size, modified_ms}`: checks the name and the plan,
/// then opens an upload.
pub(crate) async fn begin(
    State(web): State<Arc<Web>>,
    headers: HeaderMap,
    Json(form): Json<Begin>,
) -> Result<Json<Value>, WebError> {
    let session = web.sessions.authenticate(&web, &headers).await?;
    session.check_csrf(&headers)?;
    if form.name.is_empty() || form.name.contains('/') || form.name.len() > 255 {
        return Err(WebError::bad("a file name: one name, at most 255 bytes"));
    }
    let folder = form.folder.trim_matches('/');
    let path = if folder.is_empty() {
        form.name.clone()
    } else {
        format!("{folder}/{}", form.name)
    };
    keepsake_path::check(&path).map_err(|e| WebError::bad(format!("{path}: {e}")))?;
    if form.size > FILE_AT_MOST {
        return Err(WebError::bad(format!(
            "{} is larger than the {} a file may be",
            human(form.size),
            human(FILE_AT_MOST)
        )));
    }
    let account = session
        .accounts(&web)
        .get_account(pb::GetAccountRequest {})
        .await?
        .into_inner()
        .account
        .unwrap_or_default();
    let plan = account.plan.unwrap_or_default();
    let free = plan
        .limit_bytes
        .saturating_sub(account.used_bytes)
        .saturating_sub(account.reserved_bytes);
    if form.size > free {
        return Err(WebError::new(
            StatusCode::INSUFFICIENT_STORAGE,
            "QUOTA_EXCEEDED",
            format!(
                "{} needs {}, but your {} plan has {} free of {} ({} used). Empty Recently \
                 Deleted, delete what you do not need, or move to a larger plan.",
                form.name,
                human(form.size),
                plan.name,
                human(free),
                human(plan.limit_bytes),
                human(account.used_bytes),
            ),
        ));
    }
    tokio::fs::create_dir_all(&web.uploads.dir).await?;
    let id = random_hex(web.entropy.as_ref(), 16);
    let described = Description {
        device_id: session.device_id.clone(),
        path: path.clone(),
        size: form.size,
        modified_ms: if form.modified_ms > 0 {
            form.modified_ms
        } else {
            web.clock.now_ms()
        },
    };
    let text = serde_json::to_vec(&described).map_err(std::io::Error::other)?;
    tokio::fs::File::create(web.uploads.part(&id)).await?;
    let mut file = tokio::fs::File::create(web.uploads.description(&id)).await?;
    file.write_all(&text).await?;
    file.sync_all().await?;
    Ok(Json(
        json!({ "id": id, "path": path, "size": form.size, "received": 0 }),
    ))
}

/// `GET /api/uploads/{id}`: how much of the file is here (to resume from).
pub(crate) async fn status(
    State(web): State<Arc<Web>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<Value>, WebError> {
    let session = web.sessions.authenticate(&web, &headers).await?;
    let described = web.uploads.open(&id, &session.device_id)?;
    Ok(Json(json!({
        "id": id,
        "path": described.path,
        "size": described.size,
        "received": web.uploads.received(&id),
    })))
}

/// `bytes START-END/TOTAL` (END inclusive), or `bytes */TOTAL` for no bytes.
fn content_range(headers: &HeaderMap) -> Option<(Option<(u64, u64)>, u64)> {
    let text = headers.get(header::CONTENT_RANGE)?.to_str().ok()?;
    let (range, total) = text.strip_prefix("bytes ")?.split_once('/')?;
    let total = total.parse().ok()?;
    if range == "*" {
        return Some((None, total));
    }
    let (start, end) = range.split_once('-')?;
    let (start, end): (u64, u64) = (start.parse().ok()?, end.parse().ok()?);
    (start <= end && end < total).then_some((Some((start, end)), total))
}

/// `PUT /api/uploads/{id}` with `Content-Range`: the next bytes of the file; the range
/// must start where the last one ended. The last byte commits the file to the library.
pub(crate) async fn part(
    State(web): State<Arc<Web>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Body,
) -> Result<Json<Value>, WebError> {
    let session = web.sessions.authenticate(&web, &headers).await?;
    session.check_csrf(&headers)?;
    let described = web.uploads.open(&id, &session.device_id)?;
    let lock = web.uploads.lock(&id);
    let _one_at_a_time = lock.lock().await;
    let (range, total) = content_range(&headers)
        .ok_or_else(|| WebError::bad("Content-Range: bytes START-END/TOTAL"))?;
    if total != described.size {
        return Err(WebError::bad(format!(
            "this upload is {} bytes, not {total}",
            described.size
        )));
    }
    let mut received = web.uploads.received(&id);
    if let Some((start, end)) = range {
        if start != received {
            return Err(WebError::new(
                StatusCode::CONFLICT,
                "WRONG_OFFSET",
                format!("{received} bytes are here: send from there"),
            ));
        }
        let expected = end - start + 1;
        let mut file = tokio::fs::OpenOptions::new()
            .append(true)
            .open(web.uploads.part(&id))
            .await?;
        let mut written = 0u64;
        let mut stream = body.into_data_stream();
        let mut failed = None;
        while let Some(piece) = stream.next().await {
            let piece = match piece {
                Ok(piece) => piece,
                Err(e) => {
                    failed = Some(WebError::bad(format!("the connection broke: {e}")));
                    break;
                }
            };
            if written + piece.len() as u64 > expected {
                failed = Some(WebError::bad("more bytes than the range names"));
                break;
            }
            file.write_all(&piece).await?;
            written += piece.len() as u64;
        }
        // What arrived is kept, even from a broken connection: the page resumes after it.
        file.sync_data().await?;
        drop(file);
        received = web.uploads.received(&id);
        if let Some(e) = failed {
            if received > start + written.min(expected) {
                // Bytes past the range never count.
                let file = std::fs::OpenOptions::new()
                    .write(true)
                    .open(web.uploads.part(&id))?;
                file.set_len(start + written.min(expected))?;
                file.sync_data()?;
            }
            return Err(e);
        }
        if written != expected {
            return Ok(Json(
                json!({ "id": id, "received": received, "done": false }),
            ));
        }
    }
    if received < described.size {
        return Ok(Json(
            json!({ "id": id, "received": received, "done": false }),
        ));
    }
    let mut cloud = CloudClient::new(
        web.config.cloud.clone(),
        BearerAuth::new(&session.access),
        ClientConfig::default(),
    );
    let committed = upload_incoming(
        &mut cloud,
        Incoming {
            request_id: format!("web-{id}"),
            path: described.path.clone(),
            file_time_ms: described.modified_ms,
            bytes: IncomingBytes::File(web.uploads.part(&id)),
            overrides: Overrides::default(),
        },
    )
    .await
    .map_err(|e| {
        let quota = matches!(
            &e,
            keepsake_device::DeviceError::Cloud(c)
                if c.reason == keepsake_device::Reason::QuotaExceeded
        );
        if quota {
            WebError::new(
                StatusCode::INSUFFICIENT_STORAGE,
                "QUOTA_EXCEEDED",
                e.to_string(),
            )
        } else {
            tracing::warn!(error = %e, upload = %id, "web library: a commit failed");
            WebError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "COMMIT_FAILED",
                format!(
                    "the file arrived but could not be saved yet ({e}); it will be tried again"
                ),
            )
        }
    })?;
    let _ = std::fs::remove_file(web.uploads.part(&id));
    let _ = std::fs::remove_file(web.uploads.description(&id));
    tracing::info!(asset = %committed.asset_id, path = %committed.path, "web library: uploaded");
    Ok(Json(json!({
        "id": id,
        "received": described.size,
        "done": true,
        "asset_id": committed.asset_id,
        "path": committed.path,
    })))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn range(text: &'static str) -> Option<(Option<(u64, u64)>, u64)> {
        let mut headers = HeaderMap::new();
        headers.insert(header::CONTENT_RANGE, HeaderValue::from_static(text));
        content_range(&headers)
    }

    #[test]
    fn only_a_well_formed_range_inside_the_file_is_taken() {
        assert_eq!(range("bytes 0-9/10"), Some((Some((0, 9)), 10)));
        assert_eq!(range("bytes */10"), Some((None, 10)));
        assert_eq!(range("bytes 5-10/10"), None);
        assert_eq!(range("bytes 6-5/10"), None);
        assert_eq!(range("items 0-1/2"), None);
        assert_eq!(range("bytes 0-1"), None);
    }

    #[test]
    fn sizes_read_as_people_say_them() {
        assert_eq!(human(999), "999 bytes");
        assert_eq!(human(2_100_000_000), "2.1 GB");
    }
}
