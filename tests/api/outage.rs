//! Storage outages against a real redis-server that the test hangs, kills and restarts.

use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{Method, Request};
use serde_json::{Value, json};

use crate::common::{
    ADMIN_KEY, CHECK_ALLOWED, CHECK_REFUSED, CONSUME_ALLOWED, CONSUME_REFUSED, HoldingProxy,
    RESERVE_ALLOWED, RESERVE_REFUSED, RedisServer, TestApp, TestResponse, keys,
    redis_store_with_timeout, settings, shared_redis, state, unique_prefix,
};

/// A refusal by a `closed` fail mode: the outage, not a full window, is the cause, so it says
/// to retry when a `503 storage_unavailable` does, and gives no `RateLimit-*` headers (the
/// room left is unknown).
fn assert_degraded_refusal(answer: &TestResponse, route_keys: &[&str]) {
    let body = answer.assert_status(200);
    assert_eq!(keys(body), route_keys, "{body}");
    assert_eq!(
        (&body["allowed"], &body["degraded"]),
        (&json!(false), &json!(true))
    );
    assert_eq!(body["retryAfter"], 1, "{body}");
    assert_eq!(answer.header("retry-after"), Some("1"));
    for header in ["ratelimit-limit", "ratelimit-remaining", "ratelimit-reset"] {
        assert_eq!(answer.header(header), None, "{header}");
    }
}

/// An answer allowed by an `open` fail mode: nothing was stored, nothing to wait for.
fn assert_degraded_allowed(answer: &TestResponse, route_keys: &[&str]) {
    let body = answer.assert_status(200);
    assert_eq!(keys(body), route_keys, "{body}");
    assert_eq!(
        (&body["allowed"], &body["degraded"]),
        (&json!(true), &json!(true))
    );
    assert_eq!(answer.header("retry-after"), None);
    for key in ["eventId", "reservation"] {
        assert_eq!(body.get(key).unwrap_or(&Value::Null), &Value::Null, "{key}");
    }
}

