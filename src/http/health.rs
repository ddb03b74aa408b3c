use super::json::Json;
use axum::extract::State;
use serde_json::{Value, json};

use super::AppState;
use super::error::ApiError;

/// The process is up.
pub async fn healthz() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

/// Storage answers and its scripts are loaded.
pub async fn readyz(State(gateway): State<AppState>) -> Result<Json<Value>, ApiError> {
    gateway.ready().await?;
    Ok(Json(json!({"status": "ready"})))
}

/// Prometheus text exposition.
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
