//! What an attack run, a full disk and a server crash found, each a regression test
//! named after what broke: the real `keepsake` binary, real agents, real `kill -9`.

use super::*;
use keepsake_testkit::fault_proxy::{FaultProxy, Schedule};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// A server on `data` listening on `listen`, with extra `keepsake serve` options, as a
/// person would start it (the binary sets its allocator up itself); its stdout is drained.
pub(super) fn serve(data: &Path, listen: &str, extra: &[&str]) -> (Child, String) {
    let mut on_backend: Vec<&str> = extra.to_vec();
    let backend = super::backend::serve_args(data);
    on_backend.extend(backend.iter().map(String::as_str));
    serve_embedded(data, listen, &on_backend)
}

/// The same, on SQLite + files whatever backend the run tests.
pub(super) fn serve_embedded(data: &Path, listen: &str, extra: &[&str]) -> (Child, String) {
    let mut child = Command::new(keepsake_binary())
        .args(["serve", "--listen", listen, "--data"])
        .arg(data)
        .args(extra)
        .env_remove("MALLOC_ARENA_MAX")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let url = loop {
        let line = lines
            .next()
            .expect("server exited before printing its address")
            .unwrap();
        if let Some(at) = line.find("http://") {
            break line[at..].trim().to_string();
        }
    };
    std::thread::spawn(move || for _ in lines {});
    (child, url)
}

/// A server on a data directory of its own under `root`, listening on `listen`.
pub(super) fn start_server(
    root: &Path,
    listen: &str,
    args: &[&str],
) -> (Server, std::path::PathBuf) {
    let server_data = root.join("server");
    let (child, url) = serve(&server_data, listen, args);
    let server = Server {
        child,
        url,
        token: String::new(),
    };
    (server, server_data)
}

/// Enrols device `name` with its data in `data`, through the CLI as a person would.
pub(super) fn enroll(url: &str, server_data: &Path, name: &str, data: &Path) {
    succeeded(
        keepsake(url, server_data)
            .args(["device", "enroll", "--name", name, "--data"])
            .arg(data)
            .output()
            .unwrap(),
    );
}

pub(super) fn admin_password(data: &Path) -> String {
    let credentials: serde_json::Value =
        serde_json::from_slice(&std::fs::read(data.join("initial-credentials.json")).unwrap())
            .unwrap();
    credentials["password"].as_str().unwrap().to_string()
}

/// `keepsake ARGS` against `url` as the administrator.
pub(super) fn keepsake(url: &str, server_data: &Path) -> Command {
    let mut command = Command::new(keepsake_binary());
    command
        .env("KEEPSAKE_SERVER", url)
        .env("KEEPSAKE_ACCOUNT", "me")
        .env("KEEPSAKE_PASSWORD", admin_password(server_data))
        .env_remove("KEEPSAKE_DEVICE_DATA");
    command
}

/// An agent that runs on `data` (it holds the agent's lock: kept while the file lives)
/// and last said `status`.
pub(super) fn running_agent_said(
    data: &Path,
    status: &keepsake_device::AgentStatus,
) -> std::fs::File {
    std::fs::write(
        data.join("status.json"),
        serde_json::to_vec(status).unwrap(),
    )
    .unwrap();
    std::fs::create_dir_all(data.join("state")).unwrap();
    let lock = std::fs::File::create(data.join("state/agent.lock")).unwrap();
    lock.lock().unwrap();
    lock
}

pub(super) fn status_of(data: &Path) -> keepsake_device::AgentStatus {
    match std::fs::read(data.join("status.json")) {
        Ok(bytes) => serde_json::from_slice(&bytes).expect("status.json is always whole"),
        Err(_) => keepsake_device::AgentStatus::default(),
    }
}

/// Waits until `done` holds, up to `limit`; says how long it took.
pub(super) fn wait_for(limit: Duration, what: &str, mut done: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < limit, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
    start.elapsed()
}

fn resident_mib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kib| kib / 1024)
}

