//! Redis Cluster changing under a running gateway: slots that move to another master while
//! requests flow (ASK, then MOVED), a master that dies and is replaced by its replica, and
//! masters that lost their script cache.
//! Following the cluster is the client library's job; these prove it does so for every kind of
//! call the gateway makes (usage scripts, configuration scripts, plain commands), that no
//! answer is an error meanwhile and that no count is lost. Each test starts its own cluster:
//! the shared one must not change under other tests.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::common::{RedisCluster, TestApp, redis_store, settings, state, unique_prefix};

const CUSTOMER: &str = "cust-on-the-move";

fn consume_body(tokens: u64) -> Value {
    json!({"customerId": CUSTOMER, "eventType": "llm", "values": {"tokens": tokens}})
}

/// A gateway on `cluster` with a default daily limit of `value` tokens, and the limit's ID.
async fn gateway_with_daily_limit(cluster: &RedisCluster, value: u64) -> (TestApp, String) {
    let app = TestApp::on(
        redis_store(&cluster.url(), &unique_prefix()).await,
        settings(),
    )
    .await;
    let meter = app.tokens_meter().await;
    let limit = app
        .limit(json!({"name": "daily", "meterId": meter, "limitValue": value, "period": "day"}))
        .await;
    (app, limit)
}

/// The customer's use of `limit`, read by a check that storage answered.
async fn used(app: &TestApp, limit: &str) -> (f64, f64) {
    let answer = app
        .post("/v1/limits/check", json!({"customerId": CUSTOMER}))
        .await;
    let body = answer.assert_status(200);
    assert_eq!(body["degraded"], false, "{body}");
    let state = state(body, limit);
    (
        state["used"].as_f64().unwrap(),
        state["reserved"].as_f64().unwrap(),
    )
}

