//! The audit journal: what every mutation records, reading it back, and its immutability.

use crate::both;
use crate::helpers::{Backend, TestApp};
use reqwest::Method;
use serde_json::{json, Value};

async fn a_mutation_records_action_and_outcome_under_one_correlation_id(app: TestApp) {
    app.create_tenant("jco").await;
    app.admin_mfa().await;
    let trace = "0af7651916cd43dd8448eb211c80319c";
    let k: Value = app
        .post("/v1/api-keys", json!({"description": "billing backend", "role": "service_account"}))
        .tenant("jco", "development")
        .header("traceparent", &format!("00-{trace}-b7ad6b7169203331-01"))
        .header("user-agent", "journal-test/1.0")
        .expect(201)
        .await
        .json();
    let key_id = k["id"].as_str().unwrap();
    let page: Value = app
        .get(&format!("/v1/journal?correlation_id={trace}"))
        .tenant("jco", "development")
        .expect(200)
        .await
        .json();
    let entries = page["data"].as_array().unwrap();
    let types: Vec<&str> = entries.iter().map(|e| e["type"].as_str().unwrap()).collect();
    // The first request of a platform administrator inside the tenant is itself on record.
    assert_eq!(types, ["audit.platform_access", "api_key.create", "api_key.created"]);
    assert_eq!(entries[0]["kind"], "decision");
    let (action, outcome) = (&entries[1], &entries[2]);
    assert_eq!(action["kind"], "action");
    assert_eq!(outcome["kind"], "outcome");
    assert_eq!(outcome["causation_id"], action["id"]);
    assert_eq!(action["principal"]["kind"], "platform_user");
    assert_eq!(action["principal"]["mfa"], true);
    assert_eq!(action["source"], "api");
    assert_eq!(action["user_agent"], "journal-test/1.0");
    assert_eq!(action["client_ip"], "127.0.0.1");
    assert_eq!(
        (action["resource_type"].as_str(), action["resource_id"].as_str()),
        (Some("api_key"), Some(key_id))
    );
    assert_eq!(outcome["body"]["role"], "service_account");
    assert!(outcome["body"].get("secret").is_none());

    let lineage: Value =
        app.get(&format!("/v1/lineage/{trace}")).tenant("jco", "development").expect(200).await.json();
    let roots = lineage["roots"].as_array().unwrap();
    let root_types: Vec<&str> = roots.iter().map(|r| r["type"].as_str().unwrap()).collect();
    assert_eq!(root_types, ["audit.platform_access", "api_key.create"]);
    assert_eq!(roots[1]["children"][0]["type"], "api_key.created");
    app.get("/v1/lineage/nothing-here").tenant("jco", "development").expect(404).await.problem();

    // The platform administrator acting inside the tenant is on the tenant's record.
    let pa: Value = app
        .get("/v1/journal?type=audit.platform_access")
        .tenant("jco", "development")
        .expect(200)
        .await
        .json();
    let pa = pa["data"].as_array().unwrap();
    assert!(!pa.is_empty());
    assert_eq!(pa[0]["principal"]["kind"], "platform_user");

    // Filters.
    let only: Value = app
        .get("/v1/journal?kind=outcome&type=api_key.created")
        .tenant("jco", "development")
        .expect(200)
        .await
        .json();
    assert_eq!(only["data"].as_array().unwrap().len(), 1);
    let other_env: Value = app.get("/v1/journal").tenant("jco", "production").expect(200).await.json();
    assert!(other_env["data"].as_array().unwrap().iter().all(|e| e["environment"] == "production"));
    app.get("/v1/journal?kind=nonsense").tenant("jco", "development").expect(422).await.problem();

    // The key's timeline, and a revocation extends it.
    app.request(Method::POST, &format!("/v1/api-keys/{key_id}/revoke"))
        .tenant("jco", "development")
        .expect(200)
        .await;
    let tl: Value = app
        .get(&format!("/v1/api-keys/{key_id}/timeline"))
        .tenant("jco", "development")
        .expect(200)
        .await
        .json();
    let types: Vec<&str> =
        tl["data"].as_array().unwrap().iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(types, ["api_key.create", "api_key.created", "api_key.revoke", "api_key.revoked"]);
    let p = app
        .get(&format!("/v1/api-keys/{key_id}/timeline"))
        .tenant("jco", "staging")
        .expect(404)
        .await
        .problem();
    assert_eq!(p.code, "api_key_not_found");
}

