//! The page itself, and the pictures: thumbnails and previews the server already made
//! (cached by the browser for good — their address is their content), and originals
//! streamed chunk by chunk from the store, never held whole.

use crate::{Web, WebError};
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use keepsake_core::{ChunkId, ManifestId};
use keepsake_transport::client::{BearerAuth, pb};
use keepsake_transport::cloud_client::{ClientConfig, CloudClient};
use std::sync::Arc;

const PAGE: &str = include_str!("../assets/index.html");
const SCRIPT: &str = include_str!("../assets/app.js");
const STYLE: &str = include_str!("../assets/app.css");

/// Headers every answer of the page's own files carries: no framing by other sites, no
/// script or style from anywhere but here.
fn own_file(kind: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, kind),
            (header::CACHE_CONTROL, "no-cache"),
            (header::X_FRAME_OPTIONS, "DENY"),
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'self'; img-src 'self' blob:; media-src 'self'; frame-ancestors 'none'",
            ),
            (header::REFERRER_POLICY, "same-origin"),
        ],
        body,
    )
        .into_response()
}

/// `GET /`.
pub(crate) async fn page() -> Response {
    own_file("text/html; charset=utf-8", PAGE)
}

/// `GET /app.js`.
pub(crate) async fn script() -> Response {
    own_file("text/javascript; charset=utf-8", SCRIPT)
}

/// `GET /app.css`.
pub(crate) async fn style() -> Response {
    own_file("text/css; charset=utf-8", STYLE)
}

/// Batches of an original fetched at once: few enough bytes to hold, enough ids to keep
/// the store busy.
const BATCH_BYTES: u64 = 8 << 20;
const BATCH_IDS: usize = 64;

fn cloud_for(web: &Web, access: &str) -> CloudClient {
    CloudClient::new(
        web.config.cloud.clone(),
        BearerAuth::new(access),
        ClientConfig::default(),
    )
}

/// `GET /media/{manifest}`: a thumbnail, preview or poster, by its manifest id. The store
/// answers only for manifests the caller's account holds, so another account's address
/// is a 404 like a made-up one.
pub(crate) async fn derivative(
    State(web): State<Arc<Web>>,
    headers: HeaderMap,
    Path(manifest): Path<String>,
) -> Result<Response, WebError> {
    let session = web.sessions.authenticate(&web, &headers).await?;
    let id = hex::decode(&manifest)
        .ok()
        .and_then(|b| ManifestId::from_slice(&b).ok())
        .ok_or_else(WebError::not_found)?;
    let etag = format!("\"{manifest}\"");
    if headers
        .get(header::IF_NONE_MATCH)
        .is_some_and(|v| v.as_bytes() == etag.as_bytes())
    {
        return Ok((axum::http::StatusCode::NOT_MODIFIED, [(header::ETAG, etag)]).into_response());
    }
    let mut cloud = cloud_for(&web, &session.access);
    let listed = cloud.get_manifest(&id).await?;
    // Derivatives are small (a 2048-pixel JPEG at most); anything bigger is not one.
    if listed.total_length > 32 << 20 {
        return Err(WebError::not_found());
    }
    let ids = chunk_ids(&listed)?;
    let chunks = cloud.get_chunks(&ids).await?;
    let by_id: std::collections::HashMap<ChunkId, Bytes> = chunks.into_iter().collect();
    let mut body = Vec::with_capacity(listed.total_length as usize);
    for id in &ids {
        body.extend_from_slice(by_id.get(id).ok_or_else(WebError::not_found)?);
    }
    Ok((
        [
            (header::CONTENT_TYPE, "image/jpeg".to_string()),
            (
                header::CACHE_CONTROL,
                "private, max-age=31536000, immutable".to_string(),
            ),
            (header::ETAG, etag),
        ],
        body,
    )
        .into_response())
}

fn chunk_ids(manifest: &pb::Manifest) -> Result<Vec<ChunkId>, WebError> {
    manifest
        .entries
        .iter()
        .map(|e| ChunkId::from_slice(&e.chunk_id).map_err(|_| WebError::not_found()))
        .collect()
}

