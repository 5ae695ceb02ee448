//! The owner's view of the account from any terminal: its devices (what each said, when it
//! was last heard, what it still has to move), revoking a lost one, the plan and the
//! integrity proof, an asset's versions and going back to one.

use crate::device_cli::{Credentials, ServerArgs, megabytes, now_ms, plain, signed_in, utc};
use anyhow::{Context, Result, bail};
use keepsake_transport::client::{self, BearerAuth, pb};

/// "3 min ago", "2 h ago", "5 days ago": how long since `at`.
pub(crate) fn ago(now: i64, at: i64) -> String {
    let s = (now - at).max(0) / 1000;
    match s {
        s if s < 90 => format!("{s} s ago"),
        s if s < 90 * 60 => format!("{} min ago", s / 60),
        s if s < 36 * 3600 => format!("{} h ago", s / 3600),
        s => format!("{} days ago", s / 86_400),
    }
}

/// One device of `keepsake devices`, as lines a person reads.
pub(crate) fn describe_device(d: &pb::Device, now: i64) -> Vec<String> {
    let state = d.state.clone().unwrap_or_default();
    let heard = d.last_seen_ms.map_or_else(
        || "never heard from".to_string(),
        |at| format!("last contact {} ({})", ago(now, at), utc(at)),
    );
    let mut lines = vec![format!(
        "{}  {} ({}, v{}): {heard}",
        d.device_id, d.name, d.platform, d.client_version
    )];
    let headline = if let Some(at) = d.revoked_at_ms {
        format!("revoked on {}", utc(at))
    } else if let Some(since) = d.silent_since_ms {
        format!("silent since {} [DEVICE_SILENT]", utc(since))
    } else if state.state.is_empty() {
        "has not reported yet".to_string()
    } else if state.reason.is_empty() {
        state.state.clone()
    } else {
        let since = d
            .reason_since_ms
            .map(|at| format!(" since {}", utc(at)))
            .unwrap_or_default();
        format!("{} [{}]{since}", state.state, state.reason)
    };
    lines.push(format!("    {headline}"));
    if d.revoked_at_ms.is_none() {
        if !d.reason_message.is_empty() {
            lines.push(format!("    {}", d.reason_message));
        }
        if !d.reason_fix.is_empty() {
            lines.push(format!("    Fix: {}", d.reason_fix));
        }
    }
    if !state.state.is_empty() {
        lines.push(format!(
            "    to upload: {} ({}); to download: {} ({})",
            state.pending_items,
            megabytes(state.pending_bytes),
            state.pending_downloads,
            megabytes(state.pending_download_bytes)
        ));
        let battery = match state.battery_percent {
            Some(p) if state.charging => format!("battery {p}%, charging"),
            Some(p) => format!("battery {p}%"),
            None if state.charging => "on power".to_string(),
            None => "no battery".to_string(),
        };
        let free = state.free_bytes.map_or_else(
            || "free space unknown".to_string(),
            |b| format!("{} free", megabytes(b)),
        );
        lines.push(format!(
            "    network {}, {battery}, {free}",
            if state.network.is_empty() {
                "unknown"
            } else {
                &state.network
            }
        ));
    }
    lines
}

/// `keepsake devices`: the account's device ledger (another account's for an administrator).
pub async fn devices(
    server: ServerArgs,
    credentials: Credentials,
    account: Option<String>,
) -> Result<()> {
    let (channel, token) = signed_in(&server, &credentials).await?;
    let mut accounts = client::accounts_client(channel, BearerAuth::new(&token));
    let list = accounts
        .list_devices(pb::ListDevicesRequest {
            account: account.clone().unwrap_or_default(),
        })
        .await
        .map_err(|s| plain(s.into()))?
        .into_inner()
        .devices;
    if list.is_empty() {
        println!("no devices are enrolled");
    }
    let now = now_ms();
    for d in &list {
        for line in describe_device(d, now) {
            println!("{line}");
        }
    }
    // Wrong passwords given for the account: the owner is the one to see them.
    if account.is_none()
        && let Ok(reply) = accounts.get_account(pb::GetAccountRequest {}).await
        && let Some(account) = reply.into_inner().account
        && account.failed_sign_ins > 0
    {
        println!(
            "{} failed sign-ins since the password was set; the last {} from {}",
            account.failed_sign_ins,
            ago(now, account.last_failed_sign_in_ms),
            account.last_failed_sign_in_from
        );
    }
    Ok(())
}

