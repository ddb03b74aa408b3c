//! Exact admission under concurrency: N concurrent consumes (or balance debits) against room
//! for K admit exactly K, on the embedded store and across two gateway processes sharing one
//! Redis.

use std::sync::Arc;

use axum::body::Body;
use axum::http::Request;
use serde_json::{Value, json};
use tower::ServiceExt;

use crate::common::{
    ADMIN_KEY, GatewayProcess, TestApp, redis_store, settings, shared_cluster, shared_redis,
    unique_prefix,
};

const REQUESTS: usize = 200;
const ROOM: usize = 50;

/// The three ways to spend: a sum meter (2 per call, limit 100), a count meter (limit 50), and
/// reservations of 1 on a sum meter (limit 50).
#[derive(Clone, Copy, Debug)]
enum Spend {
    SumConsume,
    CountConsume,
    Reserve,
}

impl Spend {
    const ALL: [Spend; 3] = [Spend::SumConsume, Spend::CountConsume, Spend::Reserve];

    fn meter(self) -> Value {
        match self {
            Spend::CountConsume => json!({"name": "calls", "aggregation": "count", "field": "*"}),
            _ => json!({"name": "tokens", "aggregation": "sum", "field": "values.tokens"}),
        }
    }

    fn limit_value(self) -> usize {
        match self {
            Spend::SumConsume => ROOM * 2,
            _ => ROOM,
        }
    }

    fn request(self, customer: &str) -> (&'static str, Value) {
        match self {
            Spend::SumConsume => (
                "/v1/limits/consume",
                json!({"customerId": customer, "eventType": "llm", "values": {"tokens": 2}}),
            ),
            Spend::CountConsume => (
                "/v1/limits/consume",
                json!({"customerId": customer, "eventType": "llm"}),
            ),
            Spend::Reserve => (
                "/v1/reservations",
                json!({"customerId": customer, "eventType": "llm", "values": {"tokens": 1}}),
            ),
        }
    }
}

