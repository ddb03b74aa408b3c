use quotagate::storage::{ConfigOp, Guard, Kind};
use serde_json::json;

use crate::common::{TestApp, state};
use crate::every_store;

every_store!(
    create_get_and_conflict,
    defaults_and_aliases,
    put_updates_partially_and_creates,
    delete_removes_customer_and_its_limits,
    a_deleted_customer_leaves_no_usage_behind,
    a_check_reads_no_usage_of_an_unknown_customer,
    list_pages_are_stable,
    bad_customer_input,
);

/// A check for the deleted ID answers from the default limits with usage 0 (API.md §1), and
/// a customer created again under it starts from zero, with an empty event log.
async fn a_deleted_customer_leaves_no_usage_behind(app: TestApp) {
    let meter = app.tokens_meter().await;
    let daily = app
        .limit(json!({"name": "d", "meterId": meter, "limitValue": 10, "period": "day"}))
        .await;
    let ever = app
        .limit(json!({"name": "a", "meterId": meter, "limitValue": 100, "period": "all_time"}))
        .await;
    let tokens =
        |n: u32| json!({"customerId": "gone", "eventType": "llm", "values": {"tokens": n}});
    let held = app.post("/v1/reservations", tokens(1)).await;
    let reservation = held.assert_status(200)["reservation"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    app.post("/v1/events/record", tokens(10))
        .await
        .assert_status(200);
    app.delete("/v1/customers/gone").await.assert_status(200);

    let check = app
        .post("/v1/limits/check", json!({"customerId": "gone"}))
        .await;
    assert_eq!(check.body["allowed"], true, "{}", check.body);
    assert_eq!(state(&check.body, &daily)["used"], 0);
    assert_eq!(state(&check.body, &ever)["used"], 0);
    let events = app.get("/v1/events?customerId=gone").await;
    assert_eq!(events.assert_status(200)["data"], json!([]));

    let again = app.post("/v1/limits/consume", tokens(4)).await;
    let again = again.assert_status(200);
    assert_eq!(again["allowed"], true, "{again}");
    assert_eq!(state(again, &daily)["used"], 4);
    assert_eq!(state(again, &ever)["used"], 4);
    // The old hold went with the customer: it cannot be committed to the new one.
    app.post(&format!("/v1/reservations/{reservation}/commit"), json!({}))
        .await
        .assert_error(404, "reservation_not_found");
    assert_eq!(state(again, &daily)["reserved"], 0);
}

/// Usage whose customer storage no longer knows (its delete could not forget it) is read by
/// no check: an unknown customer's usage is 0.
async fn a_check_reads_no_usage_of_an_unknown_customer(app: TestApp) {
    let meter = app.tokens_meter().await;
    let daily = app
        .limit(json!({"name": "d", "meterId": meter, "limitValue": 10, "period": "day"}))
        .await;
    app.post(
        "/v1/events/record",
        json!({"customerId": "orphan", "eventType": "llm", "values": {"tokens": 10}}),
    )
    .await
    .assert_status(200);
    let delete = ConfigOp::Delete {
        kind: Kind::Customer,
        id: "orphan".into(),
        guard: Guard::Always,
    };
    app.store.apply(&[delete]).await.unwrap().unwrap();

    let fresh_node = app.node_that_dies_after_counting().await;
    let check = fresh_node
        .post("/v1/limits/check", json!({"customerId": "orphan"}))
        .await;
    assert_eq!(check.body["allowed"], true, "{}", check.body);
    assert_eq!(state(&check.body, &daily)["used"], 0);
}

async fn create_get_and_conflict(app: TestApp) {
    let created = app
        .post(
            "/v1/customers",
            json!({"id": "cust_1", "name": "Acme", "email": "ops@acme.io", "timezone": "America/New_York",
                   "billingCycleStart": "2026-03-15", "metadata": {"plan": "pro"}}),
        )
        .await;
    let body = created.assert_status(201);
    assert_eq!(body["id"], "cust_1");
    assert_eq!(body["timezone"], "America/New_York");
    assert_eq!(body["billingCycleStart"], "2026-03-15");
    assert_eq!(body["metadata"]["plan"], "pro");
    assert!(body["createdAt"].as_str().unwrap().ends_with('Z'));

    let fetched = app.get("/v1/customers/cust_1").await;
    assert_eq!(fetched.assert_status(200), body);

    app.post("/v1/customers", json!({"id": "cust_1"}))
        .await
        .assert_error(409, "already_exists");
    app.get("/v1/customers/nobody")
        .await
        .assert_error(404, "customer_not_found");
}

async fn defaults_and_aliases(app: TestApp) {
    let body = app
        .post("/v1/customers", json!({"externalId": "user-42@x.io"}))
        .await;
    let body = body.assert_status(201);
    assert_eq!(body["id"], "user-42@x.io");
    assert_eq!(body["timezone"], "UTC");
    assert_eq!(body["name"], serde_json::Value::Null);
    assert_eq!(
        body["billingCycleStart"], body["createdAt"],
        "default anchor is creation time"
    );
}

async fn put_updates_partially_and_creates(app: TestApp) {
    let created = app
        .put("/v1/customers/c-put", json!({"name": "First"}))
        .await;
    assert_eq!(created.assert_status(201)["name"], "First");
    let updated = app
        .put("/v1/customers/c-put", json!({"timezone": "Asia/Kolkata"}))
        .await;
    let body = updated.assert_status(200);
    assert_eq!(body["name"], "First", "absent fields are kept");
    assert_eq!(body["timezone"], "Asia/Kolkata");
    assert_eq!(body["createdAt"], created.body["createdAt"]);
    app.put("/v1/customers/c-put", json!({"timezone": "Nowhere/City"}))
        .await
        .assert_field_error("invalid_field_value", "timezone");
    let after = app.get("/v1/customers/c-put").await;
    assert_eq!(
        after.body["timezone"], "Asia/Kolkata",
        "a rejected update changes nothing"
    );
}

async fn delete_removes_customer_and_its_limits(app: TestApp) {
    let meter = app.tokens_meter().await;
    let own = app
        .post("/v1/limits", json!({"name": "own", "meterId": meter, "limitValue": 10, "period": "day", "customerId": "c-del"}))
        .await;
    let own_id = own.assert_status(201)["id"].as_str().unwrap().to_string();
    let default = app
        .post(
            "/v1/limits",
            json!({"name": "default", "meterId": meter, "limitValue": 10, "period": "day"}),
        )
        .await;
    let default_id = default.assert_status(201)["id"]
        .as_str()
        .unwrap()
        .to_string();

    let deleted = app.delete("/v1/customers/c-del").await;
    assert_eq!(
        deleted.assert_status(200),
        &json!({"id": "c-del", "deleted": true})
    );
    app.get("/v1/customers/c-del")
        .await
        .assert_error(404, "customer_not_found");
    app.get(&format!("/v1/limits/{own_id}"))
        .await
        .assert_error(404, "limit_not_found");
    app.get(&format!("/v1/limits/{default_id}"))
        .await
        .assert_status(200);
    app.delete("/v1/customers/c-del")
        .await
        .assert_error(404, "customer_not_found");
}

async fn list_pages_are_stable(app: TestApp) {
    for i in 0..7 {
        app.post("/v1/customers", json!({"id": format!("page-{i}")}))
            .await
            .assert_status(201);
    }
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let path = match &cursor {
            Some(cursor) => format!("/v1/customers?limit=3&cursor={cursor}"),
            None => "/v1/customers?limit=3".to_string(),
        };
        let page = app.get(&path).await;
        let body = page.assert_status(200).clone();
        pages += 1;
        // An item deleted mid-scan must not disturb the rest of the scan.
        if pages == 1 {
            app.delete("/v1/customers/page-4").await.assert_status(200);
        }
        for item in body["data"].as_array().unwrap() {
            seen.push(item["id"].as_str().unwrap().to_string());
        }
        if !body["hasMore"].as_bool().unwrap() {
            assert!(body["nextCursor"].is_null());
            break;
        }
        cursor = Some(body["nextCursor"].as_str().unwrap().to_string());
    }
    assert_eq!(
        seen,
        vec!["page-0", "page-1", "page-2", "page-3", "page-5", "page-6"]
    );
    assert_eq!(pages, 2);
}

