//! Cursor pagination over ID-ordered documents.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::de::DeserializeOwned;

use super::error::{ServiceResult, corrupt};
use crate::domain::field::FieldError;
use crate::storage::{ConfigStore, Kind};

pub const DEFAULT_PAGE: usize = 50;
pub const MAX_PAGE: usize = 100;

#[derive(Debug, Clone)]
pub struct PageRequest {
    pub limit: usize,
    /// The ID after which the page starts (decoded from the opaque cursor).
    pub after: Option<String>,
}

impl PageRequest {
    pub fn parse(limit: Option<&str>, cursor: Option<&str>) -> Result<PageRequest, FieldError> {
        let limit = match limit {
            None => DEFAULT_PAGE,
            Some(raw) => match raw.parse::<usize>() {
                Ok(n @ 1..=MAX_PAGE) => n,
                _ => {
                    return Err(FieldError::invalid(
                        "limit",
                        "must be an integer from 1 to 100",
                    ));
                }
            },
        };
        let after =
            match cursor {
                None | Some("") => None,
                Some(raw) => Some(decode_cursor(raw).ok_or_else(|| {
                    FieldError::invalid("cursor", "is not a cursor this API issued")
                })?),
            };
        Ok(PageRequest { limit, after })
    }
}

#[derive(Debug, Clone)]
pub struct Page<T> {
    pub data: Vec<T>,
    pub next_cursor: Option<String>,
    pub has_more: bool,
}

impl<T> Page<T> {
    /// A page from up to `limit + 1` items in order, each with the position its cursor names:
    /// the extra item only says that more follow.
    pub fn from_items(mut items: Vec<(String, T)>, limit: usize) -> Page<T> {
        let has_more = items.len() > limit;
        items.truncate(limit);
        let next_cursor = if has_more {
            items.last().map(|(position, _)| encode_cursor(position))
        } else {
            None
        };
        Page {
            data: items.into_iter().map(|(_, item)| item).collect(),
            next_cursor,
            has_more,
        }
    }
}

pub fn encode_cursor(id: &str) -> String {
    URL_SAFE_NO_PAD.encode(id.as_bytes())
}

fn decode_cursor(raw: &str) -> Option<String> {
    let bytes = URL_SAFE_NO_PAD.decode(raw).ok()?;
    String::from_utf8(bytes)
        .ok()
        .filter(|id| !id.is_empty() && id.len() <= 256)
}

/// Reads documents of `kind` in ID order after the cursor, keeping those `keep` accepts, until
/// a page is full. IDs order the scan, so an item that exists for the whole scan is neither
/// skipped nor repeated.
pub async fn list<T: DeserializeOwned>(
    store: &dyn ConfigStore,
    kind: Kind,
    request: &PageRequest,
    keep: impl Fn(&T) -> bool,
) -> ServiceResult<Page<T>> {
    const CHUNK: usize = 200;
    let mut after = request.after.clone();
    let mut items: Vec<(String, T)> = Vec::new();
    'scan: loop {
        let chunk = store.page(kind, after.as_deref(), CHUNK).await?;
        let exhausted = chunk.len() < CHUNK;
        for (id, doc) in chunk {
            let item: T = serde_json::from_str(&doc).map_err(|e| corrupt(kind.name(), e))?;
            after = Some(id.clone());
            if keep(&item) {
                items.push((id, item));
                if items.len() > request.limit {
                    break 'scan;
                }
            }
        }
        if exhausted {
            break;
        }
    }
    Ok(Page::from_items(items, request.limit))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_requests_are_bounded() {
        assert_eq!(PageRequest::parse(None, None).unwrap().limit, 50);
        assert!(PageRequest::parse(Some("0"), None).is_err());
        assert!(PageRequest::parse(Some("101"), None).is_err());
        assert!(PageRequest::parse(Some("x"), None).is_err());
        let cursor = encode_cursor("mtr_01");
        assert_eq!(
            PageRequest::parse(None, Some(&cursor))
                .unwrap()
                .after
                .as_deref(),
            Some("mtr_01")
        );
        assert_eq!(
            PageRequest::parse(None, Some("%%%")).unwrap_err().field(),
            "cursor"
        );
    }
}
