//! Unknown query parameters are refused like unknown body fields (API.md §0): a route whose
//! OpenAPI operation declares no query parameter refuses any query string, naming its first
//! parameter, before it does anything; the routes that take one check each parameter
//! themselves ([`super::extract::QueryParams::finish`]).
//!
//! A tower layer stacked with the router's other layers rather than an axum middleware, which
//! would box the rest of the stack on every request (see [`super::overload`]): here a request
//! without a query costs one check. It runs before routing, so it matches paths against the
//! document's templates itself; a path that is no route passes on to the router's 404.

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::extract::Request;
use axum::http::Method;
use axum::response::{IntoResponse, Response};
use futures_util::future::{Either, Ready, ready};
use tower::{Layer, Service};
use utoipa::openapi::OpenApi;
use utoipa::openapi::path::ParameterIn;

use super::error::ApiError;
use super::extract::serde_urlencoded_pairs;
use crate::domain::field::FieldError;

/// The document's operations, by method and path template, and whether each takes a query.
#[derive(Clone)]
pub struct QueryCheckLayer {
    operations: Arc<Vec<(Method, String, bool)>>,
}

impl QueryCheckLayer {
    pub fn new(document: &OpenApi) -> QueryCheckLayer {
        let mut operations = Vec::new();
        // The API's routes only: probes and scrapers outside `/v1` may carry a query of
        // their own (a cache buster), and failing a liveness probe over it would restart the
        // node.
        let api_paths = document
            .paths
            .paths
            .iter()
            .filter(|(path, _)| path.starts_with("/v1/"));
        for (path, item) in api_paths {
            let by_method = [
                (Method::GET, &item.get),
                (Method::PUT, &item.put),
                (Method::POST, &item.post),
                (Method::DELETE, &item.delete),
                (Method::PATCH, &item.patch),
            ];
            for (method, operation) in by_method {
                let Some(operation) = operation else { continue };
                let takes_query = operation.parameters.as_ref().is_some_and(|parameters| {
                    parameters
                        .iter()
                        .any(|p| p.parameter_in == ParameterIn::Query)
                });
                operations.push((method, path.clone(), takes_query));
            }
        }
        QueryCheckLayer {
            operations: Arc::new(operations),
        }
    }

    /// Whether `path` is an operation of `method` that takes no query.
    fn refuses_query(&self, method: &Method, path: &str) -> bool {
        self.operations
            .iter()
            .find(|(m, template, _)| m == method && matches_template(template, path))
            .is_some_and(|(_, _, takes_query)| !takes_query)
    }
}

/// Whether `path` fits `template` (`/v1/customers/{id}`): segment by segment, a `{…}` segment
/// fits any one non-empty segment.
fn matches_template(template: &str, path: &str) -> bool {
    let mut path = path.split('/');
    for expected in template.split('/') {
        match path.next() {
            Some(segment) if expected.starts_with('{') && !segment.is_empty() => {}
            Some(segment) if segment == expected => {}
            _ => return false,
        }
    }
    path.next().is_none()
}

impl<S> Layer<S> for QueryCheckLayer {
    type Service = QueryCheck<S>;

    fn layer(&self, inner: S) -> QueryCheck<S> {
        QueryCheck {
            inner,
            layer: self.clone(),
        }
    }
}

#[derive(Clone)]
pub struct QueryCheck<S> {
    inner: S,
    layer: QueryCheckLayer,
}

impl<S> Service<Request> for QueryCheck<S>
where
    S: Service<Request, Response = Response, Error = Infallible>,
{
    type Response = Response;
    type Error = Infallible;
    type Future = Either<Ready<Result<Response, Infallible>>, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        let query = request.uri().query().filter(|query| !query.is_empty());
        match query {
            Some(query)
                if self
                    .layer
                    .refuses_query(request.method(), request.uri().path()) =>
            {
                let refusal = match serde_urlencoded_pairs(query) {
                    Ok(pairs) => {
                        let name = pairs.into_iter().next().map(|(name, _)| name);
                        ApiError::field(FieldError::invalid(
                            name.unwrap_or_default(),
                            "is not a known query parameter",
                        ))
                    }
                    Err(error) => error,
                };
                Either::Left(ready(Ok(refusal.into_response())))
            }
            _ => Either::Right(self.inner.call(request)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_fit_templates_segment_by_segment() {
        assert!(matches_template("/v1/customers", "/v1/customers"));
        assert!(matches_template("/v1/customers/{id}", "/v1/customers/c1"));
        assert!(matches_template(
            "/v1/webhooks/{id}/deliveries/{delivery_id}/redeliver",
            "/v1/webhooks/wh_1/deliveries/dlv_2/redeliver"
        ));
        assert!(!matches_template("/v1/customers/{id}", "/v1/customers/"));
        assert!(!matches_template(
            "/v1/customers/{id}",
            "/v1/customers/c1/balances"
        ));
        assert!(!matches_template("/v1/customers", "/v1/customers/c1"));
        assert!(!matches_template("/v1/meters", "/v1/customers"));
    }
}
