use super::json::Json;
use axum::extract::State;
use axum::http::StatusCode;

use super::auth::{Admin, Authorized, Read};
use super::error::ApiError;
use super::extract::{JsonBody, PathId, QueryParams};
use super::{AppState, Deleted, ListBody, page_request};
use crate::domain::field::FieldError;
use crate::domain::ids::CustomerId;
use crate::domain::limit::{Limit, LimitPatch, NewLimit};
use crate::service::config::LimitQuery;

#[utoipa::path(
    post,
    path = "/v1/limits",
    tag = "limits",
    summary = "Create a limit (customerId null: a default limit)",
    params(crate::http::idempotency::IdempotencyKeyHeader),
    request_body = NewLimit,
    responses((status = 201, body = Limit), (status = "default", description = "Error envelope", body = crate::http::error::ErrorEnvelope)),
    security(("bearer" = []))
)]
pub async fn create(
    _: Authorized<Admin>,
    State(gateway): State<AppState>,
    JsonBody(input): JsonBody<NewLimit>,
) -> Result<(StatusCode, Json<Limit>), ApiError> {
    Ok((
        StatusCode::CREATED,
        Json(gateway.create_limit(input).await?),
    ))
}

#[utoipa::path(
    get,
    path = "/v1/limits/{id}",
    tag = "limits",
    summary = "Get a limit",
    params(("id" = String, Path, description = "limit ID")),
    responses((status = 200, body = Limit), (status = "default", description = "Error envelope", body = crate::http::error::ErrorEnvelope)),
    security(("bearer" = []))
)]
pub async fn get(
    _: Authorized<Read>,
    State(gateway): State<AppState>,
    PathId(id): PathId,
) -> Result<Json<Limit>, ApiError> {
    Ok(Json(gateway.get_limit(&id).await?))
}

/// `?customerId=` lists that customer's own limits (`default`: the default limits);
/// `?meterId=` those on one meter.
#[utoipa::path(
    get,
    path = "/v1/limits",
    tag = "limits",
    summary = "List limits",
    params(crate::http::PageParams, ("customerId" = Option<String>, Query, description = "a customer's own limits; `default` for the default limits"), ("meterId" = Option<String>, Query)),
    responses((status = 200, body = ListBody<Limit>), (status = "default", description = "Error envelope", body = crate::http::error::ErrorEnvelope)),
    security(("bearer" = []))
)]
pub async fn list(
    _: Authorized<Read>,
    State(gateway): State<AppState>,
    mut query: QueryParams,
) -> Result<Json<ListBody<Limit>>, ApiError> {
    let page = page_request(&mut query)?;
    let customer = match query.take("customerId").as_deref() {
        None => None,
        Some("default") => Some(None),
        Some(raw) => Some(Some(CustomerId::parse("customerId", raw)?)),
    };
    let meter_id = query.take("meterId");
    if meter_id.as_deref().is_some_and(str::is_empty) {
        return Err(FieldError::invalid("meterId", "must not be empty").into());
    }
    query.finish()?;
    let filter = LimitQuery { customer, meter_id };
    Ok(Json(gateway.list_limits(&filter, &page).await?.into()))
}

#[utoipa::path(
    put,
    path = "/v1/limits/{id}",
    tag = "limits",
    summary = "Update a limit",
    params(("id" = String, Path, description = "limit ID")),
    request_body = LimitPatch,
    responses((status = 200, body = Limit), (status = "default", description = "Error envelope", body = crate::http::error::ErrorEnvelope)),
    security(("bearer" = []))
)]
pub async fn update(
    _: Authorized<Admin>,
    State(gateway): State<AppState>,
    PathId(id): PathId,
    JsonBody(patch): JsonBody<LimitPatch>,
) -> Result<Json<Limit>, ApiError> {
    Ok(Json(gateway.update_limit(&id, patch).await?))
}

#[utoipa::path(
    delete,
    path = "/v1/limits/{id}",
    tag = "limits",
    summary = "Delete a limit",
    params(("id" = String, Path, description = "limit ID")),
    responses((status = 200, body = Deleted), (status = "default", description = "Error envelope", body = crate::http::error::ErrorEnvelope)),
    security(("bearer" = []))
)]
pub async fn delete(
    _: Authorized<Admin>,
    State(gateway): State<AppState>,
    PathId(id): PathId,
) -> Result<Json<Deleted>, ApiError> {
    gateway.delete_limit(&id).await?;
    Ok(Json(Deleted::new(id)))
}
