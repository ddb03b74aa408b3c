//! Operations endpoints: /metrics after real traffic, the OpenAPI document, the node's own
//! protection against overload.

use serde_json::json;

use crate::common::{GatedRequest, GatewayProcess, TestApp, gated_post};

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
    app.post(
        "/v1/balances",
        json!({"customerId": "m", "name": "prepaid", "initialBalance": 1}),
    )
    .await
    .assert_status(201);
    for amount in [1, 1] {
        app.post(
            "/v1/balances/debit",
            json!({"customerId": "m", "name": "prepaid", "amount": amount}),
        )
        .await
        .assert_status(200);
    }
    // A method of a client's own invention is counted, under OTHER.
    let odd = axum::http::Method::from_bytes(b"PURGE").unwrap();
    app.call(odd, "/v1/customers", None)
        .await
        .assert_error(405, "method_not_allowed");
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
        r#"quotagate_http_requests_total{route="/v1/customers",method="OTHER",status="405"}"#,
        r#"quotagate_http_request_duration_seconds_bucket{route="/v1/events/record",method="POST",le="#,
        r#"quotagate_decisions_total{kind="check",outcome="refused"}"#,
        r#"quotagate_decisions_total{kind="check",outcome="allowed"}"#,
        r#"quotagate_decisions_total{kind="consume",outcome="refused"}"#,
        "quotagate_storage_call_duration_seconds_bucket{le=",
        r#"quotagate_webhook_deliveries_total{status="failed"}"#,
        "quotagate_config_cache_age_seconds",
        r#"quotagate_balance_movements_total{type="debit",outcome="applied"}"#,
        r#"quotagate_balance_movements_total{type="debit",outcome="refused"}"#,
    ] {
        assert!(text.contains(series), "missing {series} in:\n{text}");
    }
    assert!(!text.contains("PURGE"), "a client's method names no series");
}