/// The content type browsers expect for a file of this name.
fn content_type(name: &str) -> &'static str {
    let ext = name
        .rsplit_once('.')
        .map(|(_, e)| e.to_ascii_lowercase())
        .unwrap_or_default();
    match ext.as_str() {
        "jpg" | "jpeg" => "image/jpeg",
        "png" => "image/png",
        "gif" => "image/gif",
        "webp" => "image/webp",
        "heic" => "image/heic",
        "heif" => "image/heif",
        "tif" | "tiff" => "image/tiff",
        "mp4" | "m4v" => "video/mp4",
        "mov" => "video/quicktime",
        "webm" => "video/webm",
        _ => "application/octet-stream",
    }
}

/// `attachment; filename="…"; filename*=UTF-8''…`: any name, safely.
fn disposition(name: &str, inline: bool) -> HeaderValue {
    let plain: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_graphic() && c != '"' && c != '\\' || c == ' ' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let encoded: String = name
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect();
    let kind = if inline { "inline" } else { "attachment" };
    HeaderValue::from_str(&format!(
        "{kind}; filename=\"{plain}\"; filename*=UTF-8''{encoded}"
    ))
    .unwrap_or_else(|_| HeaderValue::from_static("attachment"))
}

#[derive(serde::Deserialize, Default)]
pub(crate) struct OriginalQuery {
    /// Show it in the page (a video playing) rather than save it.
    inline: Option<bool>,
}

/// One `bytes=START-END` range of a file of `len` bytes (END inclusive; `START-` and
/// `-SUFFIX` too). Several ranges, or none that fits, answer the whole file.
fn byte_range(headers: &HeaderMap, len: u64) -> Option<(u64, u64)> {
    let text = headers.get(header::RANGE)?.to_str().ok()?;
    let spec = text.strip_prefix("bytes=")?;
    if spec.contains(',') || len == 0 {
        return None;
    }
    let (start, end) = spec.split_once('-')?;
    let (start, end) = match (start.trim(), end.trim()) {
        ("", suffix) => {
            let suffix: u64 = suffix.parse().ok()?;
            (len.saturating_sub(suffix), len - 1)
        }
        (start, "") => (start.parse().ok()?, len - 1),
        (start, end) => (start.parse().ok()?, end.parse::<u64>().ok()?.min(len - 1)),
    };
    (start <= end && start < len).then_some((start, end))
}

