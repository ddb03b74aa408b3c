use axum::Json;
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
