//! Companion resources on the real binary: a Live Photo's still and movie (made with
//! Apple's content identifier in both halves, as exiftool reads it) and a RAW beside its
//! JPEG reach another device as one photo each, are trashed and restored as one from the
//! library, and a file deleted from a folder takes only itself.

use super::hardening::{enroll, keepsake, start_server, sync_once};
use super::*;
use std::time::Duration;

/// `keepsake ARGS` for the device whose data is `data`; fails the test on failure.
fn device_said(url: &str, server_data: &Path, data: &Path, args: &[&str]) -> String {
    succeeded(
        keepsake(url, server_data)
            .args(args)
            .arg("--data")
            .arg(data)
            .output()
            .unwrap(),
    )
}

/// Every asset in the feed by path, as it stands now.
async fn assets_by_path(
    url: &str,
    server_data: &Path,
) -> std::collections::HashMap<String, keepsake_transport_pb::Asset> {
    let token = sign_in(url, server_data).await;
    let mut lib = client::library_client(
        client::connect(url).await.unwrap(),
        client::BearerAuth::new(&token),
    );
    let mut latest = std::collections::HashMap::new();
    for change in client::whole_feed(&mut lib).await.unwrap() {
        if let Some(keepsake_transport_pb::change::Row::Asset(a)) = change.row {
            latest.insert(a.asset_id.clone(), a);
        }
    }
    latest.into_values().map(|a| (a.path.clone(), a)).collect()
}

fn live(a: &keepsake_transport_pb::Asset) -> bool {
    a.state == keepsake_transport_pb::AssetState::Live as i32
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_photo_and_a_raw_pair_travel_as_one_photo_each_and_a_folder_delete_takes_one_file() {
    let root = tempfile::tempdir().unwrap();
    let (server, server_data) = start_server(root.path(), "127.0.0.1:0", &[]);
    let (phone, phone_data) = (root.path().join("Phone"), root.path().join("phone-data"));
    let (laptop, laptop_data) = (root.path().join("Laptop"), root.path().join("laptop-data"));
    enroll(&server.url, &server_data, "phone", &phone_data);
    enroll(&server.url, &server_data, "laptop", &laptop_data);
    std::fs::create_dir_all(&phone).unwrap();

    let id = "5E8F2C7A-1B3D-4E5F-8A9B-0C1D2E3F4A5B";
    let still = keepsake_testkit::media::live_photo_still(
        &devices::jpeg(400, 300),
        id,
        "2024:05:01 10:00:00",
    );
    std::fs::write(phone.join("IMG_0001.JPG"), &still).unwrap();
    std::fs::write(
        phone.join("IMG_0001.MOV"),
        keepsake_testkit::media::live_photo_movie(id, 2800, 200_000),
    )
    .unwrap();
    // exiftool, an independent reader, finds the identifier in both halves (it names the
    // still's MakerNote tag 0x0011 MediaGroupUUID).
    for (file, tag) in [
        ("IMG_0001.JPG", "-Apple:MediaGroupUUID"),
        ("IMG_0001.MOV", "-Keys:ContentIdentifier"),
    ] {
        let out = Command::new("exiftool")
            .args(["-s3", tag])
            .arg(phone.join(file))
            .output()
            .expect("exiftool (Debian's libimage-exiftool-perl; `cargo xtask ci` installs it)");
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), id, "{file}");
    }
    // A RAW and its JPEG of one moment (a camera writes both at the shutter).
    let moment = std::time::SystemTime::UNIX_EPOCH + Duration::from_secs(1_714_557_600);
    for (name, bytes) in [
        ("DSC_0001.JPG", devices::jpeg(300, 200)),
        ("DSC_0001.NEF", devices::photo(11, 300_000)),
    ] {
        std::fs::write(phone.join(name), bytes).unwrap();
        let file = std::fs::File::options()
            .write(true)
            .open(phone.join(name))
            .unwrap();
        file.set_modified(moment).unwrap();
    }
    sync_once(&phone, &phone_data);
    sync_once(&laptop, &laptop_data);

    let assets = assets_by_path(&server.url, &server_data).await;
    let (still_id, movie) = (&assets["IMG_0001.JPG"].asset_id, &assets["IMG_0001.MOV"]);
    assert_eq!(
        (&movie.pair_of, movie.pair_role.as_str()),
        (still_id, "live")
    );
    let raw = &assets["DSC_0001.NEF"];
    assert_eq!(
        (&raw.pair_of, raw.pair_role.as_str()),
        (&assets["DSC_0001.JPG"].asset_id, "raw")
    );
    // Every resource is a file at its own path on the other device.
    for name in [
        "IMG_0001.JPG",
        "IMG_0001.MOV",
        "DSC_0001.JPG",
        "DSC_0001.NEF",
    ] {
        assert!(laptop.join(name).exists(), "{name} did not arrive");
    }
    assert_eq!(std::fs::read(laptop.join("IMG_0001.JPG")).unwrap(), still);
    // Search shows each once, by the picture people see.
    let lives = succeeded(
        keepsake(&server.url, &server_data)
            .args(["search", "--kind", "live"])
            .output()
            .unwrap(),
    );
    assert!(
        lives.contains("IMG_0001.JPG") && !lives.contains("IMG_0001.MOV"),
        "{lives}"
    );

    // Trashed from the library on the laptop: the Live Photo goes as one, everywhere.
    device_said(
        &server.url,
        &server_data,
        &laptop_data,
        &["device", "trash", "IMG_0001.JPG"],
    );
    sync_once(&laptop, &laptop_data);
    sync_once(&phone, &phone_data);
    for name in ["IMG_0001.JPG", "IMG_0001.MOV"] {
        assert!(!phone.join(name).exists(), "{name} was left behind");
    }
    device_said(
        &server.url,
        &server_data,
        &phone_data,
        &["device", "restore", "IMG_0001.JPG"],
    );
    sync_once(&phone, &phone_data);
    sync_once(&laptop, &laptop_data);
    for name in ["IMG_0001.JPG", "IMG_0001.MOV"] {
        assert!(laptop.join(name).exists(), "{name} was not restored");
    }

    // The RAW deleted from the phone's folder: only that file goes; the JPEG stays.
    std::fs::remove_file(phone.join("DSC_0001.NEF")).unwrap();
    sync_once(&phone, &phone_data);
    sync_once(&laptop, &laptop_data);
    let assets = assets_by_path(&server.url, &server_data).await;
    assert!(!live(&assets["DSC_0001.NEF"]) && live(&assets["DSC_0001.JPG"]));
    assert!(laptop.join("DSC_0001.JPG").exists() && !laptop.join("DSC_0001.NEF").exists());
}

