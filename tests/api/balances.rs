//! Balances (API.md §6): prepaid credits moved by credits and debits, and debited by metered
//! events in the same atomic step as the limits.

use axum::http::Method;
use serde_json::{Value, json};

use crate::common::TestApp;
use crate::every_store;

every_store!(
    balance_lifecycle,
    debits_never_take_a_balance_below_its_minimum,
    fractional_debits_add_up_as_decimals,
    movements_are_idempotent,
    transactions_page_newest_first,
    updates_keep_the_amount_and_its_history,
    metered_balances_are_debited_with_every_counted_event,
    reservations_hold_on_metered_balances,
    concurrent_debits_and_consumes_never_overdraw,
    deleting_a_customer_takes_its_balances,
    a_node_with_a_stale_cache_moves_no_deleted_balance,
    scopes_of_balance_routes,
    bad_balance_input,
);

async fn create_balance(app: &TestApp, body: Value) -> Value {
    app.post("/v1/balances", body)
        .await
        .assert_status(201)
        .clone()
}

/// A balance "b" of customer c1 with `initial` credits, debited by a new tokens meter; its ID.
async fn metered_balance(app: &TestApp, initial: u32) -> String {
    let meter = app.tokens_meter().await;
    let body =
        json!({"customerId": "c1", "name": "b", "initialBalance": initial, "meterId": meter});
    let balance = create_balance(app, body).await;
    balance["id"].as_str().unwrap().to_string()
}

async fn credit(app: &TestApp, customer: &str, name: &str, amount: f64) -> Value {
    app.post(
        "/v1/balances/credit",
        json!({"customerId": customer, "name": name, "amount": amount}),
    )
    .await
    .assert_status(200)
    .clone()
}

async fn debit(app: &TestApp, customer: &str, name: &str, amount: f64) -> Value {
    app.post(
        "/v1/balances/debit",
        json!({"customerId": customer, "name": name, "amount": amount}),
    )
    .await
    .assert_status(200)
    .clone()
}

async fn current(app: &TestApp, id: &str) -> Value {
    app.get(&format!("/v1/balances/{id}"))
        .await
        .assert_status(200)["currentBalance"]
        .clone()
}

async fn transaction_count(app: &TestApp, id: &str) -> usize {
    app.get(&format!("/v1/balances/{id}/transactions"))
        .await
        .assert_status(200)["data"]
        .as_array()
        .unwrap()
        .len()
}

