//! A sweep of malformed requests over every write route: always the error envelope, never a
//! 5xx, and the server keeps answering.

use axum::http::Method;
use serde_json::json;

use crate::common::TestApp;

const WRITE_ROUTES: &[(&str, &str)] = &[
    ("POST", "/v1/customers"),
    ("PUT", "/v1/customers/c1"),
    ("POST", "/v1/meters"),
    ("POST", "/v1/limits"),
    ("POST", "/v1/api-keys"),
    ("POST", "/v1/balances"),
    ("POST", "/v1/balances/credit"),
    ("POST", "/v1/balances/debit"),
    ("POST", "/v1/balances/check"),
    ("PUT", "/v1/balances/bal_1"),
];

fn method(name: &str) -> Method {
    name.parse().unwrap()
}

async fn sweep(app: TestApp) {
    let bodies: &[(&str, &str)] = &[
        ("{", "invalid_request"),
        ("{\"id\": }", "invalid_request"),
        ("[]", "invalid_request"),
        ("\"text\"", "invalid_request"),
        ("42", "invalid_request"),
        ("null", "invalid_request"),
        ("\u{0}\u{1}", "invalid_request"),
        ("   ", "invalid_request"),
    ];
    for (verb, path) in WRITE_ROUTES {
        for (body, code) in bodies {
            let response = app
                .raw(
                    method(verb),
                    path,
                    Some("application/json"),
                    body.to_string(),
                )
                .await;
            response.assert_error(400, code);
        }
        // Wrong types for every field.
        for value in [json!(true), json!([1]), json!({"x": 1}), json!(1e300)] {
            for field in [
                "id",
                "name",
                "aggregation",
                "field",
                "meterId",
                "limitValue",
                "period",
                "scopes",
                "timezone",
            ] {
                let response = app
                    .raw(
                        method(verb),
                        path,
                        Some("application/json"),
                        json!({field: value}).to_string(),
                    )
                    .await;
                assert!(
                    response.status.is_client_error(),
                    "{verb} {path} {field}={value}: {response:?}"
                );
                assert!(!response.error_code().is_empty(), "{response:?}");
            }
        }
        app.raw(method(verb), path, Some("text/plain"), "{\"id\":\"c\"}")
            .await
            .assert_error(415, "unsupported_media_type");
        app.raw(method(verb), path, None, "{\"id\":\"c\"}")
            .await
            .assert_error(415, "unsupported_media_type");
        let huge = format!(
            "{{\"id\":\"c\",\"name\":\"{}\"}}",
            "x".repeat(1024 * 1024 + 10)
        );
        app.raw(method(verb), path, Some("application/json"), huge)
            .await
            .assert_error(413, "payload_too_large");
    }
    for path in [
        "/v1/customers/%FF%FE",
        "/v1/customers/..%2F..%2Fetc",
        "/v1/meters/%00",
        "/v1/limits/lmt_%20",
        "/v1/nothing-here",
        "/v1/customers/a/b/c",
    ] {
        let response = app.get(path).await;
        assert_eq!(response.status.as_u16(), 404, "{path}: {response:?}");
        assert!(
            response.error_code().ends_with("not_found"),
            "{path}: {response:?}"
        );
    }
    app.call(Method::PATCH, "/v1/customers", None)
        .await
        .assert_error(405, "method_not_allowed");
    // Request IDs are taken from the request when sane.
    let request = axum::http::Request::builder()
        .uri("/healthz")
        .header("x-request-id", "trace-123")
        .body(axum::body::Body::empty())
        .unwrap();
    assert_eq!(
        app.send(request).await.header("x-request-id"),
        Some("trace-123")
    );
    // Still alive, and nothing was created.
    app.get("/healthz").await.assert_status(200);
    assert_eq!(app.get("/v1/customers").await.body["data"], json!([]));
    assert_eq!(app.get("/v1/meters").await.body["data"], json!([]));
}

/// `POST`s that take no fields (release, test ping, redeliver) refuse a body as any route
/// would, and a refused one changes nothing; no body, or `{}`, is what they take.
async fn routes_without_fields_refuse_a_body(app: TestApp) {
    let reservation = app
        .post(
            "/v1/reservations",
            json!({"customerId": "c1", "eventType": "llm", "values": {"tokens": 5}}),
        )
        .await;
    let id = reservation.assert_status(200)["reservation"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let webhook = app
        .post("/v1/webhooks", json!({"url": "http://127.0.0.1:9/hook"}))
        .await;
    let webhook = webhook.assert_status(201)["id"]
        .as_str()
        .unwrap()
        .to_string();
    let release = format!("/v1/reservations/{id}/release");
    let routes = [
        release.clone(),
        format!("/v1/webhooks/{webhook}/test"),
        format!("/v1/webhooks/{webhook}/deliveries/dlv_1/redeliver"),
    ];
    for path in &routes {
        let json = Some("application/json");
        app.raw(Method::POST, path, json, "not json {")
            .await
            .assert_error(400, "invalid_request");
        app.raw(Method::POST, path, json, "[]")
            .await
            .assert_error(400, "invalid_request");
        app.raw(Method::POST, path, json, r#"{"foo": 1}"#)
            .await
            .assert_field_error("invalid_field_value", "foo");
        app.raw(Method::POST, path, Some("text/plain"), "hello")
            .await
            .assert_error(415, "unsupported_media_type");
    }
    let held = app.get(&format!("/v1/reservations/{id}")).await;
    assert_eq!(held.assert_status(200)["status"], "held");
    let released = app.raw(Method::POST, &release, None, "").await;
    assert_eq!(released.assert_status(200)["status"], "released");
    let again = app.post(&release, json!({})).await;
    assert_eq!(again.assert_status(200)["status"], "released");
}

crate::every_store!(sweep, routes_without_fields_refuse_a_body);
