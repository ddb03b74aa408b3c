//! JSON answers.
//!
//! axum's `Json` serializes into a 128-byte buffer through `io::Write`, so a decision's answer
//! (about 1 KiB) is copied through several regrowths in small writes. This one writes into a
//! buffer sized for a typical answer; every handler answers through it.

use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use super::error::ApiError;

/// Room for most answers without regrowing.
const INITIAL_CAPACITY: usize = 1024;

#[derive(Debug, Clone, Copy, Default)]
pub struct Json<T>(pub T);

impl<T: Serialize> IntoResponse for Json<T> {
    fn into_response(self) -> Response {
        let mut body = Vec::with_capacity(INITIAL_CAPACITY);
        match serde_json::to_writer(&mut body, &self.0) {
            Ok(()) => (
                [(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/json"),
                )],
                body,
            )
                .into_response(),
            Err(error) => {
                tracing::error!(%error, "answer could not be serialized");
                ApiError::internal().into_response()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::StatusCode;
    use http_body_util::BodyExt;
    use std::collections::HashMap;

    async fn body_of(response: Response) -> String {
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        String::from_utf8(bytes.to_vec()).unwrap()
    }

    #[tokio::test]
    async fn answers_are_json_of_any_size() {
        let long = "x".repeat(3 * INITIAL_CAPACITY);
        for text in ["short", long.as_str()] {
            let response = Json(serde_json::json!({ "text": text })).into_response();
            assert_eq!(response.status(), StatusCode::OK);
            assert_eq!(response.headers()[header::CONTENT_TYPE], "application/json");
            assert_eq!(body_of(response).await, format!(r#"{{"text":"{text}"}}"#));
        }
    }

    #[tokio::test]
    async fn an_answer_that_cannot_be_serialized_is_an_internal_error() {
        // JSON object keys must be strings.
        let response = Json(HashMap::from([((1, 2), 3)])).into_response();
        assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
    }
}
