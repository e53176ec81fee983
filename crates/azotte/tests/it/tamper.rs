//! Tamper evidence: an attacker with database access changes the journal behind the service's
//! back; verification names each change. On both backends.

use crate::both;
use crate::helpers::{Backend, TestApp};
use serde_json::{json, Value};

/// A tenant with a few journaled mutations, sealed; returns the development chain's entry ids
/// of the custom-role outcomes.
async fn setup(app: &TestApp) -> Vec<String> {
    app.create_tenant("tamper").await;
    for name in ["alpha_role", "bravo_role", "charlie_role"] {
        app.post("/v1/roles", json!({"name": name, "permissions": ["audit.read"]}))
            .tenant("tamper", "development")
            .expect(201)
            .await;
    }
    azotte_service::seal::seal_once(&app.ctx).await.unwrap();
    let ok = verify(app).await;
    assert_eq!(ok["ok"], true, "an untouched journal verifies: {ok:#}");
    let dev =
        ok["chains"].as_array().unwrap().iter().find(|c| c["environment"] == "development").unwrap().clone();
    assert!(dev["entries_checked"].as_u64().unwrap() >= 6);
    assert!(dev["last_checkpoint_verified"].as_i64().is_some(), "a first checkpoint is signed at once");
    let page: Value =
        app.get("/v1/journal?type=role.created").tenant("tamper", "development").expect(200).await.json();
    page["data"].as_array().unwrap().iter().map(|e| e["id"].as_str().unwrap().to_owned()).collect()
}

async fn verify(app: &TestApp) -> Value {
    app.get("/v1/journal/verify").tenant("tamper", "development").expect(200).await.json()
}

async fn findings(app: &TestApp) -> Vec<Value> {
    let v = verify(app).await;
    assert_eq!(v["ok"], false, "tampering must be found: {v:#}");
    v["chains"].as_array().unwrap().iter().flat_map(|c| c["findings"].as_array().unwrap().clone()).collect()
}

/// As the database owner, switches off the immutability triggers, like an attacker would.
async fn disable_guards(app: &TestApp) {
    let stmts: &[&str] = match app.backend {
        Backend::Sqlite => &[
            "DROP TRIGGER journal_entries_no_update",
            "DROP TRIGGER journal_entries_no_delete",
            "DROP TRIGGER journal_seals_no_update",
            "DROP TRIGGER journal_seals_no_delete",
            "DROP TRIGGER journal_checkpoints_no_update",
        ],
        Backend::Postgres => &[
            "ALTER TABLE journal_entries DISABLE TRIGGER USER",
            "ALTER TABLE journal_seals DISABLE TRIGGER USER",
            "ALTER TABLE journal_checkpoints DISABLE TRIGGER USER",
        ],
    };
    for s in stmts {
        app.raw_exec(s).await.unwrap();
    }
}

fn has(f: &[Value], problem: &str, entry: Option<&str>) -> bool {
    f.iter().any(|x| x["problem"] == problem && entry.is_none_or(|e| x["entry_id"] == e))
}

async fn a_modified_entry_is_named(app: TestApp) {
    let ids = setup(&app).await;
    disable_guards(&app).await;
    let sql = format!("UPDATE journal_entries SET body = '{{\"name\":\"evil\"}}' WHERE id = '{}'", ids[1]);
    assert_eq!(app.raw_exec(&sql).await.unwrap(), 1);
    let f = findings(&app).await;
    assert!(has(&f, "modified_entry", Some(&ids[1])), "{f:#?}");
    assert_eq!(f.len(), 1, "only that entry: {f:#?}");
}

async fn a_deleted_entry_is_named(app: TestApp) {
    let ids = setup(&app).await;
    disable_guards(&app).await;
    app.raw_exec(&format!("DELETE FROM journal_entries WHERE id = '{}'", ids[0])).await.unwrap();
    let f = findings(&app).await;
    assert!(has(&f, "deleted_entry", Some(&ids[0])), "{f:#?}");
}

