//! Balances (prepaid credits). A debit the balance cannot cover is `200` with
//! `success: false`, not an error.

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use super::auth::{Admin, Authorized, Ingest, Read};
use super::error::ApiError;
use super::events::{idempotency_key, replayed};
use super::extract::{JsonBody, PathId, QueryParams};
use super::json::Json;
use super::{AppState, Deleted, ListBody, page_request};
use crate::domain::balance::{
    BalanceCheck, BalanceCheckRequest, BalancePatch, BalanceView, MovementResult, NewBalance,
    NewMovement, Transaction, TransactionKind,
};

/// `GET /v1/customers/{id}/balances` answer.
#[derive(Serialize, utoipa::ToSchema)]
pub struct CustomerBalances {
    balances: Vec<BalanceView>,
}

#[utoipa::path(
    post,
    path = "/v1/balances",
    tag = "balances",
    summary = "Create a balance (a non-zero initialBalance is its first credit)",
    params(crate::http::idempotency::IdempotencyKeyHeader),
    request_body = NewBalance,
    responses((status = 201, body = BalanceView), (status = "default", description = "Error envelope", body = crate::http::error::ErrorEnvelope)),
    security(("bearer" = []))
)]
pub async fn create(
    _: Authorized<Admin>,
    State(gateway): State<AppState>,
    JsonBody(input): JsonBody<NewBalance>,
) -> Result<(StatusCode, Json<BalanceView>), ApiError> {
    Ok((
        StatusCode::CREATED,
        Json(gateway.create_balance(input).await?),
    ))
}

#[utoipa::path(
    get,
    path = "/v1/balances/{id}",
    tag = "balances",
    summary = "Get a balance",
    params(("id" = String, Path, description = "balance ID")),
    responses((status = 200, body = BalanceView), (status = "default", description = "Error envelope", body = crate::http::error::ErrorEnvelope)),
    security(("bearer" = []))
)]
pub async fn get(
    _: Authorized<Read>,
    State(gateway): State<AppState>,
    PathId(id): PathId,
) -> Result<Json<BalanceView>, ApiError> {
    Ok(Json(gateway.get_balance(&id).await?))
}

#[utoipa::path(
    put,
    path = "/v1/balances/{id}",
    tag = "balances",
    summary = "Rename a balance, or change its unit or minimum (the amount moves by credits and debits)",
    params(("id" = String, Path, description = "balance ID")),
    request_body = BalancePatch,
    responses((status = 200, body = BalanceView), (status = "default", description = "Error envelope", body = crate::http::error::ErrorEnvelope)),
    security(("bearer" = []))
)]
pub async fn update(
    _: Authorized<Admin>,
    State(gateway): State<AppState>,
    PathId(id): PathId,
    JsonBody(patch): JsonBody<BalancePatch>,
) -> Result<Json<BalanceView>, ApiError> {
    Ok(Json(gateway.update_balance(&id, patch).await?))
}

#[utoipa::path(
    delete,
    path = "/v1/balances/{id}",
    tag = "balances",
    summary = "Delete a balance with its transactions",
    params(("id" = String, Path, description = "balance ID")),
    responses((status = 200, body = Deleted), (status = "default", description = "Error envelope", body = crate::http::error::ErrorEnvelope)),
    security(("bearer" = []))
)]
pub async fn delete(
    _: Authorized<Admin>,
    State(gateway): State<AppState>,
    PathId(id): PathId,
) -> Result<Json<Deleted>, ApiError> {
    gateway.delete_balance(&id).await?;
    Ok(Json(Deleted::new(id)))
}

#[utoipa::path(
    get,
    path = "/v1/customers/{id}/balances",
    tag = "balances",
    summary = "Every balance of a customer",
    params(("id" = String, Path, description = "customer ID")),
    responses((status = 200, body = CustomerBalances), (status = "default", description = "Error envelope", body = crate::http::error::ErrorEnvelope)),
    security(("bearer" = []))
)]
pub async fn of_customer(
    _: Authorized<Read>,
    State(gateway): State<AppState>,
    PathId(id): PathId,
) -> Result<Json<CustomerBalances>, ApiError> {
    Ok(Json(CustomerBalances {
        balances: gateway.customer_balances(&id).await?,
    }))
}

