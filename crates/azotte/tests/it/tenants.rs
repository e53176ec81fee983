//! Tenant administration and the tenant-scoped read.

use crate::both;
use crate::helpers::TestApp;
use serde_json::{json, Value};

async fn create_tenant_with_three_environments(app: TestApp) {
    let resp = app
        .post("/v1/platform/tenants", json!({"slug": "acme", "name": "  Acme Streaming "}))
        .expect(201)
        .await;
    let t: Value = resp.json();
    let id = t["id"].as_str().unwrap();
    assert!(id.starts_with("ten_"));
    assert_eq!(resp.header("location"), Some(format!("/v1/platform/tenants/{id}").as_str()));
    assert_eq!(t["slug"], "acme");
    assert_eq!(t["name"], "Acme Streaming", "names are trimmed");
    assert_eq!(t["status"], "active");
    let envs: Vec<(String, String)> = t["environments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["name"].as_str().unwrap().to_owned(), e["mode"].as_str().unwrap().to_owned()))
        .collect();
    assert_eq!(envs.len(), 3);
    for (name, mode) in [("development", "test"), ("staging", "test"), ("production", "live")] {
        assert!(envs.contains(&(name.into(), mode.into())), "{envs:?}");
    }
    let got: Value = app.get(&format!("/v1/platform/tenants/{id}")).expect(200).await.json();
    assert_eq!(got, t);
}

async fn list_is_cursor_paginated(app: TestApp) {
    let mut ids = vec![];
    for slug in ["alpha", "bravo", "charlie"] {
        ids.push(app.create_tenant(slug).await["id"].as_str().unwrap().to_owned());
    }
    let page1: Value = app.get("/v1/platform/tenants?limit=2").expect(200).await.json();
    let got: Vec<&str> =
        page1["data"].as_array().unwrap().iter().map(|t| t["id"].as_str().unwrap()).collect();
    assert_eq!(got, ids[..2].iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(page1["has_more"], true);
    assert_eq!(page1["next_cursor"], ids[1].as_str());
    let page2: Value =
        app.get(&format!("/v1/platform/tenants?limit=2&starting_after={}", ids[1])).expect(200).await.json();
    let got: Vec<&str> =
        page2["data"].as_array().unwrap().iter().map(|t| t["id"].as_str().unwrap()).collect();
    assert_eq!(got, vec![ids[2].as_str()]);
    assert_eq!(page2["has_more"], false);
    assert_eq!(page2["next_cursor"], Value::Null);

    for bad in ["limit=0", "limit=101", "limit=abc", "starting_after=nope", "bogus=1"] {
        let p = app.get(&format!("/v1/platform/tenants?{bad}")).expect(422).await.problem();
        assert_eq!(p.code, "validation_failed", "{bad}");
        assert!(!p.errors.is_empty(), "{bad}");
    }
}

async fn suspend_blocks_tenant_access_and_reactivate_restores_it(app: TestApp) {
    let t = app.create_tenant("suspendable").await;
    let id = t["id"].as_str().unwrap();
    let cur: Value = app.get("/v1/tenant").tenant("suspendable", "production").expect(200).await.json();
    assert_eq!(cur["id"], id);
    assert_eq!(cur["environment"], "production");
    assert_eq!(cur["mode"], "live");
    // The tenant can be named by id as well as by slug.
    let cur: Value = app.get("/v1/tenant").tenant(id, "development").expect(200).await.json();
    assert_eq!(cur["mode"], "test");

    let s: Value = app
        .patch(&format!("/v1/platform/tenants/{id}"), json!({"status": "suspended"}))
        .expect(200)
        .await
        .json();
    assert_eq!(s["status"], "suspended");
    assert_eq!(s["name"], t["name"], "absent fields are left as they are");
    let p = app.get("/v1/tenant").tenant("suspendable", "production").expect(403).await.problem();
    assert_eq!(p.code, "tenant_suspended");

    let r: Value = app
        .patch(&format!("/v1/platform/tenants/{id}"), json!({"status": "active", "name": "Renamed"}))
        .expect(200)
        .await
        .json();
    assert_eq!((r["status"].as_str(), r["name"].as_str()), (Some("active"), Some("Renamed")));
    app.get("/v1/tenant").tenant("suspendable", "production").expect(200).await;
}

async fn patch_rejects_null_unknown_and_bad_values(app: TestApp) {
    let t = app.create_tenant("patchy").await;
    let path = format!("/v1/platform/tenants/{}", t["id"].as_str().unwrap());
    let p = app.patch(&path, json!({"name": null})).expect(422).await.problem();
    assert_eq!((p.errors[0].field.as_str(), p.errors[0].code.as_str()), ("name", "null_not_allowed"));
    let p = app.patch(&path, json!({"status": "deleted"})).expect(422).await.problem();
    assert_eq!(p.errors[0].field, "status");
    let p = app.patch(&path, json!({"slug": "other"})).expect(422).await.problem();
    assert_eq!((p.errors[0].field.as_str(), p.errors[0].code.as_str()), ("slug", "unknown_field"));
    let p = app.patch(&path, json!({"name": "   "})).expect(422).await.problem();
    assert_eq!(p.errors[0].field, "name");
}

async fn unknown_and_malformed_tenant_ids_are_404(app: TestApp) {
    let p = app.get("/v1/platform/tenants/ten_01jdq3m9x7e5k4w2c8v6b0n1p2").expect(404).await.problem();
    assert_eq!(p.code, "tenant_not_found");
    let p = app.get("/v1/platform/tenants/not-an-id").expect(404).await.problem();
    assert_eq!(p.code, "tenant_not_found");
    let p = app
        .patch("/v1/platform/tenants/ten_01jdq3m9x7e5k4w2c8v6b0n1p2", json!({"name": "x"}))
        .expect(404)
        .await
        .problem();
    assert_eq!(p.code, "tenant_not_found");
}

async fn invalid_slugs_are_rejected_by_field(app: TestApp) {
    for (slug, code) in [
        ("ab", "invalid_length"),
        ("a".repeat(64).as_str(), "invalid_length"),
        ("Acme", "invalid_characters"),
        ("ac me", "invalid_characters"),
        ("acme_eu", "invalid_characters"),
        ("9lives", "invalid_format"),
        ("acme-", "invalid_format"),
        ("admin", "reserved"),
    ] {
        let p =
            app.post("/v1/platform/tenants", json!({"slug": slug, "name": "X"})).expect(422).await.problem();
        assert_eq!(p.code, "validation_failed");
        assert_eq!((p.errors[0].field.as_str(), p.errors[0].code.as_str()), ("slug", code), "{slug}");
    }
    // Both fields wrong: both reported.
    let p = app.post("/v1/platform/tenants", json!({"slug": "x", "name": ""})).expect(422).await.problem();
    let fields: Vec<&str> = p.errors.iter().map(|e| e.field.as_str()).collect();
    assert_eq!(fields, ["slug", "name"]);
    let p = app.post("/v1/platform/tenants", json!({"slug": "okay-slug"})).expect(422).await.problem();
    assert_eq!((p.errors[0].field.as_str(), p.errors[0].code.as_str()), ("name", "missing_field"));
    let p = app.post("/v1/platform/tenants", json!({"slug": 42, "name": "X"})).expect(422).await.problem();
    assert_eq!((p.errors[0].field.as_str(), p.errors[0].code.as_str()), ("slug", "invalid_type"));
}

async fn duplicate_slug_is_a_409_conflict(app: TestApp) {
    app.create_tenant("taken").await;
    let p = app
        .post("/v1/platform/tenants", json!({"slug": "taken", "name": "Again"}))
        .expect(409)
        .await
        .problem();
    assert_eq!(p.code, "tenant_slug_taken");
    assert_eq!(p.errors[0].field, "slug");
    // Nothing half-written: still exactly one tenant.
    let list: Value = app.get("/v1/platform/tenants").expect(200).await.json();
    assert_eq!(list["data"].as_array().unwrap().len(), 1);
}

async fn concurrent_creation_of_one_slug_yields_one_tenant(app: TestApp) {
    let calls = (0..8)
        .map(|i| app.post("/v1/platform/tenants", json!({"slug": "racy", "name": format!("R{i}")})).send());
    let statuses: Vec<u16> = futures::future::join_all(calls).await.iter().map(|r| r.status).collect();
    assert_eq!(statuses.iter().filter(|s| **s == 201).count(), 1, "{statuses:?}");
    assert!(statuses.iter().all(|s| *s == 201 || *s == 409), "{statuses:?}");
}

both!(
    create_tenant_with_three_environments,
    list_is_cursor_paginated,
    suspend_blocks_tenant_access_and_reactivate_restores_it,
    patch_rejects_null_unknown_and_bad_values,
    unknown_and_malformed_tenant_ids_are_404,
    invalid_slugs_are_rejected_by_field,
    duplicate_slug_is_a_409_conflict,
    concurrent_creation_of_one_slug_yields_one_tenant
);
