use super::json::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::Serialize;

use super::auth::{Admin, Authorized, Read};
use super::error::ApiError;
use super::extract::{JsonBody, PathId, QueryParams};
use super::{AppState, ListBody, page_request};
use crate::domain::meter::{Meter, MeterPatch, NewMeter};

#[utoipa::path(
    post,
    path = "/v1/meters",
    tag = "meters",
    summary = "Create a meter",
    params(crate::http::idempotency::IdempotencyKeyHeader),
    request_body = NewMeter,
    responses((status = 201, body = Meter), (status = "default", description = "Error envelope", body = crate::http::error::ErrorEnvelope)),
    security(("bearer" = []))
)]
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

#[utoipa::path(
    get,
    path = "/v1/meters/{id}",
    tag = "meters",
    summary = "Get a meter",
    params(("id" = String, Path, description = "meter ID")),
    responses((status = 200, body = Meter), (status = "default", description = "Error envelope", body = crate::http::error::ErrorEnvelope)),
    security(("bearer" = []))
)]
pub async fn get(
    _: Authorized<Read>,
    State(gateway): State<AppState>,
    PathId(id): PathId,
) -> Result<Json<Meter>, ApiError> {
    Ok(Json(gateway.get_meter(&id).await?))
}

#[utoipa::path(
    get,
    path = "/v1/meters",
    tag = "meters",
    summary = "List meters",
    params(crate::http::PageParams),
    responses((status = 200, body = ListBody<Meter>), (status = "default", description = "Error envelope", body = crate::http::error::ErrorEnvelope)),
    security(("bearer" = []))
)]
pub async fn list(
    _: Authorized<Read>,
    State(gateway): State<AppState>,
    mut query: QueryParams,
) -> Result<Json<ListBody<Meter>>, ApiError> {
    let page = page_request(&mut query)?;
    query.finish()?;
    Ok(Json(gateway.list_meters(&page).await?.into()))
}

#[utoipa::path(
    put,
    path = "/v1/meters/{id}",
    tag = "meters",
    summary = "Rename or describe a meter",
    params(("id" = String, Path, description = "meter ID")),
    request_body = MeterPatch,
    responses((status = 200, body = Meter), (status = "default", description = "Error envelope", body = crate::http::error::ErrorEnvelope)),
    security(("bearer" = []))
)]
pub async fn update(
    _: Authorized<Admin>,
    State(gateway): State<AppState>,
    PathId(id): PathId,
    JsonBody(patch): JsonBody<MeterPatch>,
) -> Result<Json<Meter>, ApiError> {
    Ok(Json(gateway.update_meter(&id, patch).await?))
}

#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct MeterDeleted {
    id: String,
    deleted: bool,
    deleted_limits: usize,
}

#[utoipa::path(
    delete,
    path = "/v1/meters/{id}",
    tag = "meters",
    summary = "Delete a meter and every limit on it",
    params(("id" = String, Path, description = "meter ID")),
    responses((status = 200, body = MeterDeleted), (status = "default", description = "Error envelope", body = crate::http::error::ErrorEnvelope)),
    security(("bearer" = []))
)]
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

#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct QueryBody {
    meter_id: String,
    meter_name: String,
    aggregation: crate::domain::meter::Aggregation,
    customer_id: Option<crate::domain::ids::CustomerId>,
    start_date: Option<String>,
    end_date: Option<String>,
    #[serde(serialize_with = "optional_number")]
    value: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    series: Option<Vec<SeriesPoint>>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct SeriesPoint {
    start: String,
    #[serde(serialize_with = "optional_number")]
    value: Option<f64>,
}

fn optional_number<S: serde::Serializer>(
    value: &Option<f64>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    match value {
        Some(v) => crate::domain::field::serialize_number(*v, serializer),
        None => serializer.serialize_none(),
    }
}

#[utoipa::path(
    post,
    path = "/v1/meters/{id}/query",
    tag = "meters",
    summary = "Query a meter's usage",
    params(("id" = String, Path, description = "meter ID")),
    request_body = crate::service::usage::MeterQuery,
    responses((status = 200, body = QueryBody), (status = "default", description = "Error envelope", body = crate::http::error::ErrorEnvelope)),
    security(("bearer" = []))
)]
pub async fn query(
    _: Authorized<Read>,
    State(gateway): State<AppState>,
    PathId(id): PathId,
    JsonBody(query): JsonBody<crate::service::usage::MeterQuery>,
) -> Result<Json<QueryBody>, ApiError> {
    use crate::domain::time::rfc3339;
    let result = gateway.query_meter(&id, query).await?;
    Ok(Json(QueryBody {
        meter_id: result.meter_id,
        meter_name: result.meter_name,
        aggregation: result.aggregation,
        customer_id: result.customer_id,
        start_date: result.start_date.map(rfc3339),
        end_date: result.end_date.map(rfc3339),
        value: result.value,
        series: result.series.map(|points| {
            points
                .into_iter()
                .map(|(start, value)| SeriesPoint {
                    start: rfc3339(start),
                    value,
                })
                .collect()
        }),
    }))
}
