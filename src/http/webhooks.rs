use super::json::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::Serialize;

use super::auth::{Admin, Authorized, Read};
use super::error::ApiError;
use super::extract::{JsonBody, NoBody, PathId, QueryParams};
use super::{AppState, Deleted, ListBody, page_request};
use crate::domain::time::serde_rfc3339;
use crate::domain::webhook::{DeliveryAttempt, NewWebhook, Webhook, WebhookPatch};

/// An endpoint as shown after creation: never its secret.
#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct WebhookView {
    id: String,
    url: String,
    description: Option<String>,
    event_types: Vec<String>,
    enabled: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    secret: Option<String>,
    #[serde(with = "serde_rfc3339")]
    created_at: chrono::DateTime<chrono::Utc>,
    #[serde(with = "serde_rfc3339")]
    updated_at: chrono::DateTime<chrono::Utc>,
}

impl WebhookView {
    fn new(webhook: Webhook, show_secret: bool) -> WebhookView {
        WebhookView {
            id: webhook.id,
            url: webhook.url,
            description: webhook.description,
            event_types: webhook.event_types,
            enabled: webhook.enabled,
            secret: show_secret.then_some(webhook.secret),
            created_at: webhook.created_at,
            updated_at: webhook.updated_at,
        }
    }
}

#[utoipa::path(
    post,
    path = "/v1/webhooks",
    tag = "webhooks",
    summary = "Create a webhook endpoint (secret shown once)",
    params(crate::http::idempotency::IdempotencyKeyHeader),
    request_body = NewWebhook,
    responses((status = 201, body = WebhookView), (status = "default", description = "Error envelope", body = crate::http::error::ErrorEnvelope)),
    security(("bearer" = []))
)]
pub async fn create(
    _: Authorized<Admin>,
    State(gateway): State<AppState>,
    JsonBody(input): JsonBody<NewWebhook>,
) -> Result<(StatusCode, Json<WebhookView>), ApiError> {
    let webhook = gateway.create_webhook(input).await?;
    Ok((StatusCode::CREATED, Json(WebhookView::new(webhook, true))))
}

#[utoipa::path(
    get,
    path = "/v1/webhooks",
    tag = "webhooks",
    summary = "List webhook endpoints",
    params(crate::http::PageParams),
    responses((status = 200, body = ListBody<WebhookView>), (status = "default", description = "Error envelope", body = crate::http::error::ErrorEnvelope)),
    security(("bearer" = []))
)]
pub async fn list(
    _: Authorized<Read>,
    State(gateway): State<AppState>,
    mut query: QueryParams,
) -> Result<Json<ListBody<WebhookView>>, ApiError> {
    let page = page_request(&mut query)?;
    query.finish()?;
    let body: ListBody<Webhook> = gateway.list_webhooks(&page).await?.into();
    Ok(Json(body.map(|w| WebhookView::new(w, false))))
}

#[utoipa::path(
    get,
    path = "/v1/webhooks/{id}",
    tag = "webhooks",
    summary = "Get a webhook endpoint",
    params(("id" = String, Path, description = "webhook ID")),
    responses((status = 200, body = WebhookView), (status = "default", description = "Error envelope", body = crate::http::error::ErrorEnvelope)),
    security(("bearer" = []))
)]
pub async fn get(
    _: Authorized<Read>,
    State(gateway): State<AppState>,
    PathId(id): PathId,
) -> Result<Json<WebhookView>, ApiError> {
    Ok(Json(WebhookView::new(
        gateway.get_webhook(&id).await?,
        false,
    )))
}

#[utoipa::path(
    put,
    path = "/v1/webhooks/{id}",
    tag = "webhooks",
    summary = "Update a webhook endpoint",
    params(("id" = String, Path, description = "webhook ID")),
    request_body = WebhookPatch,
    responses((status = 200, body = WebhookView), (status = "default", description = "Error envelope", body = crate::http::error::ErrorEnvelope)),
    security(("bearer" = []))
)]
pub async fn update(
    _: Authorized<Admin>,
    State(gateway): State<AppState>,
    PathId(id): PathId,
    JsonBody(patch): JsonBody<WebhookPatch>,
) -> Result<Json<WebhookView>, ApiError> {
    Ok(Json(WebhookView::new(
        gateway.update_webhook(&id, patch).await?,
        false,
    )))
}

#[utoipa::path(
    delete,
    path = "/v1/webhooks/{id}",
    tag = "webhooks",
    summary = "Delete a webhook endpoint",
    params(("id" = String, Path, description = "webhook ID")),
    responses((status = 200, body = Deleted), (status = "default", description = "Error envelope", body = crate::http::error::ErrorEnvelope)),
    security(("bearer" = []))
)]
pub async fn delete(
    _: Authorized<Admin>,
    State(gateway): State<AppState>,
    PathId(id): PathId,
) -> Result<Json<Deleted>, ApiError> {
    gateway.delete_webhook(&id).await?;
    Ok(Json(Deleted::new(id)))
}

#[utoipa::path(
    post,
    path = "/v1/webhooks/{id}/test",
    tag = "webhooks",
    summary = "Send a signed ping now",
    params(("id" = String, Path, description = "webhook ID"), crate::http::idempotency::IdempotencyKeyHeader),
    responses((status = 200, body = DeliveryAttempt), (status = "default", description = "Error envelope", body = crate::http::error::ErrorEnvelope)),
    security(("bearer" = []))
)]
pub async fn test(
    _: Authorized<Admin>,
    State(gateway): State<AppState>,
    PathId(id): PathId,
    _: NoBody,
) -> Result<Json<DeliveryAttempt>, ApiError> {
    Ok(Json(gateway.test_webhook(&id).await?))
}

#[utoipa::path(
    get,
    path = "/v1/webhooks/{id}/deliveries",
    tag = "webhooks",
    summary = "Delivery attempts, newest first",
    params(("id" = String, Path), crate::http::PageParams),
    responses((status = 200, body = ListBody<DeliveryAttempt>), (status = "default", description = "Error envelope", body = crate::http::error::ErrorEnvelope)),
    security(("bearer" = []))
)]
pub async fn deliveries(
    _: Authorized<Read>,
    State(gateway): State<AppState>,
    PathId(id): PathId,
    mut query: QueryParams,
) -> Result<Json<ListBody<DeliveryAttempt>>, ApiError> {
    let page = page_request(&mut query)?;
    query.finish()?;
    Ok(Json(gateway.list_deliveries(&id, &page).await?.into()))
}

#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Redelivery {
    message_id: String,
    webhook_id: String,
    scheduled: bool,
}

#[utoipa::path(
    post,
    path = "/v1/webhooks/{id}/deliveries/{delivery_id}/redeliver",
    tag = "webhooks",
    summary = "Send an earlier message again",
    params(("id" = String, Path), ("delivery_id" = String, Path), crate::http::idempotency::IdempotencyKeyHeader),
    responses((status = 200, body = Redelivery), (status = "default", description = "Error envelope", body = crate::http::error::ErrorEnvelope)),
    security(("bearer" = []))
)]
pub async fn redeliver(
    _: Authorized<Admin>,
    State(gateway): State<AppState>,
    Path((id, delivery_id)): Path<(String, String)>,
    _: NoBody,
) -> Result<Json<Redelivery>, ApiError> {
    let message_id = gateway.redeliver(&id, &delivery_id).await?;
    Ok(Json(Redelivery {
        message_id,
        webhook_id: id,
        scheduled: true,
    }))
}
