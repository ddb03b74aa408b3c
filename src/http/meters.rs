use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::Serialize;

use super::auth::{Admin, Authorized, Read};
use super::error::ApiError;
use super::extract::{JsonBody, PathId, QueryParams};
use super::{AppState, ListBody, page_request};
use crate::domain::meter::{Meter, MeterPatch, NewMeter};

pub async fn create(
    _: Authorized<Admin>,
    State(gateway): State<AppState>,
    JsonBody(input): JsonBody<NewMeter>,
) -> Result<(StatusCode, Json<Meter>), ApiError> {
    Ok((
        StatusCode::CREATED,
        Json(gateway.create_meter(input).await?),
    ))
}

pub async fn get(
    _: Authorized<Read>,
    State(gateway): State<AppState>,
    PathId(id): PathId,
) -> Result<Json<Meter>, ApiError> {
    Ok(Json(gateway.get_meter(&id).await?))
}

pub async fn list(
    _: Authorized<Read>,
    State(gateway): State<AppState>,
    mut query: QueryParams,
) -> Result<Json<ListBody<Meter>>, ApiError> {
    let page = page_request(&mut query)?;
    query.finish()?;
    Ok(Json(gateway.list_meters(&page).await?.into()))
}

pub async fn update(
    _: Authorized<Admin>,
    State(gateway): State<AppState>,
    PathId(id): PathId,
    JsonBody(patch): JsonBody<MeterPatch>,
) -> Result<Json<Meter>, ApiError> {
    Ok(Json(gateway.update_meter(&id, patch).await?))
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MeterDeleted {
    id: String,
    deleted: bool,
    deleted_limits: usize,
}

pub async fn delete(
    _: Authorized<Admin>,
    State(gateway): State<AppState>,
    PathId(id): PathId,
) -> Result<Json<MeterDeleted>, ApiError> {
    let deleted_limits = gateway.delete_meter(&id).await?;
    Ok(Json(MeterDeleted {
        id,
        deleted: true,
        deleted_limits,
    }))
}
