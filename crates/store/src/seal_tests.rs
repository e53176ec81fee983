//! The sealer against concurrent writers and other sealers, on both backends: every committed
//! entry ends up sealed exactly once, in a chain that verifies, and the work list empties.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use azotte_crypto::chain;
use serde_json::json;

use super::{pending_chains, seal_chain, unsealed, ChainReader, CheckpointPolicy, Pass};
use crate::exec::Tx;
use crate::testing::{fresh_database, migrated};
use crate::{Backend, Db, DbOptions, PlatformScope};

const SEED: [u8; 32] = [7; 32];

fn scope() -> PlatformScope {
    crate::testing::system_platform_scope()
}

fn sign(msg: &[u8]) -> (String, Vec<u8>) {
    ("test".into(), chain::sign(&SEED, msg).to_vec())
}

fn now() -> chrono::DateTime<chrono::Utc> {
    chrono::Utc::now()
}

const POLICY: CheckpointPolicy = CheckpointPolicy { every: 50, interval: chrono::Duration::seconds(60) };

/// Commits `n` platform transactions, each an action (and, `with_outcome`, its outcome); returns
/// the actions' ids.
async fn write(db: &Db, n: usize, with_outcome: bool) -> Vec<String> {
    let mut ids = Vec::new();
    for i in 0..n {
        let mut tx = db.platform_tx(&scope()).await.unwrap();
        ids.push(tx.action(now(), "test.write", None, json!({"i": i})).await.unwrap());
        if with_outcome {
            tx.outcome(now(), "test.written", None, json!({})).await.unwrap();
        }
        tx.commit().await.unwrap();
    }
    ids
}

/// One sealer: passes over the platform chain until told to stop.
async fn sealer(db: Db, stop: Arc<AtomicBool>, pass: Pass) -> usize {
    let mut sealed = 0;
    while !stop.load(Ordering::Relaxed) {
        if let Some(p) = seal_chain(&db, "platform", "platform", &now, POLICY, &sign, pass).await.unwrap() {
            sealed += p.sealed;
        }
        tokio::task::yield_now().await;
    }
    sealed
}

/// Verifies the platform chain page by page, as the service does.
async fn verify_platform_chain(db: &Db) -> chain::Report {
    verify_read(ChainReader::open(db, "platform", "platform").await.unwrap()).await
}

/// Reads the rest of an opened chain of the platform and verifies it.
async fn verify_read(reader: ChainReader<'_>) -> chain::Report {
    verify_chain_read(reader, "platform", "platform").await
}

/// Reads the rest of an opened chain of `tenant`'s `env` and verifies it.
async fn verify_chain_read(mut reader: ChainReader<'_>, tenant: &str, env: &str) -> chain::Report {
    let mut v = chain::ChainVerifier::new(tenant, env, &reader.checkpoints);
    loop {
        let page = reader.next_page().await.unwrap();
        if page.is_empty() {
            break;
        }
        for s in &page {
            v.push(s);
        }
    }
    let keys = [("test".to_owned(), chain::public_key(&SEED))].into_iter().collect();
    v.finish(&reader.checkpoints, &keys, &reader.unsealed, now().timestamp(), 30)
}

