//! The agent people leave running, on the real binary: the service unit, the status lines,
//! the ledger every device reports to, revoking a lost device, a silent one flagged,
//! going back to an earlier version and the integrity proof.

use super::hardening::{
    Agent, agent, enroll, keepsake, running_agent_said, serve_embedded, start_server, status_of,
    sync_once, wait_for, write_photos,
};
use super::*;
use std::time::Duration;

/// `keepsake ARGS`, as the administrator, with its stdout; fails the test on failure.
fn said(url: &str, server_data: &Path, args: &[&str]) -> String {
    succeeded(keepsake(url, server_data).args(args).output().unwrap())
}

fn status_text(data: &Path) -> String {
    succeeded(
        Command::new(keepsake_binary())
            .args(["status", "--data"])
            .arg(data)
            .output()
            .unwrap(),
    )
}

/// The words of a unit's `ExecStart=`, unquoted as systemd reads them.
fn exec_start(unit: &str) -> Vec<String> {
    let line = unit
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart="))
        .expect("the unit has an ExecStart");
    let mut words = Vec::new();
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '"' {
            continue;
        }
        let mut word = String::new();
        while let Some(c) = chars.next() {
            match c {
                '"' => break,
                '\\' => word.extend(chars.next()),
                '%' | '$' => {
                    word.push(c);
                    chars.next();
                }
                c => word.push(c),
            }
        }
        words.push(word);
    }
    words
}

