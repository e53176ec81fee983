//! Liveness, readiness, metrics and request ids.

use crate::both;
use crate::helpers::{Backend, TestApp};
use serde_json::Value;

async fn health_and_readiness(app: TestApp) {
    let h: Value = app.get("/healthz").anon().expect(200).await.json();
    assert_eq!(h["status"], "ok");
    let r: Value = app.get("/readyz").anon().expect(200).await.json();
    assert_eq!(r["status"], "ready");
    assert_eq!(r["pending_migrations"], 0);
    let expected = match app.backend {
        Backend::Sqlite => "sqlite",
        Backend::Postgres => "postgres",
    };
    assert_eq!(r["database"], expected);
}

async fn metrics_count_requests_by_route_template(app: TestApp) {
    let t = app.create_tenant("metrics-co").await;
    let id = t["id"].as_str().unwrap();
    app.get(&format!("/v1/platform/tenants/{id}")).expect(200).await;
    app.get("/no/such/route").expect(404).await;
    let text = app.get("/metrics").anon().expect(200).await.text();
    assert!(
        text.contains(
            r#"azotte_http_requests_total{method="GET",route="/v1/platform/tenants/{id}",status="200"} 1"#
        ),
        "{text}"
    );
    assert!(text.contains(
        r#"azotte_http_requests_total{method="POST",route="/v1/platform/tenants",status="201"} 1"#
    ));
    assert!(text.contains(r#"route="unmatched",status="404""#));
    assert!(text.contains("# TYPE azotte_http_request_duration_seconds histogram"));
    assert!(text.contains(r#"azotte_http_request_duration_seconds_count{method="GET",route="/v1/platform/tenants/{id}",status="200"} 1"#));
    assert!(!text.contains(id), "raw ids never become labels");
    // The gathered work's counters (decisions 0006 and 0007), each with its type.
    for name in [
        "azotte_checkouts_read_together_total",
        "azotte_checkout_read_transactions_total",
        "azotte_checkouts_written_together_total",
        "azotte_checkout_write_transactions_total",
        "azotte_checkouts_settled_together_total",
        "azotte_checkout_settle_transactions_total",
        "azotte_customers_created_together_total",
        "azotte_customer_create_transactions_total",
        "azotte_offers_made_together_total",
        "azotte_offer_make_transactions_total",
    ] {
        assert!(text.contains(&format!("# TYPE {name} counter\n{name} ")), "{name}: {text}");
    }
    assert!(text.contains("\nazotte_idempotency_records_gathered_total{what=\"claim\"} "), "{text}");
    assert!(text.contains("\nazotte_idempotency_record_transactions_total "), "{text}");
    assert!(text.contains("\nazotte_renewal_jobs_ended_total{path=\"one_by_one\"} "), "{text}");
}

async fn request_ids_are_echoed_or_generated(app: TestApp) {
    let r = app.get("/healthz").header("x-request-id", "client-abc-123").expect(200).await;
    assert_eq!(r.header("x-request-id"), Some("client-abc-123"));
    let r = app.get("/healthz").expect(200).await;
    assert!(r.header("x-request-id").unwrap().starts_with("req_"));
    // A malformed id is replaced, not echoed.
    let r = app.get("/healthz").header("x-request-id", "bad id with spaces").expect(200).await;
    assert!(r.header("x-request-id").unwrap().starts_with("req_"));
}

async fn traceparent_becomes_the_correlation_id_in_logs(app: TestApp) {
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    app.get("/v1/platform/tenants")
        .header("traceparent", &format!("00-{trace}-00f067aa0ba902b7-01"))
        .header("x-request-id", "trace-test-1")
        .expect(200)
        .await;
    let logs = crate::helpers::logs();
    let line = logs
        .lines()
        .find(|l| l.contains("\"request_id\":\"trace-test-1\"") && l.contains("request completed"))
        .unwrap_or_else(|| panic!("no completion log for the request: {logs}"));
    assert!(line.contains(&format!("\"correlation_id\":\"{trace}\"")), "{line}");
    assert!(line.contains("\"principal\":"), "the principal is recorded: {line}");
}

both!(
    health_and_readiness,
    metrics_count_requests_by_route_template,
    request_ids_are_echoed_or_generated,
    traceparent_becomes_the_correlation_id_in_logs
);
