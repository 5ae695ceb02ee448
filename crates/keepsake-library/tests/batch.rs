//! A device's queued edits sent as one `apply_edits` call end exactly as the same edits
//! sent one call each: the same answers (applied, lost to a newer change, or refused for
//! the same reason) and the same library, feed order included.

mod common;
use common::open_library;

use keepsake_library::*;
use keepsake_store::{ChunkId, ManualClock, SeededEntropy};
use proptest::prelude::*;
use std::sync::Arc;

const T0: i64 = 1_700_000_000_000;

/// An edit by index: assets and albums picked from small sets, so edits collide, and some
/// name things that do not exist or carry a clock too far ahead.
#[derive(Debug, Clone)]
enum Pick {
    Favorite {
        asset: usize,
        value: bool,
        skew: i64,
    },
    Title {
        asset: usize,
        text: u8,
        skew: i64,
    },
    PutAlbum {
        album: u8,
        name: u8,
        skew: i64,
    },
    DeleteAlbum {
        album: u8,
    },
    Member {
        album: u8,
        asset: usize,
        present: bool,
        skew: i64,
    },
    Trash {
        asset: usize,
    },
    Restore {
        asset: usize,
    },
    Rename {
        asset: usize,
        name: u8,
        skew: i64,
    },
}

fn arb_pick() -> impl Strategy<Value = Pick> {
    let skew = prop_oneof![5 => -5_000i64..5_000, 1 => Just(400_000i64)];
    prop_oneof![
        3 => (0usize..6, any::<bool>(), skew.clone()).prop_map(|(asset, value, skew)| Pick::Favorite { asset, value, skew }),
        1 => (0usize..6, 0u8..4, skew.clone()).prop_map(|(asset, text, skew)| Pick::Title { asset, text, skew }),
        1 => (0u8..3, 0u8..3, skew.clone()).prop_map(|(album, name, skew)| Pick::PutAlbum { album, name, skew }),
        1 => (0u8..3).prop_map(|album| Pick::DeleteAlbum { album }),
        3 => (0u8..3, 0usize..6, any::<bool>(), skew.clone()).prop_map(|(album, asset, present, skew)| Pick::Member { album, asset, present, skew }),
        1 => (0usize..6).prop_map(|asset| Pick::Trash { asset }),
        1 => (0usize..6).prop_map(|asset| Pick::Restore { asset }),
        // Few names, in two cases: renames collide and get numbered.
        2 => (0usize..6, 0u8..6, skew).prop_map(|(asset, name, skew)| Pick::Rename { asset, name, skew }),
    ]
}

/// A library with four photos (a fifth id that was never an asset, a sixth purged).
fn library() -> (Library, Vec<String>) {
    let clock = Arc::new(ManualClock::new(T0));
    let lib = open_library(
        None,
        clock,
        Arc::new(SeededEntropy::new(3)),
        LibraryConfig::default(),
    )
    .unwrap();
    let mut ids = Vec::new();
    for i in 0..5u8 {
        let c = lib
            .commit(
                "alice",
                &CommitRequest {
                    details: Default::default(),
                    request_id: format!("r{i}"),
                    asset_id: None,
                    base_version: None,
                    manifest: ChunkId::of(&[i, 1]),
                    file_hash: ChunkId::of(&[i, 2]),
                    size: 1,
                    kind: AssetKind::Photo,
                    capture_time: None,
                    width: None,
                    height: None,
                    original_name: format!("IMG_{i}.JPG"),
                    path: String::new(),
                    device: "phone".into(),
                },
            )
            .unwrap();
        ids.push(c.asset_id);
    }
    lib.purge("alice", &ids[4]).unwrap();
    ids.insert(4, "never-an-asset".into());
    (lib, ids)
}