/// On a metered link videos wait for Wi-Fi, but a Live Photo's movie goes with its still:
/// it is part of a photo, and a photo whose movie waits would arrive half.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_photos_movie_goes_with_its_still_while_other_videos_wait_for_wifi() {
    use devices::*;
    use keepsake_policy::{Network, Snapshot};
    let c = cloud().await;
    let root = tempfile::tempdir().unwrap();
    let fa = root.path().join("A");
    let mut a = device(&c, &fa, &root.path().join("a-data"), "phone").await;
    let id = "0B9A8C7D-6E5F-4A3B-2C1D-0E9F8A7B6C5D";
    std::fs::write(
        fa.join("IMG_0002.JPG"),
        keepsake_testkit::media::live_photo_still(&jpeg(200, 150), id, "2024:05:02 09:00:00"),
    )
    .unwrap();
    std::fs::write(
        fa.join("IMG_0002.MOV"),
        keepsake_testkit::media::live_photo_movie(id, 3000, 100_000),
    )
    .unwrap();
    std::fs::write(fa.join("CLIP.MOV"), photo(44, 300_000)).unwrap();
    let mut cellular = Snapshot {
        account: Some("alice".into()),
        ..Snapshot::example()
    };
    cellular.network = Some(Network::Cellular);
    cellular.cellular.allowed = true;
    a.set_conditions(Some(cellular.clone()));
    let first = sync(&mut a).await;
    assert_eq!(first.uploaded, 2, "{first:?}: the still and its movie");
    assert_eq!(a.pending_files().unwrap(), 1, "the other video waits");
    let mut wifi = cellular;
    wifi.network = Some(Network::Wifi);
    a.set_conditions(Some(wifi));
    let second = sync(&mut a).await;
    assert_eq!(second.uploaded, 1, "{second:?}");
}