async fn timed(
    app: &TestApp,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> (crate::common::TestResponse, Duration) {
    let started = Instant::now();
    let response = app.call(method, path, body).await;
    (response, started.elapsed())
}

fn redis_pid(port: u16) -> String {
    let output = std::process::Command::new("redis-cli")
        .args(["-p", &port.to_string(), "info", "server"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .find_map(|line| line.strip_prefix("process_id:"))
        .unwrap()
        .trim()
        .to_string()
}

fn signal(pid: &str, signal: &str) {
    assert!(
        std::process::Command::new("kill")
            .args([signal, pid])
            .status()
            .unwrap()
            .success()
    );
}

/// A redis-server hung with SIGSTOP until this is dropped, so a failing assertion reports
/// instead of leaving the test stuck on a stopped server.
struct Hung(String);

impl Hung {
    fn stop(pid: String) -> Hung {
        signal(&pid, "-STOP");
        Hung(pid)
    }
}

impl Drop for Hung {
    fn drop(&mut self) {
        signal(&self.0, "-CONT");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outages_degrade_by_fail_mode_and_recover() {
    // Append-only persistence keeps the data across the restart below; the script cache is
    // never persisted, so the restarted server answers NOSCRIPT.
    let dir = std::env::temp_dir().join(format!("qg-outage-{}", unique_prefix()));
    std::fs::create_dir_all(&dir).unwrap();
    let dir_arg = format!("--dir {}", dir.display());
    let extra = ["--appendonly yes", "--appendfsync always", dir_arg.as_str()];
    let port = crate::common::free_port();
    let mut server = RedisServer::start_on(port, &extra);
    let store =
        redis_store_with_timeout(&server.url(), &unique_prefix(), Duration::from_millis(50)).await;
    let app = TestApp::on(store, settings()).await;

    let meter = app.tokens_meter().await;
    for (customer, mode) in [("c-open", "open"), ("c-closed", "closed")] {
        app.post("/v1/limits", json!({"name": mode, "meterId": meter, "limitValue": 100, "period": "day", "customerId": customer, "failMode": mode}))
            .await
            .assert_status(201);
    }
    let record = |key: &str| json!({"customerId": "c-open", "eventType": "llm", "values": {"tokens": 1}, "idempotencyKey": key});
    app.post("/v1/events/record", record("k1"))
        .await
        .assert_status(200);
    let balance = app
        .post(
            "/v1/balances",
            json!({"customerId": "c-closed", "name": "prepaid", "initialBalance": 10}),
        )
        .await;
    let balance_path = format!(
        "/v1/balances/{}",
        balance.assert_status(201)["id"].as_str().unwrap()
    );
    let debit = json!({"customerId": "c-closed", "name": "prepaid", "amount": 1});

    // 1. Redis hangs (SIGSTOP): every call meets its deadline instead of waiting.
    let hung = Hung::stop(redis_pid(port));
    // Readiness first, before other calls trip the circuit breaker: its own probe gives up
    // well inside the 2 s that API.md §5.4 allows. Measured in wall time, since the deadline
    // races a real socket that the kernel holds (a paused test clock would jump past it).
    let (ready, took) = timed(&app, Method::GET, "/readyz", None).await;
    ready.assert_error(503, "storage_unavailable");
    assert!(took < Duration::from_secs(1), "/readyz took {took:?}");
    // A customer this node has not cached is read with the decision's deadline too.
    let (unknown, took) = timed(
        &app,
        Method::POST,
        "/v1/limits/check",
        Some(json!({"customerId": "never-seen"})),
    )
    .await;
    assert!(took < Duration::from_millis(500), "check took {took:?}");
    assert_eq!(unknown.assert_status(200)["degraded"], true);
    for _ in 0..5 {
        let (open, took) = timed(
            &app,
            Method::POST,
            "/v1/limits/check",
            Some(json!({"customerId": "c-open"})),
        )
        .await;
        assert!(took < Duration::from_millis(500), "check took {took:?}");
        assert_degraded_allowed(&open, &CHECK_ALLOWED);
        assert_eq!(open.body["limits"][0]["used"], Value::Null);
        assert_eq!(open.body["limits"][0]["remaining"], Value::Null);
    }
    let (closed, took) = timed(
        &app,
        Method::POST,
        "/v1/limits/consume",
        Some(json!({"customerId": "c-closed", "eventType": "llm", "values": {"tokens": 1}})),
    )
    .await;
    assert!(took < Duration::from_millis(500), "consume took {took:?}");
    assert_degraded_refusal(&closed, &CONSUME_REFUSED);
    let (written, took) = timed(&app, Method::POST, "/v1/events/record", Some(record("k2"))).await;
    assert!(took < Duration::from_millis(500), "record took {took:?}");
    written.assert_error(503, "storage_unavailable");
    assert!(written.header("retry-after").is_some());
    drop(hung);

    // 2. Redis dies.
    server.kill();
    let started = Instant::now();
    for _ in 0..20 {
        let (answer, took) = timed(
            &app,
            Method::POST,
            "/v1/limits/check",
            Some(json!({"customerId": "c-closed"})),
        )
        .await;
        assert!(took < Duration::from_millis(500), "check took {took:?}");
        assert_degraded_refusal(&answer, &CHECK_REFUSED);
    }
    assert!(started.elapsed() < Duration::from_secs(5));
    // Each outcome has its keys, degraded or not (storage is down, so none
    // of these can be counted late).
    let hold = |customer: &str| json!({"customerId": customer, "eventType": "llm", "values": {"tokens": 1}});
    assert_degraded_allowed(
        &app.post("/v1/reservations", hold("c-open")).await,
        &RESERVE_ALLOWED,
    );
    assert_degraded_refusal(
        &app.post("/v1/reservations", hold("c-closed")).await,
        &RESERVE_REFUSED,
    );
    assert_degraded_allowed(
        &app.post("/v1/limits/consume", hold("c-open")).await,
        &CONSUME_ALLOWED,
    );
    app.post("/v1/events/record", record("k2"))
        .await
        .assert_error(503, "storage_unavailable");
    app.post("/v1/events/batch", json!({"events": [record("k3")]}))
        .await
        .assert_error(503, "storage_unavailable");
    app.post("/v1/balances/debit", debit.clone())
        .await
        .assert_error(503, "storage_unavailable");
    app.get(&balance_path)
        .await
        .assert_error(503, "storage_unavailable");
    let (ready, took) = timed(&app, Method::GET, "/readyz", None).await;
    ready.assert_error(503, "storage_unavailable");
    assert!(took < Duration::from_secs(2));

    // 3. Redis returns (data kept, scripts lost): the gateway recovers by itself.
    let _server = RedisServer::start_on(port, &extra);
    let recovery = Instant::now();
    loop {
        if app.get("/readyz").await.status == 200 {
            break;
        }
        assert!(
            recovery.elapsed() < Duration::from_secs(3),
            "not ready again after {:?}",
            recovery.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The client retries the failed record with the same key: counted once. The calls made
    // while Redis hung or was down wrote nothing, so the first retry that gets through is not
    // a duplicate, unless an earlier retry here wrote and only its answer came too late.
    let mut retried_in_vain = false;
    loop {
        let retry = app.post("/v1/events/record", record("k2")).await;
        if retry.status == 200 {
            if !retried_in_vain {
                assert_eq!(retry.body["duplicate"], false);
            }
            break;
        }
        retried_in_vain = true;
        assert!(recovery.elapsed() < Duration::from_secs(3), "{retry:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        app.post("/v1/events/record", record("k2")).await.body["duplicate"],
        true
    );
    let check = app
        .post("/v1/limits/check", json!({"customerId": "c-open"}))
        .await;
    assert_eq!(check.assert_status(200)["degraded"], false);
    assert_eq!(check.body["limits"][0]["used"], 2, "k1 and k2, each once");
    // The balance kept its amount, and its script is loaded again on demand.
    let debited = app.post("/v1/balances/debit", debit).await;
    assert_eq!(debited.assert_status(200)["success"], true);
    assert_eq!(app.get(&balance_path).await.body["currentBalance"], 9);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A consume whose script reaches Redis only after the call's deadline is answered degraded
/// (by fail mode) and writes nothing when it arrives: a refusal is never counted after all.
/// Its retry with the same `Idempotency-Key` then counts once.
#[tokio::test]
async fn a_consume_that_missed_its_deadline_writes_nothing_when_it_arrives() {
    let mut proxy = HoldingProxy::start(shared_redis().port, "{c:late}").await;
    let url = format!("redis://127.0.0.1:{}", proxy.port);
    let store = redis_store_with_timeout(&url, &unique_prefix(), Duration::from_millis(100)).await;
    let app = TestApp::on(store, settings()).await;
    let meter = app.tokens_meter().await;
    let daily = app
        .limit(json!({
            "name": "d", "meterId": meter, "limitValue": 100, "period": "day",
            "failMode": "closed"
        }))
        .await;
    let consume = || {
        Request::post("/v1/limits/consume")
            .header("authorization", format!("Bearer {ADMIN_KEY}"))
            .header("content-type", "application/json")
            .header("idempotency-key", "once")
            .body(Body::from(
                json!({"customerId": "late", "eventType": "llm", "values": {"tokens": 5}})
                    .to_string(),
            ))
            .unwrap()
    };

    // Another customer's consume has Redis cache the script (as it has in steady state).
    let warm = json!({"customerId": "warm", "eventType": "llm", "values": {"tokens": 1}});
    app.post("/v1/limits/consume", warm)
        .await
        .assert_status(200);
    // The script is held on its way until the answer, degraded, is in.
    let (late, ()) = tokio::join!(app.send(consume()), proxy.seen());
    let late = late.assert_status(200).clone();
    assert_eq!(late["degraded"], true, "{late}");
    assert_eq!(late["allowed"], false, "fail mode closed: {late}");
    proxy.release();
    // The check's read follows the script on the same connection: the script ran first.
    let check = app
        .post("/v1/limits/check", json!({"customerId": "late"}))
        .await;
    assert_eq!(
        state(&check.body, &daily)["used"],
        0,
        "refused, so not counted"
    );

    let retry = app.send(consume()).await;
    let retry = retry.assert_status(200);
    assert_eq!(
        (&retry["degraded"], &retry["allowed"]),
        (&json!(false), &json!(true))
    );
    let check = app
        .post("/v1/limits/check", json!({"customerId": "late"}))
        .await;
    assert_eq!(state(&check.body, &daily)["used"], 5, "counted once");
}
