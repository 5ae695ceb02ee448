//! Proto <-> domain conversion for the cloud's services. Proto types stop here: every
//! `TryFrom` destructures all fields, so a new proto field cannot be silently ignored. The
//! forms a client shares (ids, manifests, clocks) are in [`crate::wire`], re-exported here.

pub use crate::wire::*;

use crate::ApiError;
use keepsake_policy::{
    Cellular, Decision, DeviceStorage, Network, Power, Quota, Reason, Snapshot, Version, WorkClass,
};
use keepsake_proto::v1 as pb;
use keepsake_store::{ManifestId, ScrubReport};

/// The wire form of a scrub report.
pub fn scrub_to_wire(r: ScrubReport) -> pb::ScrubResponse {
    {
        let ScrubReport {
            packs_verified,
            chunks_verified,
            bytes_verified,
            corrupt_chunks,
            corrupt_packs,
            damaged,
            finished_at,
        } = r;
        pb::ScrubResponse {
            packs_verified,
            chunks_verified,
            bytes_verified,
            corrupt_chunk_ids: corrupt_chunks.iter().map(id_bytes).collect(),
            corrupt_packs,
            damaged_manifests: damaged.len() as u64,
            damaged: damaged_to_wire(&damaged),
            finished_at_unix_ms: finished_at,
        }
    }
}

/// Damaged (account, manifest) pairs as the wire carries them.
pub fn damaged_to_wire(damaged: &[(String, ManifestId)]) -> Vec<pb::DamagedManifest> {
    damaged
        .iter()
        .map(|(account, id)| pb::DamagedManifest {
            account: account.clone(),
            manifest_id: id_bytes(id),
        })
        .collect()
}

/// A policy snapshot that came off the wire (a newtype so the conversion lives here).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WireSnapshot(pub Snapshot);

fn version_from_wire(v: pb::Version) -> Version {
    let pb::Version {
        major,
        minor,
        patch,
    } = v;
    Version(major, minor, patch)
}

/// Longest account name accepted in a snapshot.
const MAX_ACCOUNT_LEN: usize = 256;

impl TryFrom<pb::Snapshot> for WireSnapshot {
    type Error = ApiError;

    fn try_from(value: pb::Snapshot) -> Result<Self, Self::Error> {
        let pb::Snapshot {
            now_unix_ms,
            account,
            sync_enabled,
            paused_until_unix_ms,
            power_override_until_unix_ms,
            network,
            cellular_allowed,
            cellular_unlimited_updates,
            cellular_daily_cap_bytes,
            cellular_used_today_bytes,
            battery_percent,
            charging,
            low_power_mode,
            device_free_bytes,
            device_total_bytes,
            optimize_storage,
            quota,
            client_version,
            server_min_version,
            server_reachable,
            clock_skew_ms,
            last_stall_unix_ms,
            metered,
        } = value;
        if account.as_ref().is_some_and(|a| a.len() > MAX_ACCOUNT_LEN) {
            return Err(ApiError::field(
                "snapshot.account",
                "is longer than 256 bytes",
            ));
        }
        let network = match pb::NetworkType::try_from(network) {
            Ok(pb::NetworkType::Unspecified) => None,
            Ok(pb::NetworkType::Offline) => Some(Network::Offline),
            Ok(pb::NetworkType::Cellular) => Some(Network::Cellular),
            Ok(pb::NetworkType::Wifi) => Some(Network::Wifi),
            Ok(pb::NetworkType::Wired) => Some(Network::Wired),
            Err(_) => {
                return Err(ApiError::field(
                    "snapshot.network",
                    format!("unknown value {network}"),
                ));
            }
        };
        let battery_percent = match battery_percent {
            None => None,
            Some(p) if p <= 100 => Some(p as u8),
            Some(p) => {
                return Err(ApiError::field(
                    "snapshot.battery_percent",
                    format!("{p} is not a percentage"),
                ));
            }
        };
        let client_version = client_version
            .map(version_from_wire)
            .ok_or_else(|| ApiError::field("snapshot.client_version", "is required"))?;
        Ok(WireSnapshot(Snapshot {
            now: now_unix_ms,
            account,
            sync_enabled,
            paused_until: paused_until_unix_ms,
            power_override_until: power_override_until_unix_ms,
            network,
            cellular: Cellular {
                allowed: cellular_allowed,
                unlimited_updates: cellular_unlimited_updates,
                daily_cap_bytes: cellular_daily_cap_bytes,
                used_today_bytes: cellular_used_today_bytes,
            },
            power: Power {
                battery_percent,
                charging,
                low_power_mode,
            },
            storage: DeviceStorage {
                free_bytes: device_free_bytes,
                total_bytes: device_total_bytes,
                optimize: optimize_storage,
            },
            quota: quota.map(|q| {
                let pb::Quota {
                    used_bytes,
                    limit_bytes,
                    pending_bytes,
                } = q;
                Quota {
                    used_bytes,
                    limit_bytes,
                    pending_bytes,
                }
            }),
            client_version,
            server_min_version: server_min_version.map(version_from_wire),
            server_reachable,
            clock_skew_ms,
            last_stall_at: last_stall_unix_ms,
            metered,
        }))
    }
}

