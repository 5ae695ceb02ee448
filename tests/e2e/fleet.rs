//! Several `keepsake serve` processes on one PostgreSQL database and one bucket, as a fleet
//! behind one address runs them. Only when `cargo xtask ci`'s PostgreSQL step provides the
//! database (on SQLite there is one process by construction).

use super::*;
use std::time::{Duration, Instant};

/// A node of the fleet: its own data directory (lock, published keys), the shared rows.
fn node(data: &Path, database: &str, blobs: &str) -> Server {
    let (child, url) = hardening::serve_embedded(
        data,
        "127.0.0.1:0",
        &["--database", database, "--blobs", blobs],
    );
    Server {
        child,
        url,
        token: String::new(),
    }
}

/// Regression for watchers that heard only their own node's commits: a device watching
/// through one node learnt of a change made through another at the next poll (5 s); and
/// for a rotated key trusted elsewhere only at the next look at the keys (5 s).
#[tokio::test]
async fn a_watcher_and_a_rotated_key_reach_another_node_within_a_second() {
    let (first_data, second_data) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let Some((database, blobs)) = backend::for_data(first_data.path()) else {
        return;
    };
    let first = node(first_data.path(), &database, &blobs);
    let token = sign_in(&first.url, first_data.path()).await;
    let second = node(second_data.path(), &database, &blobs);

    // Signing keys live in the database: a token from one node is good on the other.
    let mut through_second = client::library_client(
        client::connect(&second.url).await.unwrap(),
        client::BearerAuth::new(&token),
    );
    let mut watcher = client::library_client(
        client::connect(&first.url).await.unwrap(),
        client::BearerAuth::new(&token),
    )
    .watch_changes(keepsake_transport_pb::WatchChangesRequest {
        cursor: 0,
        from_now: true,
    })
    .await
    .unwrap()
    .into_inner();
    let opening = watcher.message().await.unwrap().expect("the opening page");
    assert!(opening.changes.is_empty(), "from now on: nothing yet");

    for round in 0..3 {
        let asked = Instant::now();
        through_second
            .put_album(keepsake_transport_pb::PutAlbumRequest {
                album_id: format!("trip-{round}"),
                name: format!("Trip {round}"),
                clock: Some(keepsake_transport_pb::Clock {
                    wall_ms: keepsake_store::Clock::now_ms(&keepsake_store::SystemClock),
                    counter: 0,
                    device: "fleet-test".into(),
                }),
            })
            .await
            .unwrap();
        let page = tokio::time::timeout(Duration::from_secs(1), watcher.message())
            .await
            .unwrap_or_else(|_| panic!("round {round}: not heard on the other node within 1 s"))
            .unwrap()
            .expect("the watch goes on");
        assert_eq!(page.changes.len(), 1, "round {round}: {page:?}");
        eprintln!(
            "round {round}: heard on the other node after {:?}",
            asked.elapsed()
        );
    }

    // A key rotated through one node: a token it signs is good on the other within a
    // second, not at that node's next look at the keys (every 5 s) — the first token that
    // names the new key wakes it.
    client::accounts_client(
        client::connect(&second.url).await.unwrap(),
        client::BearerAuth::new(&token),
    )
    .rotate_signing_key(keepsake_transport_pb::RotateSigningKeyRequest {})
    .await
    .unwrap();
    let fresh = sign_in(&second.url, first_data.path()).await;
    let mut on_first = client::library_client(
        client::connect(&first.url).await.unwrap(),
        client::BearerAuth::new(&fresh),
    );
    let rotated = Instant::now();
    loop {
        match on_first
            .list_albums(keepsake_transport_pb::ListAlbumsRequest::default())
            .await
        {
            Ok(_) => break,
            Err(status) => {
                assert_eq!(status.code(), tonic::Code::Unauthenticated, "{status:?}");
                assert!(
                    rotated.elapsed() < Duration::from_secs(1),
                    "a token of the rotated key was still refused after {:?}",
                    rotated.elapsed()
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    eprintln!(
        "a token of the new key was good on the other node after {:?}",
        rotated.elapsed()
    );
    drop((first, second));
}
