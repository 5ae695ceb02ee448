//! The seam against a real PostgreSQL (the database `KEEPSAKE_TEST_POSTGRES` names; skipped
//! without one — `cargo xtask ci` starts one and sets it).

use keepsake_sql::{Db, OptionalExtension, SqlError, params};

fn db(schema: &str) -> Option<Db> {
    let url = std::env::var("KEEPSAKE_TEST_POSTGRES").ok()?;
    let schema = format!("{schema}_{}", std::process::id());
    Some(Db::postgres(&url, &schema).unwrap())
}

#[test]
fn values_round_trip_and_sums_read_back_as_integers() {
    let Some(mut db) = db("values") else { return };
    db.migrate(
        "values",
        &["CREATE TABLE t (id INTEGER PRIMARY KEY, n INTEGER, b BLOB, s TEXT, f INTEGER NOT NULL DEFAULT 0);"],
    )
    .unwrap();
    let tx = db.transaction().unwrap();
    for i in 0..10i64 {
        tx.execute(
            "INSERT INTO t (n, b, s, f) VALUES (?1, ?2, ?3, ?4)",
            params![i << 40, vec![i as u8; 3], format!("s{i}"), i % 2 == 0],
        )
        .unwrap();
    }
    tx.commit().unwrap();
    let (sum, count): (i64, u64) = db
        .query_row("SELECT COALESCE(SUM(n), 0), COUNT(*) FROM t", (), |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .unwrap();
    assert_eq!(sum, 45 << 40);
    assert_eq!(count, 10);
    let (b, s, f): (Vec<u8>, String, bool) = db
        .query_row("SELECT b, s, f FROM t WHERE n = ?1", [3i64 << 40], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })
        .unwrap();
    assert_eq!((b, s.as_str(), f), (vec![3; 3], "s3", false));
    let none: Option<i64> = db
        .query_row("SELECT n FROM t WHERE s = ?1", ["nobody"], |r| r.get(0))
        .optional()
        .unwrap();
    assert_eq!(none, None);
    let hex: String = db
        .query_row("SELECT hex(b) FROM t WHERE n = 0", (), |r| r.get(0))
        .unwrap();
    assert_eq!(hex, "000000");
    let joined: String = db
        .query_row(
            "SELECT group_concat(s, ',') FROM (SELECT s FROM t ORDER BY id LIMIT 3) x",
            (),
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(joined, "s0,s1,s2");
}

#[test]
fn a_unique_violation_is_a_constraint_and_the_transaction_rolls_back() {
    let Some(mut db) = db("unique") else { return };
    db.migrate("unique", &["CREATE TABLE u (k TEXT PRIMARY KEY);"])
        .unwrap();
    db.execute("INSERT INTO u (k) VALUES (?1)", ["a"]).unwrap();
    {
        let tx = db.transaction().unwrap();
        tx.execute("INSERT INTO u (k) VALUES (?1)", ["b"]).unwrap();
        let err = tx
            .execute("INSERT INTO u (k) VALUES (?1)", ["a"])
            .unwrap_err();
        assert!(matches!(err, SqlError::Constraint(_)), "{err}");
    }
    let n: i64 = db
        .query_row("SELECT COUNT(*) FROM u", (), |r| r.get(0))
        .unwrap();
    assert_eq!(n, 1, "the dropped transaction took b with it");
}

#[test]
fn a_newer_schema_is_refused_with_the_reason() {
    let Some(mut db) = db("newer") else { return };
    db.migrate(
        "newer",
        &["CREATE TABLE a (x INTEGER);", "CREATE TABLE b (x INTEGER);"],
    )
    .unwrap();
    let err = db
        .migrate("newer", &["CREATE TABLE a (x INTEGER);"])
        .unwrap_err();
    assert!(err.to_string().contains("newer Keepsake"), "{err}");
}

#[test]
fn an_unreachable_database_is_transient_and_says_so() {
    let err = match Db::postgres("postgres://keepsake@127.0.0.1:9/none", "x") {
        Err(e) => e,
        Ok(_) => panic!("connected to nothing"),
    };
    assert!(err.is_transient(), "{err}");
    assert!(err.to_string().contains("unavailable"), "{err}");
}

#[test]
fn a_held_lock_binds_other_connections_until_its_transaction_ends() {
    let (Some(mut sweeper), Some(mut writer)) = (db("lock_a"), db("lock_b")) else {
        return;
    };
    let key = 0x7465_7374;
    let try_shared = |db: &Db| -> bool {
        db.query_row("SELECT pg_try_advisory_xact_lock_shared(?1)", [key], |r| {
            r.get(0)
        })
        .unwrap()
    };
    let sweep = sweeper.transaction().unwrap();
    sweep.hold(key, true).unwrap();
    let tx = writer.transaction().unwrap();
    assert!(
        !try_shared(&tx),
        "an exclusive holder shuts out shared ones"
    );
    drop(tx);
    sweep.commit().unwrap();
    let tx = writer.transaction().unwrap();
    assert!(try_shared(&tx), "released with its transaction");
    tx.hold(key, false).unwrap();
    let other = sweeper.transaction().unwrap();
    other.hold(key, false).unwrap(); // shared holders do not wait for each other
    let exclusive: bool = other
        .query_row("SELECT pg_try_advisory_xact_lock(?1)", [key], |r| r.get(0))
        .unwrap();
    assert!(
        !exclusive,
        "nor does anyone get it alone while they hold it"
    );
}

/// Regression: a first sync ran on plans made for empty tables (autovacuum had not yet
/// woken), and a 64-id ownership lookup scanned the account's every row.
#[test]
fn a_table_that_outgrew_its_statistics_is_analysed_and_then_left_alone() {
    let Some(mut db) = db("statistics") else {
        return;
    };
    db.migrate(
        "statistics",
        &["CREATE TABLE t (id INTEGER PRIMARY KEY, b BLOB NOT NULL);"],
    )
    .unwrap();
    let tx = db.transaction().unwrap();
    let rows: Vec<Vec<keepsake_sql::Value>> = (0..2000i64)
        .map(|i| vec![i.into(), vec![(i % 251) as u8; 8].into()])
        .collect();
    tx.insert_rows("INSERT INTO t (id, b)", 2, &rows, "")
        .unwrap();
    tx.commit().unwrap();
    // The inserting backend hands its counters over when next idle; make that now.
    db.execute_batch("SELECT pg_stat_force_next_flush()")
        .unwrap();
    db.execute_batch("SELECT 1").unwrap();
    let analysed = db.refresh_statistics().unwrap();
    assert!(analysed.contains(&"t".to_string()), "{analysed:?}");
    let tuples: f64 = db
        .query_row(
            "SELECT reltuples::float8 FROM pg_class WHERE oid = 't'::regclass",
            (),
            |r| r.get(0),
        )
        .unwrap();
    assert!(tuples >= 2000.0, "the planner now knows the rows: {tuples}");
    db.execute_batch("SELECT pg_stat_force_next_flush()")
        .unwrap();
    db.execute_batch("SELECT 1").unwrap();
    assert!(
        !db.refresh_statistics().unwrap().contains(&"t".to_string()),
        "analysed again with nothing new"
    );
}

/// One node's commit must wake another node's watchers: a notification sent inside a
/// transaction reaches a listener on another connection once it commits, never before, and
/// never when it rolls back.
#[test]
fn a_notification_is_heard_once_when_its_transaction_commits_and_never_if_it_rolls_back() {
    let Some(mut db) = db("notify") else { return };
    let url = std::env::var("KEEPSAKE_TEST_POSTGRES").unwrap();
    let channel = format!("heard_{}", std::process::id());
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (tx, heard) = std::sync::mpsc::channel();
    let listening = channel.clone();
    runtime.spawn(async move {
        keepsake_sql::listen(&url, &listening, move |payload| {
            let _ = tx.send(payload);
        })
        .await
    });
    // LISTEN runs on the listener's own schedule: call until it answers.
    let wait = std::time::Duration::from_millis(100);
    loop {
        db.notify(&channel, "ping").unwrap();
        if let Ok(Some(p)) = heard.recv_timeout(wait) {
            assert_eq!(p, "ping");
            break;
        }
    }
    while heard.recv_timeout(wait).is_ok() {}

    let tx = db.transaction().unwrap();
    tx.notify(&channel, "rolled back").unwrap();
    drop(tx);
    let tx = db.transaction().unwrap();
    tx.notify(&channel, "alice").unwrap();
    assert!(
        heard
            .recv_timeout(std::time::Duration::from_millis(300))
            .is_err(),
        "heard before the commit"
    );
    tx.commit().unwrap();
    assert_eq!(
        heard
            .recv_timeout(std::time::Duration::from_secs(5))
            .unwrap(),
        Some("alice".to_string())
    );
    assert!(
        heard.recv_timeout(wait).is_err(),
        "the rolled-back one came too"
    );

    // A thousand edits of one account in one transaction: one notice for it (one round
    // trip), and one for the other account it touched.
    let tx = db.transaction().unwrap();
    for i in 0..1000 {
        tx.notify(&channel, if i % 100 == 7 { "bob" } else { "alice" })
            .unwrap();
    }
    tx.commit().unwrap();
    let mut got = Vec::new();
    while let Ok(Some(p)) = heard.recv_timeout(std::time::Duration::from_millis(500)) {
        got.push(p);
    }
    got.sort();
    assert_eq!(got, ["alice", "bob"], "each account told once");
    assert!(db.notify("Bad Channel", "x").is_err());
}
