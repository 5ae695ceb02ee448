//! Bringing a library in, on the real binary: a Google Takeout archive whose sidecars
//! disagree with the photos' EXIF and hold broken entries, imported twice; a folder tree.

use super::hardening::{keepsake, start_server};
use super::*;
use std::collections::HashMap;
use std::io::Write;

/// `keepsake import ARGS` as the administrator, with its stdout; fails the test on failure.
fn imported(url: &str, server_data: &Path, args: &[&std::ffi::OsStr]) -> String {
    succeeded(
        keepsake(url, server_data)
            .arg("import")
            .args(args)
            .output()
            .unwrap(),
    )
}

/// The library as its feed says it now: assets by path, albums by name.
async fn library_now(
    url: &str,
    server_data: &Path,
) -> (
    HashMap<String, keepsake_transport_pb::Asset>,
    HashMap<String, keepsake_transport_pb::Album>,
) {
    let token = sign_in(url, server_data).await;
    let mut lib = client::library_client(
        client::connect(url).await.unwrap(),
        client::BearerAuth::new(&token),
    );
    let (mut assets, mut albums) = (HashMap::new(), HashMap::new());
    for change in client::whole_feed(&mut lib).await.unwrap() {
        match change.row {
            Some(keepsake_transport_pb::change::Row::Asset(a)) => {
                assets.retain(|_, known: &mut keepsake_transport_pb::Asset| {
                    known.asset_id != a.asset_id
                });
                assets.insert(a.path.clone(), a);
            }
            Some(keepsake_transport_pb::change::Row::Album(a)) => {
                albums.insert(a.name.clone(), a);
            }
            None => {}
        }
    }
    (assets, albums)
}

fn takeout_sidecar(title: &str, taken_s: i64, place: (f64, f64), description: &str) -> Vec<u8> {
    serde_json::json!({
        "title": title,
        "description": description,
        "imageViews": "3",
        "creationTime": {"timestamp": "1700000000", "formatted": "Nov 14, 2023"},
        "photoTakenTime": {"timestamp": taken_s.to_string(), "formatted": "…"},
        "geoData": {"latitude": place.0, "longitude": place.1, "altitude": 21.0,
                    "latitudeSpan": 0.0, "longitudeSpan": 0.0},
        "favorited": true,
        "url": "https://photos.example/abc"
    })
    .to_string()
    .into_bytes()
}