async fn a_forged_entry_is_named_before_and_after_sealing(app: TestApp) {
    let ids = setup(&app).await;
    // An id and time an hour in the past, as if the entry had always been there.
    let past = chrono::Utc::now() - chrono::Duration::hours(1);
    let uuid = uuid::Uuid::new_v7(uuid::Timestamp::from_unix(uuid::NoContext, past.timestamp() as u64, 0));
    let forged = azotte_domain::id::JournalId::from_uuid(uuid).to_string();
    let when = match app.backend {
        Backend::Sqlite => format!("'{}'", past.to_rfc3339()),
        Backend::Postgres => "now() - interval '1 hour'".to_owned(),
    };
    let sql = format!(
        "INSERT INTO journal_entries (tenant_id, environment, id, kind, type, occurred_at, correlation_id, causation_id, \
         principal_kind, principal_id, principal_roles, mfa, source, request_id, client_ip, user_agent, resource_type, \
         resource_id, body) SELECT tenant_id, environment, '{forged}', kind, type, {when}, correlation_id, causation_id, \
         principal_kind, principal_id, principal_roles, mfa, source, request_id, client_ip, user_agent, resource_type, \
         resource_id, body FROM journal_entries WHERE id = '{}'",
        ids[2]
    );
    assert_eq!(app.raw_exec(&sql).await.unwrap(), 1);
    // On SQLite the row is on the sealer's to-do (a log position after the seal mark): the
    // attacker moves the mark past it so the sealer never sees it. On PostgreSQL only the
    // journal's writer lists an entry for the sealer, so the sealer does not see it anyway.
    // Verification trusts neither: it checks entries against seals.
    if app.backend == Backend::Sqlite {
        let hide = format!(
            "UPDATE journal_seal_mark SET pos = (SELECT pos FROM journal_entries WHERE id = '{forged}')"
        );
        app.raw_exec(&hide).await.unwrap();
    }
    let f = findings(&app).await;
    // Unsealed and too old — unless the background sealer got to it before the deletion, in which
    // case it is already an out-of-order insertion.
    assert!(
        has(&f, "unsealed_too_long", Some(&forged)) || has(&f, "inserted_entry", Some(&forged)),
        "{f:#?}"
    );
    // Listed for the sealer (or, if it was sealed already, listed again: the sealer passes over
    // that). A row without the entry's hash: the sealer reads the entry back.
    let unhide = match app.backend {
        Backend::Postgres => format!(
            "INSERT INTO journal_pending (owner_tenant_id, owner_environment, entry_id) \
             SELECT tenant_id, environment, id FROM journal_entries WHERE id = '{forged}'"
        ),
        Backend::Sqlite => {
            format!("UPDATE journal_seal_mark SET pos = (SELECT pos - 1 FROM journal_entries WHERE id = '{forged}')")
        }
    };
    app.raw_exec(&unhide).await.unwrap();
    azotte_service::seal::seal_once(&app.ctx).await.unwrap();
    let f = findings(&app).await;
    assert!(has(&f, "inserted_entry", Some(&forged)), "{f:#?}");
    assert_eq!(pending(&app).await, 0, "nothing waits for the sealer");
}