/// Revoke (keep in the ledger, marked) or remove (take out of it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retire {
    /// `keepsake device revoke`.
    Revoke,
    /// `keepsake device remove`.
    Remove,
}

/// The one device `name` names (its name, or its id) among `list`.
fn device_named<'a>(list: &'a [pb::Device], name: &str) -> Result<&'a pb::Device> {
    if let Some(d) = list.iter().find(|d| d.device_id == name) {
        return Ok(d);
    }
    let named: Vec<&pb::Device> = list.iter().filter(|d| d.name == name).collect();
    match named.as_slice() {
        [one] => Ok(one),
        [] => bail!("no device of this account is called {name:?}; `keepsake devices` lists them"),
        many => bail!(
            "{} devices are called {name:?}; give the id of the one you mean: {}",
            many.len(),
            many.iter()
                .map(|d| d.device_id.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// Which device `keepsake device revoke|remove` acts on.
#[derive(clap::Args, Clone)]
pub struct RetireArgs {
    #[command(flatten)]
    server: ServerArgs,
    #[command(flatten)]
    credentials: Credentials,
    /// A device of another account (administrators).
    #[arg(long = "of")]
    of: Option<String>,
    /// The device: its name or id (`keepsake devices` lists them).
    name: String,
}

/// `keepsake device revoke NAME` / `keepsake device remove NAME`: the device's agent
/// stops at its next call with DEVICE_REVOKED; nothing it holds is deleted.
pub async fn retire(args: RetireArgs, how: Retire) -> Result<()> {
    let RetireArgs {
        server,
        credentials,
        of: account,
        name,
    } = args;
    let (channel, token) = signed_in(&server, &credentials).await?;
    let mut accounts = client::accounts_client(channel, BearerAuth::new(&token));
    let account = account.unwrap_or_default();
    let list = accounts
        .list_devices(pb::ListDevicesRequest {
            account: account.clone(),
        })
        .await
        .map_err(|s| plain(s.into()))?
        .into_inner()
        .devices;
    let device = device_named(&list, &name)?;
    let device_id = device.device_id.clone();
    match how {
        Retire::Revoke => {
            accounts
                .revoke_device(pb::RevokeDeviceRequest {
                    device_id: device_id.clone(),
                    account,
                })
                .await
                .map_err(|s| plain(s.into()))?;
            println!(
                "revoked {} ({device_id}): it syncs nothing from its next call on, and keeps \
                 every file it holds; enrol it again to bring it back",
                device.name
            );
        }
        Retire::Remove => {
            accounts
                .remove_device(pb::RemoveDeviceRequest {
                    device_id: device_id.clone(),
                    account,
                })
                .await
                .map_err(|s| plain(s.into()))?;
            println!(
                "removed {} ({device_id}) from the account: revoked, and no longer listed; \
                 nothing on it was deleted",
                device.name
            );
        }
    }
    Ok(())
}

/// `keepsake account show`: plan, usage, devices and the integrity proof.
pub async fn show_account(server: ServerArgs, credentials: Credentials) -> Result<()> {
    let (channel, token) = signed_in(&server, &credentials).await?;
    let mut accounts = client::accounts_client(channel, BearerAuth::new(&token));
    let account = accounts
        .get_account(pb::GetAccountRequest {})
        .await
        .map_err(|s| plain(s.into()))?
        .into_inner()
        .account
        .context("the server sent no account")?;
    for line in describe_account(&account) {
        println!("{line}");
    }
    Ok(())
}

/// An account as its owner reads it.
pub(crate) fn describe_account(a: &pb::Account) -> Vec<String> {
    let plan = a.plan.clone().unwrap_or_default();
    let mut lines = vec![
        format!(
            "account {}{}",
            a.account,
            if a.admin { " (administrator)" } else { "" }
        ),
        format!(
            "plan {}: {} used of {}{}",
            plan.name,
            megabytes(a.used_bytes),
            megabytes(plan.limit_bytes),
            if a.reserved_bytes > 0 {
                format!(
                    " ({} held for uploads in progress)",
                    megabytes(a.reserved_bytes)
                )
            } else {
                String::new()
            }
        ),
        format!("{} devices enrolled", a.devices),
    ];
    lines.push(match &a.integrity {
        None => "integrity: no scrub has checked this library yet".to_string(),
        Some(i) if i.waiting == 0 => format!(
            "integrity: your {} originals were verified on {}",
            i.verified,
            utc(i.checked_at_ms)
        ),
        Some(i) => format!(
            "integrity: {} originals were verified on {}; {} need a device to re-send them \
             (any device that has them does so by itself)",
            i.verified,
            utc(i.checked_at_ms),
            i.waiting
        ),
    });
    lines
}

/// `keepsake account ls` (administrators): every account with its plan, usage and devices.
pub async fn list_accounts(server: ServerArgs, admin: Credentials) -> Result<()> {
    let (channel, token) = signed_in(&server, &admin).await?;
    let mut accounts = client::accounts_client(channel, BearerAuth::new(&token));
    let list = accounts
        .list_accounts(pb::ListAccountsRequest {})
        .await
        .map_err(|s| plain(s.into()))?
        .into_inner()
        .accounts;
    println!(
        "{:<24} {:<8} {:>14} {:>14} {:>8}",
        "ACCOUNT", "PLAN", "USED", "LIMIT", "DEVICES"
    );
    for a in list {
        let plan = a.plan.unwrap_or_default();
        println!(
            "{:<24} {:<8} {:>14} {:>14} {:>8}",
            a.account,
            plan.name,
            megabytes(a.used_bytes),
            megabytes(plan.limit_bytes),
            a.devices
        );
    }
    Ok(())
}

/// The asset `what` names: an asset id, or a live asset's path in the library.
async fn asset_named(lib: &mut client::LibraryApi, what: &str) -> Result<pb::Asset> {
    if let Ok(reply) = lib
        .get_asset(pb::GetAssetRequest {
            asset_id: what.to_string(),
        })
        .await
        && let Some(asset) = reply.into_inner().asset
    {
        return Ok(asset);
    }
    let wanted = what.trim_start_matches("./");
    for change in crate::device_cli::whole_feed(lib).await? {
        if let Some(pb::change::Row::Asset(a)) = change.row
            && a.state == pb::AssetState::Live as i32
            && a.path == wanted
        {
            return Ok(a);
        }
    }
    bail!("no photo at {what:?} in the library (give its path in the library, or its id)")
}

async fn versions_of(
    lib: &mut client::LibraryApi,
    asset_id: &str,
) -> Result<Vec<pb::AssetVersion>> {
    Ok(lib
        .list_versions(pb::ListVersionsRequest {
            asset_id: asset_id.to_string(),
        })
        .await
        .map_err(|s| plain(s.into()))?
        .into_inner()
        .versions)
}

/// `keepsake versions PATH|ID`: every version of an asset, the current one marked.
pub async fn versions(server: ServerArgs, credentials: Credentials, what: String) -> Result<()> {
    let (channel, token) = signed_in(&server, &credentials).await?;
    let mut lib = client::library_client(channel, BearerAuth::new(&token));
    let asset = asset_named(&mut lib, &what).await?;
    let versions = versions_of(&mut lib, &asset.asset_id).await?;
    println!("{} ({})", asset.path, asset.asset_id);
    for v in versions {
        let current = if v.version == asset.version { "*" } else { " " };
        let same_as = if v.file_hash == asset.file_hash && v.version != asset.version {
            " (same content as the current one)"
        } else {
            ""
        };
        println!(
            "{current} v{:<3} {}  {:>12} bytes  from {}{same_as}",
            v.version,
            utc(v.created_at_ms),
            v.size,
            v.device
        );
    }
    Ok(())
}

/// `keepsake revert PATH|ID --to N`: version N becomes current again on every device.
pub async fn revert(
    server: ServerArgs,
    credentials: Credentials,
    what: String,
    to: u32,
) -> Result<()> {
    let (channel, token) = signed_in(&server, &credentials).await?;
    let mut lib = client::library_client(channel, BearerAuth::new(&token));
    let asset = asset_named(&mut lib, &what).await?;
    let versions = versions_of(&mut lib, &asset.asset_id).await?;
    let target = versions.iter().find(|v| v.version == to).with_context(|| {
        format!(
            "{} has no v{to}; `keepsake versions {what}` lists its versions",
            asset.path
        )
    })?;
    if target.file_hash == asset.file_hash {
        // Asked twice (the first reply lost), or already reverted: nothing to do.
        println!(
            "{} already has v{to}'s content (as v{})",
            asset.path, asset.version
        );
        return Ok(());
    }
    // The same revert asked again (a retry after a lost reply) is the same request.
    let request_id = format!("revert:{}:{}:{to}", asset.asset_id, asset.version);
    let reply = lib
        .revert_asset(pb::RevertAssetRequest {
            asset_id: asset.asset_id.clone(),
            version: to,
            request_id,
        })
        .await
        .map_err(|s| plain(s.into()))?
        .into_inner();
    println!(
        "{} is v{to}'s content again, as v{} on every device (nothing was uploaded)",
        asset.path, reply.version
    );
    Ok(())
}

/// What `keepsake search` looks for (every option narrows; none lists everything).
#[derive(clap::Args, Clone, Debug)]
pub struct SearchArgs {
    /// Only what is directly in this folder of the library ("" for the top).
    #[arg(long)]
    pub folder: Option<String>,
    /// Search Recently Deleted instead of the library.
    #[arg(long)]
    pub trashed: bool,
    /// Taken on or after this day (YYYY-MM-DD, UTC).
    #[arg(long, value_parser = crate::device_cli::moment_ms)]
    pub from: Option<i64>,
    /// Taken before this day (YYYY-MM-DD, UTC).
    #[arg(long, value_parser = crate::device_cli::moment_ms)]
    pub until: Option<i64>,
    /// Part of the camera's maker or model ("iphone", "EOS R5").
    #[arg(long)]
    pub camera: Option<String>,
    /// Near a place: LATITUDE,LONGITUDE in degrees (with --radius-km).
    #[arg(long, value_parser = degrees_pair, allow_hyphen_values = true)]
    pub near: Option<(f64, f64)>,
    /// How far from --near, in kilometres.
    #[arg(long, default_value_t = 1.0)]
    pub radius_km: f64,
    /// Inside a box: SOUTH,WEST,NORTH,EAST in degrees.
    #[arg(long = "box", value_parser = degrees_box, allow_hyphen_values = true)]
    pub within: Option<(f64, f64, f64, f64)>,
    /// Only photos, only videos, or only Live Photos (stills with their movie).
    #[arg(long, value_parser = ["photo", "video", "live"])]
    pub kind: Option<String>,
    /// Favourites only.
    #[arg(long)]
    pub favorites: bool,
    /// Hidden photos only (otherwise they are left out).
    #[arg(long)]
    pub hidden: bool,
    /// In this album (its name or id).
    #[arg(long)]
    pub album: Option<String>,
    /// Part of the path in the library ("rome", "IMG_12").
    #[arg(long)]
    pub name: Option<String>,
    /// At most this many.
    #[arg(long, default_value_t = 100)]
    pub limit: usize,
}

fn numbers<const N: usize>(text: &str) -> Result<[f64; N], String> {
    let parsed: Vec<f64> = text
        .split(',')
        .map(|p| p.trim().parse::<f64>())
        .collect::<Result<_, _>>()
        .map_err(|_| format!("{text:?}: {N} numbers separated by commas"))?;
    parsed
        .try_into()
        .map_err(|_| format!("{text:?}: {N} numbers separated by commas"))
}

fn degrees_pair(text: &str) -> Result<(f64, f64), String> {
    let [lat, lon] = numbers::<2>(text)?;
    Ok((lat, lon))
}

fn degrees_box(text: &str) -> Result<(f64, f64, f64, f64), String> {
    let [s, w, n, e] = numbers::<4>(text)?;
    Ok((s, w, n, e))
}

/// `keepsake search`: the account's photos that match, newest first.
pub async fn search(server: ServerArgs, credentials: Credentials, args: SearchArgs) -> Result<()> {
    let (channel, token) = signed_in(&server, &credentials).await?;
    let mut lib = client::library_client(channel, BearerAuth::new(&token));
    let (within, near) = (args.within, args.near);
    let mut request = pb::SearchAssetsRequest {
        taken_from_ms: args.from,
        taken_until_ms: args.until,
        camera: args.camera.unwrap_or_default(),
        south: within.map(|b| b.0),
        west: within.map(|b| b.1),
        north: within.map(|b| b.2),
        east: within.map(|b| b.3),
        latitude: near.map(|p| p.0),
        longitude: near.map(|p| p.1),
        radius_m: near.map(|_| (args.radius_km * 1000.0).round().max(1.0) as u32),
        kind: match args.kind.as_deref() {
            Some("video") => pb::AssetKind::Video,
            Some(_) => pb::AssetKind::Photo,
            None => pb::AssetKind::Unspecified,
        }
        .into(),
        favorite: args.favorites.then_some(true),
        hidden: Some(args.hidden),
        album: args.album.unwrap_or_default(),
        name: args.name.unwrap_or_default(),
        page_size: args.limit.min(500) as u32,
        page: String::new(),
        live_photos: args.kind.as_deref() == Some("live"),
        trashed: args.trashed,
        folder: args.folder,
    };
    let mut shown = 0;
    loop {
        let answer = lib
            .search_assets(request.clone())
            .await
            .map_err(|s| plain(s.into()))?
            .into_inner();
        for a in &answer.assets {
            if shown == args.limit {
                return Ok(());
            }
            shown += 1;
            let taken = a
                .capture_time_ms
                .map_or_else(|| "date unknown".to_string(), |t| utc(t)[..10].to_string());
            let camera = a
                .details
                .as_ref()
                .map(|d| {
                    format!("{} {}", d.camera_make, d.camera_model)
                        .trim()
                        .to_string()
                })
                .filter(|c| !c.is_empty())
                .map(|c| format!("  {c}"))
                .unwrap_or_default();
            let place = a
                .details
                .as_ref()
                .and_then(|d| d.latitude.zip(d.longitude))
                .map(|(lat, lon)| format!("  @{lat:.5},{lon:.5}"))
                .unwrap_or_default();
            println!("{}  {taken}  {}{camera}{place}", a.asset_id, a.path);
        }
        if answer.next_page.is_empty() || shown == args.limit {
            break;
        }
        request.page = answer.next_page;
    }
    if shown == 0 {
        println!("nothing matches");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn days_read_as_utc_midnights_and_places_as_numbers() {
        assert_eq!(
            crate::device_cli::moment_ms("2024-05-01"),
            Ok(1_714_521_600_000)
        );
        assert_eq!(crate::device_cli::moment_ms("1970-01-01"), Ok(0));
        assert_eq!(
            utc(crate::device_cli::moment_ms("2000-02-29").unwrap()),
            "2000-02-29 00:00:00 UTC"
        );
        assert!(
            crate::device_cli::moment_ms("2024-13-01").is_err()
                && crate::device_cli::moment_ms("May 1").is_err()
        );
        assert_eq!(degrees_pair("48.85, -2.29"), Ok((48.85, -2.29)));
        assert!(degrees_box("1,2,3").is_err());
    }
}
