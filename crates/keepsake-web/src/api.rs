//! The page's JSON API: each handler one or two of the cloud's own calls, made with the
//! session's token, and the answer reshaped for the page. No rule of the library lives here.

use crate::session::Session;
use crate::{Web, WebError};
use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures::Stream;
use keepsake_core::random_hex;
use keepsake_transport::client::pb;
use serde_json::{Value, json};
use std::convert::Infallible;
use std::sync::Arc;

type Answer = Result<Json<Value>, WebError>;

/// Ids from the address bar are at most this long (the cloud's are far shorter).
const ID_AT_MOST: usize = 128;

fn checked_id(id: &str) -> Result<&str, WebError> {
    if id.is_empty() || id.len() > ID_AT_MOST {
        return Err(WebError::not_found());
    }
    Ok(id)
}

async fn signed_in(web: &Web, headers: &HeaderMap) -> Result<Session, WebError> {
    web.sessions.authenticate(web, headers).await
}

/// A signed-in session whose request carries its CSRF token: the door of every change.
async fn for_change(web: &Web, headers: &HeaderMap) -> Result<Session, WebError> {
    let session = signed_in(web, headers).await?;
    session.check_csrf(headers)?;
    Ok(session)
}

fn media_url(asset: &pb::Asset, role: &str) -> Value {
    asset
        .derivatives
        .iter()
        .find(|d| d.role == role)
        .map_or(Value::Null, |d| {
            json!(format!("/media/{}", hex::encode(&d.manifest_id)))
        })
}

fn kind_name(kind: i32) -> &'static str {
    match pb::AssetKind::try_from(kind) {
        Ok(pb::AssetKind::Video) => "video",
        Ok(pb::AssetKind::Photo) => "photo",
        _ => "other",
    }
}

fn details_json(d: Option<&pb::MediaDetails>) -> Value {
    let Some(d) = d else {
        return json!({});
    };
    let camera = format!("{} {}", d.camera_make, d.camera_model)
        .trim()
        .to_string();
    json!({
        "camera": camera,
        "lens": d.lens,
        "latitude": d.latitude,
        "longitude": d.longitude,
        "duration_ms": d.duration_ms,
    })
}

/// An asset as the page draws it.
fn asset_json(a: &pb::Asset) -> Value {
    json!({
        "id": a.asset_id,
        "kind": kind_name(a.kind),
        "path": a.path,
        "name": a.original_name,
        "title": a.title,
        "taken_ms": a.capture_time_ms,
        "width": a.width,
        "height": a.height,
        "size": a.size,
        "version": a.version,
        "favorite": a.favorite,
        "hidden": a.hidden,
        "trashed_at_ms": (a.state == pb::AssetState::Trashed as i32).then_some(a.state_at_ms).flatten(),
        "damaged": a.damaged,
        "pair_role": a.pair_role,
        "thumbnail": media_url(a, "thumbnail"),
        "preview": media_url(a, "preview"),
        "poster": media_url(a, "poster"),
        "details": details_json(a.details.as_ref()),
    })
}

/// What the timeline and every other grid may ask for.
#[derive(serde::Deserialize, Default)]
pub(crate) struct AssetsQuery {
    folder: Option<String>,
    album: Option<String>,
    favorites: Option<bool>,
    hidden: Option<bool>,
    trashed: Option<bool>,
    kind: Option<String>,
    name: Option<String>,
    page: Option<String>,
    size: Option<u32>,
}

