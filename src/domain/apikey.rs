//! API keys: scopes, and the hashed form in which keys are stored.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::field::{FieldError, MAX_NAME_CHARS, bounded_str};
use super::time::serde_rfc3339;

/// What a key may do. Each scope includes the ones before it: `ingest` can do all `read` can,
/// `admin` everything.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    Read,
    Ingest,
    Admin,
}

/// A stored key: never the key itself, only its SHA-256.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ApiKey {
    pub id: String,
    pub name: String,
    pub scopes: Vec<Scope>,
    pub key_hash: String,
    #[serde(with = "serde_rfc3339")]
    pub created_at: DateTime<Utc>,
}

/// `POST /v1/api-keys` body.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NewApiKey {
    #[schema(min_length = 1, max_length = 256)]
    pub name: String,
    #[schema(min_items = 1)]
    pub scopes: Vec<Scope>,
}

pub const KEY_PREFIX: &str = "qg_sk_";

impl ApiKey {
    /// `secret` is the full key handed to the caller once (`qg_sk_...`).
    pub fn create(
        id: String,
        input: NewApiKey,
        secret: &str,
        now: DateTime<Utc>,
    ) -> Result<ApiKey, FieldError> {
        bounded_str("name", &input.name, 1, MAX_NAME_CHARS)?;
        if input.scopes.is_empty() {
            return Err(FieldError::invalid(
                "scopes",
                "must name at least one scope",
            ));
        }
        let mut scopes = input.scopes;
        scopes.sort_unstable();
        scopes.dedup();
        Ok(ApiKey {
            id,
            name: input.name,
            scopes,
            key_hash: hex(&hash_key(secret)),
            created_at: now,
        })
    }

    /// The widest scope the key holds.
    pub fn level(&self) -> Scope {
        self.scopes.iter().copied().max().unwrap_or(Scope::Read)
    }
}

pub fn hash_key(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub fn parse_hex_digest(raw: &str) -> Option<[u8; 32]> {
    if raw.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(raw.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_hash_round_trips_and_never_holds_the_key() {
        let input = NewApiKey {
            name: "ci".into(),
            scopes: vec![Scope::Read, Scope::Ingest, Scope::Read],
        };
        let key = ApiKey::create("key_1".into(), input, "qg_sk_secret", Utc::now()).unwrap();
        assert_eq!(key.scopes, vec![Scope::Read, Scope::Ingest]);
        assert_eq!(key.level(), Scope::Ingest);
        assert!(!serde_json::to_string(&key).unwrap().contains("secret"));
        assert_eq!(
            parse_hex_digest(&key.key_hash),
            Some(hash_key("qg_sk_secret"))
        );
    }

    #[test]
    fn scopes_are_required() {
        let input = NewApiKey {
            name: "ci".into(),
            scopes: vec![],
        };
        let error = ApiKey::create("key_1".into(), input, "s", Utc::now()).unwrap_err();
        assert_eq!(error.field(), "scopes");
    }
}