/// What the sealer is told to do again is dropped, not sealed twice, and neither stops it nor
/// keeps it busy: work-list rows that name no entry or an entry already sealed (PostgreSQL), or
/// the seal mark moved back over sealed entries (SQLite).
async fn stale_work_list_rows_do_not_stall_the_sealer(app: TestApp) {
    let ids = setup(&app).await;
    let stale = match app.backend {
        Backend::Postgres => format!(
            "INSERT INTO journal_pending (owner_tenant_id, owner_environment, entry_id) \
             SELECT tenant_id, environment, 'jnl_nothing_here' FROM journal_entries WHERE id = '{0}' \
             UNION ALL SELECT tenant_id, environment, id FROM journal_entries WHERE id = '{0}'",
            ids[0]
        ),
        Backend::Sqlite => "UPDATE journal_seal_mark SET pos = 0".to_owned(),
    };
    app.raw_exec(&stale).await.unwrap();
    app.post("/v1/roles", json!({"name": "delta_role", "permissions": ["audit.read"]}))
        .tenant("tamper", "development")
        .expect(201)
        .await;
    azotte_service::seal::seal_once(&app.ctx).await.unwrap();
    assert_eq!(pending(&app).await, 0, "nothing waits for the sealer");
    assert_eq!(verify(&app).await["ok"], true);
}

/// Entries waiting for the sealer: on its work list (PostgreSQL), or after its mark (SQLite).
async fn pending(app: &TestApp) -> usize {
    let sql = match app.backend {
        Backend::Postgres => "SELECT CAST(count(*) AS TEXT) FROM journal_pending",
        Backend::Sqlite => {
            "SELECT CAST(count(*) AS TEXT) FROM journal_entries WHERE pos > (SELECT pos FROM journal_seal_mark)"
        }
    };
    app.raw_strings(sql).await[0].parse().unwrap()
}

async fn swapped_seals_break_the_chain(app: TestApp) {
    let _ = setup(&app).await;
    disable_guards(&app).await;
    let t: Value = app.get("/v1/tenant").tenant("tamper", "development").expect(200).await.json();
    let tid = t["id"].as_str().unwrap();
    // Swap the positions of seals 2 and 3.
    for sql in [
        format!("UPDATE journal_seals SET seq = -2 WHERE tenant_id = '{tid}' AND environment = 'development' AND seq = 2"),
        format!("UPDATE journal_seals SET seq = 2 WHERE tenant_id = '{tid}' AND environment = 'development' AND seq = 3"),
        format!("UPDATE journal_seals SET seq = 3 WHERE tenant_id = '{tid}' AND environment = 'development' AND seq = -2"),
    ] {
        assert_eq!(app.raw_exec(&sql).await.unwrap(), 1, "{sql}");
    }
    let f = findings(&app).await;
    assert!(has(&f, "chain_broken", None), "{f:#?}");
    // The two swapped links break, and so does the link after them, which points at position 3.
    let broken: Vec<i64> =
        f.iter().filter(|x| x["problem"] == "chain_broken").map(|x| x["seq"].as_i64().unwrap()).collect();
    assert_eq!(broken, [2, 3, 4], "{f:#?}");
}

async fn an_altered_checkpoint_is_named(app: TestApp) {
    let _ = setup(&app).await;
    disable_guards(&app).await;
    let n = app.raw_exec("UPDATE journal_checkpoints SET signed_at = '2020-01-01T00:00:00.000000Z' WHERE environment = 'development'").await.unwrap();
    assert!(n >= 1);
    let f = findings(&app).await;
    assert!(has(&f, "bad_checkpoint_signature", None), "{f:#?}");
}