fn reason_to_wire(r: &Reason) -> pb::Reason {
    pb::Reason {
        code: r.code.as_str().to_string(),
        message: r.message.clone(),
        fix: r.fix.clone(),
        clears_at_unix_ms: r.clears_at,
        clears_when: r.clears_when.clone().unwrap_or_default(),
    }
}

fn work_class_to_wire(c: WorkClass) -> pb::WorkClass {
    match c {
        WorkClass::Metadata => pb::WorkClass::Metadata,
        WorkClass::Thumbnails => pb::WorkClass::Thumbnails,
        WorkClass::PhotoUpload => pb::WorkClass::PhotoUpload,
        WorkClass::VideoUpload => pb::WorkClass::VideoUpload,
        WorkClass::OriginalDownload => pb::WorkClass::OriginalDownload,
        WorkClass::Maintenance => pb::WorkClass::Maintenance,
    }
}

/// The wire form of a policy decision.
pub fn decision_to_wire(d: &Decision) -> pb::Decision {
    pb::Decision {
        classes: d
            .classes
            .iter()
            .map(|c| pb::ClassDecision {
                work_class: work_class_to_wire(c.class) as i32,
                allowed: c.allowed,
                reasons: c.reasons.iter().map(reason_to_wire).collect(),
            })
            .collect(),
        bandwidth_budget_bytes: d.bandwidth_budget_bytes,
        notices: d.notices.iter().map(reason_to_wire).collect(),
    }
}

fn kind_from_wire(kind: i32) -> Result<keepsake_library::AssetKind, ApiError> {
    match pb::AssetKind::try_from(kind) {
        Ok(pb::AssetKind::Photo) => Ok(keepsake_library::AssetKind::Photo),
        Ok(pb::AssetKind::Video) => Ok(keepsake_library::AssetKind::Video),
        _ => Err(ApiError::field("kind", "must be PHOTO or VIDEO")),
    }
}