/// Every documented series whose labels are known in advance is there, at zero, on the first
/// scrape of a fresh process, on either store; the storage call histogram already holds the
/// calls that loaded the configuration. (A fresh process: the test binary's recorder is shared
/// by every test in it.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_series_are_present_from_the_start_on_every_store() {
    let redis = crate::common::shared_redis().url();
    let prefix = crate::common::unique_prefix();
    let stores: [&[(&str, &str)]; 2] = [
        &[],
        &[
            ("QUOTAGATE_REDIS_URL", redis.as_str()),
            ("QUOTAGATE_KEY_PREFIX", prefix.as_str()),
        ],
    ];
    for envs in stores {
        let node = tokio::task::block_in_place(|| GatewayProcess::start(envs));
        let text = reqwest::get(node.url("/metrics"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let mut zeros = vec![
            r#"quotagate_http_requests_abandoned_total"#.to_string(),
            r#"quotagate_storage_errors_total{kind="unavailable"}"#.to_string(),
            r#"quotagate_storage_errors_total{kind="internal"}"#.to_string(),
        ];
        for kind in ["check", "consume", "reserve"] {
            for outcome in ["allowed", "refused", "degraded"] {
                zeros.push(format!(
                    r#"quotagate_decisions_total{{kind="{kind}",outcome="{outcome}"}}"#
                ));
            }
        }
        for status in ["succeeded", "retrying", "failed"] {
            zeros.push(format!(
                r#"quotagate_webhook_deliveries_total{{status="{status}"}}"#
            ));
        }
        for kind in ["credit", "debit"] {
            for outcome in ["applied", "refused", "replayed"] {
                zeros.push(format!(
                    r#"quotagate_balance_movements_total{{type="{kind}",outcome="{outcome}"}}"#
                ));
            }
        }
        for series in zeros {
            assert!(
                text.lines().any(|line| line == format!("{series} 0")),
                "{envs:?}: no {series} 0 in:\n{text}"
            );
        }
        let calls = text
            .lines()
            .find_map(|line| line.strip_prefix("quotagate_storage_call_duration_seconds_count "))
            .unwrap_or_else(|| panic!("{envs:?}: no storage call histogram in:\n{text}"));
        assert!(calls.parse::<f64>().unwrap() > 0.0, "{envs:?}: {calls}");
        assert!(
            text.contains("quotagate_config_cache_age_seconds "),
            "{text}"
        );
    }
}

/// Every operation of API.md, as (method, path).
const CONTRACT: &[(&str, &str)] = &[
    ("post", "/v1/customers"),
    ("get", "/v1/customers"),
    ("get", "/v1/customers/{id}"),
    ("put", "/v1/customers/{id}"),
    ("delete", "/v1/customers/{id}"),
    ("post", "/v1/meters"),
    ("get", "/v1/meters"),
    ("get", "/v1/meters/{id}"),
    ("put", "/v1/meters/{id}"),
    ("delete", "/v1/meters/{id}"),
    ("post", "/v1/meters/{id}/query"),
    ("post", "/v1/limits"),
    ("get", "/v1/limits"),
    ("get", "/v1/limits/{id}"),
    ("put", "/v1/limits/{id}"),
    ("delete", "/v1/limits/{id}"),
    ("post", "/v1/limits/check"),
    ("post", "/v1/limits/consume"),
    ("post", "/v1/events/record"),
    ("post", "/v1/events/batch"),
    ("get", "/v1/events"),
    ("post", "/v1/reservations"),
    ("get", "/v1/reservations/{id}"),
    ("post", "/v1/reservations/{id}/commit"),
    ("post", "/v1/reservations/{id}/release"),
    ("post", "/v1/reservations/{id}/extend"),
    ("post", "/v1/webhooks"),
    ("get", "/v1/webhooks"),
    ("get", "/v1/webhooks/{id}"),
    ("put", "/v1/webhooks/{id}"),
    ("delete", "/v1/webhooks/{id}"),
    ("post", "/v1/webhooks/{id}/test"),
    ("get", "/v1/webhooks/{id}/deliveries"),
    (
        "post",
        "/v1/webhooks/{id}/deliveries/{delivery_id}/redeliver",
    ),
    ("post", "/v1/api-keys"),
    ("get", "/v1/api-keys"),
    ("delete", "/v1/api-keys/{id}"),
    ("post", "/v1/balances"),
    ("get", "/v1/balances/{id}"),
    ("delete", "/v1/balances/{id}"),
    ("get", "/v1/customers/{id}/balances"),
    ("post", "/v1/balances/credit"),
    ("post", "/v1/balances/debit"),
    ("post", "/v1/balances/check"),
    ("get", "/v1/balances/{id}/transactions"),
    ("get", "/healthz"),
    ("get", "/readyz"),
    ("get", "/metrics"),
    ("get", "/v1/openapi.json"),
];

/// `POST`s that take no `Idempotency-Key`: the read-only ones, and creating an API key,
/// whose answer holds the key in the clear and is never kept (README, "Choices").
const WITHOUT_IDEMPOTENCY_KEY: &[&str] = &[
    "/v1/limits/check",
    "/v1/meters/{id}/query",
    "/v1/balances/check",
    "/v1/api-keys",
];

/// Operations the gateway adds where the contract is silent (README, "Choices").
const EXTENSIONS: &[(&str, &str)] = &[("put", "/v1/balances/{id}")];

#[tokio::test]
async fn openapi_document_matches_the_contract_and_the_router() {
    let app = TestApp::memory().await;
    let document = app.get("/v1/openapi.json").await;
    let document = document.assert_status(200).clone();
    assert!(document["openapi"].as_str().unwrap().starts_with("3."));
    let mut documented = Vec::new();
    let mut operation_ids = Vec::new();
    for (path, item) in document["paths"].as_object().unwrap() {
        for (method, operation) in item.as_object().unwrap() {
            assert!(
                operation["summary"].is_string(),
                "{method} {path} has a summary"
            );
            assert!(
                operation["responses"]["default"].is_object(),
                "{method} {path} documents the error envelope"
            );
            // Every state-changing POST accepts the key (API.md §0), and says so.
            let declares_key = operation["parameters"].as_array().is_some_and(|params| {
                params
                    .iter()
                    .any(|p| p["in"] == "header" && p["name"] == "Idempotency-Key")
            });
            let takes_key = method == "post" && !WITHOUT_IDEMPOTENCY_KEY.contains(&path.as_str());
            assert_eq!(
                declares_key, takes_key,
                "{method} {path} declares the Idempotency-Key header"
            );
            documented.push((method.clone(), path.clone()));
            operation_ids.push(operation["operationId"].as_str().unwrap().to_string());
        }
    }
    let unique: std::collections::BTreeSet<&String> = operation_ids.iter().collect();
    assert_eq!(
        unique.len(),
        operation_ids.len(),
        "operationIds are unique: {operation_ids:?}"
    );
    assert!(operation_ids.contains(&"balances_check".to_string()));
    // The idempotency key is described as the gateway checks it.
    let key = document["paths"]["/v1/customers"]["post"]["parameters"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "Idempotency-Key")
        .unwrap();
    assert_eq!(key["schema"]["maxLength"], 256);
    assert!(key["schema"]["pattern"].is_string(), "{key}");
    // Every list takes `limit` within the contract's range.
    let customers = &document["paths"]["/v1/customers"]["get"]["parameters"];
    let limit = customers
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "limit")
        .unwrap();
    assert_eq!(
        (&limit["schema"]["minimum"], &limit["schema"]["maximum"]),
        (&json!(1), &json!(100))
    );
    let mut expected: Vec<(String, String)> = CONTRACT
        .iter()
        .chain(EXTENSIONS)
        .map(|(m, p)| (m.to_string(), p.to_string()))
        .collect();
    documented.sort();
    expected.sort();
    assert_eq!(
        documented, expected,
        "the document lists exactly the contract's operations and the extensions"
    );
    // Every documented operation is served by the router (not the fallback, not 405).
    for (method, path) in &documented {
        if path == "/metrics" {
            assert_eq!(app.get_text(path).await.0, 200);
            continue;
        }
        let concrete = path.replace("{id}", "x1").replace("{delivery_id}", "x2");
        let body = matches!(method.as_str(), "post" | "put").then(|| json!({}));
        let response = app
            .call(method.to_uppercase().parse().unwrap(), &concrete, body)
            .await;
        assert_ne!(response.status.as_u16(), 405, "{method} {path}");
        assert_ne!(
            response.body["error"]["message"], "no such resource",
            "{method} {path} is not routed"
        );
    }
    let schemas = document["components"]["schemas"].as_object().unwrap();
    for name in [
        "Customer",
        "Meter",
        "Limit",
        "LimitState",
        "NewEvent",
        "Reservation",
        "ErrorEnvelope",
        "DeliveryAttempt",
    ] {
        assert!(schemas.contains_key(name), "schema {name}");
    }
    assert_eq!(
        schemas["Limit"]["properties"]["period"]["$ref"],
        "#/components/schemas/Period"
    );
    assert_eq!(schemas["Period"]["enum"][6], "all_time");
    // Bounds the gateway checks are in the document, for clients and their generators.
    let event = &schemas["NewEvent"]["properties"];
    assert_eq!(
        (
            &event["eventType"]["minLength"],
            &event["eventType"]["maxLength"]
        ),
        (&json!(1), &json!(128))
    );
    assert_eq!(
        schemas["ExtendReservation"]["properties"]["ttlSeconds"]["maximum"],
        3600
    );
    // The header and an event's body field are one key, described alike.
    let key_in_body = &schemas["NewEvent"]["properties"]["idempotencyKey"];
    assert_eq!(key_in_body["pattern"], key["schema"]["pattern"]);
    assert_eq!(key_in_body["maxLength"], key["schema"]["maxLength"]);
    // One value is bounded by ±1e15; totals (usage, balances) add many and are not.
    assert_eq!(schemas["Quantity"]["maximum"], 1e15);
    let totals = [
        (&schemas["LimitState"], "used"),
        (&schemas["LimitState"], "remaining"),
        (&schemas["BalanceView"], "currentBalance"),
        (&schemas["Transaction"]["allOf"][1], "balanceAfter"),
    ];
    for (schema, field) in totals {
        let property = &schema["properties"][field];
        assert!(property.is_object(), "{field}");
        assert!(
            property.get("maximum").is_none(),
            "{schema}.{field}: {property}"
        );
        assert!(
            property.get("$ref").is_none(),
            "{schema}.{field}: {property}"
        );
    }
    assert!(document["components"]["securitySchemes"]["bearer"].is_object());
    app.call_as(None, axum::http::Method::GET, "/v1/openapi.json", None)
        .await
        .assert_error(401, "missing_api_key");
}

