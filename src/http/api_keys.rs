use super::json::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::Serialize;

use super::auth::{Admin, Authorized};
use super::error::ApiError;
use super::extract::{JsonBody, PathId, QueryParams};
use super::{AppState, Deleted, ListBody, page_request};
use crate::domain::apikey::{ApiKey, NewApiKey, Scope};
use crate::domain::time::serde_rfc3339;

/// A key as listed: never its secret nor its hash.
#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ApiKeyView {
    id: String,
    name: String,
    scopes: Vec<Scope>,
    #[serde(with = "serde_rfc3339")]
    created_at: chrono::DateTime<chrono::Utc>,
    #[serde(skip_serializing_if = "Option::is_none")]
    key: Option<String>,
}

impl ApiKeyView {
    fn new(key: ApiKey, secret: Option<String>) -> ApiKeyView {
        ApiKeyView {
            id: key.id,
            name: key.name,
            scopes: key.scopes,
            created_at: key.created_at,
            key: secret,
        }
    }
}

#[utoipa::path(
    post,
    path = "/v1/api-keys",
    tag = "api keys",
    summary = "Create an API key (shown once)",
    request_body = NewApiKey,
    responses((status = 201, body = ApiKeyView), (status = "default", description = "Error envelope", body = crate::http::error::ErrorEnvelope)),
    security(("bearer" = []))
)]
pub async fn create(
    _: Authorized<Admin>,
    State(gateway): State<AppState>,
    JsonBody(input): JsonBody<NewApiKey>,
) -> Result<(StatusCode, Json<ApiKeyView>), ApiError> {
    let (key, secret) = gateway.create_api_key(input).await?;
    Ok((
        StatusCode::CREATED,
        Json(ApiKeyView::new(key, Some(secret))),
    ))
}

#[utoipa::path(
    get,
    path = "/v1/api-keys",
    tag = "api keys",
    summary = "List API keys",
    params(crate::http::PageParams),
    responses((status = 200, body = ListBody<ApiKeyView>), (status = "default", description = "Error envelope", body = crate::http::error::ErrorEnvelope)),
    security(("bearer" = []))
)]
pub async fn list(
    _: Authorized<Admin>,
    State(gateway): State<AppState>,
    mut query: QueryParams,
) -> Result<Json<ListBody<ApiKeyView>>, ApiError> {
    let page = page_request(&mut query)?;
    query.finish()?;
    let body: ListBody<ApiKey> = gateway.list_api_keys(&page).await?.into();
    Ok(Json(body.map(|key| ApiKeyView::new(key, None))))
}

#[utoipa::path(
    delete,
    path = "/v1/api-keys/{id}",
    tag = "api keys",
    summary = "Revoke an API key",
    params(("id" = String, Path, description = "API key ID")),
    responses((status = 200, body = Deleted), (status = "default", description = "Error envelope", body = crate::http::error::ErrorEnvelope)),
    security(("bearer" = []))
)]
pub async fn delete(
    _: Authorized<Admin>,
    State(gateway): State<AppState>,
    PathId(id): PathId,
) -> Result<Json<Deleted>, ApiError> {
    gateway.delete_api_key(&id).await?;
    Ok(Json(Deleted::new(id)))
}