pub(super) struct Agent(pub(super) Child);

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub(super) fn agent(folder: &Path, data: &Path, interval_ms: u64) -> Agent {
    Agent(
        Command::new(keepsake_binary())
            .arg("sync")
            .arg(folder)
            .arg("--data")
            .arg(data)
            .args(["--interval-ms", &interval_ms.to_string()])
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    )
}

pub(super) fn write_photos(folder: &Path, count: u64, len: usize) -> u64 {
    std::fs::create_dir_all(folder).unwrap();
    for i in 0..count {
        std::fs::write(
            folder.join(format!("IMG_{i:04}.JPG")),
            devices::photo(9_000 + i, len),
        )
        .unwrap();
    }
    count * len as u64
}

/// Bursts of wrong passwords (50 at once over 5 connections) once grew a server to
/// ~4.9 GB: each Argon2id check took its own 19 MiB, and they were never given back.
/// Now checks share a few buffers, the throttle refuses most attempts before any
/// hashing, the owner sees the failures, and a device's token refresh is not slowed.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_flood_of_wrong_passwords_stays_under_512_mib_and_guessing_waits() {
    let data = tempfile::tempdir().unwrap();
    let (child, url) = serve(data.path(), "127.0.0.1:0", &[]);
    let _server = Server {
        child,
        url: url.clone(),
        token: String::new(),
    };
    let pid = _server.child.id();
    let password = admin_password(data.path());
    let anonymous =
        |c: tonic::transport::Channel| client::accounts_client(c, client::BearerAuth::anonymous());
    let first = client::connect(&url).await.unwrap();
    let enrolled = anonymous(first.clone())
        .enroll_device(keepsake_transport_pb::EnrollDeviceRequest {
            account: "me".into(),
            password: password.clone(),
            device_name: "phone".into(),
            platform: "linux".into(),
            client_version: "99.0.0".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let admin = anonymous(first.clone())
        .sign_in(keepsake_transport_pb::SignInRequest {
            account: "me".into(),
            password: password.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .access
        .unwrap()
        .token;
    let peak = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let sampling = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let sampler = {
        let (peak, sampling) = (peak.clone(), sampling.clone());
        std::thread::spawn(move || {
            while sampling.load(Ordering::Relaxed) {
                peak.fetch_max(resident_mib(pid), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };
    let mut channels = vec![first];
    for _ in 0..4 {
        channels.push(client::connect(&url).await.unwrap());
    }
    let mut tasks = Vec::new();
    for worker in 0..50usize {
        let mut accounts = anonymous(channels[worker % 5].clone());
        tasks.push(tokio::spawn(async move {
            let mut reasons = Vec::new();
            for attempt in 0..16 {
                let account = if attempt % 2 == 0 {
                    "me"
                } else {
                    "nobody-here"
                };
                let refused = accounts
                    .sign_in(keepsake_transport_pb::SignInRequest {
                        account: account.into(),
                        password: format!("guess {worker} {attempt}"),
                    })
                    .await
                    .unwrap_err();
                reasons.push(reason_of(&refused).unwrap_or_default());
            }
            reasons
        }));
    }
    let mut reasons = Vec::new();
    for task in tasks {
        reasons.extend(task.await.unwrap());
    }
    sampling.store(false, Ordering::Relaxed);
    sampler.join().unwrap();
    let peak = peak.load(Ordering::Relaxed);
    assert!(peak < 512, "the server reached {peak} MiB under the flood");
    let wrong = reasons.iter().filter(|r| *r == "UNAUTHENTICATED").count();
    eprintln!(
        "flood: {} calls, {wrong} passwords checked, peak {peak} MiB resident",
        reasons.len()
    );
    assert!(
        wrong < 100,
        "{wrong} of {} guesses were checked",
        reasons.len()
    );
    assert!(
        reasons.iter().all(|r| [
            "UNAUTHENTICATED",
            "TOO_MANY_ATTEMPTS",
            "OVERLOADED",
            "RATE_LIMITED"
        ]
        .contains(&r.as_str())),
        "{reasons:?}"
    );
    // The right password right after the guesses waits too, and says for how long.
    // The flood may have emptied the address's call bucket as well; a client waits out
    // RATE_LIMITED as told (milliseconds) and asks again, and then meets the throttle.
    let waits = loop {
        let refused = anonymous(channels[0].clone())
            .sign_in(keepsake_transport_pb::SignInRequest {
                account: "me".into(),
                password: password.clone(),
            })
            .await
            .unwrap_err();
        if reason_of(&refused).as_deref() != Some("RATE_LIMITED") {
            break refused;
        }
        let after = match client::CallError::from(refused).retry {
            client::Retry::Transient { after: Some(after) } => after,
            _ => Duration::from_millis(10),
        };
        tokio::time::sleep(after).await;
    };
    assert_eq!(reason_of(&waits).as_deref(), Some("TOO_MANY_ATTEMPTS"));
    assert!(
        waits.message().contains("try again in"),
        "{}",
        waits.message()
    );
    // A device's refresh is never slowed by it.
    anonymous(channels[1].clone())
        .refresh_token(keepsake_transport_pb::RefreshTokenRequest {
            device_id: enrolled.device_id,
            device_token: enrolled.device_token,
            client_version: "99.0.0".into(),
        })
        .await
        .unwrap();
    // The owner sees the failed sign-ins and where they came from.
    let account = client::accounts_client(channels[2].clone(), client::BearerAuth::new(&admin))
        .get_account(keepsake_transport_pb::GetAccountRequest {})
        .await
        .unwrap()
        .into_inner()
        .account
        .unwrap();
    assert!(account.failed_sign_ins >= 1, "{account:?}");
    assert_eq!(account.last_failed_sign_in_from, "127.0.0.1");
}

/// With the server's disk full, an agent once re-sent ~720 MB in 10 s, left a
/// reservation behind with every retry until they filled the plan, and stayed blocked
/// ~9 minutes after the disk grew. Now: it backs off, sends less than twice the library,
/// status and the doctor both say STORAGE_FULL with the fix, and once the server has
/// room again (restarted on a bigger disk) everything lands within a minute.
#[test]
fn a_full_server_disk_is_waited_out_and_sync_resumes_within_a_minute_of_room() {
    let root = tempfile::tempdir().unwrap();
    let (mut server, server_data) =
        start_server(root.path(), "127.0.0.1:0", &["--capacity-bytes", "1500000"]);
    let url = server.url.clone();
    let port = url.rsplit(':').next().unwrap().to_string();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let upstream: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let proxy = runtime
        .block_on(FaultProxy::start(upstream, Schedule::clean()))
        .unwrap();
    let (folder, data) = (root.path().join("A"), root.path().join("a-data"));
    enroll(&proxy.url(), &server_data, "camera", &data);
    let library = write_photos(&folder, 8, 1 << 20);
    let _agent = agent(&folder, &data, 2_000);
    wait_for(
        Duration::from_secs(30),
        "the agent says STORAGE_FULL",
        || status_of(&data).reason.as_deref() == Some("STORAGE_FULL"),
    );
    std::thread::sleep(Duration::from_secs(12));
    let sent = proxy.stats().bytes_up.load(Ordering::Relaxed);
    assert!(
        sent < 2 * library,
        "sent {sent} bytes for a library of {library} while the disk was full"
    );
    let said = succeeded(
        Command::new(keepsake_binary())
            .args(["status", "--data"])
            .arg(&data)
            .output()
            .unwrap(),
    );
    assert!(
        said.contains("[STORAGE_FULL]") && said.contains("Fix:"),
        "{said}"
    );
    let doctor = Command::new(keepsake_binary())
        .args(["doctor", "--json", "--device-data"])
        .arg(&data)
        .output()
        .unwrap();
    assert_eq!(doctor.status.code(), Some(1), "the doctor must say blocked");
    let json: serde_json::Value = serde_json::from_slice(&doctor.stdout).unwrap();
    let cloud = &json["checks"][2];
    assert_eq!(cloud["state"], "blocked", "{json}");
    assert_eq!(cloud["reasons"][0]["code"], "STORAGE_FULL", "{json}");
    // The administrator gives the server a bigger disk.
    let _ = server.child.kill();
    let _ = server.child.wait();
    let (bigger, _) = serve(
        &server_data,
        &format!("127.0.0.1:{port}"),
        &["--capacity-bytes", "100000000"],
    );
    server.child = bigger;
    let took = wait_for(Duration::from_secs(60), "everything uploaded", || {
        let s = status_of(&data);
        s.pending_files == 0 && s.reason.is_none()
    });
    eprintln!("resumed {took:?} after the disk grew");
    let listed = succeeded(
        keepsake(&url, &server_data)
            .args(["library", "ls"])
            .output()
            .unwrap(),
    );
    assert_eq!(
        listed.lines().filter(|l| l.contains("IMG_")).count(),
        8,
        "{listed}"
    );
    drop(proxy);
}

/// A server killed during an upload, then restarted: the device once waited 20 minutes
/// (its own dead reservation counted against it, then its token expired mid-upload).
/// With tokens living two seconds, it finishes within a minute of the restart.
#[test]
fn a_server_killed_mid_upload_lets_the_device_finish_within_a_minute_with_short_tokens() {
    let root = tempfile::tempdir().unwrap();
    let (mut server, server_data) = start_server(
        root.path(),
        "127.0.0.1:0",
        &[
            "--access-token-ttl-secs",
            "2",
            "--free-plan-bytes",
            "120000000",
        ],
    );
    let url = server.url.clone();
    let port = url.rsplit(':').next().unwrap().to_string();
    let (folder, data) = (root.path().join("A"), root.path().join("a-data"));
    enroll(&url, &server_data, "camera", &data);
    // Larger than the plan minus one copy: a dead reservation counted against the
    // device would refuse the retry.
    write_photos(&folder, 8, 8 << 20);
    let _agent = agent(&folder, &data, 1_000);
    wait_for(Duration::from_secs(60), "some photos uploaded", || {
        status_of(&data).uploaded >= 2
    });
    let _ = server.child.kill();
    let _ = server.child.wait();
    std::thread::sleep(Duration::from_secs(3));
    let (again, _) = serve(
        &server_data,
        &format!("127.0.0.1:{port}"),
        &[
            "--access-token-ttl-secs",
            "2",
            "--free-plan-bytes",
            "120000000",
        ],
    );
    server.child = again;
    let took = wait_for(Duration::from_secs(60), "the rest uploaded", || {
        let s = status_of(&data);
        s.pending_files == 0 && s.reason.is_none()
    });
    eprintln!("finished {took:?} after the restart");
    let listed = succeeded(
        keepsake(&url, &server_data)
            .args(["library", "ls"])
            .output()
            .unwrap(),
    );
    assert_eq!(
        listed.lines().filter(|l| l.contains("IMG_")).count(),
        8,
        "{listed}"
    );
}

/// An idle agent once ran ~9 passes a second: each pass's own reads of its folder and
/// settings woke the next. Now it sleeps until its interval. Then, stopped, `status` says
/// "not running" and the doctor — signed in as the device, no token — says so too.
#[test]
fn an_idle_agent_makes_one_pass_per_interval_and_a_stopped_one_is_said_not_running() {
    let root = tempfile::tempdir().unwrap();
    let (server, server_data) = start_server(root.path(), "localhost:0", &[]);
    let url = server.url.clone();
    let (folder, data) = (root.path().join("A"), root.path().join("a-data"));
    enroll(&url, &server_data, "laptop", &data);
    write_photos(&folder, 2, 10_000);
    let mut running = agent(&folder, &data, 3_000);
    wait_for(Duration::from_secs(30), "the photos uploaded", || {
        let s = status_of(&data);
        s.uploaded >= 2 && s.pending_files == 0
    });
    let before = status_of(&data).passes;
    std::thread::sleep(Duration::from_millis(6_500));
    let passes = status_of(&data).passes - before;
    assert!(passes <= 3, "{passes} passes in 6.5 s with a 3 s interval");
    let doctor = Command::new(keepsake_binary())
        .args(["doctor", "--json", "--device-data"])
        .arg(&data)
        .output()
        .unwrap();
    let json: serde_json::Value = serde_json::from_slice(&doctor.stdout).unwrap();
    assert_eq!(
        json["checks"][0]["state"], "ok",
        "signed in as the device: {json}"
    );
    let _ = running.0.kill();
    let _ = running.0.wait();
    let said = succeeded(
        Command::new(keepsake_binary())
            .args(["status", "--data"])
            .arg(&data)
            .output()
            .unwrap(),
    );
    assert!(said.starts_with("Not running"), "{said}");
    let doctor = Command::new(keepsake_binary())
        .args(["doctor", "--device-data"])
        .arg(&data)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&doctor.stdout);
    assert_eq!(doctor.status.code(), Some(1), "{text}");
    assert!(text.contains("AGENT_NOT_RUNNING"), "{text}");
    // A reader that stops early is no reason to panic.
    let mut piped = Command::new(keepsake_binary())
        .args(["doctor", "--json", "--device-data"])
        .arg(&data)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(piped.stdout.take());
    let out = piped.wait_with_output().unwrap();
    assert!(
        !String::from_utf8_lossy(&out.stderr).contains("panicked"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // With the server down, one pass says why and exits instead of waiting for ever.
    drop(server);
    let once = Command::new(keepsake_binary())
        .arg("sync")
        .arg(&folder)
        .arg("--data")
        .arg(&data)
        .arg("--once")
        .output()
        .unwrap();
    assert!(!once.status.success());
    assert!(
        String::from_utf8_lossy(&once.stderr).contains("SERVER_UNREACHABLE"),
        "{}",
        String::from_utf8_lossy(&once.stderr)
    );
}

/// A second server on one data directory once started beside the first, and SIGTERM
/// hung over 100 s while agents watched the feed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_server_on_one_data_directory_is_refused_and_sigterm_stops_within_5_s() {
    let data = tempfile::tempdir().unwrap();
    let first = start(data.path(), "127.0.0.1:0").await;
    let second = Command::new(keepsake_binary())
        .args(["serve", "--listen", "127.0.0.1:0", "--data"])
        .arg(data.path())
        .output()
        .unwrap();
    assert!(!second.status.success());
    assert!(
        String::from_utf8_lossy(&second.stderr).contains("another keepsake server"),
        "{}",
        String::from_utf8_lossy(&second.stderr)
    );
    // A watcher holds a stream open, as every agent does.
    let mut library = client::library_client(
        client::connect(&first.url).await.unwrap(),
        client::BearerAuth::new(&first.token),
    );
    let _watch = library
        .watch_changes(keepsake_transport_pb::WatchChangesRequest {
            cursor: 0,
            from_now: false,
        })
        .await
        .unwrap();
    // Page size 0 is proto3's "not set": the default page, not one change a page.
    let page = library
        .list_changes(keepsake_transport_pb::ListChangesRequest {
            cursor: 0,
            page_size: 0,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(page.changes.len() <= 1000);
    let pid = first.child.id();
    let asked = Instant::now();
    let _ = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status();
    let mut first = first;
    let exited = loop {
        if let Some(status) = first.child.try_wait().unwrap() {
            break status;
        }
        assert!(
            asked.elapsed() < Duration::from_secs(5),
            "still running 5 s after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(exited.success(), "{exited:?}");
}

/// Enrolling into a directory that cannot be written once failed without naming it and
/// left a device registered in the cloud that nothing could act as.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_enrolment_names_the_directory_and_registers_nothing() {
    let data = tempfile::tempdir().unwrap();
    let server = start(data.path(), "127.0.0.1:0").await;
    let blocker = data.path().join("a-file");
    std::fs::write(&blocker, b"not a directory").unwrap();
    let nowhere = blocker.join("device");
    let out = keepsake(&server.url, data.path())
        .args(["device", "enroll", "--name", "phone", "--data"])
        .arg(&nowhere)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(said.contains(&*nowhere.to_string_lossy()), "{said}");
    // A script's token comes from `keepsake account token`, no grpcurl needed.
    let token = succeeded(
        keepsake(&server.url, data.path())
            .args(["account", "token"])
            .output()
            .unwrap(),
    );
    let devices = client::accounts_client(
        client::connect(&server.url).await.unwrap(),
        client::BearerAuth::new(token.trim()),
    )
    .list_devices(keepsake_transport_pb::ListDevicesRequest::default())
    .await
    .unwrap()
    .into_inner()
    .devices;
    assert!(devices.is_empty(), "{devices:?}");
}

/// An authorization header of 16 KiB once got HTTP 431 without a gRPC status (UNKNOWN to
/// the client), and one of 64 KiB reset the whole connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_token_is_refused_with_a_reason_and_the_connection_lives_on() {
    let data = tempfile::tempdir().unwrap();
    let server = start(data.path(), "127.0.0.1:0").await;
    let channel = client::connect(&server.url).await.unwrap();
    for len in [16 << 10, 64 << 10, 200 << 10] {
        let refused =
            client::accounts_client(channel.clone(), client::BearerAuth::new(&"a".repeat(len)))
                .get_account(keepsake_transport_pb::GetAccountRequest {})
                .await
                .unwrap_err();
        assert_eq!(
            refused.code(),
            tonic::Code::Unauthenticated,
            "{len}: {refused}"
        );
        assert_eq!(reason_of(&refused).as_deref(), Some("UNAUTHENTICATED"));
        assert!(refused.message().contains("bytes"), "{}", refused.message());
    }
    // The same connection still serves.
    client::accounts_client(channel, client::BearerAuth::new(&server.token))
        .get_account(keepsake_transport_pb::GetAccountRequest {})
        .await
        .unwrap();
}

/// The doctor once said "nothing is blocking sync" (exit 0) while `keepsake status` said
/// STORAGE_FULL, and later QUOTA_EXCEEDED. For every blocked state an agent can report,
/// with an agent running, both now name the same reason, with a fix, and the doctor exits 1.
#[test]
fn the_doctor_and_status_agree_in_every_blocked_state_an_agent_reports() {
    let cases: &[(&str, Option<&str>, Option<&str>)] = &[
        (
            "QUOTA_EXCEEDED",
            Some("not enough cloud storage: 4.9 GB used of 5.0 GB; this upload needs 200 MB"),
            None,
        ),
        ("STORAGE_FULL", Some("the store's disk is full"), None),
        (
            "CLOUD_UNAVAILABLE",
            Some("object storage failed: the bucket is unavailable"),
            None,
        ),
        ("CLIENT_TOO_OLD", None, None),
        ("UNAUTHENTICATED", None, None),
        ("FOLDER_MISSING", None, None),
        ("DELETES_NEED_CONFIRMATION", None, None),
        (
            "LOW_BATTERY",
            None,
            Some(r#"{"battery_percent": 5, "charging": false}"#),
        ),
        ("LOW_POWER_MODE", None, Some(r#"{"low_power": true}"#)),
        (
            "CELLULAR_NOT_ALLOWED",
            None,
            Some(r#"{"network": "cellular"}"#),
        ),
    ];
    for (code, message, conditions) in cases {
        let data = tempfile::tempdir().unwrap();
        let enrolment = serde_json::json!({
            "server": "http://127.0.0.1:9", "fingerprint": null, "account": "me",
            "device_id": "d1", "device_token": "t1",
        });
        std::fs::write(data.path().join("device.json"), enrolment.to_string()).unwrap();
        if let Some(c) = conditions {
            std::fs::write(data.path().join("conditions.json"), c).unwrap();
        }
        let status = keepsake_device::AgentStatus {
            reason: Some(code.to_string()),
            reason_message: message.map(str::to_string),
            folder: Some(data.path().to_string_lossy().into_owned()),
            last_pass_ms: 1,
            ..Default::default()
        };
        let lock = running_agent_said(data.path(), &status);
        let said = succeeded(
            Command::new(keepsake_binary())
                .args(["status", "--data"])
                .arg(data.path())
                .output()
                .unwrap(),
        );
        assert!(
            said.contains(&format!("[{code}]")) && said.contains("Fix:"),
            "{code}: {said}"
        );
        if let Some(m) = message {
            assert!(
                said.contains(m),
                "{code}: the cloud's numbers are shown: {said}"
            );
        }
        let doctor = Command::new(keepsake_binary())
            .args(["doctor", "--json", "--device-data"])
            .arg(data.path())
            .output()
            .unwrap();
        assert_eq!(doctor.status.code(), Some(1), "{code}");
        let json: serde_json::Value = serde_json::from_slice(&doctor.stdout).unwrap();
        let codes: Vec<&str> = json["checks"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|c| c["reasons"].as_array().unwrap())
            .filter_map(|r| r["code"].as_str())
            .collect();
        // The doctor speaks the policy's codes: a cloud whose storage is down is, to it,
        // a server that does not answer, and status shows the cloud's own words (above).
        let expected = match *code {
            "UNAUTHENTICATED" => "NOT_SIGNED_IN",
            "CLOUD_UNAVAILABLE" => "SERVER_UNREACHABLE",
            other => other,
        };
        assert!(
            codes.contains(&expected),
            "{code}: the doctor said {codes:?}"
        );
        assert!(
            !codes.contains(&"AGENT_NOT_RUNNING"),
            "{code}: the agent runs: {codes:?}"
        );
        drop(lock);
    }
}

/// The doctor once called a wrong certificate fingerprint, or plaintext sent to a TLS
/// port, "not signed in"; the agent called the second "CANCELLED — this clears by itself".
#[test]
fn a_wrong_fingerprint_or_plaintext_to_tls_is_named_not_called_signed_out() {
    let root = tempfile::tempdir().unwrap();
    let (server, _) = {
        let data = root.path().join("server");
        let mut child = Command::new(keepsake_binary())
            .args([
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--tls-self-signed",
                "--data",
            ])
            .arg(&data)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let url = loop {
            let line = lines.next().expect("server exited").unwrap();
            if let Some(at) = line.find("https://") {
                break line[at..].trim().to_string();
            }
        };
        std::thread::spawn(move || for _ in lines {});
        (
            Server {
                child,
                url: url.clone(),
                token: String::new(),
            },
            url,
        )
    };
    let host_port = server.url.trim_start_matches("https://").to_string();
    for (url, pin, said) in [
        (format!("http://{host_port}"), None, "speaks TLS"),
        (
            server.url.clone(),
            Some("00".repeat(32)),
            "does not match the pinned fingerprint",
        ),
    ] {
        let data = root.path().join(format!("device-{}", pin.is_some()));
        std::fs::create_dir_all(&data).unwrap();
        let enrolment = serde_json::json!({
            "server": url, "fingerprint": pin, "account": "me",
            "device_id": "d1", "device_token": "t1",
        });
        std::fs::write(data.join("device.json"), enrolment.to_string()).unwrap();
        let doctor = Command::new(keepsake_binary())
            .args(["doctor", "--json", "--device-data"])
            .arg(&data)
            .output()
            .unwrap();
        assert_eq!(doctor.status.code(), Some(1));
        let json: serde_json::Value = serde_json::from_slice(&doctor.stdout).unwrap();
        let text = json.to_string();
        assert!(text.contains(said), "{url}: {json}");
        assert!(!text.contains("NOT_SIGNED_IN"), "{url}: {json}");
        assert_eq!(
            json["checks"][1]["reasons"][0]["code"],
            "SERVER_UNREACHABLE"
        );
    }
}

/// `keepsake sync --once` run right after photos were copied in once uploaded none of them:
/// the pass saw files a moment old, left them to settle, and the run ended. One pass asked
/// for means what is in the folder now.
#[test]
fn photos_copied_in_just_before_sync_once_are_sent_by_that_run() {
    let root = tempfile::tempdir().unwrap();
    let (server, server_data) = start_server(root.path(), "127.0.0.1:0", &[]);
    let (folder, data) = (root.path().join("A"), root.path().join("a-data"));
    enroll(&server.url, &server_data, "laptop", &data);
    write_photos(&folder, 3, 50_000);
    let s = sync_once(&folder, &data);
    assert_eq!((s.uploaded, s.pending_files), (3, 0), "{s:?}");
}

/// One `keepsake sync --once` run, which must succeed; what its status then says.
pub(super) fn sync_once(folder: &Path, data: &Path) -> keepsake_device::AgentStatus {
    let out = Command::new(keepsake_binary())
        .arg("sync")
        .arg(folder)
        .arg("--data")
        .arg(data)
        .arg("--once")
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    status_of(data)
}

/// `keepsake migrate`: a home server with two devices moved from SQLite + files to
/// PostgreSQL + S3. The devices go on against it with nothing sent again, a new photo
/// reaches the other device, and the old directory will not serve its stale copy.
/// Runs in `cargo xtask ci`'s PostgreSQL step (it needs both servers).
#[test]
fn an_embedded_library_moved_to_postgres_and_s3_keeps_its_devices_and_nothing_is_sent_again() {
    let root = tempfile::tempdir().unwrap();
    let server_data = root.path().join("server");
    let Some((database, blobs)) = super::backend::for_data(&server_data) else {
        eprintln!("skipped: KEEPSAKE_TEST_POSTGRES and KEEPSAKE_TEST_S3 are not set");
        return;
    };
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let listen = format!("127.0.0.1:{port}");
    let (child, url) = serve_embedded(&server_data, &listen, &[]);
    let mut server = Server {
        child,
        url: url.clone(),
        token: String::new(),
    };
    let (a, a_data) = (root.path().join("A"), root.path().join("a-data"));
    let (b, b_data) = (root.path().join("B"), root.path().join("b-data"));
    enroll(&url, &server_data, "camera", &a_data);
    enroll(&url, &server_data, "laptop", &b_data);
    write_photos(&a, 4, 300_000);
    assert_eq!(sync_once(&a, &a_data).uploaded, 4);
    sync_once(&b, &b_data);
    assert_eq!(devices::folder_contents(&a), devices::folder_contents(&b));

    let _ = server.child.kill();
    let _ = server.child.wait();
    let moved = Command::new(keepsake_binary())
        .args(["migrate", "--data"])
        .arg(&server_data)
        .args(["--to", &database, "--blobs", &blobs])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&moved.stdout);
    assert!(
        moved.status.success(),
        "{said}{}",
        String::from_utf8_lossy(&moved.stderr)
    );
    assert!(said.contains("verified"), "{said}");
    // Resumable: a second run finds everything there and changes nothing.
    let again = Command::new(keepsake_binary())
        .args(["migrate", "--data"])
        .arg(&server_data)
        .args(["--to", &database, "--blobs", &blobs])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&again.stdout);
    assert!(again.status.success(), "{said}");
    assert!(said.contains("0 packs sent"), "{said}");

    let refused = Command::new(keepsake_binary())
        .args(["serve", "--listen", &listen, "--data"])
        .arg(&server_data)
        .output()
        .unwrap();
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("moved to PostgreSQL"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );

    let (child, _) = serve(&server_data, &listen, &[]);
    server.child = child;
    std::fs::write(a.join("IMG_9999.JPG"), devices::photo(77, 200_000)).unwrap();
    std::thread::sleep(Duration::from_millis(1100));
    let camera = sync_once(&a, &a_data);
    assert_eq!(camera.uploaded, 1, "only the new photo is sent: {camera:?}");
    let laptop = sync_once(&b, &b_data);
    assert_eq!(laptop.uploaded, 0, "{laptop:?}");
    assert_eq!(devices::folder_contents(&a), devices::folder_contents(&b));
    assert_eq!(devices::folder_contents(&b).len(), 5);
}