/// A search from the wire, checked: a box has four sides, a circle a centre and a radius,
/// every coordinate is on the globe. Returns the query, the page size and the page.
pub fn search_from_wire(
    req: pb::SearchAssetsRequest,
) -> Result<(keepsake_library::SearchQuery, usize, Option<String>), ApiError> {
    let pb::SearchAssetsRequest {
        taken_from_ms,
        taken_until_ms,
        camera,
        south,
        west,
        north,
        east,
        latitude,
        longitude,
        radius_m,
        kind,
        favorite,
        hidden,
        album,
        name,
        page_size,
        page,
        live_photos,
        trashed,
        folder,
    } = req;
    if let Some(folder) = folder.as_deref().map(|f| f.trim_matches('/')) {
        if folder.len() > 1024 {
            return Err(ApiError::field("folder", "at most 1024 bytes"));
        }
        if !folder.is_empty() && keepsake_path::check(folder).is_err() {
            return Err(ApiError::field("folder", "not a folder of the library"));
        }
    }
    let degrees = |field: &'static str, d: f64, max: f64| {
        keepsake_device::degrees_e7(d)
            .filter(|_| d.abs() <= max)
            .ok_or_else(|| ApiError::field(field, format!("degrees within ±{max}")))
    };
    let within_e7 = match (south, west, north, east) {
        (None, None, None, None) => None,
        (Some(s), Some(w), Some(n), Some(e)) => Some((
            degrees("south", s, 90.0)?,
            degrees("west", w, 180.0)?,
            degrees("north", n, 90.0)?,
            degrees("east", e, 180.0)?,
        )),
        _ => {
            return Err(ApiError::field(
                "south",
                "give all four sides of the box, or none",
            ));
        }
    };
    let near_e7 = match (latitude, longitude, radius_m) {
        (None, None, None) => None,
        (Some(lat), Some(lon), Some(r)) if r > 0 => Some((
            (
                degrees("latitude", lat, 90.0)?,
                degrees("longitude", lon, 180.0)?,
            ),
            r,
        )),
        _ => {
            return Err(ApiError::field(
                "radius_m",
                "give latitude, longitude and a radius above 0, or none",
            ));
        }
    };
    for (field, text) in [("camera", &camera), ("album", &album), ("name", &name)] {
        if text.len() > 256 {
            return Err(ApiError::field(field, "at most 256 bytes"));
        }
    }
    let some = |t: String| (!t.is_empty()).then_some(t);
    let query = keepsake_library::SearchQuery {
        taken_from: taken_from_ms,
        taken_until: taken_until_ms,
        camera: some(camera),
        within_e7,
        near_e7,
        kind: if kind == pb::AssetKind::Unspecified as i32 {
            None
        } else {
            Some(kind_from_wire(kind)?)
        },
        favorite,
        hidden,
        album: some(album),
        name: some(name),
        live_photos,
        trashed,
        folder,
    };
    let size = match page_size {
        0 => 100,
        n => (n as usize).min(keepsake_library::MAX_SEARCH_PAGE),
    };
    Ok((query, size, some(page)))
}

fn kind_to_wire(kind: keepsake_library::AssetKind) -> pb::AssetKind {
    match kind {
        keepsake_library::AssetKind::Photo => pb::AssetKind::Photo,
        keepsake_library::AssetKind::Video => pb::AssetKind::Video,
    }
}

fn state_to_wire(state: keepsake_library::AssetState) -> (pb::AssetState, Option<i64>) {
    use keepsake_library::AssetState as S;
    match state {
        S::Live => (pb::AssetState::Live, None),
        S::Trashed(at) => (pb::AssetState::Trashed, Some(at)),
        S::Purged(at) => (pb::AssetState::Purged, Some(at)),
    }
}

/// A device's hybrid logical clock from the wire (required on every metadata change).
pub fn clock_from_wire(clock: Option<pb::Clock>) -> Result<keepsake_library::Hlc, ApiError> {
    let pb::Clock {
        wall_ms,
        counter,
        device,
    } = clock.ok_or_else(|| ApiError::field("clock", "is required"))?;
    if device.is_empty() || device.len() > 64 {
        return Err(ApiError::field("clock.device", "must be 1..=64 bytes"));
    }
    if wall_ms < 0 {
        return Err(ApiError::field("clock.wall_ms", "must not be negative"));
    }
    Ok(keepsake_library::Hlc {
        wall_ms,
        counter,
        device,
    })
}

/// An asset's wire form.
pub fn asset_to_wire(asset: keepsake_library::Asset) -> pb::Asset {
    let keepsake_library::Asset {
        asset_id,
        kind,
        capture_time,
        width,
        height,
        original_name,
        version,
        manifest,
        file_hash,
        size,
        favorite,
        hidden,
        title,
        state,
        seq: _,
        clock,
        derived,
        derivation,
        damaged,
        path,
        details,
        companion_of,
    } = asset;
    let (state, state_at_ms) = state_to_wire(state);
    let (pair_of, pair_role) = match companion_of {
        Some((of, role)) => (of, role.as_str().to_string()),
        None => (String::new(), String::new()),
    };
    pb::Asset {
        asset_id,
        kind: kind_to_wire(kind).into(),
        capture_time_ms: capture_time,
        width,
        height,
        original_name,
        version,
        manifest_id: id_bytes(&manifest),
        file_hash: id_bytes(&file_hash),
        size,
        favorite,
        hidden,
        title,
        state: state.into(),
        state_at_ms,
        clock: Some(clock_to_wire(clock)),
        derivatives: derived
            .into_iter()
            .map(|d| {
                let keepsake_library::Derived {
                    role,
                    manifest,
                    width,
                    height,
                    size,
                } = d;
                pb::Derivative {
                    role,
                    manifest_id: id_bytes(&manifest),
                    width,
                    height,
                    size,
                }
            })
            .collect(),
        derivation,
        damaged,
        path,
        details: details_to_wire(details),
        pair_of,
        pair_role,
    }
}