async fn balance_lifecycle(app: TestApp) {
    let created = create_balance(
        &app,
        json!({"customerId": "c1", "name": "prepaid", "unit": "usd", "initialBalance": 100,
            "minimumBalance": 10}),
    )
    .await;
    let id = created["id"].as_str().unwrap().to_string();
    assert!(id.starts_with("bal_"));
    assert_eq!(created["customerId"], "c1");
    assert_eq!(created["unit"], "usd");
    assert_eq!(created["currentBalance"], 100);
    assert_eq!(created["minimumBalance"], 10);
    assert_eq!(created["availableBalance"], 90);
    assert_eq!(created["meterId"], Value::Null);
    assert_eq!(created["dimensionFilters"], json!({}));
    assert!(created["createdAt"].is_string() && created["updatedAt"].is_string());
    assert_eq!(
        app.get(&format!("/v1/balances/{id}"))
            .await
            .assert_status(200),
        &created
    );
    // Naming an unknown customer created it with defaults.
    app.get("/v1/customers/c1").await.assert_status(200);

    // One name per customer; another customer may use it.
    app.post(
        "/v1/balances",
        json!({"customerId": "c1", "name": "prepaid"}),
    )
    .await
    .assert_error(409, "already_exists");
    let other = create_balance(&app, json!({"customerId": "c2", "name": "prepaid"})).await;
    assert_eq!(other["currentBalance"], 0);
    assert_eq!(other["unit"], "credits");
    assert_eq!(
        transaction_count(&app, other["id"].as_str().unwrap()).await,
        0,
        "a zero initial balance records no credit"
    );

    let credited = app
        .post(
            "/v1/balances/credit",
            json!({"customerId": "c1", "name": "prepaid", "amount": 25.5,
                "description": "top-up", "reference": "inv_7"}),
        )
        .await;
    let credited = credited.assert_status(200);
    assert_eq!(credited["success"], true);
    let transaction = &credited["transaction"];
    assert!(transaction["id"].as_str().unwrap().starts_with("txn_"));
    assert_eq!(transaction["balanceId"], id.as_str());
    assert_eq!(transaction["type"], "credit");
    assert_eq!(transaction["amount"], 25.5);
    assert_eq!(transaction["description"], "top-up");
    assert_eq!(transaction["reference"], "inv_7");
    assert_eq!(transaction["balanceAfter"], 125.5);
    assert_eq!(credited["balance"]["currentBalance"], 125.5);
    assert_eq!(credited["balance"]["availableBalance"], 115.5);

    let debited = debit(&app, "c1", "prepaid", 0.5).await;
    assert_eq!(debited["success"], true);
    assert_eq!(debited["transaction"]["type"], "debit");
    assert_eq!(debited["transaction"]["balanceAfter"], 125);
    assert_eq!(current(&app, &id).await, 125);

    let check = app
        .post(
            "/v1/balances/check",
            json!({"customerId": "c1", "name": "prepaid", "amount": 115}),
        )
        .await;
    assert_eq!(
        check.assert_status(200),
        &json!({"balanceId": id, "name": "prepaid", "unit": "usd", "currentBalance": 125,
            "minimumBalance": 10, "availableBalance": 115, "requestedAmount": 115,
            "sufficient": true})
    );
    let check = app
        .post(
            "/v1/balances/check",
            json!({"customerId": "c1", "name": "prepaid", "amount": 115.01}),
        )
        .await;
    assert_eq!(check.assert_status(200)["sufficient"], false);
    assert_eq!(current(&app, &id).await, 125, "a check changes nothing");

    let listed = app.get("/v1/customers/c1/balances").await;
    let listed = listed.assert_status(200)["balances"]
        .as_array()
        .unwrap()
        .clone();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["id"], id.as_str());
    assert_eq!(listed[0]["currentBalance"], 125);
    assert_eq!(
        listed[0]["updatedAt"], debited["transaction"]["createdAt"],
        "updatedAt is the last movement"
    );

    let deleted = app.delete(&format!("/v1/balances/{id}")).await;
    assert_eq!(
        deleted.assert_status(200),
        &json!({"id": id, "deleted": true})
    );
    app.get(&format!("/v1/balances/{id}"))
        .await
        .assert_error(404, "balance_not_found");
    app.delete(&format!("/v1/balances/{id}"))
        .await
        .assert_error(404, "balance_not_found");
    app.post(
        "/v1/balances/debit",
        json!({"customerId": "c1", "name": "prepaid", "amount": 1}),
    )
    .await
    .assert_error(404, "balance_not_found");
    assert_eq!(
        app.get("/v1/customers/c1/balances").await.body["balances"],
        json!([])
    );
    // The name is free again, and the new balance starts from its own amount.
    let again = create_balance(
        &app,
        json!({"customerId": "c1", "name": "prepaid", "initialBalance": 3}),
    )
    .await;
    assert_eq!(again["currentBalance"], 3);
    assert_eq!(
        transaction_count(&app, again["id"].as_str().unwrap()).await,
        1
    );
}

/// Three debits of 0.1 reach an overdraft floor of -0.3 exactly (in binary, 0.2 + 0.1 would
/// overshoot it).
async fn fractional_debits_add_up_as_decimals(app: TestApp) {
    let balance = create_balance(
        &app,
        json!({"customerId": "c1", "name": "b", "initialBalance": 0, "minimumBalance": -0.3}),
    )
    .await;
    let id = balance["id"].as_str().unwrap();
    for _ in 0..3 {
        assert_eq!(debit(&app, "c1", "b", 0.1).await["success"], true);
    }
    assert_eq!(current(&app, id).await, -0.3);
    assert_eq!(debit(&app, "c1", "b", 0.1).await["success"], false);
}

