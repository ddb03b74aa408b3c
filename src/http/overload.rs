//! The node's own protection (API.md §0, `rate_limit_exceeded`): beyond a set number of API
//! requests (`/v1/…`) in flight, a request is answered `429` at once, with `Retry-After`,
//! instead of queueing behind work that would miss its storage deadlines anyway. Health,
//! readiness and metrics lie outside `/v1`, so an overloaded node can still be watched.
//!
//! A tower layer rather than an axum `from_fn` middleware, stacked with the router's other
//! layers: it runs on every request, and `from_fn` as well as each separate `Router::layer`
//! box the rest of the stack per request (together about 2% of a consume's instructions).

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::extract::Request;
use axum::response::{IntoResponse, Response};
use futures_util::future::{Either, Ready, ready};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tower::{Layer, Service};

use super::error::ApiError;

/// Caps the API requests in flight through every service it wraps, together.
#[derive(Clone)]
pub struct ShedLayer {
    in_flight: Arc<Semaphore>,
}

impl ShedLayer {
    pub fn new(max_in_flight: usize) -> ShedLayer {
        ShedLayer {
            in_flight: Arc::new(Semaphore::new(max_in_flight)),
        }
    }
}

impl<S> Layer<S> for ShedLayer {
    type Service = Shed<S>;

    fn layer(&self, inner: S) -> Shed<S> {
        Shed {
            inner,
            in_flight: Arc::clone(&self.in_flight),
        }
    }
}

#[derive(Clone)]
pub struct Shed<S> {
    inner: S,
    in_flight: Arc<Semaphore>,
}

impl<S> Service<Request> for Shed<S>
where
    S: Service<Request, Response = Response, Error = Infallible>,
{
    type Response = Response;
    type Error = Infallible;
    type Future = Either<Ready<Result<Response, Infallible>>, Admitted<S::Future>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        let permit = if request.uri().path().starts_with("/v1/") {
            match Arc::clone(&self.in_flight).try_acquire_owned() {
                Ok(permit) => Some(permit),
                Err(_) => return Either::Left(ready(Ok(ApiError::overloaded().into_response()))),
            }
        } else {
            None
        };
        Either::Right(Admitted {
            answer: self.inner.call(request),
            _permit: permit,
        })
    }
}

pin_project_lite::pin_project! {
    /// An admitted request's answer; its place is freed when the answer is ready.
    pub struct Admitted<F> {
        #[pin]
        answer: F,
        _permit: Option<OwnedSemaphorePermit>,
    }
}

impl<F: Future> Future for Admitted<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        self.project().answer.poll(cx)
    }
}
