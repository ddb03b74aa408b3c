//! Extractors that turn every rejection into the API's error envelope.

use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use serde::de::DeserializeOwned;

use super::error::ApiError;
use crate::domain::field::FieldError;

/// A JSON object body, required.
pub struct JsonBody<T>(pub T);

/// A JSON object body that may be left out entirely (treated as `{}`).
pub struct OptionalJsonBody<T>(pub T);

/// The body of a `POST` that takes no fields: absent, or `{}`. Anything else is refused as
/// any other body would be (malformed JSON, another media type, an unknown field).
pub struct NoBody;

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct NoFields {}

fn is_json(parts: &axum::http::HeaderMap) -> bool {
    parts
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(|mime| {
            let mime = mime.trim().to_ascii_lowercase();
            mime == "application/json"
                || (mime.starts_with("application/") && mime.ends_with("+json"))
        })
        .unwrap_or(false)
}

/// How long a request's body may take to arrive. Everything after has its own deadlines
/// (storage calls, webhook deliveries); a client sending its body slowly would otherwise hold
/// its place under the in-flight cap for as long as it likes.
pub const BODY_TIMEOUT: Duration = Duration::from_secs(30);

async fn read_body<S: Send + Sync>(req: Request, state: &S) -> Result<(bool, Bytes), ApiError> {
    let json = is_json(req.headers());
    // A body already received is read without arming the timer.
    let read = tokio::time::timeout(BODY_TIMEOUT, Bytes::from_request(req, state))
        .await
        .map_err(|_| ApiError::from_status(StatusCode::REQUEST_TIMEOUT))?;
    let bytes = read.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::from_status(StatusCode::PAYLOAD_TOO_LARGE)
        } else {
            ApiError::invalid_request("could not read the request body")
        }
    })?;
    Ok((json, bytes))
}

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let (json, bytes) = read_body(req, state).await?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Err(ApiError::invalid_request(
                "the request body is empty; send a JSON object",
            ));
        }
        if !json {
            return Err(ApiError::from_status(StatusCode::UNSUPPORTED_MEDIA_TYPE));
        }
        parse_json(&bytes).map(JsonBody)
    }
}

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for OptionalJsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let (json, bytes) = read_body(req, state).await?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return parse_json(b"{}").map(OptionalJsonBody);
        }
        if !json {
            return Err(ApiError::from_status(StatusCode::UNSUPPORTED_MEDIA_TYPE));
        }
        parse_json(&bytes).map(OptionalJsonBody)
    }
}

impl<S: Send + Sync> FromRequest<S> for NoBody {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let OptionalJsonBody(NoFields {}) = OptionalJsonBody::from_request(req, state).await?;
        Ok(NoBody)
    }
}

/// Parses a JSON object into `T`, naming the offending field on any data error.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    // serde would also read a struct from a JSON array; the API takes objects only.
    if bytes.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(ApiError::invalid_request(
            "the request body must be a JSON object",
        ));
    }
    // Tracking the path costs every field; only a body that fails needs it, so it is parsed
    // again with tracking then.
    if let Ok(value) = serde_json::from_slice(bytes) {
        return Ok(value);
    }
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(&mut deserializer).map_err(|error| {
        // serde stops at the first problem it meets, which may be a field before a syntax
        // error further on; malformed JSON must read as malformed whatever its content.
        match serde_json::from_slice::<serde::de::IgnoredAny>(bytes) {
            Err(syntax) => ApiError::invalid_request(format!(
                "malformed JSON: {}",
                strip_position(&syntax.to_string())
            )),
            Ok(_) => classify(error),
        }
    })?;
    deserializer.end().map_err(|_| {
        ApiError::invalid_request("malformed JSON: trailing characters after the object")
    })?;
    Ok(value)
}

fn classify(error: serde_path_to_error::Error<serde_json::Error>) -> ApiError {
    let path = error.path().to_string();
    let inner = error.inner();
    if !inner.is_data() {
        return ApiError::invalid_request(format!(
            "malformed JSON: {}",
            strip_position(&inner.to_string())
        ));
    }
    let message = in_json_terms(&strip_position(&inner.to_string()));
    let at_root = path == "." || path.is_empty();
    if at_root && message.starts_with("invalid type") {
        return ApiError::invalid_request("the request body must be a JSON object");
    }
    let join = |name: &str| {
        if at_root {
            name.to_string()
        } else {
            format!("{path}.{name}")
        }
    };
    if let Some(name) = quoted_after(&message, "missing field `") {
        return ApiError::field(FieldError::missing(join(name)));
    }
    if let Some(name) = quoted_after(&message, "unknown field `") {
        // The path already ends at the unknown field.
        let field = if at_root { name.to_string() } else { path };
        return ApiError::field(FieldError::invalid(field, "is not a known field"));
    }
    let field = if at_root { "body".to_string() } else { path };
    ApiError::field(FieldError::invalid(field, message))
}

/// serde names what it expected in Rust's terms (`f64`, `struct NewEvent`); the caller wrote
/// JSON.
fn in_json_terms(message: &str) -> String {
    let Some((head, expected)) = message.rsplit_once("expected ") else {
        return message.to_string();
    };
    let plain = match expected {
        "f32" | "f64" => "a number",
        "i8" | "i16" | "i32" | "i64" | "i128" | "isize" => "an integer",
        "u8" | "u16" | "u32" | "u64" | "u128" | "usize" => "a non-negative integer",
        "a sequence" => "an array",
        "a map" => "an object",
        "a borrowed string" | "a char" => "a string",
        other if other.starts_with("struct ") || other.starts_with("map ") => "an object",
        other => other,
    };
    format!("{head}expected {plain}")
}

