//! Webhook endpoints and alert delivery, with a real HTTP receiver on loopback.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, StatusCode};
use chrono::TimeDelta;
use serde_json::{Value, json};

use crate::common::{ADMIN_KEY, GatewayProcess, TestApp, shared_redis, unique_prefix};
use crate::every_store;

/// What the receiver saw: one entry per request.
#[derive(Debug, Clone)]
pub struct Received {
    pub headers: HashMap<String, String>,
    pub body: String,
}

impl Received {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap()
    }
}

/// A webhook receiver on a free loopback port that answers the queued statuses, then 200.
#[derive(Clone, Default)]
pub struct Receiver {
    seen: Arc<Mutex<Vec<Received>>>,
    statuses: Arc<Mutex<Vec<u16>>>,
    always: Arc<Mutex<Option<u16>>>,
    pub url: String,
}

impl Receiver {
    pub async fn start() -> Receiver {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut receiver = Receiver {
            url: format!("http://{}/hook", listener.local_addr().unwrap()),
            ..Default::default()
        };
        let state = receiver.clone();
        let app = axum::Router::new().route(
            "/hook",
            axum::routing::post(move |headers: HeaderMap, body: String| {
                let state = state.clone();
                async move {
                    let headers = headers
                        .iter()
                        .map(|(k, v)| {
                            (k.as_str().to_string(), v.to_str().unwrap_or("").to_string())
                        })
                        .collect();
                    state.seen.lock().unwrap().push(Received { headers, body });
                    let queued = {
                        let mut statuses = state.statuses.lock().unwrap();
                        (!statuses.is_empty()).then(|| statuses.remove(0))
                    };
                    let status = queued.or(*state.always.lock().unwrap()).unwrap_or(200);
                    StatusCode::from_u16(status).unwrap()
                }
            }),
        );
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        receiver.url = receiver.url.clone();
        receiver
    }

    pub fn answer_next(&self, statuses: &[u16]) {
        self.statuses.lock().unwrap().extend_from_slice(statuses);
    }

    pub fn always_answer(&self, status: u16) {
        *self.always.lock().unwrap() = Some(status);
    }

    pub fn seen(&self) -> Vec<Received> {
        self.seen.lock().unwrap().clone()
    }