/// A feed page's wire form.
pub fn page_to_wire(page: keepsake_library::ChangePage) -> pb::ListChangesResponse {
    let keepsake_library::ChangePage {
        changes,
        cursor,
        more,
    } = page;
    let changes = changes
        .into_iter()
        .map(|c| pb::Change {
            row: Some(match c {
                keepsake_library::Change::Asset(a) => pb::change::Row::Asset(asset_to_wire(a)),
                keepsake_library::Change::Album(a) => {
                    let keepsake_library::Album {
                        album_id,
                        name,
                        deleted,
                        members,
                        seq: _,
                        clock,
                    } = a;
                    pb::change::Row::Album(pb::Album {
                        album_id,
                        name,
                        deleted,
                        members,
                        clock: Some(clock_to_wire(clock)),
                    })
                }
            }),
        })
        .collect();
    pb::ListChangesResponse {
        changes,
        cursor,
        more,
    }
}

/// A version's wire form.
pub fn version_to_wire(v: keepsake_library::VersionInfo) -> pb::AssetVersion {
    let keepsake_library::VersionInfo {
        version,
        manifest,
        file_hash,
        size,
        base_version,
        device,
        created_at,
        conflicts_with,
        details,
    } = v;
    pb::AssetVersion {
        version,
        manifest_id: id_bytes(&manifest),
        file_hash: id_bytes(&file_hash),
        size,
        base_version,
        device,
        created_at_ms: created_at,
        conflicts_with,
        details: details_to_wire(details),
    }
}

/// A file's details on the wire; `None` when it records nothing.
pub fn details_to_wire(d: keepsake_library::MediaDetails) -> Option<pb::MediaDetails> {
    let keepsake_library::MediaDetails {
        camera_make,
        camera_model,
        position_e7,
        orientation,
        duration_ms,
        content_identifier,
        lens,
        altitude_cm,
        utc_offset_minutes,
        codec,
    } = d;
    crate::wire::details_to_wire(
        position_e7,
        pb::MediaDetails {
            camera_make,
            camera_model,
            latitude: None,
            longitude: None,
            orientation: u32::from(orientation),
            duration_ms,
            content_identifier,
            lens,
            altitude_m: altitude_cm.map(|cm| f64::from(cm) / 100.0),
            utc_offset_minutes: utc_offset_minutes.map(i32::from),
            codec,
        },
    )
}