fn edit(pick: &Pick, ids: &[String], n: u32) -> LibraryEdit {
    let clock = |skew: i64| Hlc {
        wall_ms: T0 + skew,
        counter: n,
        device: "tablet".into(),
    };
    match pick.clone() {
        Pick::Favorite { asset, value, skew } => LibraryEdit::Metadata {
            asset_id: ids[asset].clone(),
            field: MetadataField::Favorite(value),
            clock: clock(skew),
        },
        Pick::Title { asset, text, skew } => LibraryEdit::Metadata {
            asset_id: ids[asset].clone(),
            field: MetadataField::Title(format!("t{text}")),
            clock: clock(skew),
        },
        Pick::PutAlbum { album, name, skew } => LibraryEdit::PutAlbum {
            album_id: format!("a{album}"),
            name: format!("album {name}"),
            clock: clock(skew),
        },
        Pick::DeleteAlbum { album } => LibraryEdit::DeleteAlbum {
            album_id: format!("a{album}"),
            clock: clock(0),
        },
        Pick::Member {
            album,
            asset,
            present,
            skew,
        } => LibraryEdit::Member {
            album_id: format!("a{album}"),
            asset_id: ids[asset].clone(),
            present,
            clock: clock(skew),
        },
        Pick::Trash { asset } => LibraryEdit::Trash {
            asset_id: ids[asset].clone(),
            alone: false,
        },
        Pick::Restore { asset } => LibraryEdit::Restore {
            asset_id: ids[asset].clone(),
        },
        Pick::Rename { asset, name, skew } => LibraryEdit::Rename {
            asset_id: ids[asset].clone(),
            path: if name % 2 == 0 {
                format!("trip/IMG_{}.JPG", name / 2)
            } else {
                format!("Trip/img_{}.jpg", name / 2)
            },
            clock: clock(skew),
        },
    }
}

/// One call per edit, through the calls a device used before batches.
fn one_by_one(lib: &Library, e: &LibraryEdit) -> Result<bool, LibraryError> {
    match e {
        LibraryEdit::Metadata {
            asset_id,
            field,
            clock,
        } => lib.set_metadata("alice", asset_id, field, clock),
        LibraryEdit::PutAlbum {
            album_id,
            name,
            clock,
        } => lib.put_album("alice", album_id, name, clock),
        LibraryEdit::DeleteAlbum { album_id, clock } => {
            let before = lib.list_changes("alice", 0, 1000)?;
            lib.delete_album("alice", album_id, clock)?;
            Ok(lib.list_changes("alice", 0, 1000)? != before)
        }
        LibraryEdit::Member {
            album_id,
            asset_id,
            present,
            clock,
        } => lib.set_member("alice", album_id, asset_id, *present, clock),
        LibraryEdit::Trash { asset_id, .. } | LibraryEdit::Restore { asset_id } => {
            let before = lib.get_asset("alice", asset_id)?.state;
            match e {
                LibraryEdit::Trash { .. } => lib.trash("alice", asset_id)?,
                _ => lib.restore("alice", asset_id)?,
            }
            Ok(lib.get_asset("alice", asset_id)?.state != before)
        }
        LibraryEdit::Rename {
            asset_id,
            path,
            clock,
        } => lib.rename("alice", asset_id, path, clock),
    }
}

fn answer(r: &Result<bool, LibraryError>) -> Result<bool, &'static str> {
    r.as_ref().map(|a| *a).map_err(LibraryError::reason)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(common::cases(128)))]

    #[test]
    fn a_batch_of_edits_ends_exactly_as_the_same_edits_one_call_each(
        picks in proptest::collection::vec(arb_pick(), 1..60),
        batch in 1usize..25,
    ) {
        let (single, ids) = library();
        let (batched, same_ids) = library();
        prop_assert_eq!(&ids, &same_ids);
        let edits: Vec<LibraryEdit> = picks.iter().enumerate().map(|(n, p)| edit(p, &ids, n as u32)).collect();
        let expected: Vec<Result<bool, &str>> = edits.iter().map(|e| answer(&one_by_one(&single, e))).collect();
        let mut got = Vec::new();
        for chunk in edits.chunks(batch) {
            got.extend(batched.apply_edits("alice", chunk).unwrap().iter().map(answer));
        }
        prop_assert_eq!(got, expected);
        prop_assert_eq!(
            batched.list_changes("alice", 0, 1000).unwrap(),
            single.list_changes("alice", 0, 1000).unwrap()
        );
    }
}

#[test]
fn more_edits_than_one_call_takes_are_refused_whole() {
    let (lib, ids) = library();
    let edits: Vec<LibraryEdit> = (0..=MAX_EDITS_PER_CALL as u32)
        .map(|n| {
            edit(
                &Pick::Favorite {
                    asset: 0,
                    value: true,
                    skew: 0,
                },
                &ids,
                n,
            )
        })
        .collect();
    let err = lib.apply_edits("alice", &edits).unwrap_err();
    assert_eq!(err.reason(), "INVALID_ARGUMENT");
    assert!(
        !lib.get_asset("alice", &ids[0]).unwrap().favorite,
        "nothing was applied"
    );
}
