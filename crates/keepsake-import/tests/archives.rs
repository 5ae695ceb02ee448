//! Archives as people download them — and as they arrive damaged or hostile — walked
//! entry by entry: every good entry is handed over, every bad one is a problem of its own.

use keepsake_import::source::{Content, Item, Source, Want};
use std::io::Write;
use std::path::Path;

/// Writes a zip of `(name, bytes)` entries, deflated.
fn zip_of(path: &Path, entries: &[(&str, Vec<u8>)]) {
    let mut zip = zip::ZipWriter::new(std::fs::File::create(path).unwrap());
    let options = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Deflated);
    for (name, bytes) in entries {
        zip.start_file(*name, options).unwrap();
        zip.write_all(bytes).unwrap();
    }
    zip.finish().unwrap();
}

/// Writes a gzipped tar of `(name, bytes)` entries.
fn tgz_of(path: &Path, entries: &[(&str, Vec<u8>)]) {
    let gz = flate2::write::GzEncoder::new(
        std::fs::File::create(path).unwrap(),
        flate2::Compression::fast(),
    );
    let mut tar = tar::Builder::new(gz);
    for (name, bytes) in entries {
        let mut header = tar::Header::new_gnu();
        header.set_size(bytes.len() as u64);
        header.set_mode(0o644);
        header.set_mtime(1_600_000_000);
        header.set_cksum();
        tar.append_data(&mut header, name, bytes.as_slice())
            .unwrap();
    }
    tar.into_inner().unwrap().finish().unwrap();
}

/// Photo-like bytes: they do not compress.
fn noise(seed: u8, len: usize) -> Vec<u8> {
    let mut out = vec![0u8; len];
    blake3::Hasher::new()
        .update(&[seed])
        .finalize_xof()
        .fill(&mut out);
    out
}

/// Entries' paths and bytes, or problems' paths and reasons.
type Named<T> = Vec<(String, T)>;

/// Walks `source` reading everything: the entries' paths and bytes, and the problems.
fn walk_all(source: &Source, spool: &Path) -> (Named<Vec<u8>>, Named<String>) {
    let (mut entries, mut problems) = (Vec::new(), Vec::new());
    source
        .walk(spool, &mut |_| Want::Read, &mut |item| {
            match item {
                Item::Entry(e) => {
                    let bytes = match e.content {
                        Content::Held(b) => b.to_vec(),
                        Content::Spooled(t) => std::fs::read(&t).unwrap(),
                        Content::OnDisk(p) => std::fs::read(p).unwrap(),
                    };
                    assert_eq!(bytes.len() as u64, e.size);
                    entries.push((e.path, bytes));
                }
                Item::Problem(p) => problems.push((p.path, p.reason)),
            }
            true
        })
        .unwrap();
    (entries, problems)
}

#[test]
fn a_zip_with_a_climbing_name_and_a_bomb_gives_up_only_those_entries() {
    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join("takeout.zip");
    let photo = noise(1, 300_000);
    zip_of(
        &archive,
        &[
            ("Takeout/Google Photos/Trip/IMG_1.jpg", photo.clone()),
            ("../../outside.jpg", noise(2, 1000)),
            ("Takeout/bomb.jpg", vec![0u8; 40 << 20]),
            ("Takeout/Google Photos/Trip/IMG_2.jpg", noise(3, 5000)),
        ],
    );
    let (entries, problems) = walk_all(&Source::open(&archive).unwrap(), dir.path());
    let names: Vec<&str> = entries.iter().map(|(p, _)| p.as_str()).collect();
    assert_eq!(
        names,
        [
            "Takeout/Google Photos/Trip/IMG_1.jpg",
            "Takeout/Google Photos/Trip/IMG_2.jpg"
        ]
    );
    assert_eq!(entries[0].1, photo, "bytes read back exact");
    assert_eq!(problems.len(), 2, "{problems:?}");
    assert!(problems[0].1.contains("climbs out"), "{problems:?}");
    assert!(problems[1].0.ends_with("bomb.jpg") && problems[1].1.contains("zip bomb"));
}

#[test]
fn a_truncated_tgz_hands_over_what_came_before_the_cut_and_says_where_it_stopped() {
    let dir = tempfile::tempdir().unwrap();
    let whole = dir.path().join("whole.tgz");
    let entries: Vec<(String, Vec<u8>)> = (0..6)
        .map(|i| (format!("Photos from 2020/IMG_{i}.jpg"), noise(i, 200_000)))
        .collect();
    let borrowed: Vec<(&str, Vec<u8>)> = entries
        .iter()
        .map(|(n, b)| (n.as_str(), b.clone()))
        .collect();
    tgz_of(&whole, &borrowed);
    let bytes = std::fs::read(&whole).unwrap();
    let cut = dir.path().join("cut.tgz");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();

    let (all, problems) = walk_all(&Source::open(&whole).unwrap(), dir.path());
    assert_eq!(all.len(), 6);
    assert!(problems.is_empty(), "{problems:?}");

    let (some, problems) = walk_all(&Source::open(&cut).unwrap(), dir.path());
    assert!(!some.is_empty() && some.len() < 6, "{} entries", some.len());
    for (path, data) in &some {
        let original = entries.iter().find(|(n, _)| n == path).unwrap();
        assert_eq!(
            &original.1, data,
            "{path} arrived damaged instead of refused"
        );
    }
    assert!(
        problems.iter().any(|(_, why)| why.contains("cut short")),
        "{problems:?}"
    );
}

#[test]
fn a_truncated_zip_is_refused_with_the_likely_cause() {
    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join("takeout.zip");
    zip_of(&archive, &[("a.jpg", noise(1, 100_000))]);
    let bytes = std::fs::read(&archive).unwrap();
    std::fs::write(&archive, &bytes[..bytes.len() - 40]).unwrap();
    let Err(e) = Source::open(&archive)
        .unwrap()
        .walk(dir.path(), &mut |_| Want::Read, &mut |_| true)
    else {
        panic!("a zip without its directory was read");
    };
    assert!(e.to_string().contains("cut short"), "{e}");
}

#[test]
fn a_gzip_bomb_in_a_tar_is_stopped_by_the_expansion_bound() {
    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join("bomb.tgz");
    tgz_of(
        &archive,
        &[
            ("a.jpg", noise(1, 10_000)),
            ("zeros.jpg", vec![0u8; 200 << 20]),
        ],
    );
    assert!(std::fs::metadata(&archive).unwrap().len() < 2 << 20);
    let (entries, problems) = walk_all(&Source::open(&archive).unwrap(), dir.path());
    assert_eq!(entries.len(), 1, "only the real photo");
    assert!(
        problems.iter().any(|(_, why)| why.contains("zip bomb")),
        "{problems:?}"
    );
}

#[test]
fn large_entries_are_spooled_not_held() {
    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join("video.zip");
    let video = noise(9, (keepsake_import::source::HELD_BELOW + 1000) as usize);
    zip_of(&archive, &[("clip.mp4", video.clone())]);
    let mut spooled = false;
    Source::open(&archive)
        .unwrap()
        .walk(dir.path(), &mut |_| Want::Read, &mut |item| {
            if let Item::Entry(e) = item {
                let Content::Spooled(t) = e.content else {
                    panic!("a large entry was held in memory");
                };
                assert_eq!(std::fs::read(&t).unwrap(), video);
                spooled = true;
            }
            true
        })
        .unwrap();
    assert!(spooled);
}