fn setup_bodies(spend: Spend, meter_id: &str, customer: &str) -> Value {
    json!({"name": "room", "meterId": meter_id, "limitValue": spend.limit_value(), "period": "day", "customerId": customer})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn embedded_store_admits_exactly_the_room() {
    let app = Arc::new(TestApp::memory().await);
    for spend in Spend::ALL {
        let customer = format!("race-{spend:?}");
        let meter = app.meter(spend.meter()).await;
        app.post("/v1/limits", setup_bodies(spend, &meter, &customer))
            .await
            .assert_status(201);
        let mut tasks = Vec::new();
        for _ in 0..REQUESTS {
            let router = app.router.clone();
            let (path, body) = spend.request(&customer);
            tasks.push(tokio::spawn(async move {
                let request = Request::post(path)
                    .header("authorization", format!("Bearer {ADMIN_KEY}"))
                    .header("content-type", "application/json")
                    .body(Body::from(body.to_string()))
                    .unwrap();
                let response = router.oneshot(request).await.unwrap();
                let bytes = http_body_util::BodyExt::collect(response.into_body())
                    .await
                    .unwrap()
                    .to_bytes();
                serde_json::from_slice::<Value>(&bytes).unwrap()["allowed"] == true
            }));
        }
        let mut admitted = 0;
        for task in tasks {
            admitted += usize::from(task.await.unwrap());
        }
        assert_eq!(admitted, ROOM, "{spend:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_replicas_on_one_redis_admit_exactly_the_room() {
    race_across_replicas(&shared_redis().url(), &["race"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_replicas_on_a_cluster_admit_exactly_the_room() {
    // Customers whose keys fall on different shards, each raced in turn.
    let customers: Vec<String> = (0..6).map(|i| format!("shard-{i}")).collect();
    let names: Vec<&str> = customers.iter().map(String::as_str).collect();
    let prefix = race_across_replicas(&shared_cluster().url(), &names).await;
    let per_node = shared_cluster().keys_per_node(&prefix);
    assert!(
        per_node.iter().all(|n| *n > 0),
        "every shard holds this test's keys: {per_node:?}"
    );
}

/// Two gateway processes sharing `url` under a fresh key prefix; the prefix.
fn two_replicas(url: &str) -> ([GatewayProcess; 2], String) {
    let prefix = unique_prefix();
    let envs = [
        ("QUOTAGATE_REDIS_URL", url),
        ("QUOTAGATE_KEY_PREFIX", prefix.as_str()),
        ("QUOTAGATE_ADMIN_KEY", ADMIN_KEY),
    ];
    // One node on the default runtime (a thread per CPU), one on the single-threaded one.
    let mut single_thread = envs.to_vec();
    single_thread.push(("QUOTAGATE_WORKER_THREADS", "1"));
    (
        [
            GatewayProcess::start(&envs),
            GatewayProcess::start(&single_thread),
        ],
        prefix,
    )
}

async fn admin_call(request: reqwest::RequestBuilder) -> Value {
    request
        .bearer_auth(ADMIN_KEY)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// Waits until every node's answer to `probe` shows what was just configured (config
/// reaches replicas within about a second).
async fn until_every_node_knows(
    nodes: &[GatewayProcess],
    probe: impl Fn(&GatewayProcess) -> reqwest::RequestBuilder,
    known: impl Fn(&Value) -> bool,
) {
    for node in nodes {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(3);
        while !known(&admin_call(probe(node)).await) {
            assert!(
                std::time::Instant::now() < deadline,
                "a node never learned the configuration"
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }
}

/// Sends every request at once, alternating between the nodes; how many answered `field:
/// true`.
async fn race(
    client: &reqwest::Client,
    nodes: &[GatewayProcess],
    requests: Vec<(&'static str, Value, &'static str)>,
) -> usize {
    let mut tasks = Vec::new();
    for (i, (path, body, field)) in requests.into_iter().enumerate() {
        let request = client.post(nodes[i % nodes.len()].url(path)).json(&body);
        tasks.push(tokio::spawn(async move {
            let answer = admin_call(request).await;
            assert_ne!(answer["degraded"], true);
            answer[field] == true
        }));
    }
    let mut admitted = 0;
    for task in tasks {
        admitted += usize::from(task.await.unwrap());
    }
    admitted
}

/// For each spend kind and customer, 200 concurrent requests spread over two gateway
/// processes admit exactly the room. Returns the key prefix used.
async fn race_across_replicas(url: &str, customers: &[&str]) -> String {
    let (nodes, prefix) = two_replicas(url);
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(64)
        .build()
        .unwrap();
    for (spend, base) in Spend::ALL
        .into_iter()
        .flat_map(|s| customers.iter().map(move |c| (s, *c)))
    {
        let customer = format!("{base}-{spend:?}");
        let meter = admin_call(client.post(nodes[0].url("/v1/meters")).json(&spend.meter())).await;
        let limit = admin_call(client.post(nodes[0].url("/v1/limits")).json(&setup_bodies(
            spend,
            meter["id"].as_str().unwrap(),
            &customer,
        )))
        .await;
        assert!(limit["id"].is_string(), "{limit}");
        until_every_node_knows(
            &nodes,
            |node| {
                client
                    .post(node.url("/v1/limits/check"))
                    .json(&json!({"customerId": customer}))
            },
            |answer| answer["limits"].as_array().is_some_and(|l| !l.is_empty()),
        )
        .await;
        let requests = (0..REQUESTS)
            .map(|_| {
                let (path, body) = spend.request(&customer);
                (path, body, "allowed")
            })
            .collect();
        assert_eq!(race(&client, &nodes, requests).await, ROOM, "{spend:?}");
    }
    prefix
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn deleting_a_meter_on_one_redis_while_limits_are_created_leaves_none_behind() {
    delete_while_creating_limits(&shared_redis().url()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn deleting_a_meter_on_a_cluster_while_limits_are_created_leaves_none_behind() {
    delete_while_creating_limits(&shared_cluster().url()).await;
}

/// One node deletes a meter (or a customer) while another creates limits on it, each on its
/// own connection: every limit created before the delete goes with it, and none outlives it.
/// A delete that keeps losing the race gives up with a 409 having changed nothing.
async fn delete_while_creating_limits(url: &str) {
    const CREATORS: usize = 4;
    let prefix = unique_prefix();
    let deleter = TestApp::on(redis_store(url, &prefix).await, settings()).await;
    let creator = Arc::new(TestApp::on(redis_store(url, &prefix).await, settings()).await);
    for round in 0..40 {
        let meter = deleter.tokens_meter().await;
        let customer = format!("cust-{round}");
        let by_customer = round % 2 == 1;
        // Fewer creates when a customer goes: one created after the delete brings the
        // customer back, and the check below needs rounds where none did.
        let creates = if by_customer { 2 } else { 10 };
        let mut tasks = Vec::new();
        for _ in 0..CREATORS {
            let (creator, meter, customer) =
                (Arc::clone(&creator), meter.clone(), customer.clone());
            tasks.push(tokio::spawn(async move {
                let mut created = 0;
                for _ in 0..creates {
                    let body = json!({"name": "l", "meterId": meter, "limitValue": 5, "period": "hour", "customerId": customer});
                    let response = creator.post("/v1/limits", body).await;
                    match response.status.as_u16() {
                        201 => created += 1,
                        404 => assert_eq!(response.error_code(), "meter_not_found"),
                        other => panic!("unexpected {other}: {}", response.body),
                    }
                }
                created
            }));
        }
        let path = if by_customer {
            format!("/v1/customers/{customer}")
        } else {
            format!("/v1/meters/{meter}")
        };
        let mut deleted = deleter.delete(&path).await;
        let mut created = 0;
        for task in tasks {
            created += task.await.unwrap();
        }
        if deleted.status.as_u16() == 409 {
            assert_eq!(deleted.error_code(), "conflict");
            deleted = deleter.delete(&path).await;
        }
        if by_customer {
            // The customer may not exist yet when the delete runs.
            assert!(matches!(deleted.status.as_u16(), 200 | 404), "{deleted:?}");
            // A limit created after the delete creates the customer again, as any limit for
            // an unknown customer does; without the customer, no limit may name it.
            if deleter.get(&path).await.status.as_u16() == 404 {
                let left = deleter
                    .get(&format!("/v1/limits?customerId={customer}"))
                    .await;
                assert_eq!(
                    left.assert_status(200)["data"],
                    json!([]),
                    "limits outlived their customer"
                );
            }
        } else {
            assert_eq!(
                deleted.assert_status(200)["deletedLimits"],
                json!(created),
                "every limit created before the delete went with the meter"
            );
            let left = deleter.get(&format!("/v1/limits?meterId={meter}")).await;
            assert_eq!(
                left.assert_status(200)["data"],
                json!([]),
                "limits outlived their meter"
            );
        }
    }
}

/// Metered consumes and direct debits of one balance, raced over two gateway processes,
/// spend exactly what it holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_replicas_spend_a_balance_exactly() {
    let (nodes, _) = two_replicas(&shared_redis().url());
    let client = reqwest::Client::new();
    let meter = admin_call(
        client
            .post(nodes[0].url("/v1/meters"))
            .json(&json!({"name": "calls", "aggregation": "count", "field": "*"})),
    )
    .await;
    let balance = admin_call(client.post(nodes[0].url("/v1/balances")).json(&json!({
            "customerId": "spender", "name": "prepaid", "initialBalance": ROOM,
            "meterId": meter["id"]})))
    .await;
    assert_eq!(balance["currentBalance"], ROOM);
    until_every_node_knows(
        &nodes,
        |node| client.get(node.url("/v1/customers/spender/balances")),
        |answer| answer["balances"].as_array().is_some_and(|b| !b.is_empty()),
    )
    .await;
    let requests = (0..REQUESTS)
        .map(|i| match i % 3 {
            0 => (
                "/v1/balances/debit",
                json!({"customerId": "spender", "name": "prepaid", "amount": 1}),
                "success",
            ),
            _ => (
                "/v1/limits/consume",
                json!({"customerId": "spender", "eventType": "llm"}),
                "allowed",
            ),
        })
        .collect();
    assert_eq!(race(&client, &nodes, requests).await, ROOM);
    let after = admin_call(
        client.get(nodes[1].url(&format!("/v1/balances/{}", balance["id"].as_str().unwrap()))),
    )
    .await;
    assert_eq!(after["currentBalance"], 0);
}
