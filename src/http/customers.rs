use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;

use super::auth::{Admin, Authorized, Read};
use super::error::ApiError;
use super::extract::{JsonBody, PathId, QueryParams};
use super::{AppState, Deleted, ListBody, page_request};
use crate::domain::customer::{Customer, CustomerPatch, NewCustomer};

pub async fn create(
    _: Authorized<Admin>,
    State(gateway): State<AppState>,
    JsonBody(input): JsonBody<NewCustomer>,
) -> Result<(StatusCode, Json<Customer>), ApiError> {
    Ok((
        StatusCode::CREATED,
        Json(gateway.create_customer(input).await?),
    ))
}

pub async fn get(
    _: Authorized<Read>,
    State(gateway): State<AppState>,
    PathId(id): PathId,
) -> Result<Json<Customer>, ApiError> {
    Ok(Json(gateway.get_customer(&id).await?))
}

pub async fn list(
    _: Authorized<Read>,
    State(gateway): State<AppState>,
    mut query: QueryParams,
) -> Result<Json<ListBody<Customer>>, ApiError> {
    let page = page_request(&mut query)?;
    query.finish()?;
    Ok(Json(gateway.list_customers(&page).await?.into()))
}

pub async fn put(
    _: Authorized<Admin>,
    State(gateway): State<AppState>,
    PathId(id): PathId,
    JsonBody(patch): JsonBody<CustomerPatch>,
) -> Result<(StatusCode, Json<Customer>), ApiError> {
    let (customer, created) = gateway.put_customer(&id, patch).await?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(customer)))
}

pub async fn delete(
    _: Authorized<Admin>,
    State(gateway): State<AppState>,
    PathId(id): PathId,
) -> Result<Json<Deleted>, ApiError> {
    Ok(Json(Deleted::new(gateway.delete_customer(&id).await?)))
}
