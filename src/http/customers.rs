use super::json::Json;
use axum::extract::State;
use axum::http::StatusCode;

use super::auth::{Admin, Authorized, Read};
use super::error::ApiError;
use super::extract::{JsonBody, PathId, QueryParams};
use super::{AppState, Deleted, ListBody, page_request};
use crate::domain::customer::{Customer, CustomerPatch, NewCustomer};

#[utoipa::path(
    post,
    path = "/v1/customers",
    tag = "customers",
    summary = "Create a customer",
    params(crate::http::idempotency::IdempotencyKeyHeader),
    request_body = NewCustomer,
    responses((status = 201, body = Customer), (status = "default", description = "Error envelope", body = crate::http::error::ErrorEnvelope)),
    security(("bearer" = []))
)]
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

#[utoipa::path(
    get,
    path = "/v1/customers/{id}",
    tag = "customers",
    summary = "Get a customer",
    params(("id" = String, Path, description = "customer ID")),
    responses((status = 200, body = Customer), (status = "default", description = "Error envelope", body = crate::http::error::ErrorEnvelope)),
    security(("bearer" = []))
)]
pub async fn get(
    _: Authorized<Read>,
    State(gateway): State<AppState>,
    PathId(id): PathId,
) -> Result<Json<Customer>, ApiError> {
    Ok(Json(gateway.get_customer(&id).await?))
}

#[utoipa::path(
    get,
    path = "/v1/customers",
    tag = "customers",
    summary = "List customers",
    params(crate::http::PageParams),
    responses((status = 200, body = ListBody<Customer>), (status = "default", description = "Error envelope", body = crate::http::error::ErrorEnvelope)),
    security(("bearer" = []))
)]
pub async fn list(
    _: Authorized<Read>,
    State(gateway): State<AppState>,
    mut query: QueryParams,
) -> Result<Json<ListBody<Customer>>, ApiError> {
    let page = page_request(&mut query)?;
    query.finish()?;
    Ok(Json(gateway.list_customers(&page).await?.into()))
}

#[utoipa::path(
    put,
    path = "/v1/customers/{id}",
    tag = "customers",
    summary = "Update a customer (creates it when absent)",
    params(("id" = String, Path, description = "customer ID")),
    request_body = CustomerPatch,
    responses((status = 200, body = Customer), (status = 201, body = Customer), (status = "default", description = "Error envelope", body = crate::http::error::ErrorEnvelope)),
    security(("bearer" = []))
)]
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

#[utoipa::path(
    delete,
    path = "/v1/customers/{id}",
    tag = "customers",
    summary = "Delete a customer and its own limits",
    params(("id" = String, Path, description = "customer ID")),
    responses((status = 200, body = Deleted), (status = "default", description = "Error envelope", body = crate::http::error::ErrorEnvelope)),
    security(("bearer" = []))
)]
pub async fn delete(
    _: Authorized<Admin>,
    State(gateway): State<AppState>,
    PathId(id): PathId,
) -> Result<Json<Deleted>, ApiError> {
    Ok(Json(Deleted::new(gateway.delete_customer(&id).await?)))
}