async fn debits_never_take_a_balance_below_its_minimum(app: TestApp) {
    let balance = create_balance(
        &app,
        json!({"customerId": "c1", "name": "b", "initialBalance": 10, "minimumBalance": -5}),
    )
    .await;
    let id = balance["id"].as_str().unwrap();
    assert_eq!(debit(&app, "c1", "b", 15.0).await["success"], true);
    assert_eq!(current(&app, id).await, -5, "down to the overdraft floor");
    let refused = debit(&app, "c1", "b", 0.01).await;
    assert_eq!(refused["success"], false);
    assert!(
        refused["error"]
            .as_str()
            .unwrap()
            .contains("insufficient balance")
    );
    assert_eq!(refused.get("transaction"), None);
    assert_eq!(refused["balance"]["currentBalance"], -5);
    assert_eq!(refused["balance"]["availableBalance"], 0);
    assert_eq!(current(&app, id).await, -5);
    assert_eq!(
        transaction_count(&app, id).await,
        2,
        "the initial credit and the one debit; a refused debit records nothing"
    );
    // Credits are never refused.
    assert_eq!(credit(&app, "c1", "b", 1.0).await["success"], true);
    assert_eq!(current(&app, id).await, -4);
}

async fn movements_are_idempotent(app: TestApp) {
    let balance = create_balance(
        &app,
        json!({"customerId": "c1", "name": "b", "initialBalance": 10}),
    )
    .await;
    let id = balance["id"].as_str().unwrap();
    create_balance(
        &app,
        json!({"customerId": "c1", "name": "other", "initialBalance": 10}),
    )
    .await;
    let move_on = |name: &'static str, kind: &str, key: &str, amount: f64| {
        let request = axum::http::Request::builder()
            .method(Method::POST)
            .uri(format!("/v1/balances/{kind}"))
            .header(
                "authorization",
                format!("Bearer {}", crate::common::ADMIN_KEY),
            )
            .header("content-type", "application/json")
            .header("idempotency-key", key)
            .body(axum::body::Body::from(
                json!({"customerId": "c1", "name": name, "amount": amount}).to_string(),
            ))
            .unwrap();
        app.send(request)
    };
    let move_with_key = |kind: &str, key: &str, amount: f64| move_on("b", kind, key, amount);
    let send = |amount: f64| move_with_key("debit", "charge-1", amount);
    let first = send(4.0).await;
    assert_eq!(first.header("idempotent-replayed"), None);
    let second = send(4.0).await;
    assert_eq!(second.header("idempotent-replayed"), Some("true"));
    assert_eq!(
        second.body["transaction"]["id"],
        first.body["transaction"]["id"]
    );
    assert_eq!(second.body["transaction"]["balanceAfter"], 6);
    // The first request wins even when a repeat says something else.
    let third = send(1.0).await;
    assert_eq!(third.body["transaction"]["amount"], 4);
    assert_eq!(current(&app, id).await, 6);
    assert_eq!(transaction_count(&app, id).await, 2);
    // The same key on an event is a different key.
    app.post(
        "/v1/events/record",
        json!({"customerId": "c1", "eventType": "e", "idempotencyKey": "charge-1"}),
    )
    .await
    .assert_status(200);

    // A refused debit is remembered under its key: after a credit, its repeat is refused
    // again (the first answer), not applied.
    let refused = move_with_key("debit", "charge-2", 50.0).await;
    assert_eq!(refused.assert_status(200)["success"], false);
    let error = refused.body["error"].clone();
    assert_eq!(error, "insufficient balance: 6 available, 50 requested");
    move_with_key("credit", "top-up-1", 100.0)
        .await
        .assert_status(200);
    let repeat = move_with_key("debit", "charge-2", 3.0).await;
    assert_eq!(repeat.assert_status(200)["success"], false);
    assert_eq!(repeat.header("idempotent-replayed"), Some("true"));
    assert_eq!(
        repeat.body["error"], error,
        "as first answered, not 3 requested"
    );
    assert_eq!(
        repeat.body["balance"]["currentBalance"], 106,
        "as it is now"
    );
    assert_eq!(current(&app, id).await, 106);

    // A key belongs to one kind of movement: a credit's key on a debit (or the other way
    // round) is a conflict, and moves nothing.
    move_with_key("debit", "top-up-1", 1.0)
        .await
        .assert_error(409, "conflict");
    move_with_key("credit", "charge-1", 1.0)
        .await
        .assert_error(409, "conflict");
    move_with_key("credit", "charge-2", 1.0)
        .await
        .assert_error(409, "conflict");
    // And to one balance: another balance's movement with it is a conflict too.
    for key in ["charge-1", "charge-2"] {
        move_on("other", "debit", key, 1.0)
            .await
            .assert_error(409, "conflict");
    }
    assert_eq!(current(&app, id).await, 106);
    assert_eq!(transaction_count(&app, id).await, 3);
}

