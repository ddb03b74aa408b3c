use serde_json::json;

use crate::common::TestApp;
use crate::every_store;

every_store!(
    create_get_list,
    update_only_name_and_description,
    delete_cascades_to_limits,
    bad_meter_input,
);

async fn create_get_list(app: TestApp) {
    let created = app
        .post(
            "/v1/meters",
            json!({"name": "gpt4 tokens", "description": "tokens", "aggregation": "sum", "field": "values.tokens",
                   "eventFilter": {"eventType": "llm.call", "dimensions": {"model": "gpt-4"}}}),
        )
        .await;
    let body = created.assert_status(201).clone();
    let id = body["id"].as_str().unwrap();
    assert!(id.starts_with("mtr_"));
    assert_eq!(body["aggregation"], "sum");
    assert_eq!(body["field"], "values.tokens");
    assert_eq!(
        body["eventFilter"],
        json!({"eventType": "llm.call", "dimensions": {"model": "gpt-4"}})
    );
    assert_eq!(
        app.get(&format!("/v1/meters/{id}"))
            .await
            .assert_status(200),
        &body
    );

    let count = app
        .post(
            "/v1/meters",
            json!({"name": "calls", "aggregation": "count", "field": "*"}),
        )
        .await;
    assert_eq!(
        count.assert_status(201)["eventFilter"],
        json!({"eventType": null, "dimensions": {}})
    );
    let list = app.get("/v1/meters?limit=1").await;
    let list = list.assert_status(200);
    assert_eq!(list["data"].as_array().unwrap().len(), 1);
    assert_eq!(list["hasMore"], true);
    let next = app
        .get(&format!(
            "/v1/meters?limit=1&cursor={}",
            list["nextCursor"].as_str().unwrap()
        ))
        .await;
    assert_eq!(next.assert_status(200)["hasMore"], false);
    assert_ne!(next.body["data"][0]["id"], list["data"][0]["id"]);
}

async fn update_only_name_and_description(app: TestApp) {
    let id = app.tokens_meter().await;
    let path = format!("/v1/meters/{id}");
    let updated = app
        .put(
            &path,
            json!({"name": "renamed", "description": "d", "aggregation": "sum"}),
        )
        .await;
    let body = updated.assert_status(200);
    assert_eq!(body["name"], "renamed");
    assert_eq!(body["description"], "d");
    app.put(&path, json!({"aggregation": "max"}))
        .await
        .assert_field_error("invalid_field_value", "aggregation");
    app.put(&path, json!({"field": "values.other"}))
        .await
        .assert_field_error("invalid_field_value", "field");
    app.put(&path, json!({"eventFilter": {"eventType": "x"}}))
        .await
        .assert_field_error("invalid_field_value", "eventFilter");
    app.put(
        "/v1/meters/mtr_00000000000000000000000000",
        json!({"name": "x"}),
    )
    .await
    .assert_error(404, "meter_not_found");
    assert_eq!(app.get(&path).await.body["name"], "renamed");
}

async fn delete_cascades_to_limits(app: TestApp) {
    let meter = app.tokens_meter().await;
    let other = app.tokens_meter().await;
    for (meter_id, customer) in [(&meter, None), (&meter, Some("c1")), (&other, None)] {
        app.post(
            "/v1/limits",
            json!({"name": "l", "meterId": meter_id, "limitValue": 5, "period": "hour", "customerId": customer}),
        )
        .await
        .assert_status(201);
    }
    let deleted = app.delete(&format!("/v1/meters/{meter}")).await;
    assert_eq!(
        deleted.assert_status(200),
        &json!({"id": meter, "deleted": true, "deletedLimits": 2})
    );
    let limits = app.get("/v1/limits").await;
    let data = limits.body["data"].as_array().unwrap();
    assert_eq!(data.len(), 1);
    assert_eq!(data[0]["meterId"], other.as_str());
    app.get(&format!("/v1/meters/{meter}"))
        .await
        .assert_error(404, "meter_not_found");
    app.delete(&format!("/v1/meters/{meter}"))
        .await
        .assert_error(404, "meter_not_found");
}

async fn bad_meter_input(app: TestApp) {
    let base = json!({"name": "m", "aggregation": "sum", "field": "values.tokens"});
    let with = |key: &str, value: serde_json::Value| {
        let mut body = base.clone();
        body[key] = value;
        body
    };
    app.post(
        "/v1/meters",
        json!({"aggregation": "sum", "field": "values.t"}),
    )
    .await
    .assert_field_error("missing_required_field", "name");
    app.post("/v1/meters", json!({"name": "m", "field": "values.t"}))
        .await
        .assert_field_error("missing_required_field", "aggregation");
    app.post("/v1/meters", with("aggregation", json!("avg")))
        .await
        .assert_field_error("invalid_field_value", "aggregation");
    app.post("/v1/meters", with("field", json!("*")))
        .await
        .assert_field_error("invalid_field_value", "field");
    app.post("/v1/meters", with("field", json!("values.a-b")))
        .await
        .assert_field_error("invalid_field_value", "field");
    app.post("/v1/meters", with("name", json!("")))
        .await
        .assert_field_error("invalid_field_value", "name");
    app.post("/v1/meters", with("eventFilter", json!({"eventType": ""})))
        .await
        .assert_field_error("invalid_field_value", "eventFilter.eventType");
    app.post(
        "/v1/meters",
        with("eventFilter", json!({"dimensions": {"bad key": "v"}})),
    )
    .await
    .assert_field_error("invalid_field_value", "eventFilter.dimensions.bad key");
    app.post(
        "/v1/meters",
        with("eventFilter", json!({"dimensions": {"k": 1}})),
    )
    .await
    .assert_field_error("invalid_field_value", "eventFilter.dimensions.k");
    app.post("/v1/meters", with("eventFilter", json!({"typo": 1})))
        .await
        .assert_field_error("invalid_field_value", "eventFilter.typo");
    app.get("/v1/meters/not-a-meter")
        .await
        .assert_error(404, "meter_not_found");
    app.delete("/v1/meters/mtr_!!")
        .await
        .assert_error(404, "meter_not_found");
    assert_eq!(app.get("/v1/meters").await.body["data"], json!([]));
}
