//! `Idempotency-Key` on POST routes without de-duplication of their own: a repeat answers the
//! first answer, a concurrent repeat is told to wait, a failed request frees its key, and these
//! requests run to their end even when their client stops waiting.

use axum::body::Body;
use axum::http::Request;
use serde_json::{Value, json};

use crate::common::{ADMIN_KEY, TestApp, TestResponse, abandon, gated_post, state};
use crate::every_store;

every_store!(
    creations_replay_their_first_answer,
    failed_requests_free_their_key,
    a_key_in_use_is_refused_until_its_request_ends,
    a_request_whose_client_stopped_waiting_still_keeps_its_answer,
    a_creation_whose_client_stopped_waiting_is_made_all_the_same,
    a_revoked_key_gets_no_stored_answer,
    batches_replay_their_first_answer_and_a_retry_counts_only_the_rest,
    an_event_key_in_the_body_and_another_in_the_header_is_refused,
    keys_of_other_kinds_never_meet_a_callers_event_key,
);

async fn post_with_key(
    app: &TestApp,
    bearer: &str,
    path: &str,
    body: Value,
    key: &str,
) -> TestResponse {
    let request = Request::post(path)
        .header("authorization", format!("Bearer {bearer}"))
        .header("content-type", "application/json")
        .header("idempotency-key", key)
        .body(Body::from(body.to_string()))
        .unwrap();
    app.send(request).await
}