async fn transactions_page_newest_first(app: TestApp) {
    let balance = create_balance(
        &app,
        json!({"customerId": "c1", "name": "b", "initialBalance": 1}),
    )
    .await;
    let id = balance["id"].as_str().unwrap();
    for amount in [2.0, 3.0, 4.0, 5.0] {
        credit(&app, "c1", "b", amount).await;
    }
    let mut amounts = Vec::new();
    let mut path = format!("/v1/balances/{id}/transactions?limit=2");
    loop {
        let page = app.get(&path).await;
        let page = page.assert_status(200);
        for transaction in page["data"].as_array().unwrap() {
            amounts.push(transaction["amount"].as_i64().unwrap());
        }
        if page["hasMore"] == false {
            assert_eq!(page["nextCursor"], Value::Null);
            break;
        }
        path = format!(
            "/v1/balances/{id}/transactions?limit=2&cursor={}",
            page["nextCursor"].as_str().unwrap()
        );
    }
    assert_eq!(amounts, [5, 4, 3, 2, 1]);
    let newest = app
        .get(&format!("/v1/balances/{id}/transactions?limit=1"))
        .await;
    assert_eq!(newest.body["data"][0]["balanceAfter"], 15);
    assert_eq!(newest.body["data"][0]["description"], "");
}

async fn updates_keep_the_amount_and_its_history(app: TestApp) {
    let balance = create_balance(
        &app,
        json!({"customerId": "c1", "name": "prepaid", "initialBalance": 10}),
    )
    .await;
    let id = balance["id"].as_str().unwrap();
    create_balance(&app, json!({"customerId": "c1", "name": "taken"})).await;
    assert_eq!(debit(&app, "c1", "prepaid", 10.0).await["success"], true);
    assert_eq!(debit(&app, "c1", "prepaid", 5.0).await["success"], false);

    // Raising the overdraft lets the same debit through; the amount and history stay.
    let updated = app
        .put(
            &format!("/v1/balances/{id}"),
            json!({"name": "credits", "unit": "usd", "minimumBalance": -5, "customerId": "c1"}),
        )
        .await;
    let body = updated.assert_status(200);
    assert_eq!(body["name"], "credits");
    assert_eq!(body["unit"], "usd");
    assert_eq!(body["currentBalance"], 0);
    assert_eq!(body["availableBalance"], 5);
    assert_eq!(body["createdAt"], balance["createdAt"]);
    assert_eq!(debit(&app, "c1", "credits", 5.0).await["success"], true);
    assert_eq!(transaction_count(&app, id).await, 3);
    // The old name is free, the new one taken.
    app.post(
        "/v1/balances/debit",
        json!({"customerId": "c1", "name": "prepaid", "amount": 1}),
    )
    .await
    .assert_error(404, "balance_not_found");
    create_balance(&app, json!({"customerId": "c1", "name": "prepaid"})).await;

    app.put(&format!("/v1/balances/{id}"), json!({"name": "taken"}))
        .await
        .assert_error(409, "already_exists");
    for (body, code, field) in [
        (
            json!({"customerId": "c2"}),
            "invalid_field_value",
            "customerId",
        ),
        (
            json!({"meterId": "mtr_x"}),
            "invalid_field_value",
            "meterId",
        ),
        (
            json!({"initialBalance": 100}),
            "invalid_field_value",
            "initialBalance",
        ),
        (
            json!({"minimumBalance": "low"}),
            "invalid_field_value",
            "minimumBalance",
        ),
        (json!({"name": ""}), "invalid_field_value", "name"),
    ] {
        app.put(&format!("/v1/balances/{id}"), body)
            .await
            .assert_field_error(code, field);
    }
    let unchanged = app.get(&format!("/v1/balances/{id}")).await;
    assert_eq!(unchanged.body["name"], "credits");
    assert_eq!(unchanged.body["minimumBalance"], -5);
    assert_eq!(unchanged.body["currentBalance"], -5);
    app.put(
        "/v1/balances/bal_01ARZ3NDEKTSV4RRFFQ69G5FAV",
        json!({"name": "x"}),
    )
    .await
    .assert_error(404, "balance_not_found");
}