async fn concurrent_writers_and_sealers(backend: Backend) {
    let (_t, db) = migrated(backend).await;

    let stop = Arc::new(AtomicBool::new(false));
    let sealers = [Pass::Skip, Pass::Wait].map(|pass| tokio::spawn(sealer(db.clone(), stop.clone(), pass)));
    let writers: Vec<_> = (0..6)
        .map(|w| {
            let db = db.clone();
            tokio::spawn(async move {
                for i in 0..20 {
                    let mut tx = db.platform_tx(&scope()).await.unwrap();
                    tx.action(now(), "test.write", None, json!({"w": w, "i": i})).await.unwrap();
                    tx.outcome(now(), "test.written", None, json!({})).await.unwrap();
                    tx.commit().await.unwrap();
                }
            })
        })
        .collect();
    for w in writers {
        w.await.unwrap();
    }
    stop.store(true, Ordering::Relaxed);
    let mut sealed: usize = 0;
    for s in sealers {
        sealed += s.await.unwrap();
    }
    // What the sealers left (entries committed after their last pass) takes one more pass.
    sealed += seal_chain(&db, "platform", "platform", &now, POLICY, &sign, Pass::Wait)
        .await
        .unwrap()
        .unwrap()
        .sealed;
    assert_eq!(sealed, 240, "every entry sealed exactly once");
    assert!(pending_chains(&db, 10).await.unwrap().is_empty(), "the work list is empty");
    assert!(unsealed(&db, "platform", "platform").await.unwrap().is_empty());

    let report = verify_platform_chain(&db).await;
    assert!(report.findings.is_empty(), "{:?}", report.findings);
    assert_eq!(report.entries_checked, 240);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writers_and_sealers_sqlite() {
    concurrent_writers_and_sealers(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writers_and_sealers_postgres() {
    concurrent_writers_and_sealers(Backend::Postgres).await;
}

/// Runs one statement on the test database behind the service's back.
async fn raw(t: &crate::testing::TestDatabase, db: &Db, sql: &str) {
    use sqlx::Connection;
    match db.pg_pool() {
        Some(p) => drop(sqlx::query(sql).execute(p).await.unwrap()),
        None => {
            let mut c = sqlx::SqliteConnection::connect(&t.url).await.unwrap();
            sqlx::query(sql).execute(&mut c).await.unwrap();
            c.close().await.unwrap();
        }
    }
}

/// Takes a committed entry off the sealer's to-do, as an attacker with database access would, so
/// that it is never sealed: its work-list row (PostgreSQL), or the seal mark moved past it
/// (SQLite; everything before it must be sealed already, or that is skipped too).
async fn hide_from_sealer(t: &crate::testing::TestDatabase, db: &Db, id: &str) {
    let sql = match db.backend() {
        Backend::Postgres => format!("DELETE FROM journal_pending WHERE entry_id = '{id}'"),
        Backend::Sqlite => {
            format!("UPDATE journal_seal_mark SET pos = (SELECT pos FROM journal_entries WHERE id = '{id}')")
        }
    };
    raw(t, db, &sql).await;
}

/// Verification streams the unsealed-entry check by id range, a page at a time: entries left
/// unsealed anywhere in a chain of several pages are all found, and reported once older than the
/// allowed lag; a recent one is listed but not reported.
async fn unsealed_entries_are_found_on_every_page(backend: Backend) {
    let (t, db) = migrated(backend).await;
    let hour_ago = now() - chrono::Duration::hours(1);
    let mut forged = Vec::new();
    let mut sealed = 0;
    for batch in 0..3 {
        let mut tx = db.platform_tx(&scope()).await.unwrap();
        tx.action(now(), "test.batch", None, json!({"batch": batch})).await.unwrap();
        for i in 0..1099 {
            tx.outcome(now(), "test.item", None, json!({"i": i})).await.unwrap();
        }
        tx.commit().await.unwrap();
        sealed += seal_chain(&db, "platform", "platform", &now, POLICY, &sign, Pass::Wait)
            .await
            .unwrap()
            .unwrap()
            .sealed;
        // Claims to be an hour old, and is taken off the sealer's to-do: never sealed.
        let mut tx = db.platform_tx(&scope()).await.unwrap();
        let id = tx.action(hour_ago, "test.forged", None, json!({"batch": batch})).await.unwrap();
        tx.commit().await.unwrap();
        hide_from_sealer(&t, &db, &id).await;
        forged.push(id);
    }
    sealed += seal_chain(&db, "platform", "platform", &now, POLICY, &sign, Pass::Wait)
        .await
        .unwrap()
        .unwrap()
        .sealed;
    assert_eq!(sealed, 3300);
    let mut tx = db.platform_tx(&scope()).await.unwrap();
    let recent = tx.action(now(), "test.recent", None, json!({})).await.unwrap();
    tx.commit().await.unwrap();

    let found = unsealed(&db, "platform", "platform").await.unwrap();
    let ids: Vec<&str> = found.iter().map(|u| u.entry_id.as_str()).collect();
    let mut want: Vec<&str> = forged.iter().map(String::as_str).chain([recent.as_str()]).collect();
    want.sort_unstable();
    assert_eq!(ids, want, "every unsealed entry, on whichever page, oldest id first");

    let report = verify_platform_chain(&db).await;
    let mut reported: Vec<String> = report
        .findings
        .iter()
        .map(|f| match f {
            chain::Finding::UnsealedTooLong { entry_id } => entry_id.clone(),
            other => panic!("unexpected finding {other:?}"),
        })
        .collect();
    reported.sort_unstable();
    forged.sort_unstable();
    assert_eq!(reported, forged, "the three old ones, not the recent one");
    assert_eq!(report.entries_checked, 3300);
}

#[tokio::test]
async fn unsealed_entries_are_found_on_every_page_sqlite() {
    unsealed_entries_are_found_on_every_page(Backend::Sqlite).await;
}

#[tokio::test]
async fn unsealed_entries_are_found_on_every_page_postgres() {
    unsealed_entries_are_found_on_every_page(Backend::Postgres).await;
}

/// On SQLite the sealer reads and hashes outside the write lock: a plan overtaken by another
/// sealer (the mark moved) is made again under the lock, never applied on a stale head.
#[tokio::test]
async fn a_plan_overtaken_by_another_sealer_is_made_again() {
    let (_t, db) = migrated(Backend::Sqlite).await;
    let write = |n: usize| write(&db, n, true);
    write(3).await;
    let mut read = db.unscoped_read_tx().await.unwrap();
    let stale = super::plan_log(&mut read).await.unwrap().unwrap();
    read.commit().await.unwrap();
    assert_eq!(stale.chains.iter().map(|c| c.seals.len()).sum::<usize>(), 6);
    // Another sealer seals those six first; then more is written.
    let other = super::seal_log(&db, &now, POLICY, &sign).await.unwrap();
    assert_eq!(other.sealed, 6);
    write(1).await;
    let pass = super::apply_log_checked(&db, stale, &now, POLICY, &sign).await.unwrap();
    assert_eq!(pass.sealed, 2, "only what was left, on the new head");
    assert!(pending_chains(&db, 10).await.unwrap().is_empty(), "nothing after the mark");

    let report = verify_platform_chain(&db).await;
    assert_eq!(report.entries_checked, 8);
    assert!(report.findings.is_empty(), "{:?}", report.findings);
}

/// SQLite seals its journal as one log: entries of several chains, written interleaved, are each
/// sealed onto their own chain in commit order, in one pass; an entry the mark is moved back over
/// (already sealed) is passed over, not sealed twice; and the mark cannot be set to a second row.
#[tokio::test]
async fn the_sqlite_log_is_sealed_onto_each_chain_once() {
    let (t, db) = migrated(Backend::Sqlite).await;
    use azotte_domain::tenant::Environment;
    let dev = crate::testing::tenant_scope(&db, "log", Environment::Development).await;
    let prod = crate::TenantScope { environment: Environment::Production, ..dev.clone() };
    let ten = dev.tenant_id.to_string();
    super::seal_log(&db, &now, POLICY, &sign).await.unwrap();
    for i in 0..4 {
        let mut tx = db.platform_tx(&scope()).await.unwrap();
        tx.action(now(), "test.platform", None, json!({"i": i})).await.unwrap();
        tx.commit().await.unwrap();
        for s in [&dev, &prod] {
            let mut tx = db.tenant_tx(s).await.unwrap();
            tx.action(now(), "test.tenant", None, json!({"i": i})).await.unwrap();
            tx.commit().await.unwrap();
        }
    }
    let pass = super::seal_log(&db, &now, POLICY, &sign).await.unwrap();
    assert_eq!((pass.sealed, pass.stale, pass.more), (12, 0, false));
    let chains = [("platform", "platform"), (ten.as_str(), "development"), (ten.as_str(), "production")];
    for (tenant, env) in chains {
        let mut reader = ChainReader::open(&db, tenant, env).await.unwrap();
        let page = reader.next_page().await.unwrap();
        // The platform chain starts with the tenant's creation.
        let new = &page[page.len() - 4..];
        assert_eq!(page.len(), if tenant == "platform" { 5 } else { 4 }, "{tenant}/{env}");
        let seqs: Vec<i64> = page.iter().map(|s| s.seq).collect();
        assert_eq!(seqs, (1..=page.len() as i64).collect::<Vec<_>>());
        let by_seq: Vec<&str> = new.iter().map(|s| s.entry_id.as_str()).collect();
        let mut sorted = by_seq.clone();
        sorted.sort_unstable();
        assert_eq!(by_seq, sorted, "commit order, which is id order here");
    }

    raw(&t, &db, "UPDATE journal_seal_mark SET pos = 0").await;
    assert_eq!(pending_chains(&db, 10).await.unwrap().len(), 3);
    let pass = super::seal_log(&db, &now, POLICY, &sign).await.unwrap();
    assert_eq!((pass.sealed, pass.stale), (0, 13), "passed over, not sealed twice");
    assert!(pending_chains(&db, 10).await.unwrap().is_empty());
    let report = verify_platform_chain(&db).await;
    assert!(report.findings.is_empty(), "{:?}", report.findings);
    assert_eq!(report.entries_checked, 5);

    use sqlx::Connection;
    let mut c = sqlx::SqliteConnection::connect(&t.url).await.unwrap();
    let second = sqlx::query("INSERT INTO journal_seal_mark (id, pos) VALUES (2, 0)").execute(&mut c).await;
    assert!(second.is_err(), "one mark");
    c.close().await.unwrap();
}

/// An entry sealed while verification reads its chain is still seen: it was unsealed when the
/// chain was opened, and its seal is on a page read after. Read the other way round (seals, then
/// unsealed entries), a forged entry sealed in between was in neither and the chain verified.
async fn an_entry_sealed_while_its_chain_is_read_is_not_missed(backend: Backend) {
    let (_t, db) = migrated(backend).await;
    let mut tx = db.platform_tx(&scope()).await.unwrap();
    tx.action(now(), "test.write", None, json!({})).await.unwrap();
    tx.commit().await.unwrap();
    seal_chain(&db, "platform", "platform", &now, POLICY, &sign, Pass::Wait).await.unwrap();
    // Claims to be an hour old; still on the work list, so a sealer takes it.
    let mut tx = db.platform_tx(&scope()).await.unwrap();
    let forged = tx.action(now() - chrono::Duration::hours(1), "test.forged", None, json!({})).await.unwrap();
    tx.commit().await.unwrap();

    let reader = ChainReader::open(&db, "platform", "platform").await.unwrap();
    // A sealer seals it while the chain is being read.
    let pass =
        seal_chain(&db, "platform", "platform", &now, POLICY, &sign, Pass::Wait).await.unwrap().unwrap();
    assert_eq!(pass.sealed, 1);
    let report = verify_read(reader).await;
    assert_eq!(report.entries_checked, 2, "the seal made meanwhile is checked");
    assert_eq!(report.findings, [chain::Finding::UnsealedTooLong { entry_id: forged }]);
}

#[tokio::test]
async fn an_entry_sealed_while_its_chain_is_read_is_not_missed_sqlite() {
    an_entry_sealed_while_its_chain_is_read_is_not_missed(Backend::Sqlite).await;
}

#[tokio::test]
async fn an_entry_sealed_while_its_chain_is_read_is_not_missed_postgres() {
    an_entry_sealed_while_its_chain_is_read_is_not_missed(Backend::Postgres).await;
}

/// Migration 0025 on a journal an older release left: every entry keeps its place (positions in
/// commit order), the mark starts just before the first entry still on the work list, the
/// entries stay immutable, and the next pass seals exactly what the work list held.
#[tokio::test]
async fn sqlite_entries_waiting_on_the_old_work_list_are_sealed_after_the_migration() {
    let t = fresh_database(Backend::Sqlite).await;
    let opts = DbOptions::new(t.url.clone());
    Db::migrate_before(&opts, 25).await.unwrap();
    let db = Db::connect(&opts).await.unwrap();
    let mut ids = Vec::new();
    for i in 0..3 {
        let mut tx = db.platform_tx(&scope()).await.unwrap();
        ids.push(tx.action(now(), "test.write", None, json!({"i": i})).await.unwrap());
        ids.push(tx.outcome(now(), "test.written", None, json!({})).await.unwrap());
        tx.commit().await.unwrap();
    }
    // The first two are off the work list, as if sealed (this test cannot run the old sealer);
    // the first one is sealed and yet listed again (a stale row): it does not move the mark back.
    raw(&t, &db, &format!("DELETE FROM journal_pending WHERE entry_id IN ('{}', '{}')", ids[0], ids[1]))
        .await;
    raw(&t, &db, "DROP TRIGGER journal_seals_no_delete").await;
    raw(
        &t,
        &db,
        &format!(
            "INSERT INTO journal_seals (tenant_id, environment, seq, entry_id, entry_hash, chain_hash, sealed_at) \
             VALUES ('platform', 'platform', 1, '{0}', 'x', 'x', 'x')",
            ids[0]
        ),
    )
    .await;
    raw(
        &t,
        &db,
        &format!(
            "INSERT INTO journal_pending (owner_tenant_id, owner_environment, entry_id) \
             VALUES ('platform', 'platform', '{}')",
            ids[0]
        ),
    )
    .await;
    db.close().await;

    Db::migrate(&opts).await.unwrap();
    let db = Db::connect(&opts).await.unwrap();
    let mut read = db.unscoped_read_tx().await.unwrap();
    assert_eq!(super::mark(&mut read).await.unwrap(), 2);
    let Tx::Sqlite(c) = &mut read else { unreachable!() };
    let by_pos: Vec<(i64, String)> = sqlx::query_as("SELECT pos, id FROM journal_entries ORDER BY pos")
        .fetch_all(c.conn().unwrap())
        .await
        .unwrap();
    assert_eq!(by_pos, ids.iter().enumerate().map(|(i, id)| (i as i64 + 1, id.clone())).collect::<Vec<_>>());
    read.commit().await.unwrap();

    use sqlx::Connection;
    let mut c = sqlx::SqliteConnection::connect(&t.url).await.unwrap();
    let upd = sqlx::query("UPDATE journal_entries SET body = '{}'").execute(&mut c).await;
    assert!(upd.unwrap_err().to_string().contains("immutable"));
    let del = sqlx::query("DELETE FROM journal_entries").execute(&mut c).await;
    assert!(del.unwrap_err().to_string().contains("immutable"));
    c.close().await.unwrap();

    // The stand-in seal goes again, so that only the mark decides what is read (migration 0026
    // rebuilt the table with its triggers).
    raw(&t, &db, "DROP TRIGGER journal_seals_no_delete").await;
    raw(&t, &db, "DELETE FROM journal_seals").await;
    let pass = super::seal_log(&db, &now, POLICY, &sign).await.unwrap();
    assert_eq!((pass.sealed, pass.stale), (4, 0));
    let left: Vec<String> =
        unsealed(&db, "platform", "platform").await.unwrap().into_iter().map(|u| u.entry_id).collect();
    assert_eq!(left, ids[..2], "the two taken off the list before are still unsealed");
}

/// SQLite seals in commit order, not id order: an entry committed after others but with an older
/// id (here written behind the service's back) is sealed after them. And sealing does not stall
/// on tampering with the log or the mark: when the newest entries are deleted behind the
/// triggers so that the log ends below the mark, new entries are still sealed (the deletion is
/// reported); a missing mark row counts as 0.
#[tokio::test]
async fn the_sqlite_log_is_sealed_in_commit_order_and_survives_a_reused_position() {
    let (t, db) = migrated(Backend::Sqlite).await;
    let write = |n: usize| write(&db, n, false);
    let first = write(3).await;
    let older = azotte_domain::id::JournalId::from_uuid(uuid::Uuid::new_v7(uuid::Timestamp::from_unix(
        uuid::NoContext,
        (now() - chrono::Duration::seconds(5)).timestamp() as u64,
        0,
    )))
    .to_string();
    raw(
        &t,
        &db,
        &format!(
            "INSERT INTO journal_entries ({cols}) SELECT tenant_id, environment, '{older}', kind, type, \
             occurred_at, correlation_id, causation_id, principal_kind, principal_id, principal_roles, mfa, source, \
             request_id, client_ip, user_agent, resource_type, resource_id, body FROM journal_entries WHERE id = '{}'",
            first[0],
            cols = super::ENTRY_COLUMNS,
        ),
    )
    .await;
    assert_eq!(super::seal_log(&db, &now, POLICY, &sign).await.unwrap().sealed, 4);
    let mut reader = ChainReader::open(&db, "platform", "platform").await.unwrap();
    let order: Vec<String> = reader.next_page().await.unwrap().into_iter().map(|s| s.entry_id).collect();
    let mut want = first.clone();
    want.push(older.clone());
    assert_eq!(order, want, "commit order: the older id last");

    // The two newest entries are deleted behind the triggers; the next one takes the first's
    // position, so the log now ends below the mark.
    raw(&t, &db, "DROP TRIGGER journal_entries_no_delete").await;
    let gone = [first[2].clone(), older.clone()];
    raw(&t, &db, &format!("DELETE FROM journal_entries WHERE id IN ('{}', '{}')", gone[0], gone[1])).await;
    let late = write(1).await;
    let pass = super::seal_log(&db, &now, POLICY, &sign).await.unwrap();
    assert_eq!((pass.sealed, pass.stale), (1, 2), "read again from the start; the new entry sealed");
    let report = verify_platform_chain(&db).await;
    assert_eq!(
        report.findings,
        [
            chain::Finding::DeletedEntry { seq: 3, entry_id: gone[0].clone() },
            chain::Finding::DeletedEntry { seq: 4, entry_id: gone[1].clone() }
        ]
    );
    assert!(unsealed(&db, "platform", "platform").await.unwrap().is_empty(), "{late:?} sealed");

    raw(&t, &db, "DELETE FROM journal_seal_mark").await;
    let more = write(2).await;
    let pass = super::seal_log(&db, &now, POLICY, &sign).await.unwrap();
    assert_eq!(pass.sealed, 2, "no mark row: from the start, {more:?} sealed");
    assert!(unsealed(&db, "platform", "platform").await.unwrap().is_empty());
    assert_eq!(super::seal_log(&db, &now, POLICY, &sign).await.unwrap(), super::SealPass::default());
}

/// SQLite's sealer reads the log with an entry's columns packed into one JSON array
/// (`PACKED_COLUMNS`), verification reads them column by column: an entry with every kind of
/// value — NULLs, `mfa` set, quotes, backslashes, control characters, non-ASCII text — hashes
/// the same both ways, so verification finds its seal intact.
#[tokio::test]
async fn the_sqlite_sealer_reads_an_entry_as_verification_does() {
    let (t, db) = migrated(Backend::Sqlite).await;
    let id = "jnl_0000000000000000000000000A";
    raw(
        &t,
        &db,
        &format!(
            "INSERT INTO journal_entries ({cols}) VALUES ('platform', 'platform', '{id}', 'action', \
             'odd.values', '2026-11-26 18:00:00.123456+00:00', 'cor_x', NULL, 'user', 'usr_\"q\"', \
             '[\"tenant_admin\",\"a\\\"b\"]', 1, 'api', NULL, '203.0.113.9', \
             'Mozilla/5.0 (\"quoted\") \\ back' || char(9) || 'tab', NULL, 'r' || char(1), \
             '{{\"k\":\"é 😀 \\\\n' || char(10) || '\"}}')",
            cols = super::ENTRY_COLUMNS,
        ),
    )
    .await;
    let policy = CheckpointPolicy { every: 1, interval: chrono::Duration::seconds(60) };
    let pass =
        seal_chain(&db, "platform", "platform", &now, policy, &sign, Pass::Wait).await.unwrap().unwrap();
    assert_eq!(pass.sealed, 1);
    let report = verify_read(ChainReader::open(&db, "platform", "platform").await.unwrap()).await;
    assert_eq!(report.entries_checked, 1);
    assert!(report.findings.is_empty(), "{:?}", report.findings);
}

/// PostgreSQL: the sealer's tick reads a chain's work list from just before its last sealed
/// entry, past the dead rows of what it sealed before. An entry whose transaction committed long
/// after its id was made (below that point) waits for a whole read — the tick's every few
/// seconds, any other pass's always, or the tick's at once when nothing newer waits — and is
/// sealed then, never missed.
#[tokio::test]
async fn a_late_committed_entry_is_sealed_by_the_next_whole_read() {
    use azotte_domain::id::JournalId;
    let (t, db) = migrated(Backend::Postgres).await;
    let first = write(&db, 1, false).await;
    let tick = |db| seal_chain(db, "platform", "platform", &now, POLICY, &sign, Pass::Tick);
    // The first tick reads the whole list (and notes when).
    assert_eq!(tick(&db).await.unwrap().unwrap().sealed, 1);

    // An entry recorded 30 s ago (past the tick's window, within verification's tolerance for
    // commit order) whose transaction commits only now.
    let late = |secs: u64| {
        let id = JournalId::first_of_unix_ms(JournalId::new().unix_ms() - secs * 1000).to_string();
        let sql = format!(
            "DO $$ BEGIN PERFORM set_config('azotte.platform', 'on', true); \
             INSERT INTO journal_entries (tenant_id, environment, id, kind, type, occurred_at, correlation_id, \
             causation_id, principal_kind, principal_id, principal_roles, mfa, source, request_id, client_ip, \
             user_agent, resource_type, resource_id, body) SELECT tenant_id, environment, '{id}', kind, type, \
             occurred_at, correlation_id, causation_id, principal_kind, principal_id, principal_roles, mfa, source, \
             request_id, client_ip, user_agent, resource_type, resource_id, body FROM journal_entries \
             WHERE id = '{}'; \
             INSERT INTO journal_pending (owner_tenant_id, owner_environment, entry_id) \
             VALUES ('platform', 'platform', '{id}'); END $$",
            first[0]
        );
        (id, sql)
    };
    let unsealed_ids = || async {
        unsealed(&db, "platform", "platform")
            .await
            .unwrap()
            .into_iter()
            .map(|u| u.entry_id)
            .collect::<Vec<_>>()
    };
    let (late_1, sql) = late(30);
    raw(&t, &db, &sql).await;
    let fresh = write(&db, 1, false).await;
    // Within a few seconds of the whole read, the tick reads near the head: the fresh entry only.
    assert_eq!(tick(&db).await.unwrap().unwrap().sealed, 1);
    assert_eq!(unsealed_ids().await, vec![late_1.clone()], "the fresh entry {} is sealed", fresh[0]);
    // Any other pass reads the whole list.
    assert_eq!(
        seal_chain(&db, "platform", "platform", &now, POLICY, &sign, Pass::Skip)
            .await
            .unwrap()
            .unwrap()
            .sealed,
        1
    );
    assert!(unsealed_ids().await.is_empty());

    // With nothing near the head, the tick reads the whole list at once.
    let (late_2, sql) = late(20);
    raw(&t, &db, &sql).await;
    assert_eq!(unsealed_ids().await, vec![late_2]);
    assert_eq!(tick(&db).await.unwrap().unwrap().sealed, 1);
    assert!(unsealed_ids().await.is_empty());

    let report = verify_platform_chain(&db).await;
    assert!(report.findings.is_empty(), "{:?}", report.findings);
    assert_eq!(report.entries_checked, 4);
}

/// PostgreSQL: the writer lists each entry for the sealer with the entry's hash, and the sealer
/// chains that hash without reading the entry back — so it must be the hash computed from the
/// stored row, for every kind of value: a time with nanoseconds (the database keeps
/// microseconds), absent and present optional columns, quotes, backslashes, control characters
/// and non-ASCII text. Verification, which recomputes every hash from the rows, finds the sealed
/// chain intact.
#[tokio::test]
async fn the_writer_lists_the_hash_the_stored_row_has() {
    use chrono::TimeZone;
    let (t, db) = migrated(Backend::Postgres).await;
    let at = chrono::Utc.timestamp_opt(1_795_000_000, 123_456_789).unwrap();
    let mut tx = db.platform_tx(&scope()).await.unwrap();
    let action = tx
        .action(
            at,
            "odd.values",
            Some(("thing", "thg_\"q\" \\ é")),
            json!({"k": "é 😀 \\n\n\t\u{1}", "n": 1.5}),
        )
        .await
        .unwrap();
    let outcome =
        tx.outcome(at + chrono::Duration::nanoseconds(999), "odd.done", None, json!({})).await.unwrap();
    tx.commit().await.unwrap();

    // One work-list row for the transaction: its first entry, and the other in the arrays.
    let row: super::PendingRow = sqlx::query_as(
        "SELECT entry_id, entry_hash, more_ids, more_hashes FROM journal_pending WHERE owner_tenant_id = 'platform'",
    )
    .fetch_one(db.pg_pool().unwrap())
    .await
    .unwrap();
    let listed: Vec<(String, Option<String>)> = row.entries().collect();
    assert_eq!(listed.iter().map(|l| l.0.clone()).collect::<Vec<_>>(), vec![action.clone(), outcome.clone()]);
    let mut read = db.unscoped_read_tx().await.unwrap();
    super::enter(&mut read, "platform").await.unwrap();
    let stored =
        super::entries_by_id(&mut read, "platform", "platform", &[action, outcome], false).await.unwrap();
    read.commit().await.unwrap();
    assert_eq!(stored.len(), 2);
    for (e, (_, hash)) in stored.into_iter().zip(&listed) {
        let from_row = hex::encode(chain::entry_hash(&e.record()));
        assert_eq!(hash.as_deref(), Some(from_row.as_str()));
    }

    let pass =
        seal_chain(&db, "platform", "platform", &now, POLICY, &sign, Pass::Wait).await.unwrap().unwrap();
    assert_eq!((pass.sealed, pass.stale), (2, 0));
    let report = verify_platform_chain(&db).await;
    assert_eq!(report.entries_checked, 2);
    assert!(report.findings.is_empty(), "{:?}", report.findings);
    drop(t);
}

/// PostgreSQL: the chains with work are listed one probe of the work list's key per chain — every
/// chain with a live row, in descending key order, up to the limit, whatever rows of theirs were
/// deleted (sealed) before; a chain whose rows were all deleted is not listed.
#[tokio::test]
async fn the_chains_with_work_are_listed_past_deleted_rows() {
    let (t, db) = migrated(Backend::Postgres).await;
    let row = |tenant: &str, env: &str, i: usize| format!("('{tenant}', '{env}', 'jnl_{i:026}')");
    let mut rows = Vec::new();
    for (tenant, env) in [("ten_a", "live"), ("ten_a", "test"), ("ten_b", "live"), ("ten_c", "live")] {
        rows.extend((0..300).map(|i| row(tenant, env, i)));
    }
    raw(
        &t,
        &db,
        &format!(
            "INSERT INTO journal_pending (owner_tenant_id, owner_environment, entry_id) VALUES {}",
            rows.join(", ")
        ),
    )
    .await;
    // Sealed and deleted: most of every chain's rows, and all of ten_b's.
    raw(
        &t,
        &db,
        "DELETE FROM journal_pending WHERE entry_id < 'jnl_00000000000000000000000290' OR owner_tenant_id = 'ten_b'",
    )
    .await;
    let chains = |limit| super::pending_chains(&db, limit);
    let pair = |t: &str, e: &str| (t.to_owned(), e.to_owned());
    assert_eq!(
        chains(200).await.unwrap(),
        vec![pair("ten_c", "live"), pair("ten_a", "test"), pair("ten_a", "live")]
    );
    assert_eq!(chains(2).await.unwrap(), vec![pair("ten_c", "live"), pair("ten_a", "test")]);
    raw(&t, &db, "DELETE FROM journal_pending").await;
    assert!(chains(200).await.unwrap().is_empty());
}

/// PostgreSQL: a journal statement lists its entries for the sealer one work-list row per chain
/// — one entry alone, several as the first plus arrays, entries of two chains in one statement,
/// more than a cached statement text holds, more than one statement holds — and each chain seals
/// every entry exactly once into a chain that verifies.
#[tokio::test]
async fn a_statement_lists_its_entries_once_per_chain() {
    use crate::journal::{flush, record, Buffer, Kind, NewEntry};
    let (_t, db) = migrated(Backend::Postgres).await;
    let system = azotte_domain::Principal::system();
    let chains = [("platform", "platform"), ("ten_other", "live")];
    let mut written = [0usize; 2];
    // Entries per transaction, and whether they alternate between the two chains.
    for (n, mixed) in [(1, false), (2, false), (3, true), (9, false), (12, true), (501, false)] {
        let mut buf = Buffer::default();
        for i in 0..n {
            let c = if mixed { i % 2 } else { 0 };
            written[c] += 1;
            record(
                &mut buf,
                chains[c].0.into(),
                chains[c].1,
                NewEntry {
                    kind: if i == 0 { Kind::Action } else { Kind::Outcome },
                    type_: "test.listed",
                    occurred_at: now(),
                    causation_id: None,
                    correlation_id: None,
                    principal: &system,
                    mfa: false,
                    resource: None,
                    body: json!({"n": n, "i": i}),
                },
            );
        }
        let mut tx = db.unscoped_tx().await.unwrap();
        let Tx::Postgres(t) = &mut tx else { unreachable!("PostgreSQL test") };
        sqlx::query(
            "SELECT set_config('azotte.tenant_id', 'ten_other', true), set_config('azotte.platform', 'on', true)",
        )
        .execute(t.conn().unwrap())
        .await
        .unwrap();
        flush(&mut tx, buf).await.unwrap();
        tx.commit().await.unwrap();
    }
    let rows: Vec<(String, i64)> = sqlx::query_as(
        "SELECT owner_tenant_id, count(*) FROM journal_pending GROUP BY owner_tenant_id ORDER BY owner_tenant_id",
    )
    .fetch_all(db.pg_pool().unwrap())
    .await
    .unwrap();
    // platform: one row per transaction, two for the 501 (two statements); ten_other: one per
    // mixed transaction.
    assert_eq!(rows, vec![("platform".to_owned(), 7), ("ten_other".to_owned(), 2)]);
    // One of ten_other's entries listed once more, by hand and without its hash: sealed once.
    let again = sqlx::query(
        "INSERT INTO journal_pending (owner_tenant_id, owner_environment, entry_id) \
         SELECT owner_tenant_id, owner_environment, more_ids[1] FROM journal_pending \
         WHERE owner_tenant_id = 'ten_other' AND more_ids IS NOT NULL LIMIT 1",
    )
    .execute(db.pg_pool().unwrap())
    .await
    .unwrap();
    assert_eq!(again.rows_affected(), 1);

    for ((tenant, env), n) in chains.into_iter().zip(written) {
        let pass = seal_chain(&db, tenant, env, &now, POLICY, &sign, Pass::Wait).await.unwrap().unwrap();
        let duplicates = u64::from(tenant == "ten_other");
        assert_eq!((pass.sealed, pass.stale), (n, duplicates), "{tenant}");
        let report = verify_chain_read(ChainReader::open(&db, tenant, env).await.unwrap(), tenant, env).await;
        assert_eq!(report.entries_checked, n, "{tenant}");
        assert!(report.findings.is_empty(), "{tenant}: {:?}", report.findings);
    }
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM journal_pending")
        .fetch_one(db.pg_pool().unwrap())
        .await
        .unwrap();
    assert_eq!(left, 0);
}