async fn bad_customer_input(app: TestApp) {
    app.post("/v1/customers", json!({"name": "no id"}))
        .await
        .assert_field_error("missing_required_field", "id");
    app.post("/v1/customers", json!({"id": "has space"}))
        .await
        .assert_field_error("invalid_field_value", "id");
    app.post("/v1/customers", json!({"id": "default"}))
        .await
        .assert_field_error("invalid_field_value", "id");
    app.post("/v1/customers", json!({"id": "x".repeat(129)}))
        .await
        .assert_field_error("invalid_field_value", "id");
    app.post("/v1/customers", json!({"id": "c", "timezone": "Mars/Base"}))
        .await
        .assert_field_error("invalid_field_value", "timezone");
    app.post(
        "/v1/customers",
        json!({"id": "c", "billingCycleStart": "yesterday"}),
    )
    .await
    .assert_field_error("invalid_field_value", "billingCycleStart");
    app.post("/v1/customers", json!({"id": "c", "email": "nope"}))
        .await
        .assert_field_error("invalid_field_value", "email");
    app.post("/v1/customers", json!({"id": "c", "name": "n".repeat(257)}))
        .await
        .assert_field_error("invalid_field_value", "name");
    app.post(
        "/v1/customers",
        json!({"id": "c", "metadata": {"blob": "x".repeat(17 * 1024)}}),
    )
    .await
    .assert_field_error("invalid_field_value", "metadata");
    app.post("/v1/customers", json!({"id": "c", "colour": "red"}))
        .await
        .assert_field_error("invalid_field_value", "colour");
    app.post("/v1/customers", json!({"id": 5}))
        .await
        .assert_field_error("invalid_field_value", "id");
    app.get("/v1/customers?limit=0")
        .await
        .assert_field_error("invalid_field_value", "limit");
    app.get("/v1/customers?cursor=@@")
        .await
        .assert_field_error("invalid_field_value", "cursor");
    app.get("/v1/customers?sort=asc")
        .await
        .assert_field_error("invalid_field_value", "sort");
    let twice = app.get("/v1/customers?limit=1&limit=2").await;
    twice.assert_field_error("invalid_field_value", "limit");
    assert!(
        twice.body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("more than once"),
        "{twice:?}"
    );
    // Probes outside the API keep working whatever query a prober adds.
    app.get("/healthz?probe=1").await.assert_status(200);
    // Routes that take no query refuse one too, before doing anything.
    app.put("/v1/customers/q?dryRun=1", json!({"name": "Q"}))
        .await
        .assert_field_error("invalid_field_value", "dryRun");
    app.get("/v1/customers/q?expand=limits")
        .await
        .assert_field_error("invalid_field_value", "expand");
    app.delete("/v1/customers/q?force=true")
        .await
        .assert_field_error("invalid_field_value", "force");
    app.post("/v1/limits/check?customerId=q", json!({"customerId": "q"}))
        .await
        .assert_field_error("invalid_field_value", "customerId");
    app.get("/v1/customers/bad%20id")
        .await
        .assert_error(404, "customer_not_found");
    app.get(&format!("/v1/customers/{}", "x".repeat(200)))
        .await
        .assert_error(404, "customer_not_found");
    // Nothing above created anything.
    app.get("/v1/customers/c")
        .await
        .assert_error(404, "customer_not_found");
    let list = app.get("/v1/customers").await;
    assert_eq!(list.assert_status(200)["data"], json!([]));
}