async fn metered_balances_are_debited_with_every_counted_event(app: TestApp) {
    let meter = app
        .meter(
            json!({"name": "tokens", "aggregation": "sum", "field": "values.tokens",
            "eventFilter": {"eventType": "llm"}}),
        )
        .await;
    let balance = create_balance(
        &app,
        json!({"customerId": "c1", "name": "tokens", "initialBalance": 100, "meterId": meter}),
    )
    .await;
    let id = balance["id"].as_str().unwrap();
    assert_eq!(balance["meterId"], meter.as_str());
    let gpt4 = create_balance(
        &app,
        json!({"customerId": "c1", "name": "gpt-4 tokens", "initialBalance": 1000,
            "meterId": meter, "dimensionFilters": {"model": "gpt-4"}}),
    )
    .await;
    let gpt4_id = gpt4["id"].as_str().unwrap();
    let event = |tokens: f64, model: &str| {
        json!({"customerId": "c1", "eventType": "llm", "values": {"tokens": tokens},
            "dimensions": {"model": model}})
    };

    app.post("/v1/events/record", event(30.0, "gpt-3"))
        .await
        .assert_status(200);
    assert_eq!(current(&app, id).await, 70);
    assert_eq!(
        current(&app, gpt4_id).await,
        1000,
        "its filter did not match"
    );
    // Another event type is not what the meter counts.
    app.post(
        "/v1/events/record",
        json!({"customerId": "c1", "eventType": "img", "values": {"tokens": 5}}),
    )
    .await
    .assert_status(200);
    assert_eq!(current(&app, id).await, 70);

    // A consume the balance cannot cover is refused and records nothing.
    let refused = app.post("/v1/limits/consume", event(80.0, "gpt-4")).await;
    let body = refused.assert_status(200);
    assert_eq!(body["allowed"], false);
    assert_eq!(
        body["retryAfter"],
        Value::Null,
        "waiting does not refill it"
    );
    assert_eq!(refused.header("retry-after"), None);
    let states = body["balances"].as_array().unwrap();
    let state = states.iter().find(|b| b["id"] == id).unwrap();
    assert_eq!(
        state,
        &json!({"id": id, "name": "tokens", "unit": "credits", "currentBalance": 70,
            "availableBalance": 70, "reserved": 0, "requestedAmount": 80, "sufficient": false})
    );
    let other = states.iter().find(|b| b["id"] == gpt4_id).unwrap();
    assert_eq!(other["sufficient"], true);
    assert_eq!(current(&app, id).await, 70);
    assert_eq!(current(&app, gpt4_id).await, 1000);
    let events = app.get("/v1/events?customerId=c1").await;
    assert_eq!(events.body["data"].as_array().unwrap().len(), 2);

    // One that fits debits every balance it matches, in the same step.
    let allowed = app.post("/v1/limits/consume", event(70.0, "gpt-4")).await;
    let body = allowed.assert_status(200);
    assert_eq!(body["allowed"], true);
    let state = body["balances"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["id"] == id)
        .unwrap()
        .clone();
    assert_eq!(state["currentBalance"], 0);
    assert_eq!(state["sufficient"], true);
    assert_eq!(current(&app, id).await, 0);
    assert_eq!(current(&app, gpt4_id).await, 930);

    // Recording is unconditional: usage that happened is charged.
    app.post("/v1/events/record", event(5.0, "gpt-3"))
        .await
        .assert_status(200);
    assert_eq!(current(&app, id).await, -5);
    // So are batches, each event on its own.
    let batch = app
        .post(
            "/v1/events/batch",
            json!({"events": [event(2.0, "gpt-3"), event(3.0, "gpt-4")]}),
        )
        .await;
    assert_eq!(batch.assert_status(200)["count"], 2);
    assert_eq!(current(&app, id).await, -10);
    assert_eq!(current(&app, gpt4_id).await, 927);
    // Metered debits are not transactions: only the initial credit is listed.
    assert_eq!(transaction_count(&app, id).await, 1);

    // A consume that no balance covers answers `balances: []`.
    let plain = app
        .post(
            "/v1/limits/consume",
            json!({"customerId": "c2", "eventType": "llm", "values": {"tokens": 1}}),
        )
        .await;
    assert_eq!(plain.assert_status(200)["balances"], json!([]));

    // Once its meter is gone, the balance stays and is no longer debited.
    app.delete(&format!("/v1/meters/{meter}"))
        .await
        .assert_status(200);
    app.post("/v1/events/record", event(5.0, "gpt-3"))
        .await
        .assert_status(200);
    assert_eq!(current(&app, id).await, -10);
}

