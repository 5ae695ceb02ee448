//! The journal's own tests: manifests kept, batches and their savepoints.

use super::*;
use keepsake_store::ManifestEntry;

fn manifest(seed: u32, entries: usize) -> Manifest {
    let entries = (0..entries)
        .map(|i| ManifestEntry {
            chunk: ChunkId::of(format!("{seed}:{i}").as_bytes()),
            len: 1000,
        })
        .collect();
    Manifest::new(entries, ChunkId::of(&seed.to_le_bytes()))
}

#[test]
fn the_journal_keeps_the_most_recent_manifests_and_only_small_ones() {
    let dir = tempfile::tempdir().unwrap();
    let journal = Journal::open(&dir.path().join("j.db")).unwrap();
    let first = manifest(0, 3);
    journal.keep_manifest(&first).unwrap();
    assert_eq!(
        journal.kept_manifest(&first.id()).unwrap(),
        Some(first.clone())
    );
    for seed in 1..KEPT_MANIFESTS as u32 {
        journal.keep_manifest(&manifest(seed, 3)).unwrap();
    }
    // Kept again: now the newest, so the next one pushes out seed 1, not it.
    journal.keep_manifest(&first).unwrap();
    journal.keep_manifest(&manifest(9_999, 3)).unwrap();
    assert!(journal.kept_manifest(&first.id()).unwrap().is_some());
    assert_eq!(journal.kept_manifest(&manifest(1, 3).id()).unwrap(), None);
    assert!(
        journal
            .kept_manifest(&manifest(2, 3).id())
            .unwrap()
            .is_some()
    );
    let count: i64 = journal
        .db
        .query_row("SELECT count(*) FROM manifests", [], |r| r.get(0))
        .unwrap();
    assert_eq!(count, KEPT_MANIFESTS);
    let video = manifest(7, KEPT_MANIFEST_MAX_BYTES / 36 + 1);
    journal.keep_manifest(&video).unwrap();
    assert_eq!(journal.kept_manifest(&video.id()).unwrap(), None);
}

fn meta(asset: &str) -> MetaRow {
    MetaRow {
        asset_id: asset.into(),
        name: format!("{asset}.jpg"),
        state: "live".into(),
        favorite: false,
        hidden: false,
    }
}

#[test]
fn a_batch_is_seen_by_the_control_service_only_once_it_ends() {
    let dir = tempfile::tempdir().unwrap();
    let agent = Journal::open(&dir.path().join("j.db")).unwrap();
    let control = Journal::open(&dir.path().join("j.db")).unwrap();
    agent.begin_batch().unwrap();
    agent.put_meta(&meta("a")).unwrap();
    agent.begin_batch().unwrap();
    agent.set(Key::Cursor, "7").unwrap();
    assert_eq!(control.meta("a").unwrap(), None);
    assert_eq!(control.get(Key::Cursor).unwrap(), None);
    agent.end_batch().unwrap();
    assert_eq!(control.meta("a").unwrap(), Some(meta("a")));
    assert_eq!(control.get(Key::Cursor).unwrap().as_deref(), Some("7"));
    // Closed: the control service writes again at once.
    control.put_meta(&meta("b")).unwrap();
    agent.end_batch().unwrap();
}

#[test]
fn a_failed_write_inside_a_batch_is_undone_alone() {
    let dir = tempfile::tempdir().unwrap();
    let journal = Journal::open(&dir.path().join("j.db")).unwrap();
    journal.begin_batch().unwrap();
    journal.put_meta(&meta("a")).unwrap();
    {
        let half = journal.scope().unwrap();
        half.execute("DELETE FROM meta WHERE asset_id = 'a'", [])
            .unwrap();
        journal.put_meta(&meta("b")).unwrap();
        // Dropped uncommitted, as when its next statement fails.
    }
    let whole = journal.scope().unwrap();
    journal.put_meta(&meta("c")).unwrap();
    whole.commit().unwrap();
    journal.end_batch().unwrap();
    assert!(journal.db.is_autocommit());
    let names: Vec<String> = journal
        .metas()
        .unwrap()
        .into_iter()
        .map(|m| m.asset_id)
        .collect();
    assert_eq!(names, ["a", "c"]);
}

#[test]
fn a_kept_manifest_whose_bytes_changed_is_not_used() {
    let dir = tempfile::tempdir().unwrap();
    let journal = Journal::open(&dir.path().join("j.db")).unwrap();
    let kept = manifest(1, 4);
    journal.keep_manifest(&kept).unwrap();
    let other = manifest(2, 4).encode();
    journal
        .db
        .execute("UPDATE manifests SET body = ?1", [other])
        .unwrap();
    assert_eq!(journal.kept_manifest(&kept.id()).unwrap(), None);
}