/// A node that serves one API request at a time, and a consume whose body is held back.
async fn one_place_and_a_gated_consume() -> (TestApp, GatedRequest) {
    let limits = quotagate::http::HttpLimits {
        max_in_flight: 1,
        ..Default::default()
    };
    let app = TestApp::memory().await.with_http_limits(limits);
    let body = json!({"customerId": "slow", "eventType": "llm"});
    (app, gated_post("/v1/limits/consume", &body, &[]))
}

/// The node's own protection: with its API requests in flight at the cap, the next one is
/// answered 429 at once, while health, readiness and metrics still answer.
#[tokio::test]
async fn a_node_at_its_in_flight_cap_refuses_with_429_and_stays_observable() {
    use tower::ServiceExt;

    // A consume whose body has not arrived holds the only place.
    let (app, gated) = one_place_and_a_gated_consume().await;
    let slow = tokio::spawn(app.router.clone().oneshot(gated.request));
    gated.reading.await.unwrap();
    app.get("/v1/meters")
        .await
        .assert_error(429, "rate_limit_exceeded");
    let refused = app.get("/v1/meters").await;
    assert_eq!(refused.header("retry-after"), Some("1"));
    for path in ["/healthz", "/readyz"] {
        app.get(path).await.assert_status(200);
    }
    let (status, _, _) = app.get_text("/metrics").await;
    assert_eq!(status, 200);

    gated.release.send(()).unwrap();
    assert_eq!(slow.await.unwrap().unwrap().status(), 200);
    app.get("/v1/meters").await.assert_status(200);
}

/// A client that never finishes sending its body is answered 408 once the body timeout has
/// passed, and its place under the in-flight cap is free again. Time is paused: tokio moves it
/// on whenever nothing else can run, so the test waits for no real time.
#[tokio::test(start_paused = true)]
async fn a_body_that_never_arrives_times_out_and_frees_its_place() {
    use std::time::Duration;

    use quotagate::http::extract::BODY_TIMEOUT;

    let (app, gated) = one_place_and_a_gated_consume().await;
    let _body_held_back = gated.release;
    let started = tokio::time::Instant::now();
    let answer = tokio::time::timeout(2 * BODY_TIMEOUT, app.send(gated.request))
        .await
        .expect("the gateway never answered");
    answer.assert_error(408, "request_timeout");
    let waited = started.elapsed();
    assert!(
        waited >= BODY_TIMEOUT && waited < BODY_TIMEOUT + Duration::from_secs(1),
        "answered after {waited:?}"
    );
    app.get("/v1/meters").await.assert_status(200);
}
