use std::sync::{Arc, OnceLock};

use super::json::Json;
use axum::Extension;
use axum::extract::State;
use serde_json::{Value, json};

use super::AppState;
use super::auth::{Authorized, Read};
use super::error::ApiError;

#[utoipa::path(
    get,
    path = "/healthz",
    tag = "operations",
    summary = "The process is up (no key needed)",
    responses((status = 200, description = "`{\"status\": \"ok\"}`"), (status = "default", description = "Error envelope", body = crate::http::error::ErrorEnvelope))
)]
pub async fn healthz() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

#[utoipa::path(
    get,
    path = "/readyz",
    tag = "operations",
    summary = "Storage answers and its scripts are loaded (no key needed)",
    responses((status = 200, description = "`{\"status\": \"ready\"}`"), (status = "default", description = "Error envelope: 503 storage_unavailable when not ready", body = crate::http::error::ErrorEnvelope))
)]
pub async fn readyz(State(gateway): State<AppState>) -> Result<Json<Value>, ApiError> {
    gateway.ready().await?;
    Ok(Json(json!({"status": "ready"})))
}

#[utoipa::path(
    get,
    path = "/metrics",
    tag = "operations",
    summary = "Prometheus text exposition (no key needed)",
    responses((status = 200, description = "Prometheus text format 0.0.4", content_type = "text/plain", body = String), (status = "default", description = "Error envelope", body = crate::http::error::ErrorEnvelope))
)]
pub async fn metrics(State(gateway): State<AppState>) -> impl axum::response::IntoResponse {
    metrics::gauge!(crate::telemetry::CONFIG_CACHE_AGE).set(gateway.config_age().as_secs_f64());
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        crate::telemetry::prometheus().render(),
    )
}

/// The OpenAPI document, set once the router that it describes is built (it describes this
/// route too).
pub type ServedDocument = Arc<OnceLock<utoipa::openapi::OpenApi>>;

#[utoipa::path(
    get,
    path = "/v1/openapi.json",
    tag = "operations",
    summary = "This OpenAPI document",
    responses((status = 200, description = "OpenAPI 3.1 document", body = Object), (status = "default", description = "Error envelope", body = crate::http::error::ErrorEnvelope)),
    security(("bearer" = []))
)]
pub async fn openapi(
    _: Authorized<Read>,
    Extension(document): Extension<ServedDocument>,
) -> Result<Json<utoipa::openapi::OpenApi>, ApiError> {
    document
        .get()
        .cloned()
        .map(Json)
        .ok_or_else(ApiError::internal)
}