/// A commit de-duplicates by its reservation, and a balance movement and a reservation by keys
/// of their own kind, beside the customer's event keys: an event key that spells the same
/// never makes one a repeat of the other.
async fn keys_of_other_kinds_never_meet_a_callers_event_key(app: TestApp) {
    let meter = app.tokens_meter().await;
    let daily = app
        .limit(json!({"name": "d", "meterId": meter, "limitValue": 1000, "period": "day"}))
        .await;
    let event = |key: &str| {
        json!({"customerId": "keys", "eventType": "llm", "values": {"tokens": 1},
               "idempotencyKey": key})
    };
    let held = app
        .post(
            "/v1/reservations",
            json!({"customerId": "keys", "eventType": "llm", "values": {"tokens": 100}}),
        )
        .await;
    let rsv = held.assert_status(200)["reservation"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    for key in [format!("commit:{rsv}"), "balance:k".to_string()] {
        app.post("/v1/events/record", event(&key))
            .await
            .assert_status(200);
    }

    let commit = app
        .post(
            &format!("/v1/reservations/{rsv}/commit"),
            json!({"values": {"tokens": 50}}),
        )
        .await;
    assert_eq!(commit.header("idempotent-replayed"), None, "{commit:?}");
    let check = app
        .post("/v1/limits/check", json!({"customerId": "keys"}))
        .await;
    assert_eq!(
        state(&check.body, &daily)["used"],
        52,
        "both events and the commit"
    );

    app.post(
        "/v1/balances",
        json!({"customerId": "keys", "name": "b", "initialBalance": 10}),
    )
    .await
    .assert_status(201);
    let debit = post_with_key(
        &app,
        ADMIN_KEY,
        "/v1/balances/debit",
        json!({"customerId": "keys", "name": "b", "amount": 3}),
        "k",
    )
    .await;
    let debit = debit.assert_status(200);
    assert_eq!(debit["success"], true, "{debit}");
    assert_eq!(debit["balance"]["currentBalance"], 7);

    // A reservation's key and an event's key are two requests, in either order.
    let hold = json!({"customerId": "keys", "eventType": "llm", "values": {"tokens": 5}});
    let tokens = json!({"customerId": "keys", "eventType": "llm", "values": {"tokens": 7}});
    let held = post_with_key(&app, ADMIN_KEY, "/v1/reservations", hold.clone(), "K-A").await;
    assert_eq!(held.assert_status(200)["allowed"], true);
    let recorded = post_with_key(&app, ADMIN_KEY, "/v1/events/record", tokens.clone(), "K-A").await;
    assert_eq!(
        recorded.assert_status(200)["duplicate"],
        false,
        "{recorded:?}"
    );
    let recorded = post_with_key(&app, ADMIN_KEY, "/v1/events/record", tokens, "K-B").await;
    assert_eq!(recorded.assert_status(200)["duplicate"], false);
    let held = post_with_key(&app, ADMIN_KEY, "/v1/reservations", hold, "K-B").await;
    assert_eq!(held.assert_status(200)["allowed"], true, "{held:?}");
    let check = app
        .post("/v1/limits/check", json!({"customerId": "keys"}))
        .await;
    assert_eq!(
        state(&check.body, &daily)["used"],
        66,
        "52 and the two records"
    );
    assert_eq!(state(&check.body, &daily)["reserved"], 10, "both holds");
}

async fn creations_replay_their_first_answer(app: TestApp) {
    let meter = json!({"name": "tokens", "aggregation": "sum", "field": "values.tokens"});
    let first = post_with_key(&app, ADMIN_KEY, "/v1/meters", meter.clone(), "m-1").await;
    first.assert_status(201);
    assert_eq!(first.header("idempotent-replayed"), None);
    let repeat = post_with_key(&app, ADMIN_KEY, "/v1/meters", meter.clone(), "m-1").await;
    assert_eq!(repeat.assert_status(201), &first.body);
    assert_eq!(repeat.header("idempotent-replayed"), Some("true"));
    assert_eq!(
        repeat.header("content-type"),
        Some("application/json"),
        "{repeat:?}"
    );
    assert_eq!(
        app.get("/v1/meters").await.body["data"]
            .as_array()
            .unwrap()
            .len(),
        1
    );

    // A customer created with a key answers its repeat 201, not 409.
    let customer = json!({"id": "c1", "name": "Acme"});
    post_with_key(&app, ADMIN_KEY, "/v1/customers", customer.clone(), "c-1")
        .await
        .assert_status(201);
    let repeat = post_with_key(&app, ADMIN_KEY, "/v1/customers", customer, "c-1").await;
    assert_eq!(repeat.assert_status(201)["id"], "c1");
    assert_eq!(repeat.header("idempotent-replayed"), Some("true"));

    // Keys are scoped by route and by caller.
    let meter_id = first.body["id"].as_str().unwrap();
    let limit = json!({"name": "l", "meterId": meter_id, "limitValue": 5, "period": "day"});
    let other_route = post_with_key(&app, ADMIN_KEY, "/v1/limits", limit, "m-1").await;
    assert_eq!(other_route.assert_status(201)["meterId"], meter_id);
    let admin: Value = app
        .post(
            "/v1/api-keys",
            json!({"name": "second admin", "scopes": ["admin"]}),
        )
        .await
        .body;
    let other_caller = post_with_key(
        &app,
        admin["key"].as_str().unwrap(),
        "/v1/meters",
        meter,
        "m-1",
    )
    .await;
    assert_ne!(other_caller.assert_status(201)["id"], first.body["id"]);
    assert_eq!(other_caller.header("idempotent-replayed"), None);

    // A balance made with a key is made once, with one initial credit.
    let balance = json!({"customerId": "c1", "name": "b", "initialBalance": 5});
    let made = post_with_key(&app, ADMIN_KEY, "/v1/balances", balance.clone(), "b-1").await;
    let again = post_with_key(&app, ADMIN_KEY, "/v1/balances", balance, "b-1").await;
    assert_eq!(again.assert_status(201)["id"], made.body["id"]);
    let balances = app.get("/v1/customers/c1/balances").await;
    assert_eq!(balances.body["balances"].as_array().unwrap().len(), 1);
    assert_eq!(balances.body["balances"][0]["currentBalance"], 5);

    // An API key's answer holds the key in the clear, which is never stored: no replay.
    let key = json!({"name": "proxy", "scopes": ["ingest"]});
    let one = post_with_key(&app, ADMIN_KEY, "/v1/api-keys", key.clone(), "k-1").await;
    let two = post_with_key(&app, ADMIN_KEY, "/v1/api-keys", key, "k-1").await;
    assert_ne!(one.assert_status(201)["id"], two.assert_status(201)["id"]);
}

async fn failed_requests_free_their_key(app: TestApp) {
    let meter = app.tokens_meter().await;
    let bad = post_with_key(
        &app,
        ADMIN_KEY,
        "/v1/limits",
        json!({"name": "l", "meterId": meter, "limitValue": -1, "period": "day"}),
        "l-1",
    )
    .await;
    bad.assert_field_error("invalid_field_value", "limitValue");
    let good = post_with_key(
        &app,
        ADMIN_KEY,
        "/v1/limits",
        json!({"name": "l", "meterId": meter, "limitValue": 1, "period": "day"}),
        "l-1",
    )
    .await;
    good.assert_status(201);
    assert_eq!(good.header("idempotent-replayed"), None);
    let long = "k".repeat(257);
    post_with_key(
        &app,
        ADMIN_KEY,
        "/v1/meters",
        json!({"name": "m", "aggregation": "count", "field": "*"}),
        &long,
    )
    .await
    .assert_field_error("invalid_field_value", "Idempotency-Key");
    // A commit needs no key (it is idempotent by its reservation), but checks one given.
    post_with_key(
        &app,
        ADMIN_KEY,
        "/v1/reservations/rsv_01M8M5HVXRTDMVKSMQNNZH8E3X/commit",
        json!({}),
        &long,
    )
    .await
    .assert_field_error("invalid_field_value", "Idempotency-Key");
}

async fn a_key_in_use_is_refused_until_its_request_ends(app: TestApp) {
    let credential = format!("Bearer {ADMIN_KEY}");
    let ticket = match app
        .gateway
        .claim_replay(credential.as_bytes(), "/v1/meters", "busy")
        .await
        .unwrap()
    {
        quotagate::service::replay::Replay::Run(ticket) => ticket,
        other => panic!("a fresh key runs: {other:?}"),
    };
    let meter = json!({"name": "m", "aggregation": "count", "field": "*"});
    post_with_key(&app, ADMIN_KEY, "/v1/meters", meter.clone(), "busy")
        .await
        .assert_error(409, "idempotency_in_progress");
    // The request that held it changed nothing: the key is free again.
    app.gateway.finish_replay(ticket, None).await;
    post_with_key(&app, ADMIN_KEY, "/v1/meters", meter, "busy")
        .await
        .assert_status(201);
    assert_eq!(
        app.get("/v1/meters").await.body["data"]
            .as_array()
            .unwrap()
            .len(),
        1,
        "the refused request created nothing"
    );
}

/// A meter creation whose client stops waiting once the gateway reads its body (before the
/// body has arrived); the body arrives afterwards.
async fn creation_whose_client_stops_waiting(app: &TestApp, key: Option<&str>) {
    let meter = json!({"name": "m", "aggregation": "count", "field": "*"});
    let headers: Vec<(&str, &str)> = key
        .map(|key| ("idempotency-key", key))
        .into_iter()
        .collect();
    let gated = gated_post("/v1/meters", &meter, &headers);
    abandon(app, gated, async {
        if let Some(key) = key {
            // A probe with the same key and a body that could never create anything.
            post_with_key(app, ADMIN_KEY, "/v1/meters", json!({"name": "x"}), key)
                .await
                .assert_error(409, "idempotency_in_progress");
        }
    })
    .await;
}

async fn a_creation_whose_client_stopped_waiting_is_made_all_the_same(app: TestApp) {
    creation_whose_client_stops_waiting(&app, None).await;
    app.requests_ended().await;
    let meters = app.get("/v1/meters").await;
    assert_eq!(meters.body["data"][0]["name"], "m");
}

async fn a_request_whose_client_stopped_waiting_still_keeps_its_answer(app: TestApp) {
    creation_whose_client_stops_waiting(&app, Some("gone")).await;
    app.requests_ended().await;
    let replay = post_with_key(&app, ADMIN_KEY, "/v1/meters", json!({"name": "x"}), "gone").await;
    replay.assert_status(201);
    assert_eq!(replay.header("idempotent-replayed"), Some("true"));
    assert_eq!(replay.body["name"], "m", "the first request's answer");
    let meters = app.get("/v1/meters").await;
    assert_eq!(meters.body["data"].as_array().unwrap().len(), 1);
}

async fn a_revoked_key_gets_no_stored_answer(app: TestApp) {
    let created = app
        .post("/v1/api-keys", json!({"name": "ops", "scopes": ["admin"]}))
        .await;
    let secret = created.body["key"].as_str().unwrap().to_string();
    let key_id = created.body["id"].as_str().unwrap().to_string();
    // The stored answer holds a webhook's secret, shown only once.
    let webhook = json!({"url": "https://example.com/hook"});
    let first = post_with_key(&app, &secret, "/v1/webhooks", webhook.clone(), "w-1").await;
    assert!(first.assert_status(201)["secret"].is_string());
    app.delete(&format!("/v1/api-keys/{key_id}"))
        .await
        .assert_status(200);
    post_with_key(&app, &secret, "/v1/webhooks", webhook, "w-1")
        .await
        .assert_error(401, "invalid_api_key");
}

async fn batches_replay_their_first_answer_and_a_retry_counts_only_the_rest(app: TestApp) {
    let meter = app.tokens_meter().await;
    let daily = app
        .limit(json!({"name": "d", "meterId": meter, "limitValue": 1000, "period": "day"}))
        .await;
    let used = || async {
        let check = app
            .post("/v1/limits/check", json!({"customerId": "bx"}))
            .await;
        state(check.assert_status(200), &daily)["used"].clone()
    };
    let mut events: Vec<Value> = (0..40)
        .map(|_| json!({"customerId": "bx", "eventType": "llm", "values": {"tokens": 1}}))
        .collect();
    events.push(json!({"customerId": "bx", "eventType": "llm", "values": {"tokens": 100}, "idempotencyKey": "own-1"}));
    let batch = json!({ "events": events });

    // A first attempt that failed after its first call to storage had counted 32 events
    // (a failed request frees its key, so the retry runs).
    let first_call: Vec<quotagate::domain::event::NewEvent> =
        serde_json::from_value(json!(events[..32])).unwrap();
    let done = app.gateway.record_batch(first_call, Some("bx1")).await;
    assert_eq!(done.unwrap(), (32, 0));
    let retry = post_with_key(&app, ADMIN_KEY, "/v1/events/batch", batch.clone(), "bx1").await;
    assert_eq!(
        retry.assert_status(200),
        &json!({"count": 9, "duplicates": 32})
    );
    assert_eq!(retry.header("idempotent-replayed"), None);
    assert_eq!(used().await, 140, "each event once");

    // A repeat answers the first answer and counts nothing; its body is not looked at.
    let repeat = post_with_key(&app, ADMIN_KEY, "/v1/events/batch", json!({}), "bx1").await;
    assert_eq!(repeat.assert_status(200), &retry.body);
    assert_eq!(repeat.header("idempotent-replayed"), Some("true"));
    assert_eq!(used().await, 140);

    // Another header is another batch; an event's own key still holds across batches.
    let other = post_with_key(&app, ADMIN_KEY, "/v1/events/batch", batch.clone(), "bx2").await;
    assert_eq!(
        other.assert_status(200),
        &json!({"count": 40, "duplicates": 1})
    );
    assert_eq!(used().await, 180);

    // A rejected batch frees its key.
    let bad = json!({"events": [{"customerId": "bx", "eventType": ""}]});
    post_with_key(&app, ADMIN_KEY, "/v1/events/batch", bad, "bx3")
        .await
        .assert_field_error("invalid_field_value", "events[0].eventType");
    let good =
        json!({"events": [{"customerId": "bx", "eventType": "llm", "values": {"tokens": 1}}]});
    let after = post_with_key(&app, ADMIN_KEY, "/v1/events/batch", good, "bx3").await;
    assert_eq!(after.assert_status(200)["count"], 1);
    assert_eq!(after.header("idempotent-replayed"), None);
}

async fn an_event_key_in_the_body_and_another_in_the_header_is_refused(app: TestApp) {
    let meter = app.tokens_meter().await;
    let daily = app
        .limit(json!({"name": "d", "meterId": meter, "limitValue": 1000, "period": "day"}))
        .await;
    let event = |key: &str| json!({"customerId": "kk", "eventType": "llm", "values": {"tokens": 1}, "idempotencyKey": key});
    for path in ["/v1/events/record", "/v1/limits/consume"] {
        let refused = post_with_key(&app, ADMIN_KEY, path, event("body"), "header").await;
        refused.assert_field_error("invalid_field_value", "idempotencyKey");
        let message = refused.body["error"]["message"].as_str().unwrap();
        assert!(message.contains("Idempotency-Key"), "{message}");
    }
    // The body key takes only what the header could carry.
    app.post("/v1/events/record", event("clé"))
        .await
        .assert_field_error("invalid_field_value", "idempotencyKey");
    // Nothing was counted, and neither key was taken.
    let check = app
        .post("/v1/limits/check", json!({"customerId": "kk"}))
        .await;
    assert_eq!(state(check.assert_status(200), &daily)["used"], 0);
    // The same key in both is one key.
    let first = post_with_key(&app, ADMIN_KEY, "/v1/events/record", event("same"), "same").await;
    assert_eq!(first.assert_status(200)["duplicate"], false);
    let again = post_with_key(&app, ADMIN_KEY, "/v1/limits/consume", event("same"), "same").await;
    assert_eq!(again.assert_status(200)["eventId"], first.body["id"]);
    assert_eq!(again.header("idempotent-replayed"), Some("true"));
    let fresh = post_with_key(
        &app,
        ADMIN_KEY,
        "/v1/events/record",
        event("header"),
        "header",
    )
    .await;
    assert_eq!(fresh.assert_status(200)["duplicate"], false);
}