/// A Takeout archive as Google makes one: year folders, an album folder holding a copy of
/// a year's photo, sidecars beside the photos — plus what a damaged download or a hostile
/// archive holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_takeout_archive_imports_with_its_sidecars_dates_and_importing_it_twice_adds_nothing() {
    let root = tempfile::tempdir().unwrap();
    let (server, server_data) = start_server(root.path(), "127.0.0.1:0", &[]);
    // The photo's EXIF says 2010; the sidecar, which keeps the date the person corrected
    // in Google Photos, says 2019-06-08.
    let rome = root.path().join("IMG_1.jpg");
    std::fs::write(&rome, devices::jpeg(320, 240)).unwrap();
    let tagged = Command::new("exiftool")
        .args([
            "-q",
            "-overwrite_original",
            "-DateTimeOriginal=2010:01:01 10:00:00",
        ])
        .arg(&rome)
        .status()
        .expect("exiftool (Debian's libimage-exiftool-perl; `cargo xtask ci` installs it)");
    assert!(tagged.success());
    let rome = std::fs::read(&rome).unwrap();
    let other = devices::jpeg(300, 200);
    let g = "Takeout/Google Photos";
    let entries: Vec<(String, Vec<u8>)> = vec![
        (format!("{g}/Photos from 2019/IMG_1.jpg"), rome.clone()),
        (
            format!("{g}/Photos from 2019/IMG_1.jpg.supplemental-metadata.json"),
            takeout_sidecar("IMG_1.jpg", 1_560_000_000, (41.8902, 12.4922), "Colosseum"),
        ),
        (format!("{g}/Rome 2019/IMG_1.jpg"), rome.clone()),
        (
            format!("{g}/Rome 2019/IMG_1.jpg.supplemental-metadata.json"),
            takeout_sidecar("IMG_1.jpg", 1_560_000_000, (41.8902, 12.4922), "Colosseum"),
        ),
        (
            format!("{g}/Rome 2019/metadata.json"),
            br#"{"title": "Rome 2019", "description": ""}"#.to_vec(),
        ),
        (format!("{g}/Photos from 2019/IMG_2.jpg"), other.clone()),
        (
            format!("{g}/Photos from 2019/IMG_2.jpg.json"),
            b"{\"title\": \"IMG_2.jpg\", \"photoTakenTime\": {\"timest".to_vec(),
        ),
        ("../../escape.jpg".to_string(), devices::jpeg(64, 64)),
        (
            "Takeout/archive_browser.html".to_string(),
            b"<html></html>".to_vec(),
        ),
    ];
    let archive = root.path().join("takeout-20261207T000000Z-001.zip");
    let mut zip = zip::ZipWriter::new(std::fs::File::create(&archive).unwrap());
    for (name, bytes) in &entries {
        zip.start_file(name.as_str(), zip::write::SimpleFileOptions::default())
            .unwrap();
        zip.write_all(bytes).unwrap();
    }
    zip.finish().unwrap();
    let journal = root.path().join("imports.sqlite3");
    let args = [
        archive.as_os_str(),
        "--journal".as_ref(),
        journal.as_os_str(),
    ];

    let first = imported(&server.url, &server_data, &args);
    assert!(first.contains("Imported 2 photos and videos"), "{first}");
    assert!(first.contains("Already in the library: 1"), "{first}");
    assert!(first.contains("climbs out"), "{first}");
    assert!(
        first.contains("IMG_2.jpg.json") && first.contains("does not parse"),
        "{first}"
    );
    assert!(
        first.contains("Left out (not photos or videos): 1"),
        "{first}"
    );

    let (assets, albums) = library_now(&server.url, &server_data).await;
    assert_eq!(assets.len(), 2, "{:?}", assets.keys());
    let (path, photo) = assets
        .iter()
        .find(|(p, _)| p.ends_with("Photos from 2019/IMG_1.jpg"))
        .expect("the photo at its folder under Imports/");
    assert!(path.starts_with("Imports/Takeout 20"), "{path}");
    assert_eq!(
        photo.capture_time_ms,
        Some(1_560_000_000_000),
        "the sidecar's date"
    );
    let details = photo.details.as_ref().unwrap();
    assert!((details.latitude.unwrap() - 41.8902).abs() < 1e-6);
    assert!(photo.favorite, "the sidecar's favourite");
    assert_eq!(photo.title, "Colosseum");
    assert_eq!(
        albums["Rome 2019"].members,
        vec![photo.asset_id.clone()],
        "the album folder's copy joined its album, not the library"
    );
    // The person corrects the date and clears the place: the library says so, the
    // original's bytes are untouched (same hash).
    let hash_before = photo.file_hash.clone();
    for args in [
        ["library", "date", &photo.asset_id, "2019-06-09T08:30"],
        ["library", "place", &photo.asset_id, "none"],
    ] {
        succeeded(
            keepsake(&server.url, &server_data)
                .args(args)
                .output()
                .unwrap(),
        );
    }
    let (corrected, _) = library_now(&server.url, &server_data).await;
    let corrected = &corrected[path];
    assert_eq!(corrected.capture_time_ms, Some(1_560_069_000_000));
    assert_eq!(corrected.details.as_ref().and_then(|d| d.latitude), None);
    assert_eq!(corrected.file_hash, hash_before);
    let broken = assets
        .iter()
        .find(|(p, _)| p.ends_with("IMG_2.jpg"))
        .map(|(_, a)| a)
        .unwrap();
    assert!(
        !broken.favorite,
        "a sidecar that does not parse sets nothing"
    );

    // Again with the journal: nothing is read again. Again without it (another machine):
    // every photo is found already there. Neither adds anything.
    let second = imported(&server.url, &server_data, &args);
    assert!(second.contains("Imported 0 photos"), "{second}");
    assert!(second.contains("Done by an earlier run: 3"), "{second}");
    let fresh = root.path().join("other-journal.sqlite3");
    let third = imported(
        &server.url,
        &server_data,
        &[archive.as_os_str(), "--journal".as_ref(), fresh.as_os_str()],
    );
    assert!(third.contains("Imported 0 photos"), "{third}");
    assert!(third.contains("Already in the library: 3"), "{third}");
    let (after, _) = library_now(&server.url, &server_data).await;
    assert_eq!(after.len(), 2, "{:?}", after.keys());
}