/// A file's details from the wire, checked: text bounded, the place on the globe.
pub fn details_from_wire(
    d: Option<pb::MediaDetails>,
) -> Result<keepsake_library::MediaDetails, ApiError> {
    let Some(pb::MediaDetails {
        camera_make,
        camera_model,
        latitude,
        longitude,
        orientation,
        duration_ms,
        content_identifier,
        lens,
        altitude_m,
        utc_offset_minutes,
        codec,
    }) = d
    else {
        return Ok(keepsake_library::MediaDetails::default());
    };
    let position_e7 = match (latitude, longitude) {
        (None, None) => None,
        (Some(lat), Some(lon)) => Some(
            keepsake_device::degrees_e7(lat)
                .zip(keepsake_device::degrees_e7(lon))
                .ok_or_else(|| ApiError::field("details.latitude", "not a number of degrees"))?,
        ),
        _ => {
            return Err(ApiError::field(
                "details.longitude",
                "give both latitude and longitude, or neither",
            ));
        }
    };
    let details = keepsake_library::MediaDetails {
        camera_make,
        camera_model,
        position_e7,
        orientation: u8::try_from(orientation)
            .map_err(|_| ApiError::field("details.orientation", "1..=8, or 0"))?,
        duration_ms,
        content_identifier,
        lens,
        altitude_cm: match altitude_m {
            None => None,
            Some(m) if m.is_finite() && m.abs() < 100_000.0 => Some((m * 100.0).round() as i32),
            Some(_) => {
                return Err(ApiError::field(
                    "details.altitude_m",
                    "metres within ±100 km",
                ));
            }
        },
        utc_offset_minutes: match utc_offset_minutes {
            None => None,
            Some(m) => Some(
                i16::try_from(m)
                    .map_err(|_| ApiError::field("details.utc_offset_minutes", "±14 hours"))?,
            ),
        },
        codec,
    };
    details
        .check()
        .map_err(|why| ApiError::field("details", why))?;
    Ok(details)
}

/// A commit from the wire, for `device` (taken from the caller's token, never the request).
pub fn commit_from_wire(
    req: pb::CommitAssetRequest,
    device: String,
) -> Result<keepsake_library::CommitAsset, ApiError> {
    let pb::CommitAssetRequest {
        request_id,
        asset_id,
        base_version,
        manifest_id,
        kind,
        capture_time_ms,
        width,
        height,
        original_name,
        reservation_id,
        manifest,
        manifest_edit,
        path,
        details,
    } = req;
    let details = details_from_wire(details)?;
    if !path.is_empty() {
        keepsake_path::check(&path).map_err(|e| ApiError::field("path", e.why))?;
    }
    let manifest_upload = match (manifest, manifest_edit) {
        (None, None) => None,
        (Some(whole), None) => {
            let WireManifest(whole) = whole.try_into()?;
            Some(keepsake_library::ManifestUpload::Whole(whole))
        }
        (None, Some(edit)) => {
            let WireManifestEdit {
                base,
                splices,
                file_hash,
            } = edit.try_into()?;
            Some(keepsake_library::ManifestUpload::Edit {
                base,
                splices,
                file_hash,
            })
        }
        (Some(_), Some(_)) => {
            return Err(ApiError::field(
                "manifest_edit",
                "give the manifest or an edit of one, not both",
            ));
        }
    };
    Ok(keepsake_library::CommitAsset {
        request_id,
        asset_id: (!asset_id.is_empty()).then_some(asset_id),
        base_version,
        manifest: chunk_id("manifest_id", &manifest_id)?,
        kind: kind_from_wire(kind)?,
        capture_time: capture_time_ms,
        width,
        height,
        original_name,
        path,
        device,
        reservation_id: (!reservation_id.is_empty()).then_some(reservation_id),
        manifest_upload,
        details,
    })
}

/// A device report from the wire.
pub fn report_from_wire(
    state: Option<pb::DeviceState>,
) -> Result<keepsake_library::DeviceReport, ApiError> {
    let pb::DeviceState {
        state,
        reason,
        pending_items,
        pending_bytes,
        done_items,
        failed_items,
        network,
        battery_percent,
        charging,
        free_bytes,
        pending_downloads,
        pending_download_bytes,
        reason_message,
        reason_fix,
    } = state.ok_or_else(|| ApiError::field("state", "is required"))?;
    let battery_percent = battery_percent
        .map(|b| u8::try_from(b).ok().filter(|b| *b <= 100))
        .map(|b| b.ok_or_else(|| ApiError::field("state.battery_percent", "must be 0..=100")))
        .transpose()?;
    Ok(keepsake_library::DeviceReport {
        state,
        reason: (!reason.is_empty()).then_some(reason),
        pending_items,
        pending_bytes,
        done_items,
        failed_items,
        network,
        battery_percent,
        charging,
        free_bytes,
        pending_downloads,
        pending_download_bytes,
        reason_message: (!reason_message.is_empty()).then_some(reason_message),
        reason_fix: (!reason_fix.is_empty()).then_some(reason_fix),
    })
}

