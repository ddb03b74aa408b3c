//! Requests that may change state (every method but GET, HEAD and OPTIONS) run in a task of
//! their own, so they end even if their client stops waiting. Several change state in more
//! than one step: a commit's event, then the reservation's status; a deleted balance's
//! document, then its amount; a replayed route's answer, then the record of it under its
//! `Idempotency-Key`. A request dropped between two steps would leave the first without the
//! second.
//!
//! The layer sits outside the overload cap, so a request keeps its place under the cap until
//! its task ends, not only while its client waits. The tasks are tracked: a node that shuts
//! down waits for them ([`crate::app::run`]).

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use axum::extract::Request;
use axum::http::Method;
use axum::response::{IntoResponse, Response};
use futures_util::future::Either;
use tokio::task::JoinHandle;
use tokio_util::task::TaskTracker;
use tower::{Layer, Service};

use super::error::ApiError;

#[derive(Clone)]
pub struct RunToEndLayer {
    running: TaskTracker,
}

impl RunToEndLayer {
    /// Runs the requests that may change state as tasks of `running`.
    pub fn new(running: TaskTracker) -> RunToEndLayer {
        RunToEndLayer { running }
    }
}

impl<S> Layer<S> for RunToEndLayer {
    type Service = RunToEnd<S>;

    fn layer(&self, inner: S) -> RunToEnd<S> {
        RunToEnd {
            inner,
            running: self.running.clone(),
        }
    }
}

#[derive(Clone)]
pub struct RunToEnd<S> {
    inner: S,
    running: TaskTracker,
}

impl<S> Service<Request> for RunToEnd<S>
where
    S: Service<Request, Response = Response, Error = Infallible>,
    S::Future: Send + 'static,
{
    type Response = Response;
    type Error = Infallible;
    type Future = Either<S::Future, Detached>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        let reads_only = matches!(
            *request.method(),
            Method::GET | Method::HEAD | Method::OPTIONS
        );
        let answer = self.inner.call(request);
        if reads_only {
            Either::Left(answer)
        } else {
            Either::Right(Detached {
                task: self.running.spawn(answer),
                answered: false,
            })
        }
    }
}

/// The answer of a request running in its own task; dropping it leaves the task running.
pub struct Detached {
    task: JoinHandle<Result<Response, Infallible>>,
    answered: bool,
}

impl Future for Detached {
    type Output = Result<Response, Infallible>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let outcome = ready!(Pin::new(&mut self.task).poll(cx));
        self.answered = true;
        Poll::Ready(match outcome {
            Ok(answer) => answer,
            Err(error) => {
                tracing::error!(%error, "a request did not run to its end");
                Ok(ApiError::internal().into_response())
            }
        })
    }
}

impl Drop for Detached {
    /// Dropped before its answer: the client stopped waiting.
    fn drop(&mut self) {
        if !self.answered {
            crate::telemetry::record_abandoned();
        }
    }
}
