use serde_json::{Value, json};

use crate::common::TestApp;
use crate::every_store;

every_store!(
    create_default_and_customer_limits,
    list_filters_by_customer_and_meter,
    update_keeps_fixed_fields,
    bad_limit_input,
);

fn limit(meter: &str, customer: Option<&str>) -> Value {
    json!({"name": "daily tokens", "meterId": meter, "limitValue": 1000, "period": "day", "customerId": customer})
}

async fn create_default_and_customer_limits(app: TestApp) {
    let meter = app.tokens_meter().await;
    let default = app.post("/v1/limits", limit(&meter, None)).await;
    let body = default.assert_status(201);
    assert!(body["id"].as_str().unwrap().starts_with("lmt_"));
    assert_eq!(body["customerId"], Value::Null);
    assert_eq!(body["limitValue"], 1000);
    assert_eq!(body["failMode"], "open");
    assert_eq!(body["alertThresholds"], json!([]));
    assert_eq!(body["dimensionFilters"], json!({}));

    let mut input = limit(&meter, Some("new-cust"));
    input["alertThresholds"] = json!([100, 80]);
    input["failMode"] = json!("closed");
    input["dimensionFilters"] = json!({"model": "gpt-4"});
    input["limitValue"] = json!(12.5);
    let own = app.post("/v1/limits", input).await;
    let body = own.assert_status(201);
    assert_eq!(body["customerId"], "new-cust");
    assert_eq!(body["alertThresholds"], json!([80, 100]));
    assert_eq!(body["limitValue"], 12.5);
    assert_eq!(body["dimensionFilters"], json!({"model": "gpt-4"}));
    let id = body["id"].as_str().unwrap();
    assert_eq!(
        app.get(&format!("/v1/limits/{id}"))
            .await
            .assert_status(200),
        body
    );

    // Naming an unknown customer created it with defaults.
    let customer = app.get("/v1/customers/new-cust").await;
    assert_eq!(customer.assert_status(200)["timezone"], "UTC");
}

async fn list_filters_by_customer_and_meter(app: TestApp) {
    let meter_a = app.tokens_meter().await;
    let meter_b = app.tokens_meter().await;
    for (meter, customer) in [
        (&meter_a, None),
        (&meter_a, Some("c1")),
        (&meter_b, Some("c1")),
        (&meter_b, Some("c2")),
    ] {
        app.post("/v1/limits", limit(meter, customer))
            .await
            .assert_status(201);
    }
    let count = |path: String| {
        let app = &app;
        async move {
            app.get(&path).await.assert_status(200)["data"]
                .as_array()
                .unwrap()
                .len()
        }
    };
    assert_eq!(count("/v1/limits".into()).await, 4);
    assert_eq!(count("/v1/limits?customerId=c1".into()).await, 2);
    assert_eq!(count("/v1/limits?customerId=default".into()).await, 1);
    assert_eq!(count(format!("/v1/limits?meterId={meter_b}")).await, 2);
    assert_eq!(
        count(format!("/v1/limits?meterId={meter_b}&customerId=c2")).await,
        1
    );
    let page = app.get("/v1/limits?customerId=c1&limit=1").await;
    assert_eq!(page.body["hasMore"], true);
    let cursor = page.body["nextCursor"].as_str().unwrap();
    let next = app
        .get(&format!("/v1/limits?customerId=c1&limit=1&cursor={cursor}"))
        .await;
    assert_eq!(next.body["hasMore"], false);
    assert_eq!(next.body["data"].as_array().unwrap().len(), 1);
}

