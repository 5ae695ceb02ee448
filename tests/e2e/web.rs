//! The web library in a real browser: Debian's Chromium, headless, driven over WebDriver
//! (chromedriver), against the real `keepsake serve` and a real device agent. Screenshots
//! of each page land in `target/web-screenshots/`.

use super::hardening::{Agent, admin_password, enroll, keepsake, sync_once};
use super::*;
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{Value, json};
use std::time::{Duration, Instant};

/// `keepsake serve` with the web library on a free port: (child, gRPC url, page url).
fn serve_with_web(data: &Path) -> (Child, String, String) {
    let mut child = Command::new(keepsake_binary())
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--web-listen",
            "127.0.0.1:0",
            "--data",
        ])
        .arg(data)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let (mut grpc, mut web) = (None, None);
    while grpc.is_none() || web.is_none() {
        let line = lines
            .next()
            .expect("the server exited before printing its addresses")
            .unwrap();
        let url = line.find("http://").map(|at| line[at..].trim().to_string());
        if line.contains("web library on") {
            web = url;
        } else if line.contains("serving") {
            grpc = url;
        }
    }
    std::thread::spawn(move || for _ in lines {});
    (child, grpc.unwrap(), web.unwrap())
}

/// chromedriver on a free port, once it says it listens; `None` where it is not installed
/// (`cargo xtask ci` installs Debian's chromium and chromium-driver).
fn chromedriver() -> Option<(Agent, u16)> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = Command::new("chromedriver")
        .arg(format!("--port={port}"))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    for line in lines.by_ref() {
        if line.unwrap_or_default().contains("started successfully") {
            break;
        }
    }
    std::thread::spawn(move || for _ in lines {});
    Some((Agent(child), port))
}

async fn browser(port: u16) -> Client {
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        json!({
            "binary": "/usr/bin/chromium",
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--window-size=1280,900"],
        }),
    );
    ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(caps)
        .connect(&format!("http://127.0.0.1:{port}"))
        .await
        .expect("chromedriver starts Chromium")
}

fn screenshots() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/web-screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

async fn snap(page: &Client, name: &str) {
    let png = page.screenshot().await.unwrap();
    assert!(png.starts_with(b"\x89PNG"), "a screenshot of {name}");
    std::fs::write(screenshots().join(format!("{name}.png")), png).unwrap();
}