/// A folder tree keeps its folders; a file whose bytes the library has is skipped unless
/// duplicates are asked for, and even then one entry is never imported twice; an iCloud
/// export comes in with its details table's dates, favourites and albums.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_folder_import_keeps_its_folders_and_imports_copies_only_when_asked() {
    let root = tempfile::tempdir().unwrap();
    let (server, server_data) = start_server(root.path(), "127.0.0.1:0", &[]);
    let source = root.path().join("Old Laptop");
    std::fs::create_dir_all(source.join("2015/Summer")).unwrap();
    std::fs::write(
        source.join("2015/Summer/beach.jpg"),
        devices::jpeg(200, 100),
    )
    .unwrap();
    std::fs::write(source.join("2015/beach copy.jpg"), devices::jpeg(200, 100)).unwrap();
    std::fs::write(source.join("notes.txt"), b"not a photo").unwrap();
    let journal = root.path().join("j.sqlite3");
    let out = imported(
        &server.url,
        &server_data,
        &[
            source.as_os_str(),
            "--journal".as_ref(),
            journal.as_os_str(),
        ],
    );
    assert!(out.contains("Imported 1 photos"), "{out}");
    assert!(out.contains("Already in the library: 1"), "{out}");
    let (assets, _) = library_now(&server.url, &server_data).await;
    let paths: Vec<&String> = assets.keys().collect();
    assert_eq!(paths.len(), 1, "{paths:?}");
    assert!(
        paths[0].starts_with("Imports/Files ") && paths[0].ends_with("/2015/Summer/beach.jpg"),
        "{paths:?}"
    );

    let again = root.path().join("j2.sqlite3");
    let out = imported(
        &server.url,
        &server_data,
        &[
            source.as_os_str(),
            "--keep-duplicates".as_ref(),
            "--journal".as_ref(),
            again.as_os_str(),
        ],
    );
    assert!(!out.contains("Already in the library"), "{out}");

    // The copy is a photo of its own now; the file imported before is not imported twice
    // (its commit is the first one's retry).
    let (assets, _) = library_now(&server.url, &server_data).await;
    assert_eq!(assets.len(), 2, "{:?}", assets.keys());
    assert!(assets.keys().any(|p| p.ends_with("/2015/beach copy.jpg")));

    // An iCloud Photos export: its photos folder and the details table (dates, favourites,
    // what was in Recently Deleted) and an album's table.
    let icloud = root.path().join("iCloud Photos");
    std::fs::create_dir_all(icloud.join("Photos")).unwrap();
    std::fs::create_dir_all(icloud.join("Albums")).unwrap();
    std::fs::write(icloud.join("Photos/IMG_0100.JPG"), devices::jpeg(120, 90)).unwrap();
    std::fs::write(icloud.join("Photos/IMG_0101.JPG"), devices::jpeg(90, 120)).unwrap();
    std::fs::write(
        icloud.join("Photo Details.csv"),
        "imgName,fileChecksum,favorite,hidden,deleted,originalCreationDate,viewCount,importDate\n\
         IMG_0100.JPG,x,yes,no,no,\"Tuesday June 16,2020 2:12 PM GMT\",1,x\n\
         IMG_0101.JPG,y,no,no,yes,\"Monday January 6,2020 12:05 AM GMT\",0,x\n",
    )
    .unwrap();
    std::fs::write(icloud.join("Albums/Beach.csv"), "Images\nIMG_0100.JPG\n").unwrap();
    let out = imported(
        &server.url,
        &server_data,
        &[
            icloud.as_os_str(),
            "--journal".as_ref(),
            journal.as_os_str(),
        ],
    );
    assert!(
        out.contains("Imported 1 photos") && out.contains("trash"),
        "{out}"
    );
    let (assets, albums) = library_now(&server.url, &server_data).await;
    let (path, photo) = assets
        .iter()
        .find(|(p, _)| p.ends_with("/Photos/IMG_0100.JPG"))
        .expect("the iCloud photo");
    assert!(path.starts_with("Imports/iCloud "), "{path}");
    assert_eq!(photo.capture_time_ms, Some(1_592_316_720_000));
    assert!(photo.favorite);
    assert_eq!(albums["Beach"].members, vec![photo.asset_id.clone()]);
}