async fn update_keeps_fixed_fields(app: TestApp) {
    let meter = app.tokens_meter().await;
    let created = app.post("/v1/limits", limit(&meter, Some("c1"))).await;
    let id = created.body["id"].as_str().unwrap().to_string();
    let path = format!("/v1/limits/{id}");
    let updated = app
        .put(&path, json!({"limitValue": 2000, "period": "month", "alertThresholds": [50], "failMode": "closed", "meterId": meter}))
        .await;
    let body = updated.assert_status(200);
    assert_eq!(body["limitValue"], 2000);
    assert_eq!(body["period"], "month");
    assert_eq!(body["failMode"], "closed");
    assert_eq!(body["name"], "daily tokens");
    app.put(&path, json!({"customerId": "c2"}))
        .await
        .assert_field_error("invalid_field_value", "customerId");
    app.put(&path, json!({"meterId": "mtr_00000000000000000000000000"}))
        .await
        .assert_field_error("invalid_field_value", "meterId");
    app.put(&path, json!({"period": "fortnight"}))
        .await
        .assert_field_error("invalid_field_value", "period");
    assert_eq!(app.get(&path).await.body["limitValue"], 2000);
    let deleted = app.delete(&path).await;
    assert_eq!(
        deleted.assert_status(200),
        &json!({"id": id, "deleted": true})
    );
    app.get(&path).await.assert_error(404, "limit_not_found");
    app.put(&path, json!({"name": "x"}))
        .await
        .assert_error(404, "limit_not_found");
}

async fn bad_limit_input(app: TestApp) {
    let meter = app.tokens_meter().await;
    let with = |key: &str, value: Value| {
        let mut body = limit(&meter, Some("never-created"));
        body[key] = value;
        body
    };
    app.post(
        "/v1/limits",
        with("meterId", json!("mtr_00000000000000000000000000")),
    )
    .await
    .assert_error(404, "meter_not_found");
    app.post("/v1/limits", with("meterId", json!("garbage")))
        .await
        .assert_error(404, "meter_not_found");
    app.post("/v1/limits", with("limitValue", json!(0)))
        .await
        .assert_field_error("invalid_field_value", "limitValue");
    app.post("/v1/limits", with("limitValue", json!(-5)))
        .await
        .assert_field_error("invalid_field_value", "limitValue");
    app.post("/v1/limits", with("limitValue", json!(2e15)))
        .await
        .assert_field_error("invalid_field_value", "limitValue");
    app.post("/v1/limits", with("limitValue", json!("10")))
        .await
        .assert_field_error("invalid_field_value", "limitValue");
    app.post("/v1/limits", with("period", json!("year")))
        .await
        .assert_field_error("invalid_field_value", "period");
    app.post("/v1/limits", with("alertThresholds", json!([0])))
        .await
        .assert_field_error("invalid_field_value", "alertThresholds[0]");
    app.post("/v1/limits", with("alertThresholds", json!([50.5])))
        .await
        .assert_field_error("invalid_field_value", "alertThresholds[0]");
    app.post(
        "/v1/limits",
        with("alertThresholds", json!((1..=11).collect::<Vec<_>>())),
    )
    .await
    .assert_field_error("invalid_field_value", "alertThresholds");
    app.post("/v1/limits", with("failMode", json!("sometimes")))
        .await
        .assert_field_error("invalid_field_value", "failMode");
    app.post("/v1/limits", with("customerId", json!("default")))
        .await
        .assert_field_error("invalid_field_value", "customerId");
    app.post("/v1/limits", with("dimensionFilters", json!({"m": ["a"]})))
        .await
        .assert_field_error("invalid_field_value", "dimensionFilters.m");
    let mut missing = limit(&meter, None);
    missing.as_object_mut().unwrap().remove("period");
    app.post("/v1/limits", missing)
        .await
        .assert_field_error("missing_required_field", "period");
    app.get("/v1/limits?customerId=bad%20id")
        .await
        .assert_field_error("invalid_field_value", "customerId");
    // Rejected writes create nothing: no limit, and not the customer they named.
    assert_eq!(app.get("/v1/limits").await.body["data"], json!([]));
    app.get("/v1/customers/never-created")
        .await
        .assert_error(404, "customer_not_found");
}
