//! Measurements `cargo xtask bench peers` needs from inside a Rust process: the raw
//! chunk+hash baseline over a folder, the discard-stream baseline, and metadata edits made
//! over gRPC until another device's journal shows them. Each prints one JSON object.

use anyhow::{Context, Result, bail};
use keepsake_proto::v1 as pb;
use keepsake_transport::client::{self, BearerAuth};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// `bench chunk DIR`: FastCDC + BLAKE3 per chunk + BLAKE3 of each file, the outputs a
/// manifest needs, computed with no streaming machinery over every file in DIR on two
/// threads (files alternate between them). The library is read from the page cache first.
pub fn chunk_dir(dir: &Path) -> Result<()> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    let bytes: u64 = files
        .iter()
        .map(|f| std::fs::read(f).map(|d| d.len() as u64))
        .sum::<std::io::Result<u64>>()?;
    let p = keepsake_delta::ChunkParams::PHOTO;
    let t = Instant::now();
    std::thread::scope(|s| -> Result<()> {
        let workers: Vec<_> = (0..2)
            .map(|w| {
                let files = &files;
                s.spawn(move || -> Result<()> {
                    for file in files.iter().skip(w).step_by(2) {
                        crate::raw_manifest_outputs(&std::fs::read(file)?, p, true);
                    }
                    Ok(())
                })
            })
            .collect();
        for w in workers {
            w.join()
                .map_err(|_| anyhow::anyhow!("a chunking thread panicked"))??;
        }
        Ok(())
    })?;
    let secs = t.elapsed().as_secs_f64();
    println!("{{\"bytes\":{bytes},\"seconds\":{secs}}}");
    Ok(())
}

/// `bench discard MIB`: uploads MIB of chunks to a tonic ChunkStore that drops them, over
/// loopback in this process: the wire's ceiling for the store's message shapes.
pub async fn discard(mib: usize) -> Result<()> {
    let chunks = crate::test_chunks(mib << 20, "keepsake bench peers discard");
    let url = crate::spawn_discard_store(chunks.clone()).await?;
    let mut c = client::store_client(client::connect(&url).await?, "x");
    let t = Instant::now();
    keepsake_testkit::put_all(&mut c, "s", chunks, crate::MESSAGE_BYTES).await?;
    let secs = t.elapsed().as_secs_f64();
    println!("{{\"bytes\":{},\"seconds\":{secs}}}", mib << 20);
    Ok(())
}

/// Arguments of `bench edits`.
pub struct Edits {
    /// The server, through the editing device's proxy.
    pub url: String,
    pub account: String,
    pub password: String,
    /// Changes to make: favourites set and cleared, album members added and removed.
    pub count: usize,
    /// The watching device's journal, where the changes must arrive.
    pub journal: PathBuf,
    /// Single edits whose arrival is timed one by one, after the bulk run.
    pub probes: usize,
}

