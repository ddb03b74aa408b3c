//! `Authorization: Bearer <key>` checked before anything else of the request is read.

use std::marker::PhantomData;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode, header};

use super::AppState;
use super::error::ApiError;
use crate::domain::apikey::Scope;
use crate::service::auth::AuthError;

pub trait RequiredScope {
    const SCOPE: Scope;
}

pub struct Read;
pub struct Ingest;
pub struct Admin;

impl RequiredScope for Read {
    const SCOPE: Scope = Scope::Read;
}
impl RequiredScope for Ingest {
    const SCOPE: Scope = Scope::Ingest;
}
impl RequiredScope for Admin {
    const SCOPE: Scope = Scope::Admin;
}

/// Proof that the caller holds scope `S` (or a wider one).
pub struct Authorized<S>(PhantomData<S>);

/// The key presented as `Authorization: Bearer <key>`, if any.
fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

/// The scope of the caller's key, or the answer for a caller without a valid one.
pub fn caller_scope(headers: &HeaderMap, gateway: &AppState) -> Result<Scope, ApiError> {
    match gateway.authenticate(bearer(headers)) {
        Ok(scope) => Ok(scope),
        Err(AuthError::Missing) if !headers.contains_key(header::AUTHORIZATION) => {
            Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "missing_api_key",
                "send Authorization: Bearer <key>",
            ))
        }
        Err(_) => Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "invalid_api_key",
            "unknown or revoked API key",
        )),
    }
}

impl<S: RequiredScope> FromRequestParts<AppState> for Authorized<S> {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        gateway: &AppState,
    ) -> Result<Self, Self::Rejection> {
        if caller_scope(&parts.headers, gateway)? >= S::SCOPE {
            Ok(Authorized(PhantomData))
        } else {
            Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "insufficient_permissions",
                format!("this route needs the `{}` scope", scope_name(S::SCOPE)),
            ))
        }
    }
}

fn scope_name(scope: Scope) -> &'static str {
    match scope {
        Scope::Read => "read",
        Scope::Ingest => "ingest",
        Scope::Admin => "admin",
    }
}