/// The agent's exit, within `limit`.
fn exited(agent: &mut Agent, limit: Duration, what: &str) -> std::process::ExitStatus {
    let started = std::time::Instant::now();
    loop {
        if let Some(exit) = agent.0.try_wait().unwrap() {
            return exit;
        }
        assert!(started.elapsed() < limit, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Services are found where systemd looks, its verifier accepts the unit (the binary
/// exists, every key is known), and the command in it is the agent: run as written, it
/// syncs the folder, says "Paused — … [LOW_POWER_MODE]" under Low Power Mode, and stops
/// cleanly on SIGTERM.
#[test]
fn the_service_unit_passes_systemd_verify_and_its_command_syncs_and_stops_on_sigterm() {
    let root = tempfile::tempdir().unwrap();
    let (server, server_data) = start_server(root.path(), "127.0.0.1:0", &[]);
    let folder = root.path().join("My Photos 50%");
    let data = root.path().join("phone-data");
    enroll(&server.url, &server_data, "phone", &data);
    write_photos(&folder, 3, 20_000);
    let config = root.path().join("config");
    let runtime = root.path().join("run");
    std::fs::create_dir_all(&runtime).unwrap();
    let install = Command::new(keepsake_binary())
        .env("XDG_CONFIG_HOME", &config)
        .args(["service", "install", "--no-start", "--data"])
        .arg(&data)
        .arg(&folder)
        .output()
        .unwrap();
    succeeded(install);
    let units: Vec<PathBuf> = files_under(&config.join("systemd/user"));
    assert_eq!(units.len(), 1, "{units:?}");
    let unit = std::fs::read_to_string(&units[0]).unwrap();
    let verify = Command::new("systemd-analyze")
        .env("XDG_RUNTIME_DIR", &runtime)
        .args(["--user", "verify"])
        .arg(&units[0])
        .output()
        .expect("systemd-analyze (Debian's systemd; `cargo xtask ci` installs it)");
    assert!(
        verify.status.success(),
        "{}\n{unit}",
        String::from_utf8_lossy(&verify.stderr)
    );
    let words = exec_start(&unit);
    assert_eq!(
        words[1..3],
        ["sync".to_string(), folder.to_string_lossy().into_owned()]
    );
    let mut service = Agent(
        Command::new(&words[0])
            .args(&words[1..])
            .args(["--interval-ms", "500"])
            .env("NO_COLOR", "1")
            .current_dir("/")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_for(Duration::from_secs(30), "the unit's agent uploads", || {
        let s = status_of(&data);
        s.uploaded >= 3 && s.pending_files == 0
    });
    let up_to_date = status_text(&data);
    assert!(up_to_date.starts_with("Up to date"), "{up_to_date}");
    std::fs::write(data.join("conditions.json"), r#"{"low_power": true}"#).unwrap();
    wait_for(Duration::from_secs(30), "the agent pauses", || {
        status_of(&data).reason.as_deref() == Some("LOW_POWER_MODE")
    });
    let paused = status_text(&data);
    assert!(
        paused.starts_with("Paused — ")
            && paused.contains("Fix: ")
            && paused.contains("[LOW_POWER_MODE]"),
        "{paused}"
    );
    // The owner sees the same on any other device: the ledger heard it.
    let mut devices = String::new();
    wait_for(
        Duration::from_secs(10),
        "the ledger hears the pause",
        || {
            devices = said(&server.url, &server_data, &["devices"]);
            devices.contains("paused [LOW_POWER_MODE]")
        },
    );
    assert!(
        devices.contains("MB free"),
        "free space is reported: {devices}"
    );
    let status = Command::new("kill")
        .args(["-TERM", &service.0.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let exit = exited(
        &mut service,
        Duration::from_secs(5),
        "SIGTERM stops the agent",
    );
    assert!(exit.success(), "{exit:?}");
    assert!(status_text(&data).starts_with("Not running — "));
    let uninstall = Command::new(keepsake_binary())
        .env("XDG_CONFIG_HOME", &config)
        .args(["service", "uninstall", "--data"])
        .arg(&data)
        .output()
        .unwrap();
    succeeded(uninstall);
    assert!(files_under(&config.join("systemd/user")).is_empty());
}

/// A lost phone is revoked from the laptop while its agent runs: at its next call the
/// agent stops (exit status 3, which the service does not restart), says DEVICE_REVOKED
/// with the fix in `keepsake status` and the doctor, and every photo stays in its folder.
#[test]
fn a_device_revoked_while_its_agent_runs_stops_with_device_revoked_and_keeps_its_files() {
    let root = tempfile::tempdir().unwrap();
    let (server, server_data) = start_server(root.path(), "127.0.0.1:0", &[]);
    let (folder, data) = (root.path().join("Phone"), root.path().join("phone-data"));
    enroll(&server.url, &server_data, "lost phone", &data);
    write_photos(&folder, 4, 20_000);
    let mut running = agent(&folder, &data, 500);
    wait_for(Duration::from_secs(30), "the photos uploaded", || {
        let s = status_of(&data);
        s.uploaded >= 4 && s.pending_files == 0
    });
    // What the ledger says of it: every field, from its own report.
    let mut devices = String::new();
    wait_for(
        Duration::from_secs(10),
        "the ledger hears it is up to date",
        || {
            devices = said(&server.url, &server_data, &["devices"]);
            devices.contains("lost phone") && devices.contains("up to date")
        },
    );
    assert!(devices.contains("to upload: 0 (0.0 MB)"), "{devices}");
    let revoked = said(
        &server.url,
        &server_data,
        &["device", "revoke", "lost phone"],
    );
    assert!(revoked.contains("revoked lost phone"), "{revoked}");
    // New photos: the next pass is refused at its first call to the library.
    std::fs::write(folder.join("AFTER.JPG"), devices::photo(77, 20_000)).unwrap();
    let exit = exited(
        &mut running,
        Duration::from_secs(30),
        "the revoked agent stops",
    );
    assert_eq!(exit.code(), Some(3), "{exit:?}");
    assert_eq!(status_of(&data).reason.as_deref(), Some("DEVICE_REVOKED"));
    let photos = files_under(&folder)
        .into_iter()
        .filter(|f| f.to_string_lossy().ends_with(".JPG"))
        .count();
    assert_eq!(photos, 5, "nothing held locally is deleted");
    let text = status_text(&data);
    assert!(
        text.starts_with("Blocked — ")
            && text.contains("[DEVICE_REVOKED]")
            && text.contains("enrol"),
        "{text}"
    );
    let doctor = Command::new(keepsake_binary())
        .args(["doctor", "--device-data"])
        .arg(&data)
        .output()
        .unwrap();
    let checklist = String::from_utf8_lossy(&doctor.stdout);
    assert_eq!(doctor.status.code(), Some(1), "{checklist}");
    assert!(checklist.contains("DEVICE_REVOKED"), "{checklist}");
    // Started again (a reboot, the service): it says the same at once, and still exits 3.
    let again = Command::new(keepsake_binary())
        .arg("sync")
        .arg(&folder)
        .arg("--data")
        .arg(&data)
        .output()
        .unwrap();
    assert_eq!(again.status.code(), Some(3));
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("DEVICE_REVOKED"),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
    let devices = said(&server.url, &server_data, &["devices"]);
    assert!(devices.contains("revoked on"), "{devices}");
    said(
        &server.url,
        &server_data,
        &["device", "remove", "lost phone"],
    );
    let devices = said(&server.url, &server_data, &["devices"]);
    assert!(!devices.contains("lost phone"), "{devices}");
}

/// A tablet left in a drawer: a day after its last contact the ledger flags it silent,
/// with the policy's reason and fix, on the owner's other devices.
#[test]
fn a_device_silent_for_a_day_is_flagged_with_its_reason_and_fix() {
    let root = tempfile::tempdir().unwrap();
    let server_data = root.path().join("server");
    let (child, url) = serve_embedded(&server_data, "127.0.0.1:0", &[]);
    let server = Server {
        child,
        url,
        token: String::new(),
    };
    let (folder, data) = (root.path().join("Tablet"), root.path().join("tablet-data"));
    enroll(&server.url, &server_data, "tablet", &data);
    write_photos(&folder, 1, 10_000);
    sync_once(&folder, &data);
    let devices = said(&server.url, &server_data, &["devices"]);
    assert!(!devices.contains("silent"), "{devices}");
    // The clock moves a day and a minute past its last contact (the server is stopped so
    // the change is its database's own, as after a day of nothing).
    let address = server.url.trim_start_matches("http://").to_string();
    drop(server);
    let db = rusqlite::Connection::open(server_data.join("library.sqlite")).unwrap();
    let moved = db
        .execute(
            "UPDATE devices SET last_seen = last_seen - ?1, enrolled_at = enrolled_at - ?1",
            [24 * 3_600_000i64 + 60_000],
        )
        .unwrap();
    assert_eq!(moved, 1);
    drop(db);
    // Back on the same address: the tablet knows only that one.
    let (child, url) = serve_embedded(&server_data, &address, &[]);
    let server = Server {
        child,
        url,
        token: String::new(),
    };
    let devices = said(&server.url, &server_data, &["devices"]);
    assert!(
        devices.contains("silent since") && devices.contains("[DEVICE_SILENT]"),
        "{devices}"
    );
    assert!(devices.contains("Fix: Start Keepsake on it"), "{devices}");
    // Its next contact clears it.
    sync_once(&folder, &data);
    let devices = said(&server.url, &server_data, &["devices"]);
    assert!(!devices.contains("silent since"), "{devices}");
}

/// An edit made on the phone is undone from the laptop's terminal: `keepsake revert`
/// makes version 1 current again as version 3; the other device's folder gets v1's bytes;
/// nothing is uploaded (the account's stored bytes do not move). Then a scrub, and the
/// owner's proof: "your 2 originals were verified on …".
#[test]
fn a_revert_on_a_reaches_b_with_nothing_uploaded_and_the_scrub_proof_follows() {
    let root = tempfile::tempdir().unwrap();
    let (server, server_data) = start_server(root.path(), "127.0.0.1:0", &[]);
    let url = server.url.clone();
    let (a, a_data) = (root.path().join("A"), root.path().join("a-data"));
    let (b, b_data) = (root.path().join("B"), root.path().join("b-data"));
    enroll(&url, &server_data, "phone", &a_data);
    enroll(&url, &server_data, "laptop", &b_data);
    std::fs::create_dir_all(a.join("2024")).unwrap();
    std::fs::create_dir_all(&b).unwrap();
    let original = devices::photo(1, 300_000);
    std::fs::write(a.join("2024/IMG_0001.JPG"), &original).unwrap();
    std::fs::write(a.join("IMG_0002.JPG"), devices::photo(2, 50_000)).unwrap();
    let sync = sync_once;
    sync(&a, &a_data);
    sync(&b, &b_data);
    let mut edited = original.clone();
    edited[1000..1100].fill(9);
    edited.extend_from_slice(&[7; 5000]);
    std::fs::write(a.join("2024/IMG_0001.JPG"), &edited).unwrap();
    sync(&a, &a_data);
    sync(&b, &b_data);
    assert_eq!(std::fs::read(b.join("2024/IMG_0001.JPG")).unwrap(), edited);
    let before = said(&url, &server_data, &["account", "show"]);
    assert!(
        before.contains("no scrub has checked this library yet"),
        "{before}"
    );
    let used = |shown: &str| {
        shown
            .lines()
            .find(|l| l.starts_with("plan "))
            .unwrap()
            .to_string()
    };
    let versions = said(&url, &server_data, &["versions", "2024/IMG_0001.JPG"]);
    assert!(versions.contains("* v2"), "{versions}");
    let reverted = said(
        &url,
        &server_data,
        &["revert", "2024/IMG_0001.JPG", "--to", "1"],
    );
    assert!(reverted.contains("as v3"), "{reverted}");
    // Asked again (a lost reply), it is the same revert, not a fourth version.
    let again = said(
        &url,
        &server_data,
        &["revert", "2024/IMG_0001.JPG", "--to", "1"],
    );
    assert!(again.contains("already"), "{again}");
    let versions = said(&url, &server_data, &["versions", "2024/IMG_0001.JPG"]);
    assert!(
        versions.contains("* v3") && versions.contains("same content as the current one"),
        "{versions}"
    );
    assert!(!versions.contains("v4"), "{versions}");
    let after = said(&url, &server_data, &["account", "show"]);
    assert_eq!(used(&before), used(&after), "a revert stores nothing new");
    sync(&b, &b_data);
    assert_eq!(
        std::fs::read(b.join("2024/IMG_0001.JPG")).unwrap(),
        original
    );
    // The phone that made the edit follows too, and sends nothing.
    sync(&a, &a_data);
    assert_eq!(
        std::fs::read(a.join("2024/IMG_0001.JPG")).unwrap(),
        original
    );
    assert_eq!(status_of(&a_data).uploaded, 0, "this run sent nothing");
    // The administrator's list: the account, its plan and its two devices.
    let accounts = said(&url, &server_data, &["account", "ls"]);
    let me = accounts
        .lines()
        .find(|l| l.starts_with("me "))
        .expect("the account is listed");
    assert!(me.trim_end().ends_with(" 2"), "{accounts}");
    said(&url, &server_data, &["scrub"]);
    let proof = said(&url, &server_data, &["account", "show"]);
    assert!(
        proof.contains("integrity: your 2 originals were verified on"),
        "{proof}"
    );
}

/// What `keepsake status` says first while an agent is mid-pass: the pass's own numbers
/// from `status.json`, as "Syncing — uploading 1,204 of 3,310 (2.1 GB left)".
#[test]
fn status_says_syncing_with_the_passs_counts_while_an_agent_uploads() {
    let data = tempfile::tempdir().unwrap();
    let status = keepsake_device::AgentStatus {
        last_pass_ms: 1,
        pending_files: 3_310,
        progress: Some(keepsake_device::Progress {
            phase: "uploading".into(),
            items_done: 1_203,
            items_total: 3_310,
            bytes_done: 400_000_000,
            bytes_total: 2_500_000_000,
            current: Some("2024/IMG_1204.HEIC".into()),
        }),
        ..Default::default()
    };
    let _lock = running_agent_said(data.path(), &status);
    let text = status_text(data.path());
    assert!(
        text.starts_with("Syncing — uploading 1,204 of 3,310 (2.1 GB left)\n"),
        "{text}"
    );
    assert!(text.contains("3,310 files waiting to upload"), "{text}");
}

/// A photo's camera and place, written into it by exiftool, reach the library with the
/// commit, travel in the feed to every device and come out in the export's sidecar —
/// the original's bytes untouched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_photos_camera_and_place_travel_through_commit_feed_and_export() {
    let root = tempfile::tempdir().unwrap();
    let (server, server_data) = start_server(root.path(), "127.0.0.1:0", &[]);
    let (folder, data) = (root.path().join("Camera"), root.path().join("cam-data"));
    enroll(&server.url, &server_data, "camera", &data);
    std::fs::create_dir_all(folder.join("Paris")).unwrap();
    let photo = folder.join("Paris/IMG_0001.JPG");
    std::fs::write(&photo, devices::jpeg(640, 480)).unwrap();
    let tagged = Command::new("exiftool")
        .args([
            "-q",
            "-overwrite_original",
            "-Make=Canon",
            "-Model=Canon EOS R5",
            "-GPSLatitude=48.8584",
            "-GPSLatitudeRef=N",
            "-GPSLongitude=2.2945",
            "-GPSLongitudeRef=E",
            "-DateTimeOriginal=2024:05:01 10:00:00",
            "-OffsetTimeOriginal=+02:00",
            "-LensModel=RF24-105mm F4 L IS USM",
            "-GPSAltitude=330",
            "-GPSAltitudeRef=0",
        ])
        .arg(&photo)
        .status()
        .expect("exiftool (Debian's libimage-exiftool-perl; `cargo xtask ci` installs it)");
    assert!(tagged.success());
    let original = std::fs::read(&photo).unwrap();
    sync_once(&folder, &data);
    let token = sign_in(&server.url, &server_data).await;
    let mut lib = client::library_client(
        client::connect(&server.url).await.unwrap(),
        client::BearerAuth::new(&token),
    );
    let feed = client::whole_feed(&mut lib).await.unwrap();
    let asset = feed
        .iter()
        .find_map(|c| match &c.row {
            Some(keepsake_transport_pb::change::Row::Asset(a)) => Some(a.clone()),
            _ => None,
        })
        .expect("the photo is in the feed");
    let details = asset.details.expect("the feed carries what the file says");
    assert_eq!(
        (details.camera_make.as_str(), details.camera_model.as_str()),
        ("Canon", "Canon EOS R5")
    );
    assert_eq!(details.lens, "RF24-105mm F4 L IS USM");
    assert_eq!(details.altitude_m, Some(330.0));
    assert_eq!(details.utc_offset_minutes, Some(120));
    assert_eq!(
        asset.capture_time_ms,
        Some(1_714_550_400_000),
        "10:00 at +02:00"
    );
    let (lat, lon) = (details.latitude.unwrap(), details.longitude.unwrap());
    assert!(
        (lat - 48.8584).abs() < 1e-6 && (lon - 2.2945).abs() < 1e-6,
        "{lat} {lon}"
    );
    let out = root.path().join("export");
    said(
        &server.url,
        &server_data,
        &["export", &out.to_string_lossy()],
    );
    assert_eq!(
        std::fs::read(out.join("Paris/IMG_0001.JPG")).unwrap(),
        original
    );
    let sidecar: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("Paris/IMG_0001.JPG.json")).unwrap())
            .unwrap();
    assert_eq!(sidecar["camera"]["model"], "Canon EOS R5", "{sidecar}");
    assert_eq!(sidecar["lens"], "RF24-105mm F4 L IS USM", "{sidecar}");
    assert_eq!(sidecar["utc_offset_minutes"], 120, "{sidecar}");
    assert!(
        (sidecar["place"]["latitude"].as_f64().unwrap() - 48.8584).abs() < 1e-6,
        "{sidecar}"
    );
    // Found by camera and place, from the library's indexes; not near Rome.
    let found = said(
        &server.url,
        &server_data,
        &[
            "search",
            "--camera",
            "eos r5",
            "--near",
            "48.8584,2.2945",
            "--radius-km",
            "1",
        ],
    );
    assert!(
        found.contains("Paris/IMG_0001.JPG") && found.contains("Canon EOS R5"),
        "{found}"
    );
    let elsewhere = said(
        &server.url,
        &server_data,
        &["search", "--near", "41.89,12.49"],
    );
    assert!(elsewhere.contains("nothing matches"), "{elsewhere}");
    // The version keeps them too: what `keepsake versions` and revert carry.
    let versions = lib
        .list_versions(keepsake_transport_pb::ListVersionsRequest {
            asset_id: asset.asset_id.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .versions;
    assert_eq!(
        versions[0].details.as_ref().map(|d| d.camera_make.as_str()),
        Some("Canon")
    );
}