async fn reservations_hold_on_metered_balances(app: TestApp) {
    let id: &str = &metered_balance(&app, 100).await;
    let reserve = |tokens: f64| json!({"customerId": "c1", "eventType": "llm.call", "values": {"tokens": tokens}});
    let held = app.post("/v1/reservations", reserve(60.0)).await;
    let body = held.assert_status(200);
    assert_eq!(body["allowed"], true);
    assert_eq!(body["balances"][0]["reserved"], 60);
    assert_eq!(body["balances"][0]["currentBalance"], 100);
    let reservation = body["reservation"]["id"].as_str().unwrap().to_string();
    assert_eq!(current(&app, id).await, 100, "a hold is not a debit");

    // Other holds count: 100 − 60 leaves 40.
    let refused = app.post("/v1/reservations", reserve(41.0)).await;
    assert_eq!(refused.assert_status(200)["allowed"], false);
    let consume = app
        .post(
            "/v1/limits/consume",
            json!({"customerId": "c1", "eventType": "llm.call", "values": {"tokens": 41}}),
        )
        .await;
    assert_eq!(consume.assert_status(200)["allowed"], false);

    // Commit debits the actual cost and drops the hold.
    app.post(
        &format!("/v1/reservations/{reservation}/commit"),
        json!({"values": {"tokens": 50}}),
    )
    .await
    .assert_status(200);
    assert_eq!(current(&app, id).await, 50);
    let consume = app
        .post(
            "/v1/limits/consume",
            json!({"customerId": "c1", "eventType": "llm.call", "values": {"tokens": 50}}),
        )
        .await;
    assert_eq!(consume.assert_status(200)["allowed"], true);
    assert_eq!(current(&app, id).await, 0);
}

async fn concurrent_debits_and_consumes_never_overdraw(app: TestApp) {
    let id: &str = &metered_balance(&app, 10).await;
    let debits = (0..12).map(|_| {
        app.post(
            "/v1/balances/debit",
            json!({"customerId": "c1", "name": "b", "amount": 1}),
        )
    });
    let consumes = (0..12).map(|_| {
        app.post(
            "/v1/limits/consume",
            json!({"customerId": "c1", "eventType": "llm.call", "values": {"tokens": 1}}),
        )
    });
    let (debits, consumes) = tokio::join!(
        futures_util::future::join_all(debits),
        futures_util::future::join_all(consumes)
    );
    let debited = debits
        .iter()
        .filter(|r| r.assert_status(200)["success"] == true)
        .count();
    let consumed = consumes
        .iter()
        .filter(|r| r.assert_status(200)["allowed"] == true)
        .count();
    assert_eq!(debited + consumed, 10, "exactly the balance was spent");
    assert_eq!(current(&app, id).await, 0);
    assert_eq!(transaction_count(&app, id).await, 1 + debited);
}