fn strip_position(message: &str) -> String {
    match message.rfind(" at line ") {
        Some(index) => message[..index].to_string(),
        None => message.to_string(),
    }
}

fn quoted_after<'a>(message: &'a str, marker: &str) -> Option<&'a str> {
    let rest = message.strip_prefix(marker)?;
    rest.split('`').next()
}

/// Query parameters, read one by one; any parameter left unread is rejected, so a typo
/// never passes silently, and so is one given twice (which of the two would count?).
pub struct QueryParams(Vec<(String, String)>);

impl<S: Send + Sync> FromRequestParts<S> for QueryParams {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let raw = parts.uri.query().unwrap_or("");
        let pairs = serde_urlencoded_pairs(raw)?;
        let mut names = std::collections::HashSet::with_capacity(pairs.len());
        for (name, _) in &pairs {
            if !names.insert(name.as_str()) {
                return Err(ApiError::field(FieldError::invalid(
                    name.clone(),
                    "is given more than once",
                )));
            }
        }
        Ok(QueryParams(pairs))
    }
}

pub fn serde_urlencoded_pairs(raw: &str) -> Result<Vec<(String, String)>, ApiError> {
    axum::extract::Query::<Vec<(String, String)>>::try_from_uri(
        &format!("/?{raw}")
            .parse()
            .map_err(|_| ApiError::invalid_request("malformed query string"))?,
    )
    .map(|query| query.0)
    .map_err(|_| ApiError::invalid_request("malformed query string"))
}

impl QueryParams {
    pub fn take(&mut self, name: &str) -> Option<String> {
        let index = self.0.iter().position(|(key, _)| key == name)?;
        Some(self.0.remove(index).1)
    }

    pub fn finish(self) -> Result<(), ApiError> {
        match self.0.first() {
            Some((key, _)) => Err(ApiError::field(FieldError::invalid(
                key.clone(),
                "is not a known query parameter",
            ))),
            None => Ok(()),
        }
    }
}

/// The `{id}` of a path. An ID that does not even decode (bad percent-encoding, not UTF-8)
/// cannot exist, so it becomes an empty ID, which every lookup answers with the resource's 404.
pub struct PathId(pub String);

impl<S: Send + Sync> FromRequestParts<S> for PathId {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let id = axum::extract::Path::<String>::from_request_parts(parts, state)
            .await
            .map(|path| path.0)
            .unwrap_or_default();
        Ok(PathId(id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields, rename_all = "camelCase")]
    struct Outer {
        #[allow(dead_code)]
        name: String,
        #[allow(dead_code)]
        inner: Option<Inner>,
    }

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Inner {
        #[allow(dead_code)]
        count: u32,
    }

    fn error_of(body: &str) -> (&'static str, String) {
        let error = parse_json::<Outer>(body.as_bytes()).unwrap_err();
        (error.code, error.message)
    }

    #[test]
    fn rejections_name_their_field() {
        assert_eq!(error_of("{").0, "invalid_request");
        assert_eq!(error_of("[1]").0, "invalid_request");
        assert_eq!(error_of(r#"{"name":"a"} x"#).0, "invalid_request");
        assert_eq!(
            error_of("{}"),
            ("missing_required_field", "`name` is required".into())
        );
        let (code, message) = error_of(r#"{"name":"a","nmae":1}"#);
        assert_eq!(code, "invalid_field_value");
        assert!(message.starts_with("`nmae`"), "{message}");
        let (code, message) = error_of(r#"{"name":5}"#);
        assert_eq!(code, "invalid_field_value");
        assert!(message.starts_with("`name`"), "{message}");
        let (_, message) = error_of(r#"{"name":"a","inner":{"count":-1}}"#);
        assert!(message.starts_with("`inner.count`"), "{message}");
        let (_, message) = error_of(r#"{"name":"a","inner":{"count":1,"x":2}}"#);
        assert!(message.starts_with("`inner.x` is not"), "{message}");
        // Expectations in JSON's terms, not Rust's.
        let (_, message) = error_of(r#"{"name":"a","inner":{"count":"x"}}"#);
        assert!(
            message.ends_with("expected a non-negative integer"),
            "{message}"
        );
        let (_, message) = error_of(r#"{"name":"a","inner":5}"#);
        assert!(message.ends_with("expected an object"), "{message}");
        assert_eq!(
            in_json_terms("invalid type: string \"x\", expected f64"),
            "invalid type: string \"x\", expected a number"
        );
        assert_eq!(
            in_json_terms("invalid type: map, expected a sequence"),
            "invalid type: map, expected an array"
        );
        assert_eq!(
            in_json_terms("unknown variant `x`, expected one of `a`, `b`"),
            "unknown variant `x`, expected one of `a`, `b`"
        );
        let (code, message) = error_of(r#"{"name":"a","inner":{}}"#);
        assert_eq!(code, "missing_required_field");
        assert!(message.starts_with("`inner.count`"), "{message}");
    }
}
