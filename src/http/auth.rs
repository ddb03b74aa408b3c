//! `Authorization: Bearer <key>` checked before anything else of the request is read.

use std::marker::PhantomData;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{StatusCode, header};

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

fn bearer(parts: &Parts) -> Option<&str> {
    let value = parts.headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

impl<S: RequiredScope> FromRequestParts<AppState> for Authorized<S> {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        gateway: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let has_header = parts.headers.contains_key(header::AUTHORIZATION);
        match gateway.authenticate(bearer(parts)) {
            Ok(scope) if scope >= S::SCOPE => Ok(Authorized(PhantomData)),
            Ok(_) => Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "insufficient_permissions",
                format!("this route needs the `{}` scope", scope_name(S::SCOPE)),
            )),
            Err(AuthError::Missing) if !has_header => Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "missing_api_key",
                "send Authorization: Bearer <key>",
            )),
            Err(_) => Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "invalid_api_key",
                "unknown or revoked API key",
            )),
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