async fn an_export_verifies_offline_and_so_does_its_tampering(app: TestApp) {
    let _ = setup(&app).await;
    let export: Value =
        app.get("/v1/journal/export").tenant("tamper", "development").expect(200).await.json();
    assert_eq!(export["format"], "azotte-journal-export/v2");
    let keys: Value = app.get("/v1/journal/keys").anon().expect(200).await.json();
    assert_eq!(export["keys"], keys["keys"]);
    let cps: Value =
        app.get("/v1/journal/checkpoints").tenant("tamper", "development").expect(200).await.json();
    assert_eq!(cps["data"], export["checkpoints"]);
    assert!(!cps["data"].as_array().unwrap().is_empty());
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("export.json");
    std::fs::write(&file, serde_json::to_string(&export).unwrap()).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_azotte"))
        .args(["journal", "verify-export"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
    let mut bad = export.clone();
    bad["seals"][1]["entry"]["body"] = json!(r#"{"name":"rewritten"}"#);
    std::fs::write(&file, serde_json::to_string(&bad).unwrap()).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_azotte"))
        .args(["journal", "verify-export"])
        .arg(&file)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).contains("modified_entry"));
}

/// Verification streams a chain a page (1000 seals) at a time: a chain of several pages verifies,
/// its checkpoints are found across pages, and a change on a later page is named.
async fn a_chain_of_several_pages_verifies_and_names_a_change_on_a_later_page(app: TestApp) {
    let ids = setup(&app).await;
    let new: Vec<String> = (0..2500).map(|_| azotte_domain::id::JournalId::new().to_string()).collect();
    let values = new.iter().map(|i| format!("('{i}')")).collect::<Vec<_>>().join(", ");
    let sql = format!(
        "INSERT INTO journal_entries (tenant_id, environment, id, kind, type, occurred_at, correlation_id, causation_id, \
         principal_kind, principal_id, principal_roles, mfa, source, request_id, client_ip, user_agent, resource_type, \
         resource_id, body) SELECT e.tenant_id, e.environment, v.column1, e.kind, e.type, e.occurred_at, e.correlation_id, \
         e.causation_id, e.principal_kind, e.principal_id, e.principal_roles, e.mfa, e.source, e.request_id, e.client_ip, \
         e.user_agent, e.resource_type, e.resource_id, e.body FROM journal_entries e, (VALUES {values}) v WHERE e.id = '{}'",
        ids[2]
    );
    assert_eq!(app.raw_exec(&sql).await.unwrap(), 2500);
    // Each row is on the sealer's to-do: on SQLite once inserted (a log position); on PostgreSQL,
    // where only the journal's writer lists entries, with a work-list row (no hash given: the
    // sealer reads the entries back).
    if app.backend == Backend::Postgres {
        let ids = new.iter().map(|i| format!("'{i}'")).collect::<Vec<_>>().join(", ");
        let list = format!(
            "INSERT INTO journal_pending (owner_tenant_id, owner_environment, entry_id) \
             SELECT tenant_id, environment, id FROM journal_entries WHERE id IN ({ids})"
        );
        assert_eq!(app.raw_exec(&list).await.unwrap(), 2500);
    }
    azotte_service::seal::seal_once(&app.ctx).await.unwrap();
    let v = verify(&app).await;
    assert_eq!(v["ok"], true, "{v:#}");
    let dev = v["chains"].as_array().unwrap().iter().find(|c| c["environment"] == "development").unwrap();
    assert!(dev["entries_checked"].as_u64().unwrap() >= 2506, "{dev:#}");
    assert!(
        dev["last_checkpoint_verified"].as_i64().unwrap() >= 2506,
        "the checkpoint past page two: {dev:#}"
    );

    disable_guards(&app).await;
    let victim = &new[1800];
    let sql = format!("UPDATE journal_entries SET body = '{{\"name\":\"evil\"}}' WHERE id = '{victim}'");
    assert_eq!(app.raw_exec(&sql).await.unwrap(), 1);
    let f = findings(&app).await;
    assert_eq!(f.len(), 1, "only that entry: {f:#?}");
    assert!(has(&f, "modified_entry", Some(victim)), "{f:#?}");
    assert!(f[0]["seq"].as_i64().unwrap() > 1000, "on a later page: {f:#?}");
}

both!(
    a_chain_of_several_pages_verifies_and_names_a_change_on_a_later_page,
    a_modified_entry_is_named,
    a_deleted_entry_is_named,
    a_forged_entry_is_named_before_and_after_sealing,
    stale_work_list_rows_do_not_stall_the_sealer,
    swapped_seals_break_the_chain,
    an_altered_checkpoint_is_named,
    an_export_verifies_offline_and_so_does_its_tampering
);