/// `GET /api/assets?…`: one page of a grid, newest first.
pub(crate) async fn assets(
    State(web): State<Arc<Web>>,
    headers: HeaderMap,
    Query(q): Query<AssetsQuery>,
) -> Answer {
    let session = signed_in(&web, &headers).await?;
    let trashed = q.trashed.unwrap_or(false);
    let request = pb::SearchAssetsRequest {
        kind: match q.kind.as_deref() {
            Some("video") => pb::AssetKind::Video,
            Some("photo") => pb::AssetKind::Photo,
            _ => pb::AssetKind::Unspecified,
        }
        .into(),
        favorite: q.favorites.filter(|f| *f),
        // Hidden photos stay out of every view but their own (and the trash, which shows all).
        hidden: if trashed {
            None
        } else {
            Some(q.hidden.unwrap_or(false))
        },
        album: q.album.unwrap_or_default(),
        name: q.name.unwrap_or_default(),
        page_size: q.size.unwrap_or(120).clamp(1, 500),
        page: q.page.unwrap_or_default(),
        trashed,
        folder: q.folder,
        ..Default::default()
    };
    let found = session
        .library(&web)
        .search_assets(request)
        .await?
        .into_inner();
    Ok(Json(json!({
        "assets": found.assets.iter().map(asset_json).collect::<Vec<_>>(),
        "next": (!found.next_page.is_empty()).then_some(found.next_page),
    })))
}