/// Waits up to `limit` for `check` (a script returning a truthy value) in the page.
async fn eventually(page: &Client, limit: Duration, what: &str, check: &str) -> Value {
    let start = Instant::now();
    loop {
        let value = page.execute(check, vec![]).await.unwrap();
        if !(value.is_null() || value == json!(false) || value == json!(0)) {
            return value;
        }
        assert!(start.elapsed() < limit, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `fetch` from inside the page (so with its cookie), answering the status.
async fn status_of_fetch(page: &Client, method: &str, url: &str, csrf: bool) -> u64 {
    let script = "const [method, url, csrf] = arguments;
        const headers = {'content-type': 'application/json'};
        if (csrf) {
          const session = await (await fetch('/api/session')).json();
          headers['x-csrf-token'] = session.csrf;
        }
        const init = {method, headers};
        if (method !== 'GET') init.body = JSON.stringify({on: true});
        return (await fetch(url, init)).status;";
    page.execute(script, vec![json!(method), json!(url), json!(csrf)])
        .await
        .unwrap()
        .as_u64()
        .unwrap()
}

async fn sign_in(page: &Client, web: &str, account: &str, password: &str) {
    page.goto(web).await.unwrap();
    let field = page
        .wait()
        .at_most(Duration::from_secs(10))
        .for_element(Locator::Css("#sign-in-account"))
        .await
        .unwrap();
    field.send_keys(account).await.unwrap();
    page.find(Locator::Css("#sign-in-password"))
        .await
        .unwrap()
        .send_keys(password)
        .await
        .unwrap();
    click(page, "#sign-in-submit").await;
    page.wait()
        .at_most(Duration::from_secs(10))
        .for_element(Locator::Css("header:not([hidden])"))
        .await
        .unwrap();
}

/// Clicks the element `css` names, once it is there. A live change may redraw the view
/// between finding the element and clicking it (the page follows the library as it
/// changes): then the new one is found and clicked.
async fn click(page: &Client, css: &str) {
    for _ in 0..5 {
        let element = page
            .wait()
            .at_most(Duration::from_secs(10))
            .for_element(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("{css}: {e}"));
        match element.click().await {
            Ok(()) => return,
            Err(fantoccini::error::CmdError::Standard(e))
                if e.error == fantoccini::error::ErrorStatus::StaleElementReference => {}
            Err(e) => panic!("{css}: {e}"),
        }
    }
    panic!("{css}: redrawn under every click");
}

fn tile(name: &str) -> String {
    format!(
        "return document.querySelector('a.tile[data-name=\"{name}\"]')?.dataset.assetId ?? null"
    )
}

/// The whole story of the issue, in one browser: sign in, see a device's photo, upload
/// two from the page into a folder the device receives, mark a favourite the device's
/// journal gets, delete and restore, a paused device's reason and fix, a live photo
/// arriving in the open page, a change without the CSRF token refused, and another
/// account's photo answering 404.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_web_library_shows_organises_and_uploads_what_devices_sync() {
    let Some((_driver, driver_port)) = chromedriver() else {
        assert!(
            std::env::var_os("CI").is_none(),
            "chromedriver is missing: `cargo xtask ci` installs chromium and chromium-driver"
        );
        eprintln!("skipped: no chromedriver here (`cargo xtask ci` installs it)");
        return;
    };
    let root = tempfile::tempdir().unwrap();
    let server_data = root.path().join("server");
    let (child, url, web) = serve_with_web(&server_data);
    let _server = Agent(child);
    let password = admin_password(&server_data);

    let (phone, phone_data) = (root.path().join("Phone"), root.path().join("phone-data"));
    enroll(&url, &server_data, "phone", &phone_data);
    std::fs::create_dir_all(phone.join("Camera")).unwrap();
    std::fs::write(phone.join("Camera/IMG_0001.JPG"), devices::jpeg(64, 48)).unwrap();
    sync_once(&phone, &phone_data);

    let page = browser(driver_port).await;
    sign_in(&page, &web, "me", &password).await;
    let photo = eventually(
        &page,
        Duration::from_secs(10),
        "the phone's photo in the timeline",
        &tile("IMG_0001.JPG"),
    )
    .await;
    let photo = photo.as_str().unwrap().to_string();
    // The thumbnail the server made reaches the page (the derivative worker runs apart).
    page.goto(&web).await.unwrap();
    eventually(
        &page,
        Duration::from_secs(20),
        "the thumbnail shows",
        "const img = document.querySelector('a.tile img'); return img && img.complete && img.naturalWidth > 0",
    )
    .await;
    snap(&page, "timeline").await;

    // Upload two photos from the page into a folder; the phone receives them there.
    let uploads = root.path().join("to-upload");
    std::fs::create_dir_all(&uploads).unwrap();
    let (first, second) = (uploads.join("beach.jpg"), uploads.join("sunset été.jpg"));
    std::fs::write(&first, devices::jpeg(80, 60)).unwrap();
    std::fs::write(&second, devices::jpeg(60, 80)).unwrap();
    page.goto(&format!("{web}#/upload")).await.unwrap();
    let folder = page
        .wait()
        .for_element(Locator::Css("#upload-folder"))
        .await
        .unwrap();
    folder.clear().await.unwrap();
    folder.send_keys("From the web").await.unwrap();
    page.find(Locator::Css("#upload-input"))
        .await
        .unwrap()
        .send_keys(&format!("{}\n{}", first.display(), second.display()))
        .await
        .unwrap();
    eventually(
        &page,
        Duration::from_secs(20),
        "both uploads finish",
        "return document.querySelectorAll('li.upload[data-state=\"done\"]').length === 2",
    )
    .await;
    snap(&page, "upload").await;

    // A connection dropped mid-upload: what arrived is kept, the rest follows it.
    let big = devices::jpeg(640, 480);
    let resumed = upload_with_a_dropped_connection(&page, &web, &big).await;
    assert_eq!(resumed["path"], "From the web/dropped.jpg", "{resumed}");
    sync_once(&phone, &phone_data);
    assert_eq!(
        std::fs::read(phone.join("From the web/dropped.jpg")).unwrap(),
        big
    );
    assert_eq!(
        std::fs::read(phone.join("From the web/beach.jpg")).unwrap(),
        std::fs::read(&first).unwrap()
    );
    assert_eq!(
        std::fs::read(phone.join("From the web/sunset été.jpg")).unwrap(),
        std::fs::read(&second).unwrap()
    );

    // The original downloads exactly, whole or a range of it (a video seeking).
    let original = std::fs::read(phone.join("Camera/IMG_0001.JPG")).unwrap();
    let script = "const [url, range] = arguments;
        const r = await fetch(url, range ? {headers: {range}} : {});
        return [r.status, Array.from(new Uint8Array(await r.arrayBuffer()))];";
    let whole = page
        .execute(
            script,
            vec![json!(format!("/original/{photo}")), Value::Null],
        )
        .await
        .unwrap();
    assert_eq!(whole[0], 200);
    assert_eq!(bytes_of(&whole[1]), original);
    let part = page
        .execute(
            script,
            vec![json!(format!("/original/{photo}")), json!("bytes=100-199")],
        )
        .await
        .unwrap();
    assert_eq!(part[0], 206);
    assert_eq!(bytes_of(&part[1]), original[100..200]);

    // A favourite marked on the page reaches the phone's journal through its feed.
    page.goto(&format!("{web}#/asset/{photo}")).await.unwrap();
    click(&page, "#favorite[aria-pressed=\"false\"]").await;
    page.wait()
        .for_element(Locator::Css("#favorite[aria-pressed=\"true\"]"))
        .await
        .unwrap();
    snap(&page, "photo").await;
    sync_once(&phone, &phone_data);
    let journal = succeeded(
        Command::new(keepsake_binary())
            .args(["device", "ls", "--data"])
            .arg(&phone_data)
            .output()
            .unwrap(),
    );
    let line = journal
        .lines()
        .find(|l| l.starts_with(&photo))
        .unwrap_or_else(|| panic!("{journal}"));
    assert!(
        line.contains("  *--  "),
        "a favourite, neither hidden nor deleted: {line}"
    );

    // An album made on the page, the photo added to it from its own page.
    page.goto(&format!("{web}#/albums")).await.unwrap();
    let name = page
        .wait()
        .for_element(Locator::Css("#album-name"))
        .await
        .unwrap();
    name.send_keys("Summer").await.unwrap();
    click(&page, "form button[type=submit]").await;
    let album = eventually(
        &page,
        Duration::from_secs(10),
        "the new album listed",
        "return [...document.querySelectorAll('a')].find(a => a.textContent === 'Summer')?.getAttribute('href') ?? null",
    )
    .await;
    page.goto(&format!("{web}#/asset/{photo}")).await.unwrap();
    eventually(
        &page,
        Duration::from_secs(10),
        "the album offered",
        "return document.querySelectorAll('#album-pick option').length === 1",
    )
    .await;
    click(&page, "#album-pick + button").await;
    page.goto(&format!("{web}{}", album.as_str().unwrap()))
        .await
        .unwrap();
    eventually(
        &page,
        Duration::from_secs(10),
        "the photo in its album",
        &tile("IMG_0001.JPG"),
    )
    .await;
    snap(&page, "album").await;

    // Over the plan: the numbers and what to do, before any byte.
    let refused = page
        .execute(
            "const session = await (await fetch('/api/session')).json();
             const r = await fetch('/api/uploads', {method: 'POST',
                 headers: {'content-type': 'application/json', 'x-csrf-token': session.csrf},
                 body: JSON.stringify({name: 'film.mov', folder: 'Films', size: 6e9})});
             return [r.status, await r.json()];",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(refused[0], 507, "{refused}");
    assert_eq!(refused[1]["reason"], "QUOTA_EXCEEDED", "{refused}");
    let words = refused[1]["message"].as_str().unwrap();
    assert!(
        words.contains("6.0 GB") && words.contains("free of 5.0 GB"),
        "{words}"
    );

    // Delete, see it in Recently Deleted, restore.
    page.goto(&format!("{web}#/asset/{photo}")).await.unwrap();
    click(&page, "#trash").await;
    page.wait()
        .for_element(Locator::Css("#restore"))
        .await
        .unwrap();
    page.goto(&format!("{web}#/deleted")).await.unwrap();
    eventually(
        &page,
        Duration::from_secs(10),
        "the photo in Recently Deleted",
        &tile("IMG_0001.JPG"),
    )
    .await;
    snap(&page, "recently-deleted").await;
    page.goto(&format!("{web}#/asset/{photo}")).await.unwrap();
    click(&page, "#restore").await;
    page.wait()
        .for_element(Locator::Css("#trash"))
        .await
        .unwrap();
    sync_once(&phone, &phone_data);
    assert!(
        phone.join("Camera/IMG_0001.JPG").exists(),
        "restored on the phone"
    );

    // A paused device: its reason and its fix, in the policy's words.
    let (camera, camera_data) = (root.path().join("Camera"), root.path().join("camera-data"));
    enroll(&url, &server_data, "camera", &camera_data);
    std::fs::create_dir_all(&camera).unwrap();
    std::fs::write(
        camera_data.join("conditions.json"),
        r#"{"low_power": true}"#,
    )
    .unwrap();
    sync_once(&camera, &camera_data);
    page.goto(&format!("{web}#/devices")).await.unwrap();
    let card = eventually(
        &page,
        Duration::from_secs(10),
        "the camera's card",
        "const c = [...document.querySelectorAll('.device')].find(c => c.textContent.includes('camera') && c.dataset.state === 'paused'); return c ? c.textContent : null",
    )
    .await;
    let devices: Value = page
        .execute("return await (await fetch('/api/devices')).json()", vec![])
        .await
        .unwrap();
    let paused = devices["devices"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["name"] == "camera")
        .unwrap();
    assert_eq!(paused["reason"], "LOW_POWER_MODE", "{paused}");
    let (message, fix) = (
        paused["message"].as_str().unwrap(),
        paused["fix"].as_str().unwrap(),
    );
    assert!(!message.is_empty() && !fix.is_empty(), "{paused}");
    let card = card.as_str().unwrap();
    assert!(
        card.contains(message) && card.contains(&format!("Fix: {fix}")),
        "{card}"
    );
    snap(&page, "devices").await;

    // Live: a photo the phone takes appears in the open timeline, no reload.
    page.goto(&web).await.unwrap();
    eventually(
        &page,
        Duration::from_secs(10),
        "the timeline",
        &tile("IMG_0001.JPG"),
    )
    .await;
    std::fs::write(phone.join("Camera/IMG_0002.JPG"), devices::jpeg(50, 50)).unwrap();
    let taken = Instant::now();
    sync_once(&phone, &phone_data);
    eventually(
        &page,
        Duration::from_secs(10),
        "the new photo appears by itself",
        &tile("IMG_0002.JPG"),
    )
    .await;
    eprintln!(
        "a new photo reached the open page {:?} after its sync began",
        taken.elapsed()
    );

    // Hidden photos only after the second step.
    page.goto(&format!("{web}#/hidden")).await.unwrap();
    click(&page, "#show-hidden").await;
    page.wait()
        .for_element(Locator::Css(".timeline"))
        .await
        .unwrap();
    snap(&page, "hidden").await;

    // A change without the CSRF token is refused; with it, taken.
    let favorite = format!("/api/assets/{photo}/hidden");
    assert_eq!(status_of_fetch(&page, "POST", &favorite, false).await, 403);
    assert_eq!(status_of_fetch(&page, "POST", &favorite, true).await, 200);
    assert_eq!(
        status_of_fetch(
            &page,
            "POST",
            &format!("/api/assets/{photo}/restore"),
            false
        )
        .await,
        403
    );

    // On a phone's screen width the timeline still lays out.
    page.set_window_size(390, 844).await.unwrap();
    page.goto(&web).await.unwrap();
    eventually(
        &page,
        Duration::from_secs(10),
        "the timeline on a phone",
        &tile("IMG_0002.JPG"),
    )
    .await;
    let overflow = page
        .execute(
            "return document.documentElement.scrollWidth <= window.innerWidth",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(overflow, json!(true), "nothing wider than a phone's screen");
    snap(&page, "timeline-phone").await;
    page.set_window_size(1280, 900).await.unwrap();

    // Account and folders pages render.
    page.goto(&format!("{web}#/account")).await.unwrap();
    page.wait()
        .for_element(Locator::Css("#usage"))
        .await
        .unwrap();
    snap(&page, "account").await;
    page.goto(&format!("{web}#/folders")).await.unwrap();
    page.wait()
        .for_element(Locator::Css("a[data-folder=\"From the web\"]"))
        .await
        .unwrap();
    snap(&page, "folders").await;

    // Another account sees none of it: the photo, its original and its thumbnail are 404s.
    let thumbnail: Value = page
        .execute(
            &format!("return (await (await fetch('/api/assets/{photo}')).json()).thumbnail"),
            vec![],
        )
        .await
        .unwrap();
    let thumbnail = thumbnail
        .as_str()
        .expect("a thumbnail was made")
        .to_string();
    assert_eq!(status_of_fetch(&page, "GET", &thumbnail, false).await, 200);
    succeeded(
        keepsake(&url, &server_data)
            .args([
                "account",
                "create",
                "bob",
                "--new-password",
                "bob's long password",
            ])
            .output()
            .unwrap(),
    );
    click(&page, "#sign-out").await;
    page.wait()
        .for_element(Locator::Css("#sign-in-account"))
        .await
        .unwrap();
    assert_eq!(
        status_of_fetch(&page, "GET", "/api/assets", false).await,
        401
    );
    sign_in(&page, &web, "bob", "bob's long password").await;
    for foreign in [
        format!("/original/{photo}"),
        format!("/api/assets/{photo}"),
        thumbnail.clone(),
    ] {
        assert_eq!(
            status_of_fetch(&page, "GET", &foreign, false).await,
            404,
            "{foreign}"
        );
    }
    assert_eq!(
        status_of_fetch(&page, "POST", &format!("/api/assets/{photo}/trash"), true).await,
        404
    );
    page.close().await.unwrap();
}

fn bytes_of(array: &Value) -> Vec<u8> {
    array
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b.as_u64().unwrap() as u8)
        .collect()
}

/// Begins an upload from the page, sends half of `bytes` over a raw connection that then
/// drops, and finishes it from the page after asking how much arrived.
async fn upload_with_a_dropped_connection(page: &Client, web: &str, bytes: &[u8]) -> Value {
    use std::io::Write;
    let cookie = page.get_named_cookie("keepsake_session").await.unwrap();
    let begun = page
        .execute(
            "const session = await (await fetch('/api/session')).json();
             const r = await fetch('/api/uploads', {method: 'POST',
                 headers: {'content-type': 'application/json', 'x-csrf-token': session.csrf},
                 body: JSON.stringify({name: 'dropped.jpg', folder: 'From the web', size: arguments[0]})});
             return [session.csrf, await r.json()];",
            vec![json!(bytes.len())],
        )
        .await
        .unwrap();
    let (csrf, id) = (begun[0].as_str().unwrap(), begun[1]["id"].as_str().unwrap());
    let half = bytes.len() / 2;
    let address = web.trim_start_matches("http://").trim_end_matches('/');
    let mut raw = std::net::TcpStream::connect(address).unwrap();
    write!(
        raw,
        "PUT /api/uploads/{id} HTTP/1.1\r\nHost: {address}\r\nCookie: keepsake_session={}\r\n\
         x-csrf-token: {csrf}\r\ncontent-range: bytes 0-{}/{}\r\ncontent-length: {}\r\n\r\n",
        cookie.value(),
        bytes.len() - 1,
        bytes.len(),
        bytes.len(),
    )
    .unwrap();
    raw.write_all(&bytes[..half]).unwrap();
    raw.flush().unwrap();
    drop(raw);
    let here =
        format!("return (await (await fetch('/api/uploads/{id}')).json()).received === {half}");
    eventually(
        page,
        Duration::from_secs(10),
        "the first half is kept",
        &here,
    )
    .await;
    let rest: Vec<u64> = bytes[half..].iter().map(|b| u64::from(*b)).collect();
    page.execute(
        "const [id, csrf, from, size, rest] = arguments;
         const r = await fetch(`/api/uploads/${id}`, {method: 'PUT',
             headers: {'x-csrf-token': csrf, 'content-range': `bytes ${from}-${size - 1}/${size}`},
             body: new Uint8Array(rest)});
         return await r.json();",
        vec![
            json!(id),
            json!(csrf),
            json!(half),
            json!(bytes.len()),
            json!(rest),
        ],
    )
    .await
    .unwrap()
}
