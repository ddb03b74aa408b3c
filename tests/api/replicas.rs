//! Real gateway processes (real binaries, real sockets) sharing one real Redis.

use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::common::{ADMIN_KEY, GatewayProcess, HoldingProxy, shared_redis, unique_prefix};

fn start_pair() -> (GatewayProcess, GatewayProcess) {
    let url = shared_redis().url();
    let prefix = unique_prefix();
    let envs = [
        ("QUOTAGATE_REDIS_URL", url.as_str()),
        ("QUOTAGATE_KEY_PREFIX", prefix.as_str()),
        ("QUOTAGATE_ADMIN_KEY", ADMIN_KEY),
    ];
    (GatewayProcess::start(&envs), GatewayProcess::start(&envs))
}

async fn call(
    client: &reqwest::Client,
    key: &str,
    method: reqwest::Method,
    url: String,
    body: Option<Value>,
) -> (u16, Value) {
    let mut request = client.request(method, url).bearer_auth(key);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// Polls `check` until it holds, returning how long that took; fails after `limit`.
async fn eventually(limit: Duration, mut check: impl AsyncFnMut() -> bool) -> Duration {
    let started = Instant::now();
    while started.elapsed() < limit {
        if check().await {
            return started.elapsed();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("condition not met within {limit:?}");
}

/// Creates, through `node`, a sum meter of `values.tokens`; returns its ID.
async fn tokens_meter(client: &reqwest::Client, node: &GatewayProcess) -> String {
    let meter = json!({"name": "t", "aggregation": "sum", "field": "values.tokens"});
    let url = node.url("/v1/meters");
    let (status, meter) = call(client, ADMIN_KEY, reqwest::Method::POST, url, Some(meter)).await;
    assert_eq!(status, 201, "{meter}");
    meter["id"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn replicas_see_each_others_config_within_a_second() {
    let (a, b) = start_pair();
    let client = reqwest::Client::new();
    let (status, _) = call(
        &client,
        ADMIN_KEY,
        reqwest::Method::POST,
        a.url("/v1/customers"),
        Some(json!({"id": "shared"})),
    )
    .await;
    assert_eq!(status, 201);
    // Reads go to storage, so B sees the customer at once.
    let (status, body) = call(
        &client,
        ADMIN_KEY,
        reqwest::Method::GET,
        b.url("/v1/customers/shared"),
        None,
    )
    .await;
    assert_eq!((status, body["id"].as_str()), (200, Some("shared")));

    // Keys live in each node's cache: B learns about a new key through the change log.
    let (_, created) = call(
        &client,
        ADMIN_KEY,
        reqwest::Method::POST,
        a.url("/v1/api-keys"),
        Some(json!({"name": "k", "scopes": ["read"]})),
    )
    .await;
    let key = created["key"].as_str().unwrap().to_string();
    let id = created["id"].as_str().unwrap().to_string();
    let learned = eventually(Duration::from_millis(1500), async || {
        call(
            &client,
            &key,
            reqwest::Method::GET,
            b.url("/v1/meters"),
            None,
        )
        .await
        .0 == 200
    })
    .await;
    assert!(learned <= Duration::from_millis(1200), "took {learned:?}");

    // Revocation on A reaches B well within 5 s.
    let (status, _) = call(
        &client,
        ADMIN_KEY,
        reqwest::Method::DELETE,
        a.url(&format!("/v1/api-keys/{id}")),
        None,
    )
    .await;
    assert_eq!(status, 200);
    let revoked = eventually(Duration::from_secs(5), async || {
        call(
            &client,
            &key,
            reqwest::Method::GET,
            b.url("/v1/meters"),
            None,
        )
        .await
        .0 == 401
    })
    .await;
    assert!(revoked <= Duration::from_millis(1200), "took {revoked:?}");
}

#[tokio::test]
async fn sigterm_exits_cleanly() {
    let (mut a, _b) = start_pair();
    let status = a.terminate();
    assert!(status.success(), "{status:?}");
}

/// A node told to stop (SIGTERM) while a record is on its way to Redis, whose client has hung
/// up, waits for the record before it exits: the usage is counted and the customer created.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopping_node_finishes_changes_whose_clients_left() {
    use tokio::io::AsyncWriteExt;
    use tokio::task::block_in_place;

    // The node reaches Redis through a proxy that holds back the record's script.
    let mut proxy = HoldingProxy::start(shared_redis().port, "{c:left}").await;
    let proxied = format!("redis://127.0.0.1:{}", proxy.port);
    let prefix = unique_prefix();
    let envs = [
        ("QUOTAGATE_REDIS_URL", proxied.as_str()),
        ("QUOTAGATE_KEY_PREFIX", prefix.as_str()),
        ("QUOTAGATE_ADMIN_KEY", ADMIN_KEY),
        ("QUOTAGATE_LOG", "info"),
    ];
    let (mut node, log) = block_in_place(|| GatewayProcess::start_logged(&envs));
    let client = reqwest::Client::new();
    let meter = tokens_meter(&client, &node).await;
    let limit = json!({"name": "all", "meterId": meter, "limitValue": 100, "period": "all_time"});
    let (status, limit) = call(
        &client,
        ADMIN_KEY,
        reqwest::Method::POST,
        node.url("/v1/limits"),
        Some(limit),
    )
    .await;
    assert_eq!(status, 201, "{limit}");

    let body =
        json!({"customerId": "left", "eventType": "llm", "values": {"tokens": 3}}).to_string();
    let request = format!(
        "POST /v1/events/record HTTP/1.1\r\nhost: quotagate\r\nauthorization: Bearer {ADMIN_KEY}\r\n\
         content-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    let mut hanging_up = tokio::net::TcpStream::connect(node.address).await.unwrap();
    hanging_up.write_all(request.as_bytes()).await.unwrap();
    proxy.seen().await;
    drop(hanging_up);
    node.send_sigterm();
    let waited = block_in_place(|| log.wait_for("waiting for requests whose clients left"));
    assert!(waited, "the node exited without waiting for the record");
    proxy.release();
    let status = block_in_place(|| node.wait());
    assert!(status.success(), "{status:?}");

    let direct = shared_redis().url();
    let envs = [
        ("QUOTAGATE_REDIS_URL", direct.as_str()),
        ("QUOTAGATE_KEY_PREFIX", prefix.as_str()),
        ("QUOTAGATE_ADMIN_KEY", ADMIN_KEY),
    ];
    let after = block_in_place(|| GatewayProcess::start(&envs));
    let (status, check) = call(
        &client,
        ADMIN_KEY,
        reqwest::Method::POST,
        after.url("/v1/limits/check"),
        Some(json!({"customerId": "left"})),
    )
    .await;
    assert_eq!(status, 200, "{check}");
    assert_eq!(check["limits"][0]["used"], 3, "{check}");
    let (status, customer) = call(
        &client,
        ADMIN_KEY,
        reqwest::Method::GET,
        after.url("/v1/customers/left"),
        None,
    )
    .await;
    assert_eq!(status, 200, "{customer}");
}

/// A customer that an event meets for the first time exists before anything is counted for
/// it: while the record's count is held on its way to Redis, another node already finds the
/// customer. (Created afterwards, a node dying in between would leave usage, and an alert in
/// its outbox, of a customer no node knows, which the alert sweep never visits.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_customer_exists_before_its_first_usage_is_counted() {
    let mut proxy = HoldingProxy::start(shared_redis().port, "{c:newbie}").await;
    let proxied = format!("redis://127.0.0.1:{}", proxy.port);
    let direct = shared_redis().url();
    let prefix = unique_prefix();
    let envs = |url| {
        [
            ("QUOTAGATE_REDIS_URL", url),
            ("QUOTAGATE_KEY_PREFIX", prefix.as_str()),
            ("QUOTAGATE_ADMIN_KEY", ADMIN_KEY),
        ]
    };
    let counting = tokio::task::block_in_place(|| GatewayProcess::start(&envs(&proxied)));
    let other = tokio::task::block_in_place(|| GatewayProcess::start(&envs(&direct)));
    let client = reqwest::Client::new();
    tokens_meter(&client, &other).await;

    let event = json!({"customerId": "newbie", "eventType": "llm", "values": {"tokens": 3}});
    let (recording, url) = (client.clone(), counting.url("/v1/events/record"));
    let record = tokio::spawn(async move {
        call(
            &recording,
            ADMIN_KEY,
            reqwest::Method::POST,
            url,
            Some(event),
        )
        .await
    });
    proxy.seen().await;
    let (status, customer) = call(
        &client,
        ADMIN_KEY,
        reqwest::Method::GET,
        other.url("/v1/customers/newbie"),
        None,
    )
    .await;
    assert_eq!(
        status, 200,
        "the customer is known while its usage is on the way: {customer}"
    );
    proxy.release();
    let (status, recorded) = record.await.unwrap();
    assert_eq!(status, 200, "{recorded}");
}

#[test]
fn refuses_to_run_open_on_a_public_address() {
    let output = Command::new(env!("CARGO_BIN_EXE_quotagate"))
        .env_clear()
        .env("QUOTAGATE_LISTEN", "0.0.0.0:0")
        .output()
        .unwrap();
    assert!(!output.status.success());
    let log = String::from_utf8_lossy(&output.stdout) + String::from_utf8_lossy(&output.stderr);
    assert!(log.contains("QUOTAGATE_ADMIN_KEY"), "{log}");
}

/// A Redis URL that does not parse is a configuration error: the process says so and exits at
/// once, instead of retrying a connection that can never be made.
#[test]
fn refuses_to_start_on_a_malformed_redis_url() {
    for url in ["foo://x", "redis+cluster://"] {
        let mut child = Command::new(env!("CARGO_BIN_EXE_quotagate"))
            .env_clear()
            .env("QUOTAGATE_REDIS_URL", url)
            .env("QUOTAGATE_LISTEN", "127.0.0.1:0")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while child.try_wait().unwrap().is_none() {
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("still running with QUOTAGATE_REDIS_URL={url}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let output = child.wait_with_output().unwrap();
        assert!(!output.status.success(), "{url}");
        let log = String::from_utf8_lossy(&output.stdout) + String::from_utf8_lossy(&output.stderr);
        assert!(
            log.contains("QUOTAGATE_REDIS_URL") || log.contains("--redis-url"),
            "{log}"
        );
        assert!(log.contains("not a Redis URL"), "{log}");
    }
}

#[tokio::test]
async fn record_on_one_replica_check_on_the_other() {
    let (a, b) = start_pair();
    let client = reqwest::Client::new();
    let post = |url: String, body: Value| {
        let client = &client;
        async move { call(client, ADMIN_KEY, reqwest::Method::POST, url, Some(body)).await }
    };
    let meter_id = tokens_meter(&client, &a).await;
    let (status, limit) = post(
        a.url("/v1/limits"),
        json!({"name": "d", "meterId": meter_id, "limitValue": 100, "period": "day"}),
    )
    .await;
    assert_eq!(status, 201);
    let limit_id = limit["id"].clone();
    // B learns about the new limit through the change log within about a second.
    let learned = eventually(Duration::from_millis(1500), async || {
        let (_, answer) = post(b.url("/v1/limits/check"), json!({"customerId": "x"})).await;
        answer["limits"].as_array().is_some_and(|l| l.len() == 1)
    })
    .await;
    assert!(learned <= Duration::from_millis(1200), "took {learned:?}");
    let (status, _) = post(
        a.url("/v1/events/record"),
        json!({"customerId": "x", "eventType": "llm", "values": {"tokens": 60}}),
    )
    .await;
    assert_eq!(status, 200);
    let (status, _) = post(
        b.url("/v1/events/record"),
        json!({"customerId": "x", "eventType": "llm", "values": {"tokens": 50}}),
    )
    .await;
    assert_eq!(status, 200);
    for node in [&a, &b] {
        let (_, answer) = post(node.url("/v1/limits/check"), json!({"customerId": "x"})).await;
        assert_eq!(answer["allowed"], false);
        assert_eq!(answer["limits"][0]["id"], limit_id);
        assert_eq!(answer["limits"][0]["used"], 110);
    }
}