/// `bench edits`: `count` metadata changes as one device makes them (favourites and album
/// membership, seeded), then the time until another device's journal holds the final
/// state of every asset and album; then `probes` single favourite flips, each timed until
/// the other journal shows it.
pub async fn edits(e: Edits) -> Result<()> {
    if !e.journal.is_file() {
        bail!("no journal at {}", e.journal.display());
    }
    let channel = client::connect(&e.url).await?;
    let mut anonymous = client::accounts_client(channel.clone(), BearerAuth::anonymous());
    let token = anonymous
        .sign_in(pb::SignInRequest {
            account: e.account.clone(),
            password: e.password.clone(),
        })
        .await?
        .into_inner()
        .access
        .context("no access token")?
        .token;
    let lib = client::library_client(channel, BearerAuth::new(&token));
    let assets = live_assets(&mut lib.clone()).await?;
    if assets.is_empty() {
        bail!("the library has no assets to edit");
    }
    let albums: Vec<String> = (0..20).map(|i| format!("bench-album-{i:02}")).collect();
    let mut rng = SplitMix(0x5eed_ed17);
    let started_ms = now_ms();
    let clock = |i: usize| {
        Some(pb::Clock {
            wall_ms: now_ms().max(started_ms),
            counter: i as u32,
            device: "bench-editor".into(),
        })
    };
    let mut requests = Vec::with_capacity(e.count);
    let mut favorite: BTreeMap<String, bool> = BTreeMap::new();
    let mut members: BTreeMap<String, BTreeSet<String>> = albums
        .iter()
        .map(|a| (a.clone(), BTreeSet::new()))
        .collect();
    for i in 0..e.count {
        let asset = assets[rng.below(assets.len() as u64) as usize].clone();
        if i % 2 == 0 {
            let on = !favorite.get(&asset).copied().unwrap_or(false);
            favorite.insert(asset.clone(), on);
            requests.push(Edit::Favorite(asset, on));
        } else {
            let album = albums[rng.below(albums.len() as u64) as usize].clone();
            let set = members.get_mut(&album).expect("every album has a set");
            let present = !set.contains(&asset);
            if present {
                set.insert(asset.clone());
            } else {
                set.remove(&asset);
            }
            requests.push(Edit::Member(album, asset, present));
        }
    }
    let t = Instant::now();
    for (i, album) in albums.iter().enumerate() {
        lib.clone()
            .put_album(pb::PutAlbumRequest {
                album_id: album.clone(),
                name: album.clone(),
                clock: clock(i),
            })
            .await?;
    }
    // Sent as a device sends its queue of edits: ApplyEdits calls of 500, in order (each
    // carries a newer clock than every earlier one, so the last edit of a field wins).
    use pb::library_edit::Edit as Wire;
    let wire: Vec<pb::LibraryEdit> = requests
        .into_iter()
        .enumerate()
        .map(|(i, edit)| {
            let c = clock(albums.len() + i);
            let edit = match edit {
                Edit::Favorite(asset_id, on) => Wire::SetMetadata(pb::SetMetadataRequest {
                    asset_id,
                    clock: c,
                    field: Some(pb::set_metadata_request::Field::Favorite(on)),
                }),
                Edit::Member(album_id, asset_id, present) => {
                    Wire::SetAlbumMember(pb::SetAlbumMemberRequest {
                        album_id,
                        asset_id,
                        present,
                        clock: c,
                    })
                }
            };
            pb::LibraryEdit { edit: Some(edit) }
        })
        .collect();
    for batch in wire.chunks(500) {
        let outcomes = loop {
            // The server allows each device 200 calls a second (burst 400) and says how
            // long to wait when a call is over; a device obeys, and so does this.
            match lib
                .clone()
                .apply_edits(pb::ApplyEditsRequest {
                    edits: batch.to_vec(),
                })
                .await
            {
                Err(s) if s.code() == tonic::Code::ResourceExhausted => {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                other => break other?.into_inner().outcomes,
            }
        };
        if let Some(refused) = outcomes.iter().find(|o| !o.reason.is_empty()) {
            bail!(
                "an edit was refused: {} {}",
                refused.reason,
                refused.message
            );
        }
    }
    let sent_s = t.elapsed().as_secs_f64();
    let want_favorites: BTreeSet<String> = favorite
        .into_iter()
        .filter(|(_, on)| *on)
        .map(|(a, _)| a)
        .collect();
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        if let Ok((f, m)) = journal_view(&e.journal)
            && f == want_favorites
            && albums.iter().all(|a| m.get(a) == members.get(a))
        {
            break;
        }
        if Instant::now() > deadline {
            bail!("the other device did not show the edits within 10 minutes");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let visible_s = t.elapsed().as_secs_f64();

    let mut probe_ms = Vec::new();
    for i in 0..e.probes {
        let asset = assets[i % assets.len()].clone();
        let (favorites, _) = journal_view(&e.journal)?;
        let on = !favorites.contains(&asset);
        let t = Instant::now();
        lib.clone()
            .set_metadata(pb::SetMetadataRequest {
                asset_id: asset.clone(),
                clock: clock(albums.len() + e.count + i),
                field: Some(pb::set_metadata_request::Field::Favorite(on)),
            })
            .await?;
        loop {
            if journal_view(&e.journal).is_ok_and(|(f, _)| f.contains(&asset) == on) {
                break;
            }
            if t.elapsed() > Duration::from_secs(60) {
                bail!("a single edit did not arrive within a minute");
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        probe_ms.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    probe_ms.sort_by(f64::total_cmp);
    let median = probe_ms.get(probe_ms.len() / 2).copied().unwrap_or(0.0);
    let max = probe_ms.last().copied().unwrap_or(0.0);
    println!(
        "{{\"changes\":{},\"sent_seconds\":{sent_s},\"visible_seconds\":{visible_s},\"probe_median_ms\":{median},\"probe_max_ms\":{max}}}",
        e.count + albums.len()
    );
    Ok(())
}

enum Edit {
    Favorite(String, bool),
    Member(String, String, bool),
}

async fn live_assets(lib: &mut client::LibraryApi) -> Result<Vec<String>> {
    let mut assets: Vec<String> = client::whole_feed(lib)
        .await?
        .into_iter()
        .filter_map(|change| match change.row {
            Some(pb::change::Row::Asset(a)) if a.state == pb::AssetState::Live as i32 => {
                Some(a.asset_id)
            }
            _ => None,
        })
        .collect();
    assets.sort();
    assets.dedup();
    Ok(assets)
}

/// Favourites and album members as a device's journal holds them.
type JournalView = (BTreeSet<String>, BTreeMap<String, BTreeSet<String>>);

fn journal_view(journal: &Path) -> Result<JournalView> {
    let db = rusqlite::Connection::open_with_flags(
        journal,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    db.busy_timeout(Duration::from_secs(5))?;
    let favorites = db
        .prepare("SELECT asset_id FROM meta WHERE favorite = 1")?
        .query_map([], |r| r.get::<_, String>(0))?
        .collect::<rusqlite::Result<BTreeSet<String>>>()?;
    let mut albums = BTreeMap::new();
    for row in db
        .prepare("SELECT album_id, members FROM albums")?
        .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?
    {
        let (id, members) = row?;
        let list: Vec<String> = serde_json::from_str(&members)?;
        albums.insert(id, list.into_iter().collect());
    }
    Ok((favorites, albums))
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// SplitMix64: seeded, so every run makes the same edits.
struct SplitMix(u64);

impl SplitMix {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        (z ^ (z >> 31)) % n
    }
}

/// `bench cross-node --watch URL --edit URL --account A --rounds N` (password in
/// KEEPSAKE_PASSWORD): a watcher on one node and an album made through another, N times;
/// prints how long each commit took to reach the watcher (p50 / p99 / max).
pub async fn cross_node(watch: &str, edit: &str, account: &str, rounds: usize) -> Result<()> {
    let password = std::env::var("KEEPSAKE_PASSWORD").context("KEEPSAKE_PASSWORD")?;
    let token = client::accounts_client(client::connect(edit).await?, BearerAuth::anonymous())
        .sign_in(pb::SignInRequest {
            account: account.to_string(),
            password,
        })
        .await?
        .into_inner()
        .access
        .context("no access token")?
        .token;
    let mut stream = client::library_client(client::connect(watch).await?, BearerAuth::new(&token))
        .watch_changes(pb::WatchChangesRequest {
            cursor: 0,
            from_now: true,
        })
        .await?
        .into_inner();
    stream.message().await?.context("the opening page")?;
    let mut editor = client::library_client(client::connect(edit).await?, BearerAuth::new(&token));
    let mut latencies = Vec::with_capacity(rounds);
    for round in 0..rounds {
        let started = std::time::Instant::now();
        editor
            .put_album(pb::PutAlbumRequest {
                album_id: format!("cross-node-{round}"),
                name: format!("Cross-node {round}"),
                clock: Some(pb::Clock {
                    wall_ms: now_ms(),
                    counter: 0,
                    device: "bench-cross-node".into(),
                }),
            })
            .await?;
        loop {
            let page = tokio::time::timeout(std::time::Duration::from_secs(10), stream.message())
                .await
                .map_err(|_| {
                    anyhow::anyhow!("round {round}: the other node never told the watcher")
                })??
                .context("the watch ended")?;
            if !page.changes.is_empty() {
                break;
            }
        }
        latencies.push(started.elapsed());
    }
    latencies.sort();
    let pick = |p: f64| latencies[((latencies.len() - 1) as f64 * p).round() as usize];
    println!(
        "cross-node: {rounds} commits through one node heard by a watcher on another, p50 / p99 / max {:.1} / {:.1} / {:.1} ms",
        pick(0.5).as_secs_f64() * 1e3,
        pick(0.99).as_secs_f64() * 1e3,
        pick(1.0).as_secs_f64() * 1e3
    );
    Ok(())
}