async fn a_failed_mutation_leaves_no_entry(app: TestApp) {
    app.create_tenant("jfail").await;
    app.post("/v1/roles", json!({"name": "auditor2", "permissions": ["audit.read"]}))
        .tenant("jfail", "development")
        .expect(201)
        .await;
    app.post("/v1/roles", json!({"name": "auditor2", "permissions": ["audit.read"]}))
        .tenant("jfail", "development")
        .expect(409)
        .await;
    let page: Value =
        app.get("/v1/journal?type=role.create").tenant("jfail", "development").expect(200).await.json();
    assert_eq!(page["data"].as_array().unwrap().len(), 1, "the refused creation wrote nothing");
    // Platform work goes to the platform journal.
    let rows = app.raw_journal().await;
    assert!(rows.iter().any(|r| r.contains("\"tenant.created\"") && r.contains("\"platform\"")), "{rows:#?}");
}

/// The entries are written with the COMMIT (on SQLite in one batch with it): when writing them
/// fails, the change is rolled back with them, and the connection is clean for the next writer.
async fn a_journal_write_that_fails_at_commit_rolls_the_change_back(app: TestApp) {
    app.create_tenant("jcommit").await;
    match app.backend {
        Backend::Sqlite => {
            app.raw_exec(
                "CREATE TRIGGER refuse_role_created BEFORE INSERT ON journal_entries \
                 WHEN NEW.type = 'role.created' BEGIN SELECT RAISE(ABORT, 'refused by the test'); END",
            )
            .await
            .unwrap();
        }
        Backend::Postgres => {
            app.raw_exec(
                "CREATE FUNCTION refuse_role_created() RETURNS trigger LANGUAGE plpgsql AS \
                 $$ BEGIN RAISE EXCEPTION 'refused by the test'; END $$",
            )
            .await
            .unwrap();
            app.raw_exec(
                "CREATE TRIGGER refuse_role_created BEFORE INSERT ON journal_entries FOR EACH ROW \
                 WHEN (NEW.type = 'role.created') EXECUTE FUNCTION refuse_role_created()",
            )
            .await
            .unwrap();
        }
    }
    app.post("/v1/roles", json!({"name": "lost", "permissions": ["audit.read"]}))
        .tenant("jcommit", "development")
        .expect(500)
        .await;
    let drop_trigger = match app.backend {
        Backend::Sqlite => "DROP TRIGGER refuse_role_created",
        Backend::Postgres => "DROP TRIGGER refuse_role_created ON journal_entries",
    };
    app.raw_exec(drop_trigger).await.unwrap();
    let roles: Value = app.get("/v1/roles").tenant("jcommit", "development").expect(200).await.json();
    let names: Vec<&str> =
        roles["data"].as_array().unwrap().iter().map(|r| r["name"].as_str().unwrap()).collect();
    assert!(!names.contains(&"lost"), "the role of the failed commit is gone: {names:?}");
    let page: Value =
        app.get("/v1/journal?type=role.create").tenant("jcommit", "development").expect(200).await.json();
    assert!(page["data"].as_array().unwrap().is_empty(), "no entry of the failed commit: {page:#}");
    // The next writers find the connection outside any transaction, and their commits stick.
    for name in ["kept", "kept2"] {
        app.post("/v1/roles", json!({"name": name, "permissions": ["audit.read"]}))
            .tenant("jcommit", "development")
            .expect(201)
            .await;
    }
    let roles: Value = app.get("/v1/roles").tenant("jcommit", "development").expect(200).await.json();
    assert_eq!(roles["data"].as_array().unwrap().len(), 2, "{roles:#}");
    let page: Value =
        app.get("/v1/journal?type=role.created").tenant("jcommit", "development").expect(200).await.json();
    assert_eq!(page["data"].as_array().unwrap().len(), 2, "{page:#}");
}

