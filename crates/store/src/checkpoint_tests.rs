//! SQLite's write-ahead log is copied into the database file beside the writer connection (whose
//! own automatic checkpoint is off), and stays bounded under unbroken writes.

use std::str::FromStr;
use std::time::{Duration, Instant};

use serde_json::json;
use sqlx::sqlite::SqliteConnectOptions;

use crate::testing::fresh_database;
use crate::{Backend, Db, DbOptions, PlatformScope};

fn scope() -> PlatformScope {
    crate::testing::system_platform_scope()
}

fn size(path: &str) -> u64 {
    std::fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

/// Bytes of one WAL frame: a 24-byte header and a 4 KiB page.
const FRAME: u64 = 24 + 4096;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_log_is_checkpointed_beside_the_writer_and_stays_bounded() {
    let t = fresh_database(Backend::Sqlite).await;
    let opts = DbOptions::new(t.url.clone());
    Db::migrate(&opts).await.unwrap();
    let db = Db::connect(&opts).await.unwrap();
    let file = SqliteConnectOptions::from_str(&t.url).unwrap().get_filename().display().to_string();
    let wal = format!("{file}-wal");
    let db_size_before = size(&file);

    // Four writers for three seconds, each commit a few KiB of journal entries.
    let deadline = Instant::now() + Duration::from_secs(3);
    let writers: Vec<_> = (0..4)
        .map(|w| {
            let db = db.clone();
            tokio::spawn(async move {
                let mut commits = 0u64;
                while Instant::now() < deadline {
                    let mut tx = db.platform_tx(&scope()).await.unwrap();
                    let filler = "x".repeat(1500);
                    tx.action(chrono::Utc::now(), "test.write", None, json!({"w": w, "f": filler}))
                        .await
                        .unwrap();
                    tx.outcome(chrono::Utc::now(), "test.written", None, json!({"f": filler})).await.unwrap();
                    tx.commit().await.unwrap();
                    commits += 1;
                }
                commits
            })
        })
        .collect();
    let mut wal_max = 0;
    while Instant::now() < deadline {
        wal_max = wal_max.max(size(&wal));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut commits = 0;
    for w in writers {
        commits += w.await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(300)).await;

    // The entries alone, about 1.5 KiB each, are copied into the database file.
    let grew = size(&file) - db_size_before;
    assert!(commits > 100, "too few commits to tell: {commits}");
    assert!(grew > commits * 2 * 1500 / 2, "the database file grew by {grew} bytes for {commits} commits");
    // Each commit appends at least four pages to the log (the entries' table, their key,
    // correlation and resource indexes). Copied but never restarted, the log would hold all of
    // it; it restarts once copied, so it never held more than a part (the part depends on how
    // fast the passes run on this machine).
    let written = commits * 4;
    assert!(
        wal_max < written * FRAME / 2,
        "the log reached {} frames for at least {written} frames written",
        wal_max / FRAME
    );
}
