//! Bytes hashed once on their way out: the store serves a device its chunks as read, the
//! device verifies each one, and a chunk that went bad at rest is refused on arrival,
//! reported, checked again by the cloud and sent again by a device that has the photo.

use super::devices::*;
use super::*;

/// One bit flipped at `at(pack length)` in every data pack (larger than `min_len`), as a
/// failing disk would; returns how many.
fn flip_a_bit_in_packs(store_dir: &Path, min_len: usize, at: fn(usize) -> usize) -> usize {
    let mut flipped = 0;
    for path in files_under(&store_dir.join("objects")) {
        let mut bytes = std::fs::read(&path).unwrap();
        if bytes.len() > min_len {
            let at = at(bytes.len());
            bytes[at] ^= 0x10;
            std::fs::write(&path, bytes).unwrap();
            flipped += 1;
        }
    }
    flipped
}

/// Alice's assets as her feed lists them.
fn alices_assets(c: &Cloudy) -> Vec<keepsake_library::Asset> {
    let feed = c.cloud.library().list_changes("alice", 0, 100).unwrap();
    feed.changes
        .into_iter()
        .filter_map(|change| match change {
            keepsake_library::Change::Asset(asset) => Some(asset),
            _ => None,
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunk_corrupted_at_rest_is_refused_on_arrival_reported_and_sent_again() {
    // In a chunk's bytes: the store serves it as read, the device finds it wrong.
    corrupted_at_rest_then_repaired(|len| len / 2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_header_corrupted_at_rest_is_flagged_and_sent_again_not_blocking() {
    // In the first record's header (packs have none of their own): the store refuses to
    // serve it at all. Until this test the device stopped there, "blocked: DATA_LOSS", and
    // nothing flagged the photo for repair before the next scrub, a week away.
    corrupted_at_rest_then_repaired(|_| 0).await;
}

async fn corrupted_at_rest_then_repaired(at: fn(usize) -> usize) {
    let c = cloud().await;
    let root = tempfile::tempdir().unwrap();
    let (fa, fb) = (root.path().join("A"), root.path().join("B"));
    let mut a = device(&c, &fa, &root.path().join("a-data"), "phone A").await;
    let original = photo(77, 3_000_000);
    let sound = photo(78, 200_000);
    std::fs::write(fa.join("IMG_0077.JPG"), &original).unwrap();
    std::fs::write(fa.join("IMG_0078.JPG"), &sound).unwrap();
    assert_eq!(sync(&mut a).await.uploaded, 2);
    // No scrub runs: only the device that downloads can notice.
    assert_eq!(flip_a_bit_in_packs(&c.store_dir, 1_000_000, at), 1);
    // Another account names alice's chunks, bad one included: it owns none of them, so its
    // report reads nothing and flags nothing.
    let all: Vec<_> = alices_assets(&c)
        .iter()
        .flat_map(|asset| {
            c.store
                .get_manifest("alice", &asset.manifest)
                .unwrap()
                .entries
        })
        .map(|e| e.chunk)
        .collect();
    let (confirmed, damaged) = c.cloud.report_corrupt("mallory", &all).unwrap();
    assert!(confirmed.is_empty() && damaged.is_empty());
    assert!(alices_assets(&c).iter().all(|asset| !asset.damaged));

    let mut b = device(&c, &fb, &root.path().join("b-data"), "phone B").await;
    // Refused, and nothing for a person to do: the pass fails as a passing condition does
    // (the agent tries again shortly), never blocked.
    let refused = b
        .sync_once()
        .await
        .expect_err("a corrupt chunk was accepted");
    assert!(
        matches!(&refused, keepsake_device::DeviceError::Cloud(e) if e.transient),
        "{refused}"
    );
    assert!(refused.to_string().contains("corrupt"), "{refused}");
    assert!(
        !fb.join("IMG_0077.JPG").exists(),
        "a photo written from a corrupt chunk"
    );
    // The report reached the cloud, which found its own copy bad: the chunk is no longer
    // served and the photo is flagged for a device that has it.
    let flagged: Vec<String> = alices_assets(&c)
        .into_iter()
        .filter(|asset| asset.damaged)
        .map(|asset| asset.original_name)
        .collect();
    assert_eq!(flagged, ["IMG_0077.JPG"]);

    // B goes on with everything else and says what it waits for.
    let waiting = sync(&mut b).await;
    assert_eq!(waiting.damaged_waiting, 1, "{waiting:?}");
    assert_eq!(std::fs::read(fb.join("IMG_0078.JPG")).unwrap(), sound);

    // Phone A still has the original and sends it again; B then completes, byte for byte.
    let repaired = sync(&mut a).await;
    assert_eq!(repaired.repairs, 1, "{repaired:?}");
    let completed = sync(&mut b).await;
    assert_eq!(completed.downloaded, 1, "{completed:?}");
    assert_eq!(std::fs::read(fb.join("IMG_0077.JPG")).unwrap(), original);
    assert_eq!(b.damaged_waiting(), 0);
    assert!(c.cloud.scrub().unwrap().store.corrupt_chunks.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_report_of_a_sound_chunk_takes_nothing_away() {
    let c = cloud().await;
    let root = tempfile::tempdir().unwrap();
    let fa = root.path().join("A");
    let mut a = device(&c, &fa, &root.path().join("a-data"), "phone A").await;
    let data = photo(79, 300_000);
    std::fs::write(fa.join("IMG_0079.JPG"), &data).unwrap();
    assert_eq!(sync(&mut a).await.uploaded, 1);
    let asset = alices_assets(&c).remove(0);
    let manifest = c.store.get_manifest("alice", &asset.manifest).unwrap();
    let ids: Vec<_> = manifest.entries.iter().map(|e| e.chunk).collect();

    // A device that lies, or a connection that flipped a bit: the cloud checks its own
    // copy, finds it sound, and keeps everything.
    let (confirmed, damaged) = c.cloud.report_corrupt("alice", &ids).unwrap();
    assert!(confirmed.is_empty() && damaged.is_empty());
    for id in &ids {
        assert!(c.store.get_chunk("alice", id).is_ok());
    }
    let after = c
        .cloud
        .library()
        .get_asset("alice", &asset.asset_id)
        .unwrap();
    assert!(!after.damaged);
}
