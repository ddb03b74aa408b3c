//! Operations endpoints: /metrics after real traffic.

use serde_json::json;

use crate::common::TestApp;

#[tokio::test]
async fn metrics_expose_the_documented_series() {
    let app = TestApp::redis().await;
    let meter = app.tokens_meter().await;
    app.post(
        "/v1/limits",
        json!({"name": "d", "meterId": meter, "limitValue": 5, "period": "day"}),
    )
    .await
    .assert_status(201);
    app.post(
        "/v1/events/record",
        json!({"customerId": "m", "eventType": "llm", "values": {"tokens": 5}}),
    )
    .await
    .assert_status(200);
    app.post("/v1/limits/check", json!({"customerId": "m"}))
        .await
        .assert_status(200);
    app.post("/v1/limits/check", json!({"customerId": "fresh"}))
        .await
        .assert_status(200);
    app.post(
        "/v1/limits/consume",
        json!({"customerId": "m", "eventType": "llm", "values": {"tokens": 1}}),
    )
    .await
    .assert_status(200);
    app.get("/v1/customers/nobody")
        .await
        .assert_error(404, "customer_not_found");
    // A webhook pointing at a closed port: the test ping fails and is counted.
    let port = crate::common::free_port();
    let created = app
        .post(
            "/v1/webhooks",
            json!({"url": format!("http://127.0.0.1:{port}/closed")}),
        )
        .await;
    let id = created.body["id"].as_str().unwrap().to_string();
    assert_eq!(
        app.post(&format!("/v1/webhooks/{id}/test"), json!({}))
            .await
            .body["status"],
        "failed"
    );

    let (status, headers, text) = app.get_text("/metrics").await;
    assert_eq!(status, 200, "no key needed");
    assert!(
        headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain")
    );
    for series in [
        r#"quotagate_http_requests_total{route="/v1/limits/check",method="POST",status="200"}"#,
        r#"quotagate_http_requests_total{route="/v1/customers/{id}",method="GET",status="404"}"#,
        r#"quotagate_http_request_duration_seconds_bucket{route="/v1/events/record",method="POST",le="#,
        r#"quotagate_decisions_total{kind="check",outcome="refused"}"#,
        r#"quotagate_decisions_total{kind="check",outcome="allowed"}"#,
        r#"quotagate_decisions_total{kind="consume",outcome="refused"}"#,
        "quotagate_storage_call_duration_seconds_bucket{le=",
        r#"quotagate_webhook_deliveries_total{status="failed"}"#,
        "quotagate_config_cache_age_seconds",
    ] {
        assert!(text.contains(series), "missing {series} in:\n{text}");
    }
}
