use axum::Json;
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

pub async fn get(
    _: Authorized<Read>,
    State(gateway): State<AppState>,
    PathId(id): PathId,
) -> Result<Json<Limit>, ApiError> {
    Ok(Json(gateway.get_limit(&id).await?))
}

/// `?customerId=` lists that customer's own limits (`default`: the default limits);
/// `?meterId=` those on one meter.
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

pub async fn update(
    _: Authorized<Admin>,
    State(gateway): State<AppState>,
    PathId(id): PathId,
    JsonBody(patch): JsonBody<LimitPatch>,
) -> Result<Json<Limit>, ApiError> {
    Ok(Json(gateway.update_limit(&id, patch).await?))
}

pub async fn delete(
    _: Authorized<Admin>,
    State(gateway): State<AppState>,
    PathId(id): PathId,
) -> Result<Json<Deleted>, ApiError> {
    gateway.delete_limit(&id).await?;
    Ok(Json(Deleted::new(id)))
}