async fn denials_are_recorded_once_per_window(app: TestApp) {
    app.create_tenant("jdeny").await;
    app.admin_mfa().await;
    let k = app
        .api_key("jdeny", "development", json!({"description": "narrow", "permissions": ["catalog.read"]}))
        .await;
    let key = k["secret"].as_str().unwrap();
    for _ in 0..5 {
        app.get("/v1/tenant").token(key).header("x-tn", "jdeny").expect(403).await;
    }
    let page: Value =
        app.get("/v1/journal?type=authz.denied").tenant("jdeny", "development").expect(200).await.json();
    let denied = page["data"].as_array().unwrap();
    assert_eq!(denied.len(), 1, "repeats are folded: {denied:#?}");
    assert_eq!(denied[0]["kind"], "decision");
    assert_eq!(denied[0]["body"]["permission"], "tenant.read");
    assert_eq!(denied[0]["principal"]["kind"], "api_key");
    let support = app.tenant_user("jdeny", "agent@example.com", &["support_agent"]).await;
    let p = app
        .get("/v1/journal")
        .token(&support.access)
        .tenant("jdeny", "development")
        .expect(403)
        .await
        .problem();
    assert_eq!(p.code, "permission_denied");
}

async fn the_database_refuses_to_change_or_delete_entries(app: TestApp) {
    app.create_tenant("jimm").await;
    let before = app.raw_journal().await;
    assert!(!before.is_empty());
    let upd = app.raw_exec("UPDATE journal_entries SET type = 'forged'").await;
    assert!(upd.as_ref().is_err_and(|e| e.contains("immutable")), "{upd:?}");
    let del = app.raw_exec("DELETE FROM journal_entries").await;
    assert!(del.as_ref().is_err_and(|e| e.contains("immutable")), "{del:?}");
    if app.backend == crate::helpers::Backend::Postgres {
        let t = app.raw_exec("TRUNCATE journal_entries").await;
        assert!(t.is_err(), "{t:?}");
        let grants = app
            .raw_strings(
                "SELECT (has_table_privilege('azotte_app', 'journal_entries', 'UPDATE') OR \
                 has_table_privilege('azotte_app', 'journal_entries', 'DELETE'))::text",
            )
            .await;
        assert_eq!(grants, ["false"], "the service role cannot change entries");
    }
    assert_eq!(app.raw_journal().await, before);
    // Seals and checkpoints as well (on SQLite, journal_seals was rebuilt by migration 0026).
    azotte_service::seal::seal_once(&app.ctx).await.unwrap();
    for table in ["journal_seals", "journal_checkpoints"] {
        let upd = app.raw_exec(&format!("UPDATE {table} SET chain_hash = 'forged'")).await;
        assert!(upd.as_ref().is_err_and(|e| e.contains("immutable")), "{table}: {upd:?}");
        let del = app.raw_exec(&format!("DELETE FROM {table}")).await;
        assert!(del.as_ref().is_err_and(|e| e.contains("immutable")), "{table}: {del:?}");
    }
}