/// `GET /api/assets/{id}`: one asset with its versions.
pub(crate) async fn asset(
    State(web): State<Arc<Web>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Answer {
    let session = signed_in(&web, &headers).await?;
    let id = checked_id(&id)?.to_string();
    let mut library = session.library(&web);
    let asset = library
        .get_asset(pb::GetAssetRequest {
            asset_id: id.clone(),
        })
        .await?
        .into_inner()
        .asset
        .ok_or_else(WebError::not_found)?;
    let versions = library
        .list_versions(pb::ListVersionsRequest { asset_id: id })
        .await?
        .into_inner()
        .versions;
    let mut shown = asset_json(&asset);
    shown["versions"] = versions
        .iter()
        .rev()
        .map(|v| {
            json!({
                "version": v.version,
                "size": v.size,
                "created_at_ms": v.created_at_ms,
                "device": v.device,
                "details": details_json(v.details.as_ref()),
            })
        })
        .collect();
    Ok(Json(shown))
}

#[derive(serde::Deserialize)]
pub(crate) struct Flag {
    on: bool,
}

async fn set_field(
    web: &Web,
    headers: &HeaderMap,
    id: &str,
    field: pb::set_metadata_request::Field,
) -> Answer {
    let session = for_change(web, headers).await?;
    let applied = session
        .library(web)
        .set_metadata(pb::SetMetadataRequest {
            asset_id: checked_id(id)?.to_string(),
            clock: Some(session.clock(web)),
            field: Some(field),
        })
        .await?
        .into_inner()
        .applied;
    Ok(Json(json!({ "applied": applied })))
}

/// `POST /api/assets/{id}/favorite {on}`.
pub(crate) async fn favorite(
    State(web): State<Arc<Web>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Json(flag): Json<Flag>,
) -> Answer {
    set_field(
        &web,
        &headers,
        &id,
        pb::set_metadata_request::Field::Favorite(flag.on),
    )
    .await
}

/// `POST /api/assets/{id}/hidden {on}`.
pub(crate) async fn hidden(
    State(web): State<Arc<Web>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Json(flag): Json<Flag>,
) -> Answer {
    set_field(
        &web,
        &headers,
        &id,
        pb::set_metadata_request::Field::Hidden(flag.on),
    )
    .await
}

/// A change the library answers with nothing to show: made with the session's token once
/// its CSRF token is checked.
async fn library_change(
    web: &Web,
    headers: &HeaderMap,
    call: impl AsyncFnOnce(&mut keepsake_transport::client::LibraryApi) -> Result<(), tonic::Status>,
) -> Answer {
    let session = for_change(web, headers).await?;
    call(&mut session.library(web)).await?;
    Ok(Json(json!({})))
}

/// `POST /api/assets/{id}/trash`: into Recently Deleted, with its Live Photo movie or RAW.
pub(crate) async fn trash(
    State(web): State<Arc<Web>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Answer {
    let asset_id = checked_id(&id)?.to_string();
    library_change(&web, &headers, async |lib| {
        let request = pb::TrashAssetRequest {
            asset_id,
            alone: false,
        };
        lib.trash_asset(request).await.map(drop)
    })
    .await
}

/// `POST /api/assets/{id}/restore`: back from Recently Deleted.
pub(crate) async fn restore(
    State(web): State<Arc<Web>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Answer {
    let asset_id = checked_id(&id)?.to_string();
    library_change(&web, &headers, async |lib| {
        lib.restore_asset(pb::RestoreAssetRequest { asset_id })
            .await
            .map(drop)
    })
    .await
}

/// `POST /api/assets/{id}/purge`: "delete now" from Recently Deleted.
pub(crate) async fn purge(
    State(web): State<Arc<Web>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Answer {
    let asset_id = checked_id(&id)?.to_string();
    library_change(&web, &headers, async |lib| {
        lib.purge_asset(pb::PurgeAssetRequest { asset_id })
            .await
            .map(drop)
    })
    .await
}

#[derive(serde::Deserialize)]
pub(crate) struct Revert {
    version: u32,
    request_id: String,
}

/// `POST /api/assets/{id}/revert {version, request_id}`: that version's content becomes a
/// new current version (a retry with the same request id makes no second one).
pub(crate) async fn revert(
    State(web): State<Arc<Web>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Json(form): Json<Revert>,
) -> Answer {
    let session = for_change(&web, &headers).await?;
    if form.request_id.is_empty() || form.request_id.len() > 100 {
        return Err(WebError::bad("request_id: 1 to 100 characters"));
    }
    let reply = session
        .library(&web)
        .revert_asset(pb::RevertAssetRequest {
            asset_id: checked_id(&id)?.to_string(),
            version: form.version,
            request_id: format!("web-{}", form.request_id),
        })
        .await?
        .into_inner();
    Ok(Json(json!({ "version": reply.version })))
}

#[derive(serde::Deserialize)]
pub(crate) struct Member {
    album_id: String,
    present: bool,
}

/// `POST /api/assets/{id}/album {album_id, present}`.
pub(crate) async fn album_member(
    State(web): State<Arc<Web>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Json(form): Json<Member>,
) -> Answer {
    let session = for_change(&web, &headers).await?;
    session
        .library(&web)
        .set_album_member(pb::SetAlbumMemberRequest {
            album_id: checked_id(&form.album_id)?.to_string(),
            asset_id: checked_id(&id)?.to_string(),
            present: form.present,
            clock: Some(session.clock(&web)),
        })
        .await?;
    Ok(Json(json!({})))
}

/// `GET /api/folders`: the folder tree with what each folder holds.
pub(crate) async fn folders(State(web): State<Arc<Web>>, headers: HeaderMap) -> Answer {
    let session = signed_in(&web, &headers).await?;
    let folders = session
        .library(&web)
        .list_folders(pb::ListFoldersRequest {})
        .await?
        .into_inner()
        .folders;
    Ok(Json(json!({
        "folders": folders.iter().map(|f| json!({"path": f.path, "assets": f.assets})).collect::<Vec<_>>(),
    })))
}

/// `GET /api/albums`.
pub(crate) async fn albums(State(web): State<Arc<Web>>, headers: HeaderMap) -> Answer {
    let session = signed_in(&web, &headers).await?;
    let albums = session
        .library(&web)
        .list_albums(pb::ListAlbumsRequest {})
        .await?
        .into_inner()
        .albums;
    Ok(Json(json!({
        "albums": albums.iter().map(|a| json!({
            "id": a.album_id,
            "name": a.name,
            "assets": a.assets,
            "cover": (!a.cover_asset_id.is_empty()).then_some(&a.cover_asset_id),
        })).collect::<Vec<_>>(),
    })))
}

#[derive(serde::Deserialize)]
pub(crate) struct NewAlbum {
    name: String,
}

/// `POST /api/albums {name}`: a new album (every device gets it through its feed).
pub(crate) async fn new_album(
    State(web): State<Arc<Web>>,
    headers: HeaderMap,
    Json(form): Json<NewAlbum>,
) -> Answer {
    let session = for_change(&web, &headers).await?;
    let name = form.name.trim();
    if name.is_empty() || name.len() > 1024 {
        return Err(WebError::bad("an album's name: 1 to 1024 bytes"));
    }
    let album_id = format!("web-{}", random_hex(web.entropy.as_ref(), 12));
    session
        .library(&web)
        .put_album(pb::PutAlbumRequest {
            album_id: album_id.clone(),
            name: name.to_string(),
            clock: Some(session.clock(&web)),
        })
        .await?;
    Ok(Json(json!({ "id": album_id, "name": name })))
}

/// `GET /api/devices`: every device with its state, the reason it does not sync and the
/// fix, in the policy's own words.
pub(crate) async fn devices(State(web): State<Arc<Web>>, headers: HeaderMap) -> Answer {
    let session = signed_in(&web, &headers).await?;
    let devices = session
        .accounts(&web)
        .list_devices(pb::ListDevicesRequest {
            account: String::new(),
        })
        .await?
        .into_inner()
        .devices;
    let shown: Vec<Value> = devices
        .iter()
        .map(|d| {
            let state = d.state.clone().unwrap_or_default();
            json!({
                "id": d.device_id,
                "name": d.name,
                "platform": d.platform,
                "version": d.client_version,
                "this_browser": d.device_id == session.device_id,
                "enrolled_at_ms": d.enrolled_at_ms,
                "revoked_at_ms": d.revoked_at_ms,
                "last_seen_ms": d.last_seen_ms,
                "silent_since_ms": d.silent_since_ms,
                "state": state.state,
                "reason": state.reason,
                "reason_since_ms": d.reason_since_ms,
                "message": if state.reason_message.is_empty() { &d.reason_message } else { &state.reason_message },
                "fix": if state.reason_fix.is_empty() { &d.reason_fix } else { &state.reason_fix },
                "pending_items": state.pending_items,
                "pending_bytes": state.pending_bytes,
                "pending_downloads": state.pending_downloads,
                "network": state.network,
                "battery_percent": state.battery_percent,
                "charging": state.charging,
                "free_bytes": state.free_bytes,
            })
        })
        .collect();
    Ok(Json(json!({ "devices": shown })))
}

/// `POST /api/devices/{id}/revoke`: a lost device stops at its next call; nothing on it is
/// deleted.
pub(crate) async fn revoke(
    State(web): State<Arc<Web>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Answer {
    let session = for_change(&web, &headers).await?;
    session
        .accounts(&web)
        .revoke_device(pb::RevokeDeviceRequest {
            device_id: checked_id(&id)?.to_string(),
            account: String::new(),
        })
        .await?;
    Ok(Json(json!({})))
}

/// `GET /api/account`: plan, usage and what the last scrub proved.
pub(crate) async fn account(State(web): State<Arc<Web>>, headers: HeaderMap) -> Answer {
    let session = signed_in(&web, &headers).await?;
    let reply = session
        .accounts(&web)
        .get_account(pb::GetAccountRequest {})
        .await?
        .into_inner();
    let account = reply.account.unwrap_or_default();
    let plan = account.plan.unwrap_or_default();
    Ok(Json(json!({
        "account": account.account,
        "plan": plan.name,
        "limit_bytes": plan.limit_bytes,
        "used_bytes": account.used_bytes,
        "reserved_bytes": account.reserved_bytes,
        "devices": account.devices,
        "integrity": account.integrity.map(|i| json!({
            "verified": i.verified,
            "waiting": i.waiting,
            "checked_at_ms": i.checked_at_ms,
        })),
    })))
}

/// `GET /api/events`: a server-sent event for every change to the library from now on
/// (the page reloads what it shows); a comment every 15 s keeps proxies from closing it.
pub(crate) async fn events(
    State(web): State<Arc<Web>>,
    headers: HeaderMap,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, WebError> {
    use futures::StreamExt;
    let session = signed_in(&web, &headers).await?;
    let stream = session
        .library(&web)
        .watch_changes(pb::WatchChangesRequest {
            cursor: 0,
            from_now: true,
        })
        .await?
        .into_inner();
    let events = stream
        .take_while(|page| std::future::ready(page.is_ok()))
        .filter_map(|page| async move {
            let page = page.ok()?;
            (!page.changes.is_empty()).then(|| {
                Ok(Event::default()
                    .event("change")
                    .data(page.changes.len().to_string()))
            })
        });
    Ok(Sse::new(events).keep_alive(KeepAlive::new().interval(std::time::Duration::from_secs(15))))
}