/// A device's wire form.
pub fn device_to_wire(d: keepsake_library::Device) -> pb::Device {
    let keepsake_library::Device {
        device_id,
        name,
        platform,
        client_version,
        enrolled_at,
        revoked_at,
        last_seen,
        report,
        reason_since,
        silent_since,
    } = d;
    // A silent device's reason is that silence, in the policy's words; else what it said.
    let words = match (&silent_since, &report) {
        (Some(_), _) => {
            keepsake_policy::doctor::lived_reason("DEVICE_SILENT", None).map(|r| (r.message, r.fix))
        }
        (None, Some(r)) => r.reason.as_ref().map(|code| {
            let said = keepsake_policy::doctor::lived_reason(code, r.reason_message.as_deref());
            (
                r.reason_message
                    .clone()
                    .or_else(|| said.as_ref().map(|s| s.message.clone()))
                    .unwrap_or_default(),
                r.reason_fix
                    .clone()
                    .or_else(|| said.map(|s| s.fix))
                    .unwrap_or_default(),
            )
        }),
        (None, None) => None,
    };
    let (reason_message, reason_fix) = words.unwrap_or_default();
    let state = report.map(|r| {
        let keepsake_library::DeviceReport {
            state,
            reason,
            pending_items,
            pending_bytes,
            done_items,
            failed_items,
            network,
            battery_percent,
            charging,
            free_bytes,
            pending_downloads,
            pending_download_bytes,
            reason_message,
            reason_fix,
        } = r;
        pb::DeviceState {
            state,
            reason: reason.unwrap_or_default(),
            pending_items,
            pending_bytes,
            done_items,
            failed_items,
            network,
            battery_percent: battery_percent.map(u32::from),
            charging,
            free_bytes,
            pending_downloads,
            pending_download_bytes,
            reason_message: reason_message.unwrap_or_default(),
            reason_fix: reason_fix.unwrap_or_default(),
        }
    });
    pb::Device {
        device_id,
        name,
        platform,
        client_version,
        enrolled_at_ms: enrolled_at,
        revoked_at_ms: revoked_at,
        last_seen_ms: last_seen,
        state,
        reason_since_ms: reason_since,
        silent_since_ms: silent_since,
        reason_message,
        reason_fix,
    }
}

/// An account's wire form.
pub fn account_to_wire(info: keepsake_library::AccountInfo) -> pb::Account {
    let keepsake_library::AccountInfo {
        account,
        plan,
        used_bytes,
        reserved_bytes,
        admin,
        failed_sign_ins,
        devices,
        integrity,
    } = info;
    let keepsake_library::FailedSignIns {
        count,
        last_at,
        last_from,
    } = failed_sign_ins;
    pb::Account {
        account,
        plan: Some(plan_to_wire(plan)),
        used_bytes,
        reserved_bytes,
        admin,
        failed_sign_ins: count,
        last_failed_sign_in_ms: last_at.unwrap_or(0),
        last_failed_sign_in_from: last_from.unwrap_or_default(),
        devices,
        integrity: integrity.map(|i| {
            let keepsake_library::Integrity {
                verified,
                waiting,
                checked_at,
            } = i;
            pb::Integrity {
                verified,
                waiting,
                checked_at_ms: checked_at,
            }
        }),
    }
}

/// A plan's wire form.
pub fn plan_to_wire(plan: keepsake_library::Plan) -> pb::Plan {
    let keepsake_library::Plan { name, limit_bytes } = plan;
    pb::Plan { name, limit_bytes }
}

/// A token's wire form.
pub fn token_to_wire(t: keepsake_library::IssuedToken) -> pb::AccessToken {
    let keepsake_library::IssuedToken { token, expires_at } = t;
    pb::AccessToken {
        token,
        expires_at_ms: expires_at,
    }
}