    /// Waits (polling) until at least `n` requests arrived.
    pub async fn wait_for(&self, n: usize, limit: Duration) -> Vec<Received> {
        let started = Instant::now();
        loop {
            let seen = self.seen();
            if seen.len() >= n {
                return seen;
            }
            assert!(
                started.elapsed() < limit,
                "expected {n} deliveries, got {}: {seen:?}",
                seen.len()
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
}

/// The Standard Webhooks signature computed by Python's hmac module: an implementation
/// independent of the gateway's.
fn python_signature(secret: &str, id: &str, timestamp: &str, body: &str) -> String {
    let script = "import base64, hashlib, hmac, sys\n\
        secret, msg_id, ts, body = sys.argv[1:5]\n\
        key = base64.b64decode(secret.split('_', 1)[1])\n\
        digest = hmac.new(key, f'{msg_id}.{ts}.{body}'.encode(), hashlib.sha256).digest()\n\
        print('v1,' + base64.b64encode(digest).decode())";
    let output = std::process::Command::new("python3")
        .args(["-c", script, secret, id, timestamp, body])
        .output()
        .expect("python3");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap().trim().to_string()
}

fn verify(received: &Received, secret: &str) {
    let id = &received.headers["webhook-id"];
    let timestamp = &received.headers["webhook-timestamp"];
    let expected = python_signature(secret, id, timestamp, &received.body);
    assert_eq!(received.headers["webhook-signature"], expected);
    assert_eq!(
        received.json()["id"],
        id.as_str(),
        "webhook-id is the message id"
    );
    let age = chrono::Utc::now().timestamp() - timestamp.parse::<i64>().unwrap();
    assert!(age.abs() < 120, "webhook-timestamp is unix seconds");
}

async fn webhook(app: &TestApp, url: &str) -> (String, String) {
    let created = app
        .post("/v1/webhooks", json!({"url": url, "description": "alerts"}))
        .await;
    let body = created.assert_status(201);
    (
        body["id"].as_str().unwrap().to_string(),
        body["secret"].as_str().unwrap().to_string(),
    )
}

every_store!(
    endpoints_api,
    thresholds_fire_once_per_window_signed,
    alerts_carry_usage_with_every_digit,
    failed_deliveries_retry_with_the_same_id,
    endpoints_disable_after_twenty_failures,
    retries_count_once_toward_disabling,
    redeliver_sends_the_message_again,
    the_sweep_delivers_what_a_dead_node_left,
);

/// A node that dies between counting a crossing and handing its customer's outbox over
/// leaves the message there; another node's periodic sweep delivers it.
async fn the_sweep_delivers_what_a_dead_node_left(app: TestApp) {
    let receiver = Receiver::start().await;
    webhook(&app, &receiver.url).await;
    let meter = app
        .post(
            "/v1/meters",
            json!({"name": "t", "aggregation": "sum", "field": "values.tokens"}),
        )
        .await;
    app.post(
        "/v1/limits",
        json!({"name": "d", "meterId": meter.body["id"], "limitValue": 10, "period": "day"}),
    )
    .await
    .assert_status(201);
    let dead = app.node_that_dies_after_counting().await;
    let counted = dead
        .post(
            "/v1/events/record",
            json!({"customerId": "only-seen-in-events", "eventType": "llm", "values": {"tokens": 10}}),
        )
        .await;
    assert_eq!(counted.assert_status(200)["limits"][0]["exceeded"], true);
    // The settings sweep every second; delivery is the sweep's doing or nobody's.
    let seen = receiver.wait_for(1, Duration::from_secs(10)).await;
    assert_eq!(seen[0].json()["type"], "limit.exceeded");
    assert_eq!(seen[0].json()["data"]["customerId"], "only-seen-in-events");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(receiver.seen().len(), 1, "handed over once, delivered once");
}

/// A sweep reads a thousand outboxes a second, so its load stays small with many customers:
/// 2,101 customers take three steps, two seconds (of paused time), and the last one's
/// stranded alert is handed over all the same.
#[tokio::test(start_paused = true)]
async fn a_sweep_of_many_customers_reads_a_thousand_outboxes_a_second() {
    // The app's own sweep waits a day: the test runs the sweep itself.
    let settings = quotagate::service::Settings {
        alert_sweep: Duration::from_secs(86_400),
        ..crate::common::settings()
    };
    let store = Arc::new(quotagate::storage::memory::MemoryStore::new());
    let app = TestApp::on(store, settings).await;
    for i in 0..2100 {
        app.post("/v1/customers", json!({"id": format!("c{i:04}")}))
            .await
            .assert_status(201);
    }
    // Sorts after every other customer: the sweep reaches it in its third step.
    app.post("/v1/customers", json!({"id": "z-stranded"}))
        .await
        .assert_status(201);
    let meter = app.tokens_meter().await;
    app.limit(json!({"name": "d", "meterId": meter, "limitValue": 10, "period": "day"}))
        .await;
    let dead = app.node_that_dies_after_counting().await;
    dead.post(
        "/v1/events/record",
        json!({"customerId": "z-stranded", "eventType": "llm", "values": {"tokens": 10}}),
    )
    .await
    .assert_status(200);
    let stranded = quotagate::domain::ids::CustomerId::parse("id", "z-stranded").unwrap();
    assert_eq!(app.store.outbox(&stranded).await.unwrap().len(), 1);

    let started = tokio::time::Instant::now();
    assert_eq!(app.gateway.sweep_outboxes().await.unwrap(), 1);
    let took = started.elapsed();
    assert!(
        took >= Duration::from_secs(2) && took < Duration::from_secs(3),
        "{took:?}"
    );
    assert!(app.store.outbox(&stranded).await.unwrap().is_empty());
}

async fn endpoints_api(app: TestApp) {
    let created = app
        .post(
            "/v1/webhooks",
            json!({"url": "https://example.com/hook", "eventTypes": ["limit.exceeded"]}),
        )
        .await;
    let body = created.assert_status(201).clone();
    let id = body["id"].as_str().unwrap().to_string();
    assert!(id.starts_with("wh_"));
    assert!(body["secret"].as_str().unwrap().starts_with("whsec_"));
    assert_eq!(body["enabled"], true);
    assert_eq!(body["eventTypes"], json!(["limit.exceeded"]));
    let fetched = app.get(&format!("/v1/webhooks/{id}")).await;
    assert!(
        fetched.assert_status(200).get("secret").is_none(),
        "the secret is shown only at creation"
    );
    let listed = app.get("/v1/webhooks").await;
    assert_eq!(listed.body["data"].as_array().unwrap().len(), 1);
    assert!(!listed.body.to_string().contains("whsec_"));
    let updated = app
        .put(
            &format!("/v1/webhooks/{id}"),
            json!({"enabled": false, "eventTypes": []}),
        )
        .await;
    assert_eq!(updated.assert_status(200)["enabled"], false);
    app.post("/v1/webhooks", json!({"url": "ftp://example.com"}))
        .await
        .assert_field_error("invalid_field_value", "url");
    app.post("/v1/webhooks", json!({"url": "not a url"}))
        .await
        .assert_field_error("invalid_field_value", "url");
    app.post(
        "/v1/webhooks",
        json!({"url": "https://e.com", "eventTypes": ["nope"]}),
    )
    .await
    .assert_field_error("invalid_field_value", "eventTypes[0]");
    app.post(
        "/v1/webhooks",
        json!({"url": "https://e.com", "secret": "mine"}),
    )
    .await
    .assert_field_error("invalid_field_value", "secret");
    app.post("/v1/webhooks", json!({}))
        .await
        .assert_field_error("missing_required_field", "url");
    app.put(&format!("/v1/webhooks/{id}"), json!({"url": "gopher://x"}))
        .await
        .assert_field_error("invalid_field_value", "url");
    app.get("/v1/webhooks/wh_00000000000000000000000000")
        .await
        .assert_error(404, "webhook_not_found");
    app.get("/v1/webhooks/nope")
        .await
        .assert_error(404, "webhook_not_found");
    app.post("/v1/webhooks/wh_00000000000000000000000000/test", json!({}))
        .await
        .assert_error(404, "webhook_not_found");
    app.get("/v1/webhooks/nope/deliveries")
        .await
        .assert_error(404, "webhook_not_found");
    app.get(&format!("/v1/webhooks/{id}/deliveries?limit=0"))
        .await
        .assert_field_error("invalid_field_value", "limit");
    app.post(
        &format!("/v1/webhooks/{id}/deliveries/dlv_00000000000000000000000000/redeliver"),
        json!({}),
    )
    .await
    .assert_error(404, "not_found");
    let deleted = app.delete(&format!("/v1/webhooks/{id}")).await;
    assert_eq!(
        deleted.assert_status(200),
        &json!({"id": id, "deleted": true})
    );
    app.delete(&format!("/v1/webhooks/{id}"))
        .await
        .assert_error(404, "webhook_not_found");
}

async fn thresholds_fire_once_per_window_signed(app: TestApp) {
    let receiver = Receiver::start().await;
    let (_, secret) = webhook(&app, &receiver.url).await;
    let meter = app.tokens_meter().await;
    let limit = app
        .post("/v1/limits", json!({"name": "daily", "meterId": meter, "limitValue": 100, "period": "day", "alertThresholds": [50, 80]}))
        .await;
    let limit_id = limit.body["id"].as_str().unwrap().to_string();
    let record = |n: i64| {
        let app = &app;
        async move {
            app.post(
                "/v1/events/record",
                json!({"customerId": "alerted", "eventType": "llm", "values": {"tokens": n}}),
            )
            .await
            .assert_status(200);
        }
    };
    record(40).await;
    record(20).await; // 60: crosses 50
    record(30).await; // 90: crosses 80
    record(15).await; // 105: exceeded (100)
    record(50).await; // nothing new in this window
    let seen = receiver.wait_for(3, Duration::from_secs(10)).await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    let seen_after = receiver.seen();
    assert_eq!(
        seen_after.len(),
        3,
        "one message per threshold per window: {seen_after:?}"
    );
    let mut by_threshold: Vec<(i64, Value)> = seen
        .iter()
        .map(|r| (r.json()["data"]["threshold"].as_i64().unwrap(), r.json()))
        .collect();
    by_threshold.sort_by_key(|(t, _)| *t);
    let types: Vec<&str> = by_threshold
        .iter()
        .map(|(_, m)| m["type"].as_str().unwrap())
        .collect();
    assert_eq!(
        by_threshold.iter().map(|(t, _)| *t).collect::<Vec<_>>(),
        vec![50, 80, 100]
    );
    assert_eq!(
        types,
        vec![
            "limit.threshold_reached",
            "limit.threshold_reached",
            "limit.exceeded"
        ]
    );
    let (_, fifty) = &by_threshold[0];
    assert!(fifty["id"].as_str().unwrap().starts_with("msg_"));
    assert!(fifty["createdAt"].as_str().unwrap().ends_with('Z'));
    let data = &fifty["data"];
    assert_eq!(data["customerId"], "alerted");
    assert_eq!(data["limitId"], limit_id.as_str());
    assert_eq!(data["limitName"], "daily");
    assert_eq!(data["meterId"], meter.as_str());
    assert_eq!(data["limit"], 100);
    assert_eq!(data["currentUsage"], 60);
    assert_eq!(data["percentage"], 60);
    assert_eq!(data["remaining"], 40);
    assert_eq!(data["period"], "day");
    assert!(data["windowStart"].as_str().unwrap() < data["windowEnd"].as_str().unwrap());
    assert_eq!(by_threshold[2].1["data"]["currentUsage"], 105);
    for received in &seen {
        verify(received, &secret);
        assert_eq!(received.headers["content-type"], "application/json");
    }
}

/// A crossing at a usage with more than 14 significant digits reports it as counted.
async fn alerts_carry_usage_with_every_digit(app: TestApp) {
    let receiver = Receiver::start().await;
    webhook(&app, &receiver.url).await;
    let meter = app.tokens_meter().await;
    app.post(
        "/v1/limits",
        json!({"name": "daily", "meterId": meter, "limitValue": 100000.5, "period": "day"}),
    )
    .await
    .assert_status(201);
    let usage = 123_456.123_456_789;
    app.post(
        "/v1/events/record",
        json!({"customerId": "digits", "eventType": "llm", "values": {"tokens": usage}}),
    )
    .await
    .assert_status(200);
    let seen = receiver.wait_for(1, Duration::from_secs(10)).await;
    let data = &seen[0].json()["data"];
    assert_eq!(data["currentUsage"], usage);
    assert_eq!(data["limit"], 100000.5);
}

async fn failed_deliveries_retry_with_the_same_id(app: TestApp) {
    let receiver = Receiver::start().await;
    receiver.answer_next(&[500]);
    let (id, secret) = webhook(&app, &receiver.url).await;
    let meter = app.tokens_meter().await;
    app.post(
        "/v1/limits",
        json!({"name": "d", "meterId": meter, "limitValue": 10, "period": "day"}),
    )
    .await
    .assert_status(201);
    app.post(
        "/v1/events/record",
        json!({"customerId": "retry", "eventType": "llm", "values": {"tokens": 10}}),
    )
    .await
    .assert_status(200);
    let first = receiver.wait_for(1, Duration::from_secs(10)).await;
    // The failed attempt is logged with its next attempt time.
    let started = Instant::now();
    let pending = loop {
        let log = app.get(&format!("/v1/webhooks/{id}/deliveries")).await;
        if let Some(attempt) = log.body["data"].as_array().and_then(|d| d.first()).cloned() {
            break attempt;
        }
        assert!(started.elapsed() < Duration::from_secs(5));
        tokio::time::sleep(Duration::from_millis(25)).await;
    };
    assert_eq!(pending["status"], "pending");
    assert_eq!(pending["attempt"], 1);
    assert_eq!(pending["responseStatus"], 500);
    assert!(pending["nextAttemptAt"].is_string());
    assert!(pending["id"].as_str().unwrap().starts_with("dlv_"));
    // Five seconds later (the clock moves; nobody sleeps) the retry goes out, same id.
    app.gateway.clock().shift(TimeDelta::seconds(6));
    let both = receiver.wait_for(2, Duration::from_secs(10)).await;
    assert_eq!(
        both[1].headers["webhook-id"],
        first[0].headers["webhook-id"]
    );
    verify(&both[1], &secret);
    let started = Instant::now();
    loop {
        let log = app.get(&format!("/v1/webhooks/{id}/deliveries")).await;
        let data = log.body["data"].as_array().unwrap();
        if data.len() == 2 {
            assert_eq!(data[0]["status"], "succeeded");
            assert_eq!(data[0]["attempt"], 2);
            assert_eq!(data[0]["messageId"], data[1]["messageId"]);
            // The first attempt was pending while its retry was due; now it has failed.
            assert_eq!(data[1]["status"], "failed", "{data:?}");
            assert_eq!(data[1]["id"], pending["id"]);
            assert_eq!(data[1]["nextAttemptAt"], pending["nextAttemptAt"]);
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(5));
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

async fn endpoints_disable_after_twenty_failures(app: TestApp) {
    let receiver = Receiver::start().await;
    receiver.always_answer(503);
    let (id, secret) = webhook(&app, &receiver.url).await;
    for n in 1..=20 {
        let ping = app
            .post(&format!("/v1/webhooks/{id}/test"), json!({}))
            .await;
        let body = ping.assert_status(200);
        assert_eq!(body["status"], "failed");
        assert_eq!(body["eventType"], "ping");
        assert_eq!(body["responseStatus"], 503);
        let enabled = app.get(&format!("/v1/webhooks/{id}")).await.body["enabled"].clone();
        assert_eq!(enabled, json!(n < 20), "after {n} failures");
    }
    verify(&receiver.seen()[0], &secret);
    // Enabled again, the endpoint starts afresh: its next failure does not disable it.
    app.put(&format!("/v1/webhooks/{id}"), json!({"enabled": true}))
        .await
        .assert_status(200);
    let ping = app
        .post(&format!("/v1/webhooks/{id}/test"), json!({}))
        .await;
    assert_eq!(ping.assert_status(200)["status"], "failed");
    let enabled = app.get(&format!("/v1/webhooks/{id}")).await.body["enabled"].clone();
    assert_eq!(enabled, json!(true), "one failure after re-enabling");
    receiver.always_answer(200);
    assert_eq!(
        app.post(&format!("/v1/webhooks/{id}/test"), json!({}))
            .await
            .body["status"],
        "succeeded"
    );
    let log = app
        .get(&format!("/v1/webhooks/{id}/deliveries?limit=5"))
        .await;
    assert_eq!(log.body["data"].as_array().unwrap().len(), 5);
    assert_eq!(log.body["hasMore"], true);
    let cursor = log.body["nextCursor"].as_str().unwrap();
    let next = app
        .get(&format!(
            "/v1/webhooks/{id}/deliveries?limit=100&cursor={cursor}"
        ))
        .await;
    assert_eq!(next.body["data"].as_array().unwrap().len(), 17);
}

/// An endpoint is disabled after 20 failed *deliveries* (a message to it) in a row: a message
/// retried over and over while the receiver is down counts once, so a short outage during a
/// burst of alerts does not disable it.
async fn retries_count_once_toward_disabling(app: TestApp) {
    let receiver = Receiver::start().await;
    receiver.always_answer(503);
    let (id, _) = webhook(&app, &receiver.url).await;
    let meter = app.tokens_meter().await;
    app.post(
        "/v1/limits",
        json!({"name": "d", "meterId": meter, "limitValue": 10, "period": "day", "alertThresholds": [50]}),
    )
    .await
    .assert_status(201);
    // Two messages: 50% reached, and exceeded.
    app.post(
        "/v1/events/record",
        json!({"customerId": "down", "eventType": "llm", "values": {"tokens": 10}}),
    )
    .await
    .assert_status(200);
    // Each attempt is awaited until it is logged, hence rescheduled, before the clock moves on:
    // a retry scheduled after the move would be due a whole delay later.
    let attempts_logged = |n: usize| {
        let app = &app;
        let path = format!("/v1/webhooks/{id}/deliveries?limit=100");
        async move {
            let started = Instant::now();
            while app.get(&path).await.body["data"].as_array().unwrap().len() < n {
                assert!(started.elapsed() < Duration::from_secs(10), "{n} attempts");
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
        }
    };
    attempts_logged(2).await;
    // Ten retries of each (the clock moves past each delay; nobody sleeps): 22 failed attempts.
    let delays = [5, 30, 120, 600, 1800, 3600, 7200, 7200, 7200, 7200];
    for (step, delay) in delays.into_iter().enumerate() {
        app.gateway.clock().shift(TimeDelta::seconds(delay + 1));
        attempts_logged(2 * (step + 2)).await;
    }
    assert_eq!(receiver.seen().len(), 22);
    let path = format!("/v1/webhooks/{id}");
    let enabled = app.get(&path).await.body["enabled"].clone();
    assert_eq!(enabled, json!(true), "22 attempts, 2 deliveries");
    // Each new delivery that fails counts: 18 more make 20.
    for n in 1..=18 {
        app.post(&format!("/v1/webhooks/{id}/test"), json!({}))
            .await
            .assert_status(200);
        let enabled = app.get(&path).await.body["enabled"].clone();
        assert_eq!(enabled, json!(n < 18), "after {} deliveries", n + 2);
    }
}

/// A node that has not heard of an endpoint yet (created on another node less than a poll
/// ago) asks storage before it gives a delivery to it up.
#[tokio::test]
async fn a_node_yet_to_hear_of_an_endpoint_still_delivers_to_it() {
    let store: std::sync::Arc<dyn quotagate::storage::Store> =
        std::sync::Arc::new(quotagate::storage::memory::MemoryStore::new());
    let settings = crate::common::settings;
    let first = TestApp::without_background(std::sync::Arc::clone(&store), settings()).await;
    let late = TestApp::without_background(store, settings()).await;
    let receiver = Receiver::start().await;
    let (id, secret) = webhook(&first, &receiver.url).await;
    let meter = first.tokens_meter().await;
    first
        .limit(json!({"name": "d", "meterId": meter, "limitValue": 1, "period": "day"}))
        .await;
    first
        .post(
            "/v1/events/record",
            json!({"customerId": "late", "eventType": "llm", "values": {"tokens": 1}}),
        )
        .await
        .assert_status(200);
    let customer = quotagate::domain::ids::CustomerId::parse("customerId", "late").unwrap();
    assert_eq!(first.gateway.hand_over_outbox(&customer).await.unwrap(), 1);
    assert_eq!(late.gateway.deliver_due().await.unwrap(), 1);
    let seen = receiver.wait_for(1, Duration::from_secs(10)).await;
    verify(&seen[0], &secret);
    let log = first.get(&format!("/v1/webhooks/{id}/deliveries")).await;
    assert_eq!(log.body["data"][0]["status"], "succeeded");
}

async fn redeliver_sends_the_message_again(app: TestApp) {
    let receiver = Receiver::start().await;
    let (id, _) = webhook(&app, &receiver.url).await;
    let meter = app.tokens_meter().await;
    app.post(
        "/v1/limits",
        json!({"name": "d", "meterId": meter, "limitValue": 1, "period": "hour"}),
    )
    .await
    .assert_status(201);
    app.post(
        "/v1/events/record",
        json!({"customerId": "again", "eventType": "llm", "values": {"tokens": 1}}),
    )
    .await;
    let first = receiver.wait_for(1, Duration::from_secs(10)).await;
    let started = Instant::now();
    let delivery = loop {
        let log = app.get(&format!("/v1/webhooks/{id}/deliveries")).await;
        if let Some(attempt) = log.body["data"].as_array().and_then(|d| d.first()).cloned() {
            break attempt;
        }
        assert!(started.elapsed() < Duration::from_secs(5));
        tokio::time::sleep(Duration::from_millis(25)).await;
    };
    let redelivered = app
        .post(
            &format!(
                "/v1/webhooks/{id}/deliveries/{}/redeliver",
                delivery["id"].as_str().unwrap()
            ),
            json!({}),
        )
        .await;
    assert_eq!(
        redelivered.assert_status(200)["messageId"],
        delivery["messageId"]
    );
    let both = receiver.wait_for(2, Duration::from_secs(10)).await;
    assert_eq!(
        both[1].headers["webhook-id"],
        first[0].headers["webhook-id"]
    );
}

fn gateway_envs(prefix: &str) -> Vec<(&'static str, String)> {
    vec![
        ("QUOTAGATE_REDIS_URL", shared_redis().url()),
        ("QUOTAGATE_KEY_PREFIX", prefix.to_string()),
        ("QUOTAGATE_ADMIN_KEY", ADMIN_KEY.to_string()),
        ("QUOTAGATE_ALERT_SWEEP_SECONDS", "1".to_string()),
    ]
}

fn start(envs: &[(&'static str, String)]) -> GatewayProcess {
    let pairs: Vec<(&str, &str)> = envs.iter().map(|(k, v)| (*k, v.as_str())).collect();
    GatewayProcess::start(&pairs)
}

async fn post(client: &reqwest::Client, url: String, body: Value) -> Value {
    let response = client
        .post(url)
        .bearer_auth(ADMIN_KEY)
        .json(&body)
        .send()
        .await
        .unwrap();
    response.json().await.unwrap_or(Value::Null)
}

/// Both nodes must know the limit (config reaches replicas within about a second).
async fn until_known(client: &reqwest::Client, nodes: &[&GatewayProcess], customer: &str) {
    for node in nodes {
        let started = Instant::now();
        while post(
            client,
            node.url("/v1/limits/check"),
            json!({"customerId": customer}),
        )
        .await["limits"]
            .as_array()
            .is_none_or(|l| l.is_empty())
        {
            assert!(started.elapsed() < Duration::from_secs(3));
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_replicas_fire_each_threshold_once() {
    let receiver = Receiver::start().await;
    let envs = gateway_envs(&unique_prefix());
    let (a, b) = (start(&envs), start(&envs));
    let client = reqwest::Client::new();
    post(&client, a.url("/v1/webhooks"), json!({"url": receiver.url})).await;
    let meter = post(
        &client,
        a.url("/v1/meters"),
        json!({"name": "t", "aggregation": "sum", "field": "values.tokens"}),
    )
    .await;
    post(&client, a.url("/v1/limits"), json!({"name": "d", "meterId": meter["id"], "limitValue": 100, "period": "day", "alertThresholds": [50, 80]})).await;
    until_known(&client, &[&a, &b], "race").await;
    // Webhooks too: wait until B would fan a message out to the endpoint.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let mut tasks = Vec::new();
    for i in 0..200 {
        let client = client.clone();
        let url = if i % 2 == 0 {
            a.url("/v1/events/record")
        } else {
            b.url("/v1/events/record")
        };
        tasks.push(tokio::spawn(async move {
            post(
                &client,
                url,
                json!({"customerId": "race", "eventType": "llm", "values": {"tokens": 1}}),
            )
            .await
        }));
    }
    for task in tasks {
        assert_eq!(task.await.unwrap()["recorded"], true);
    }
    receiver.wait_for(3, Duration::from_secs(10)).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let seen = receiver.seen();
    let mut ids: Vec<String> = seen
        .iter()
        .map(|r| r.headers["webhook-id"].clone())
        .collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 3, "50, 80 and exceeded, once each: {seen:?}");
    assert_eq!(seen.len(), 3, "each delivered once: {seen:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_crossing_survives_the_node_that_saw_it() {
    let receiver = Receiver::start().await;
    let envs = gateway_envs(&unique_prefix());
    let (mut a, b) = (start(&envs), start(&envs));
    let client = reqwest::Client::new();
    post(&client, b.url("/v1/webhooks"), json!({"url": receiver.url})).await;
    let meter = post(
        &client,
        b.url("/v1/meters"),
        json!({"name": "t", "aggregation": "sum", "field": "values.tokens"}),
    )
    .await;
    post(
        &client,
        b.url("/v1/limits"),
        json!({"name": "d", "meterId": meter["id"], "limitValue": 10, "period": "day"}),
    )
    .await;
    until_known(&client, &[&a, &b], "doomed").await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    // A counts the crossing and dies at once (SIGKILL, no graceful anything).
    let answer = post(
        &client,
        a.url("/v1/events/record"),
        json!({"customerId": "doomed", "eventType": "llm", "values": {"tokens": 10}}),
    )
    .await;
    assert_eq!(answer["limits"][0]["exceeded"], true);
    a.kill();
    // B delivers it: from the shared schedule, or from A's outbox by its sweep.
    let seen = receiver.wait_for(1, Duration::from_secs(10)).await;
    assert_eq!(seen[0].json()["type"], "limit.exceeded");
    assert_eq!(seen[0].json()["data"]["customerId"], "doomed");
}

/// An endpoint saved while private destinations were allowed is refused at delivery once
/// they are not: nothing is posted, and the attempt says why.
#[tokio::test]
async fn a_private_endpoint_saved_earlier_is_refused_at_delivery() {
    let store: Arc<dyn quotagate::storage::Store> =
        Arc::new(quotagate::storage::memory::MemoryStore::new());
    let receiver = Receiver::start().await;
    let open = TestApp::on(Arc::clone(&store), crate::common::settings()).await;
    let created = open
        .post("/v1/webhooks", json!({"url": receiver.url}))
        .await;
    let id = created.assert_status(201)["id"]
        .as_str()
        .unwrap()
        .to_string();

    let mut strict = crate::common::settings();
    strict.webhook_destinations = quotagate::domain::webhook::Destinations::PublicOnly;
    let guarded = TestApp::on(store, strict).await;
    let ping = guarded
        .post(&format!("/v1/webhooks/{id}/test"), json!({}))
        .await;
    let attempt = ping.assert_status(200);
    assert_eq!(attempt["status"], "failed");
    assert_eq!(attempt["responseStatus"], Value::Null);
    let error = attempt["error"].as_str().unwrap();
    assert!(error.contains("loopback or private"), "{error}");
    assert!(receiver.seen().is_empty(), "nothing was posted");

    // The gateway that allows them still delivers.
    let ping = open
        .post(&format!("/v1/webhooks/{id}/test"), json!({}))
        .await;
    assert_eq!(ping.assert_status(200)["status"], "succeeded");
    assert_eq!(receiver.seen().len(), 1);
}
