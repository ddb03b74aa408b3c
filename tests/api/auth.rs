use std::sync::Arc;

use axum::http::Method;
use quotagate::storage::memory::MemoryStore;
use serde_json::json;

use crate::common::{TestApp, settings};
use crate::every_store;

every_store!(
    keys_and_scopes,
    revoked_keys_stop_working,
    bad_api_key_input
);

async fn keys_and_scopes(app: TestApp) {
    app.call_as(None, Method::GET, "/v1/meters", None)
        .await
        .assert_error(401, "missing_api_key");
    app.call_as(Some("wrong"), Method::GET, "/v1/meters", None)
        .await
        .assert_error(401, "invalid_api_key");

    let mut keys = std::collections::HashMap::new();
    for scope in ["read", "ingest", "admin"] {
        let created = app
            .post("/v1/api-keys", json!({"name": scope, "scopes": [scope]}))
            .await;
        let body = created.assert_status(201);
        assert!(body["id"].as_str().unwrap().starts_with("key_"));
        let key = body["key"].as_str().unwrap().to_string();
        assert!(key.starts_with("qg_sk_"));
        keys.insert(scope, key);
    }
    let read = keys["read"].as_str();
    let ingest = keys["ingest"].as_str();
    let admin = keys["admin"].as_str();

    app.call_as(Some(read), Method::GET, "/v1/meters", None)
        .await
        .assert_status(200);
    app.call_as(
        Some(read),
        Method::POST,
        "/v1/meters",
        Some(json!({"name": "m", "aggregation": "count", "field": "*"})),
    )
    .await
    .assert_error(403, "insufficient_permissions");
    app.call_as(Some(ingest), Method::GET, "/v1/customers", None)
        .await
        .assert_status(200);
    app.call_as(
        Some(ingest),
        Method::POST,
        "/v1/customers",
        Some(json!({"id": "c"})),
    )
    .await
    .assert_error(403, "insufficient_permissions");
    app.call_as(Some(ingest), Method::GET, "/v1/api-keys", None)
        .await
        .assert_error(403, "insufficient_permissions");
    app.call_as(
        Some(admin),
        Method::POST,
        "/v1/customers",
        Some(json!({"id": "c"})),
    )
    .await
    .assert_status(201);

    // Listing never shows a secret or its hash.
    let listed = app.get("/v1/api-keys").await;
    let listed = listed.assert_status(200);
    assert_eq!(listed["data"].as_array().unwrap().len(), 3);
    let text = listed.to_string();
    assert!(
        !text.contains("qg_sk_") && !text.contains("keyHash"),
        "{text}"
    );
    // Auth is checked before the body is read.
    app.call_as(None, Method::POST, "/v1/meters", Some(json!({"bad": true})))
        .await
        .assert_error(401, "missing_api_key");
}

async fn revoked_keys_stop_working(app: TestApp) {
    let created = app
        .post("/v1/api-keys", json!({"name": "temp", "scopes": ["read"]}))
        .await;
    let id = created.body["id"].as_str().unwrap().to_string();
    let key = created.body["key"].as_str().unwrap().to_string();
    app.call_as(Some(&key), Method::GET, "/v1/customers", None)
        .await
        .assert_status(200);
    let deleted = app.delete(&format!("/v1/api-keys/{id}")).await;
    assert_eq!(
        deleted.assert_status(200),
        &json!({"id": id, "deleted": true})
    );
    app.call_as(Some(&key), Method::GET, "/v1/customers", None)
        .await
        .assert_error(401, "invalid_api_key");
    app.delete(&format!("/v1/api-keys/{id}"))
        .await
        .assert_error(404, "not_found");
}

async fn bad_api_key_input(app: TestApp) {
    app.post("/v1/api-keys", json!({"name": "x", "scopes": []}))
        .await
        .assert_field_error("invalid_field_value", "scopes");
    app.post("/v1/api-keys", json!({"name": "x", "scopes": ["root"]}))
        .await
        .assert_field_error("invalid_field_value", "scopes[0]");
    app.post("/v1/api-keys", json!({"scopes": ["read"]}))
        .await
        .assert_field_error("missing_required_field", "name");
    app.delete("/v1/api-keys/nope")
        .await
        .assert_error(404, "not_found");
    assert_eq!(app.get("/v1/api-keys").await.body["data"], json!([]));
}

#[tokio::test]
async fn open_mode_needs_no_key() {
    let mut open = settings();
    open.admin_key_hash = None;
    let app = TestApp::on(Arc::new(MemoryStore::new()), open).await;
    app.call_as(
        None,
        Method::POST,
        "/v1/customers",
        Some(json!({"id": "c"})),
    )
    .await
    .assert_status(201);
}

#[tokio::test]
async fn health_endpoints_need_no_key() {
    let app = TestApp::memory().await;
    let health = app.call_as(None, Method::GET, "/healthz", None).await;
    assert_eq!(health.assert_status(200)["status"], "ok");
    app.call_as(None, Method::GET, "/readyz", None)
        .await
        .assert_status(200);
    let redis = TestApp::redis().await;
    redis
        .call_as(None, Method::GET, "/readyz", None)
        .await
        .assert_status(200);
}