/// A library scrub's wire form.
pub fn library_scrub_to_wire(r: keepsake_library::LibraryScrub) -> pb::ScrubLibraryResponse {
    let keepsake_library::LibraryScrub {
        store,
        assets_verified,
        damaged,
        previews_requeued,
    } = r;
    pb::ScrubLibraryResponse {
        previews_requeued: previews_requeued as u64,
        packs_verified: store.packs_verified,
        chunks_verified: store.chunks_verified,
        bytes_verified: store.bytes_verified,
        corrupt_chunks: store.corrupt_chunks.len() as u64,
        assets_verified,
        damaged: damaged
            .into_iter()
            .map(|d| {
                let keepsake_library::DamagedAsset {
                    account,
                    asset_id,
                    original_name,
                } = d;
                pb::DamagedAsset {
                    account,
                    asset_id,
                    original_name,
                }
            })
            .collect(),
        finished_at_unix_ms: store.finished_at,
    }
}

/// A metadata field from the wire.
pub fn metadata_field_from_wire(
    field: Option<pb::set_metadata_request::Field>,
) -> Result<keepsake_library::MetadataField, ApiError> {
    use keepsake_library::MetadataField;
    use pb::set_metadata_request::Field;
    Ok(
        match field.ok_or_else(|| ApiError::field("field", "is required"))? {
            Field::Favorite(v) => MetadataField::Favorite(v),
            Field::Hidden(v) => MetadataField::Hidden(v),
            Field::Title(t) => MetadataField::Title(t),
            Field::CaptureTimeMs(t) => MetadataField::CaptureTime(t),
            Field::Place(pb::Place {
                latitude,
                longitude,
            }) => MetadataField::Place(match (latitude, longitude) {
                (None, None) => None,
                (Some(lat), Some(lon)) if lat.abs() <= 90.0 && lon.abs() <= 180.0 => Some(
                    keepsake_device::degrees_e7(lat)
                        .zip(keepsake_device::degrees_e7(lon))
                        .ok_or_else(|| ApiError::field("place", "not a number of degrees"))?,
                ),
                _ => {
                    return Err(ApiError::field(
                        "place",
                        "latitude within ±90° and longitude within ±180°, both or neither",
                    ));
                }
            }),
        },
    )
}

/// A library path from the wire: refused unless it is a plain relative path.
pub fn path_from_wire(path: String) -> Result<String, ApiError> {
    keepsake_path::check(&path).map_err(|e| ApiError::field("path", e.why))?;
    Ok(path)
}

/// One edit of an ApplyEdits call from the wire.
pub fn edit_from_wire(edit: pb::LibraryEdit) -> Result<keepsake_library::LibraryEdit, ApiError> {
    use keepsake_library::LibraryEdit;
    use pb::library_edit::Edit;
    let pb::LibraryEdit { edit } = edit;
    Ok(
        match edit.ok_or_else(|| ApiError::field("edits.edit", "is required"))? {
            Edit::SetMetadata(pb::SetMetadataRequest {
                asset_id,
                clock,
                field,
            }) => LibraryEdit::Metadata {
                asset_id,
                field: metadata_field_from_wire(field)?,
                clock: clock_from_wire(clock)?,
            },
            Edit::PutAlbum(pb::PutAlbumRequest {
                album_id,
                name,
                clock,
            }) => LibraryEdit::PutAlbum {
                album_id,
                name,
                clock: clock_from_wire(clock)?,
            },
            Edit::DeleteAlbum(pb::DeleteAlbumRequest { album_id, clock }) => {
                LibraryEdit::DeleteAlbum {
                    album_id,
                    clock: clock_from_wire(clock)?,
                }
            }
            Edit::SetAlbumMember(pb::SetAlbumMemberRequest {
                album_id,
                asset_id,
                present,
                clock,
            }) => LibraryEdit::Member {
                album_id,
                asset_id,
                present,
                clock: clock_from_wire(clock)?,
            },
            Edit::TrashAsset(pb::TrashAssetRequest { asset_id, alone }) => {
                LibraryEdit::Trash { asset_id, alone }
            }
            Edit::RestoreAsset(pb::RestoreAssetRequest { asset_id }) => {
                LibraryEdit::Restore { asset_id }
            }
            Edit::RenameAsset(pb::RenameAssetRequest {
                asset_id,
                path,
                clock,
            }) => LibraryEdit::Rename {
                asset_id,
                path: path_from_wire(path)?,
                clock: clock_from_wire(clock)?,
            },
        },
    )
}