async fn movement(
    gateway: AppState,
    kind: TransactionKind,
    headers: &HeaderMap,
    input: NewMovement,
) -> Result<Response, ApiError> {
    let moved = gateway
        .move_balance(kind, input, idempotency_key(headers)?)
        .await?;
    let outcome = match (moved.replayed, moved.result.success) {
        (true, _) => "replayed",
        (false, true) => "applied",
        (false, false) => "refused",
    };
    let kind = match kind {
        TransactionKind::Credit => "credit",
        TransactionKind::Debit => "debit",
    };
    crate::telemetry::record_balance_movement(kind, outcome);
    Ok(replayed(Json(moved.result).into_response(), moved.replayed))
}

#[utoipa::path(
    post,
    path = "/v1/balances/credit",
    tag = "balances",
    summary = "Add credits to a balance",
    params(crate::http::idempotency::IdempotencyKeyHeader),
    request_body = NewMovement,
    responses((status = 200, body = MovementResult), (status = "default", description = "Error envelope", body = crate::http::error::ErrorEnvelope)),
    security(("bearer" = []))
)]
pub async fn credit(
    _: Authorized<Admin>,
    State(gateway): State<AppState>,
    headers: HeaderMap,
    JsonBody(input): JsonBody<NewMovement>,
) -> Result<Response, ApiError> {
    movement(gateway, TransactionKind::Credit, &headers, input).await
}

#[utoipa::path(
    post,
    path = "/v1/balances/debit",
    tag = "balances",
    summary = "Take credits from a balance, atomically; success false when it cannot cover them",
    params(crate::http::idempotency::IdempotencyKeyHeader),
    request_body = NewMovement,
    responses((status = 200, body = MovementResult), (status = "default", description = "Error envelope", body = crate::http::error::ErrorEnvelope)),
    security(("bearer" = []))
)]
pub async fn debit(
    _: Authorized<Ingest>,
    State(gateway): State<AppState>,
    headers: HeaderMap,
    JsonBody(input): JsonBody<NewMovement>,
) -> Result<Response, ApiError> {
    movement(gateway, TransactionKind::Debit, &headers, input).await
}

#[utoipa::path(
    post,
    path = "/v1/balances/check",
    tag = "balances",
    summary = "Does a balance cover an amount? (read-only)",
    request_body = BalanceCheckRequest,
    responses((status = 200, body = BalanceCheck), (status = "default", description = "Error envelope", body = crate::http::error::ErrorEnvelope)),
    security(("bearer" = []))
)]
pub async fn check(
    _: Authorized<Read>,
    State(gateway): State<AppState>,
    JsonBody(request): JsonBody<BalanceCheckRequest>,
) -> Result<Json<BalanceCheck>, ApiError> {
    Ok(Json(gateway.check_balance(request).await?))
}

#[utoipa::path(
    get,
    path = "/v1/balances/{id}/transactions",
    tag = "balances",
    summary = "A balance's transactions, newest first",
    params(("id" = String, Path, description = "balance ID"), crate::http::PageParams),
    responses((status = 200, body = ListBody<Transaction>), (status = "default", description = "Error envelope", body = crate::http::error::ErrorEnvelope)),
    security(("bearer" = []))
)]
pub async fn transactions(
    _: Authorized<Read>,
    State(gateway): State<AppState>,
    PathId(id): PathId,
    mut query: QueryParams,
) -> Result<Json<ListBody<Transaction>>, ApiError> {
    let page = page_request(&mut query)?;
    query.finish()?;
    Ok(Json(gateway.balance_transactions(&id, &page).await?.into()))
}