/// `GET /original/{id}`: the current version's exact bytes, streamed a batch of chunks at
/// a time, every chunk checked against its id and a whole file against its hash. A
/// `Range` (a video seeking) is answered from the chunks that hold it.
pub(crate) async fn original(
    State(web): State<Arc<Web>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(q): Query<OriginalQuery>,
) -> Result<Response, WebError> {
    let session = web.sessions.authenticate(&web, &headers).await?;
    if id.is_empty() || id.len() > 128 {
        return Err(WebError::not_found());
    }
    let asset = session
        .library(&web)
        .get_asset(pb::GetAssetRequest { asset_id: id })
        .await?
        .into_inner()
        .asset
        .ok_or_else(WebError::not_found)?;
    let manifest_id =
        ManifestId::from_slice(&asset.manifest_id).map_err(|_| WebError::not_found())?;
    let mut cloud = cloud_for(&web, &session.access);
    let listed = cloud.get_manifest(&manifest_id).await?;
    let total = listed.total_length;
    let range = byte_range(&headers, total);
    let (first, last) = range.unwrap_or((0, total.saturating_sub(1)));
    // The chunks that hold [first, last], and how much of the first one to skip.
    let mut chunks = Vec::new();
    let mut at = 0u64;
    let mut skip = 0u64;
    for entry in &listed.entries {
        let len = u64::from(entry.length);
        if total > 0 && at + len > first && at <= last {
            if chunks.is_empty() {
                skip = first - at;
            }
            let id = ChunkId::from_slice(&entry.chunk_id).map_err(|_| WebError::not_found())?;
            chunks.push((id, len));
        }
        at += len;
    }
    let sending = if total == 0 { 0 } else { last - first + 1 };
    let whole_hash = range.is_none().then(|| listed.file_hash.clone());
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(2);
    tokio::spawn(async move {
        let fail = |why: String| std::io::Error::other(why);
        let mut whole = blake3::Hasher::new();
        let (mut skip, mut left) = (skip, sending);
        let mut start = 0;
        while start < chunks.len() && left > 0 {
            let (mut end, mut bytes) = (start, 0);
            while end < chunks.len()
                && end - start < BATCH_IDS
                && (end == start || bytes + chunks[end].1 <= BATCH_BYTES)
            {
                bytes += chunks[end].1;
                end += 1;
            }
            let ids: Vec<ChunkId> = chunks[start..end].iter().map(|(id, _)| *id).collect();
            let fetched = match cloud.get_chunks(&ids).await {
                Ok(fetched) => fetched,
                Err(e) => {
                    tracing::warn!(error = %e, "web library: an original's download stopped");
                    let _ = tx.send(Err(fail(e.to_string()))).await;
                    return;
                }
            };
            let by_id: std::collections::HashMap<ChunkId, Bytes> = fetched.into_iter().collect();
            for id in &ids {
                let Some(data) = by_id.get(id) else {
                    let _ = tx.send(Err(fail("a chunk did not arrive".into()))).await;
                    return;
                };
                whole.update(data);
                let from = usize::try_from(skip).unwrap_or(usize::MAX).min(data.len());
                let to = from
                    + usize::try_from(left)
                        .unwrap_or(usize::MAX)
                        .min(data.len() - from);
                skip = 0;
                left -= (to - from) as u64;
                if tx.send(Ok(data.slice(from..to))).await.is_err() {
                    return;
                }
            }
            start = end;
        }
        if let Some(expected) = whole_hash
            && whole.finalize().as_bytes()[..] != expected[..]
        {
            // Cut the response short: the browser reports a failed download, never a
            // finished file with the wrong bytes.
            let _ = tx
                .send(Err(fail("the file's hash did not match".into())))
                .await;
        }
    });
    let body = Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(rx));
    let mut response = body.into_response();
    if range.is_some() {
        *response.status_mut() = axum::http::StatusCode::PARTIAL_CONTENT;
        response.headers_mut().insert(
            header::CONTENT_RANGE,
            HeaderValue::from_str(&format!("bytes {first}-{last}/{total}"))
                .unwrap_or_else(|_| HeaderValue::from_static("bytes */0")),
        );
    }
    let h = response.headers_mut();
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(content_type(&asset.original_name)),
    );
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(sending));
    h.insert(
        header::CONTENT_DISPOSITION,
        disposition(&asset.original_name, q.inline.unwrap_or(false)),
    );
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("private, no-cache"),
    );
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_download_keeps_any_name_and_breaks_no_header() {
        let value = disposition("été \"2024\"\r\n.jpg", false);
        let text = value.to_str().unwrap();
        assert!(
            text.starts_with("attachment; filename=\"_t_ _2024___.jpg\""),
            "{text}"
        );
        assert!(
            text.contains("filename*=UTF-8''%C3%A9t%C3%A9%20%222024%22%0D%0A.jpg"),
            "{text}"
        );
    }

    #[test]
    fn a_range_is_read_as_browsers_send_it() {
        let with = |range: &'static str| {
            let mut headers = HeaderMap::new();
            headers.insert(header::RANGE, HeaderValue::from_static(range));
            byte_range(&headers, 1000)
        };
        assert_eq!(with("bytes=0-99"), Some((0, 99)));
        assert_eq!(with("bytes=900-"), Some((900, 999)));
        assert_eq!(with("bytes=-100"), Some((900, 999)));
        assert_eq!(with("bytes=990-2000"), Some((990, 999)));
        assert_eq!(with("bytes=1000-"), None, "past the end: the whole file");
        assert_eq!(
            with("bytes=0-1,5-6"),
            None,
            "several ranges: the whole file"
        );
        assert_eq!(byte_range(&HeaderMap::new(), 1000), None);
    }

    #[test]
    fn a_video_is_served_as_a_video() {
        assert_eq!(content_type("clip.MOV"), "video/quicktime");
        assert_eq!(content_type("IMG_1.HEIC"), "image/heic");
        assert_eq!(content_type("notes"), "application/octet-stream");
    }
}