async fn no_personal_data_or_secret_reaches_the_journal(app: TestApp) {
    let secret = app.admin_mfa().await;
    let user = app.tenant_user("jpii", "pii.person@example.com", &["read_only"]).await;
    let k = app.api_key("jpii", "development", json!({"description": "k", "role": "read_only"})).await;
    let key = k["secret"].as_str().unwrap().to_owned();
    app.get("/v1/tenant").token(&key).header("x-tn", "jpii").expect(200).await;
    app.post("/v1/auth/login", json!({"email": "pii.person@example.com", "password": "wrong wrong wrong"}))
        .anon()
        .expect(401)
        .await;
    let refreshed: Value =
        app.post("/v1/auth/refresh", json!({"refresh_token": user.refresh})).anon().expect(200).await.json();
    app.post("/v1/auth/refresh", json!({"refresh_token": user.refresh})).anon().expect(401).await;
    let rows = app.raw_journal().await.join("\n");
    assert!(
        rows.contains("login.failed")
            && rows.contains("session.refresh_reused")
            && rows.contains("membership.created")
    );
    let forbidden = [
        "pii.person@example.com".to_owned(),
        "admin@example.com".to_owned(),
        "correct horse battery staple".to_owned(),
        "tenant user password 1".to_owned(),
        "wrong wrong wrong".to_owned(),
        secret,
        key.clone(),
        key.rsplit('_').next().unwrap().to_owned(),
        user.access.clone(),
        user.refresh.clone(),
        refreshed["access_token"].as_str().unwrap().to_owned(),
        app.admin_token.clone(),
        app.last_invitation_token("pii.person@example.com"),
    ];
    for f in &forbidden {
        assert!(!rows.contains(f.as_str()), "journal contains `{f}`");
    }
}

both!(
    a_mutation_records_action_and_outcome_under_one_correlation_id,
    a_failed_mutation_leaves_no_entry,
    a_journal_write_that_fails_at_commit_rolls_the_change_back,
    denials_are_recorded_once_per_window,
    the_database_refuses_to_change_or_delete_entries,
    no_personal_data_or_secret_reaches_the_journal
);

/// PostgreSQL, several processes sealing: the worker's tick leaves a chain another sealer holds
/// to it instead of waiting on the chain's lock; a thorough pass (`seal_once`) waits and seals.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sealing_tick_does_not_wait_for_another_sealer() {
    use sqlx::Connection;
    let app = crate::helpers::spawn_app(Backend::Postgres).await;
    app.create_tenant("tick").await;
    let tenant = app.raw_strings("SELECT id FROM tenants WHERE slug = 'tick'").await.remove(0);
    let waiting = || async {
        let sql = format!(
            "SELECT count(*)::text FROM journal_pending WHERE owner_tenant_id = '{tenant}' \
             AND owner_environment = 'development'"
        );
        app.raw_strings(&sql).await.remove(0).parse::<u32>().unwrap()
    };
    // Another sealer holds the chain.
    let mut other = sqlx::PgConnection::connect(&app.db_url).await.unwrap();
    sqlx::query("BEGIN").execute(&mut other).await.unwrap();
    sqlx::query("SELECT pg_advisory_xact_lock(hashtext('azotte.seal:' || $1 || ':' || $2))")
        .bind(&tenant)
        .bind("development")
        .execute(&mut other)
        .await
        .unwrap();
    // Entries written meanwhile (writers never take that lock) wait for it.
    app.post("/v1/roles", json!({"name": "tick_role", "permissions": ["audit.read"]}))
        .tenant("tick", "development")
        .expect(201)
        .await;
    assert!(waiting().await > 0);
    let tick =
        tokio::time::timeout(std::time::Duration::from_secs(5), azotte_service::seal::seal_tick(&app.ctx))
            .await
            .expect("the tick does not wait for the chain");
    tick.unwrap();
    assert!(waiting().await > 0, "the held chain is left to its sealer");
    // A thorough pass waits for it, then seals what is left.
    let ctx = app.ctx.clone();
    let thorough = tokio::spawn(async move { azotte_service::seal::seal_once(&ctx).await });
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert!(!thorough.is_finished(), "seal_once waits for the other sealer");
    sqlx::query("COMMIT").execute(&mut other).await.unwrap();
    thorough.await.unwrap().unwrap();
    assert_eq!(waiting().await, 0);
}