async fn deleting_a_customer_takes_its_balances(app: TestApp) {
    let balance = create_balance(
        &app,
        json!({"customerId": "c1", "name": "b", "initialBalance": 10}),
    )
    .await;
    let id = balance["id"].as_str().unwrap();
    app.delete("/v1/customers/c1").await.assert_status(200);
    app.get(&format!("/v1/balances/{id}"))
        .await
        .assert_error(404, "balance_not_found");
    app.get("/v1/customers/c1/balances")
        .await
        .assert_error(404, "customer_not_found");
    app.post("/v1/customers", json!({"id": "c1"}))
        .await
        .assert_status(201);
    let again = create_balance(&app, json!({"customerId": "c1", "name": "b"})).await;
    assert_eq!(again["currentBalance"], 0);
    assert_eq!(
        app.get("/v1/customers/c1/balances").await.body["balances"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
}

async fn a_node_with_a_stale_cache_moves_no_deleted_balance(app: TestApp) {
    let balance = create_balance(
        &app,
        json!({"customerId": "c1", "name": "b", "initialBalance": 10}),
    )
    .await;
    // A second node that loaded the balance and never hears of its deletion.
    let stale = app.node_that_dies_after_counting().await;
    assert_eq!(
        stale.get("/v1/customers/c1/balances").await.body["balances"][0]["id"],
        balance["id"]
    );
    app.delete(&format!("/v1/balances/{}", balance["id"].as_str().unwrap()))
        .await
        .assert_status(200);
    for route in [
        "/v1/balances/debit",
        "/v1/balances/credit",
        "/v1/balances/check",
    ] {
        stale
            .post(route, json!({"customerId": "c1", "name": "b", "amount": 1}))
            .await
            .assert_error(404, "balance_not_found");
    }
}

async fn scopes_of_balance_routes(app: TestApp) {
    let mut keys = std::collections::HashMap::new();
    for scope in ["read", "ingest"] {
        let created = app
            .post("/v1/api-keys", json!({"name": scope, "scopes": [scope]}))
            .await;
        keys.insert(scope, created.body["key"].as_str().unwrap().to_string());
    }
    let balance = create_balance(
        &app,
        json!({"customerId": "c1", "name": "b", "initialBalance": 10}),
    )
    .await;
    let id = balance["id"].as_str().unwrap();
    let movement = json!({"customerId": "c1", "name": "b", "amount": 1});
    let app = &app;
    let keys = &keys;
    let call = |key: &str, method: Method, path: String, body: Option<Value>| {
        let key = keys[key].clone();
        async move { app.call_as(Some(&key), method, &path, body).await }
    };
    call(
        "ingest",
        Method::POST,
        "/v1/balances/debit".into(),
        Some(movement.clone()),
    )
    .await
    .assert_status(200);
    call(
        "ingest",
        Method::POST,
        "/v1/balances/credit".into(),
        Some(movement.clone()),
    )
    .await
    .assert_error(403, "insufficient_permissions");
    call(
        "ingest",
        Method::POST,
        "/v1/balances".into(),
        Some(json!({"customerId": "c1", "name": "x"})),
    )
    .await
    .assert_error(403, "insufficient_permissions");
    call(
        "read",
        Method::POST,
        "/v1/balances/debit".into(),
        Some(movement.clone()),
    )
    .await
    .assert_error(403, "insufficient_permissions");
    call(
        "read",
        Method::POST,
        "/v1/balances/check".into(),
        Some(movement.clone()),
    )
    .await
    .assert_status(200);
    call("read", Method::GET, format!("/v1/balances/{id}"), None)
        .await
        .assert_status(200);
    call(
        "read",
        Method::GET,
        format!("/v1/balances/{id}/transactions"),
        None,
    )
    .await
    .assert_status(200);
    call("ingest", Method::DELETE, format!("/v1/balances/{id}"), None)
        .await
        .assert_error(403, "insufficient_permissions");
    assert_eq!(current(app, id).await, 9);
}

async fn bad_balance_input(app: TestApp) {
    let max_meter = app
        .meter(json!({"name": "peak", "aggregation": "max", "field": "values.tokens"}))
        .await;
    for (body, code, field) in [
        (json!({"name": "b"}), "missing_required_field", "customerId"),
        (
            json!({"customerId": "c1"}),
            "missing_required_field",
            "name",
        ),
        (
            json!({"customerId": "c1", "name": ""}),
            "invalid_field_value",
            "name",
        ),
        (
            json!({"customerId": "bad id", "name": "b"}),
            "invalid_field_value",
            "customerId",
        ),
        (
            json!({"customerId": "c1", "name": "b", "initialBalance": -1}),
            "invalid_field_value",
            "initialBalance",
        ),
        (
            json!({"customerId": "c1", "name": "b", "initialBalance": "10"}),
            "invalid_field_value",
            "initialBalance",
        ),
        (
            json!({"customerId": "c1", "name": "b", "minimumBalance": 2e15}),
            "invalid_field_value",
            "minimumBalance",
        ),
        (
            json!({"customerId": "c1", "name": "b", "meterId": max_meter}),
            "invalid_field_value",
            "meterId",
        ),
        (
            json!({"customerId": "c1", "name": "b", "dimensionFilters": {"model": "x"}}),
            "invalid_field_value",
            "dimensionFilters",
        ),
        (
            json!({"customerId": "c1", "name": "b", "colour": "red"}),
            "invalid_field_value",
            "colour",
        ),
    ] {
        app.post("/v1/balances", body.clone())
            .await
            .assert_field_error(code, field);
    }
    app.post(
        "/v1/balances",
        json!({"customerId": "c1", "name": "b", "meterId": "mtr_nothing"}),
    )
    .await
    .assert_error(404, "meter_not_found");
    // Rejected creations changed nothing: no customer, no balance.
    app.get("/v1/customers/c1")
        .await
        .assert_error(404, "customer_not_found");

    create_balance(
        &app,
        json!({"customerId": "c1", "name": "b", "initialBalance": 5}),
    )
    .await;
    for route in ["/v1/balances/credit", "/v1/balances/debit"] {
        for (body, code, field) in [
            (
                json!({"customerId": "c1", "name": "b"}),
                "missing_required_field",
                "amount",
            ),
            (
                json!({"customerId": "c1", "name": "b", "amount": 0}),
                "invalid_field_value",
                "amount",
            ),
            (
                json!({"customerId": "c1", "name": "b", "amount": -3}),
                "invalid_field_value",
                "amount",
            ),
            (
                json!({"customerId": "c1", "name": "b", "amount": 1, "description": "d".repeat(4097)}),
                "invalid_field_value",
                "description",
            ),
            (
                json!({"customerId": "c1", "name": "b", "amount": 1, "reference": 7}),
                "invalid_field_value",
                "reference",
            ),
        ] {
            app.post(route, body).await.assert_field_error(code, field);
        }
        // Unknown balances: names never matched, and customers never created.
        app.post(
            route,
            json!({"customerId": "c1", "name": "nope", "amount": 1}),
        )
        .await
        .assert_error(404, "balance_not_found");
        app.post(route, json!({"customerId": "c9", "name": "b", "amount": 1}))
            .await
            .assert_error(404, "balance_not_found");
    }
    app.post(
        "/v1/balances/check",
        json!({"customerId": "c1", "name": "b", "amount": -1}),
    )
    .await
    .assert_field_error("invalid_field_value", "amount");
    app.post(
        "/v1/balances/debit",
        json!({"customerId": "c1", "name": "b", "amount": 1}),
    )
    .await
    .assert_status(200);
    let balances = app.get("/v1/customers/c1/balances").await;
    let id = balances.body["balances"][0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(current(&app, &id).await, 4, "only the valid debit moved it");
    for path in [
        format!("/v1/balances/{id}/transactions?limit=0"),
        format!("/v1/balances/{id}/transactions?cursor=%%%"),
        format!("/v1/balances/{id}/transactions?colour=red"),
    ] {
        let response = app.get(&path).await;
        assert_eq!(response.status.as_u16(), 400, "{path}: {response:?}");
    }
    for path in [
        "/v1/balances/bal_%20",
        "/v1/balances/nothing",
        "/v1/balances/bal_01ARZ3NDEKTSV4RRFFQ69G5FAV",
        "/v1/balances/bal_01ARZ3NDEKTSV4RRFFQ69G5FAV/transactions",
    ] {
        app.get(path).await.assert_error(404, "balance_not_found");
    }
    app.get("/v1/customers/nobody/balances")
        .await
        .assert_error(404, "customer_not_found");
}

/// A node that has not heard of a balance's deletion still debits its spent counter for the
/// events it records; the counter then expires with the deletion's grace instead of living
/// forever in Redis.
#[tokio::test]
async fn a_deleted_balance_leaves_no_lasting_key_in_redis() {
    use crate::common::shared_redis;

    let (app, prefix) = TestApp::redis_with_prefix().await;
    let id: &str = &metered_balance(&app, 10).await;
    let stale = app.node_that_dies_after_counting().await;
    assert_eq!(
        stale.get("/v1/customers/c1/balances").await.body["balances"][0]["id"],
        id
    );
    app.delete(&format!("/v1/balances/{id}"))
        .await
        .assert_status(200);
    stale
        .post(
            "/v1/events/record",
            json!({"customerId": "c1", "eventType": "llm", "values": {"tokens": 3}}),
        )
        .await
        .assert_status(200);

    let server = shared_redis();
    let keys: Vec<String> = server.query(::redis::cmd("KEYS").arg(format!("{prefix}:*{id}*")));
    assert_eq!(keys.len(), 1, "only the spent counter is left: {keys:?}");
    let spent: String = server.query(::redis::cmd("GET").arg(&keys[0]));
    assert_eq!(spent, "3", "the stale node debited the deleted balance");
    let ttl_ms: i64 = server.query(::redis::cmd("PTTL").arg(&keys[0]));
    assert!(
        (1..=120_000).contains(&ttl_ms),
        "{} expires in {ttl_ms} ms",
        keys[0]
    );
}