/// Three consumes and a record of 1 token each. Every answer must be a 200, or for the
/// record a 503: a call whose keys a migration has split between two nodes is refused by
/// Redis (TRYAGAIN), so decisions are then degraded and count nothing. Returns how many
/// tokens storage counted.
async fn spend(app: &TestApp) -> u64 {
    let mut counted = 0;
    for _ in 0..3 {
        let answer = app.post("/v1/limits/consume", consume_body(1)).await;
        let body = answer.assert_status(200);
        if body["degraded"] == false {
            assert_eq!(body["allowed"], true, "{body}");
            counted += 1;
        }
    }
    let answer = app.post("/v1/events/record", consume_body(1)).await;
    if answer.status == 200 {
        counted += 1;
    } else {
        answer.assert_error(503, "storage_unavailable");
    }
    counted
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slots_that_move_to_another_master_keep_every_count() {
    let cluster = RedisCluster::start();
    let (app, limit) = gateway_with_daily_limit(&cluster, 1000).await;
    let held = app
        .post(
            "/v1/reservations",
            json!({"customerId": CUSTOMER, "eventType": "llm", "values": {"tokens": 5}}),
        )
        .await;
    let reservation = held.assert_status(200)["reservation"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(spend(&app).await, 4);

    // The customer's slot, step by step, spending at each step: before any key moved, with
    // its keys split between the nodes, with all of them moved, and once the move is over.
    let slot = cluster.slot_of(&format!("{{c:{CUSTOMER}}}"));
    let owner = cluster.master_of(slot);
    let slot_move = cluster.begin_slot_move(slot, (owner + 1) % 3);
    let mut counted = 4 + spend(&app).await;
    assert_eq!(slot_move.migrate_keys(&cluster, 2), 2);
    counted += spend(&app).await;
    while slot_move.migrate_keys(&cluster, 100) > 0 {}
    counted += spend(&app).await;
    slot_move.finish(&cluster);
    assert_ne!(cluster.master_of(slot), owner);
    assert_eq!(spend(&app).await, 4);
    counted += 4;
    assert_eq!(used(&app, &limit).await, (counted as f64, 5.0));

    // The configuration's and the reservation's slots move in one go; then every kind of call:
    // a configuration change, a reservation's commit, decisions against the changed limit, the
    // event log.
    for key in ["{cfg}".to_string(), format!("{{r:{reservation}}}")] {
        let slot = cluster.slot_of(&key);
        cluster.move_slot(slot, (cluster.master_of(slot) + 1) % 3);
    }
    app.put(
        &format!("/v1/limits/{limit}"),
        json!({"limitValue": counted + 10}),
    )
    .await
    .assert_status(200);
    app.post(
        &format!("/v1/reservations/{reservation}/commit"),
        json!({"values": {"tokens": 4}}),
    )
    .await
    .assert_status(200);
    assert_eq!(used(&app, &limit).await, ((counted + 4) as f64, 0.0));
    let refused = app.post("/v1/limits/consume", consume_body(7)).await;
    assert_eq!(refused.assert_status(200)["allowed"], false);
    let allowed = app.post("/v1/limits/consume", consume_body(6)).await;
    assert_eq!(allowed.assert_status(200)["allowed"], true);
    assert_eq!(used(&app, &limit).await, ((counted + 10) as f64, 0.0));
    let events = app
        .get(&format!("/v1/events?customerId={CUSTOMER}&limit=100"))
        .await;
    let logged = events.assert_status(200)["data"].as_array().unwrap().len() as u64;
    assert_eq!(logged, counted + 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_master_is_replaced_by_its_replica_without_losing_a_count() {
    // Nodes give up on a silent peer after 1 s, so a replica takes over within seconds.
    let mut cluster = RedisCluster::start_with(1, &["--cluster-node-timeout 1000"]);
    let (app, limit) = gateway_with_daily_limit(&cluster, 10).await;
    for _ in 0..3 {
        let answer = app.post("/v1/limits/consume", consume_body(2)).await;
        assert_eq!(answer.assert_status(200)["allowed"], true);
    }

    let slot = cluster.slot_of(&format!("{{c:{CUSTOMER}}}"));
    cluster.kill_master_of(slot);

    // Until the replica takes over and the gateway finds it, checks are degraded 200s; the
    // gateway finds the new master by itself.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let answer = app
            .post("/v1/limits/check", json!({"customerId": CUSTOMER}))
            .await;
        if answer.assert_status(200)["degraded"] == false {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "still degraded: {:?}",
            answer.body
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(used(&app, &limit).await, (6.0, 0.0));
    app.get("/readyz").await.assert_status(200);
    let refused = app.post("/v1/limits/consume", consume_body(5)).await;
    assert_eq!(refused.assert_status(200)["allowed"], false);
    let allowed = app.post("/v1/limits/consume", consume_body(4)).await;
    let body = allowed.assert_status(200);
    assert_eq!(
        (&body["allowed"], &body["degraded"]),
        (&json!(true), &json!(false))
    );
    app.post(
        "/v1/events/record",
        json!({"customerId": CUSTOMER, "eventType": "llm", "values": {"tokens": 1}}),
    )
    .await
    .assert_status(200);
    assert_eq!(used(&app, &limit).await, (11.0, 0.0));
    app.post(
        "/v1/meters",
        json!({"name": "calls", "aggregation": "count", "field": "*"}),
    )
    .await
    .assert_status(201);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn masters_that_lost_their_scripts_are_given_them_again() {
    let cluster = RedisCluster::start();
    let (app, limit) = gateway_with_daily_limit(&cluster, 100).await;
    let consume = || async {
        let answer = app.post("/v1/limits/consume", consume_body(1)).await;
        let body = answer.assert_status(200).clone();
        assert_eq!(
            (&body["allowed"], &body["degraded"]),
            (&json!(true), &json!(false))
        );
    };
    consume().await;

    // A master restarted from its data keeps its keys but not its script cache: EVALSHA
    // answers NOSCRIPT there until the gateway loads the script again.
    for node in &cluster.nodes {
        let _: () = node.query(::redis::cmd("SCRIPT").arg("FLUSH"));
    }
    consume().await;
    app.put(&format!("/v1/limits/{limit}"), json!({"limitValue": 50}))
        .await
        .assert_status(200);
    app.post(
        "/v1/balances",
        json!({"customerId": CUSTOMER, "name": "prepaid", "initialBalance": 5}),
    )
    .await
    .assert_status(201);
    assert_eq!(used(&app, &limit).await, (2.0, 0.0));
}
