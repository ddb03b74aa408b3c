//! Who may call: the bootstrap admin key, and scoped keys created through the API.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand::RngCore;
use subtle::ConstantTimeEq;

use super::Gateway;
use super::config::to_doc;
use super::error::{Resource, ServiceError, ServiceResult};
use super::page::{self, Page, PageRequest};
use crate::domain::apikey::{ApiKey, KEY_PREFIX, NewApiKey, Scope, hash_key};
use crate::domain::ids::IdKind;
use crate::storage::{ConfigOp, Guard, Kind};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthError {
    Missing,
    Invalid,
}

impl Gateway {
    /// The widest scope the presented key grants. Keys are compared by their SHA-256: the
    /// admin key in constant time, API keys by a lookup on the digest (which reveals nothing
    /// about any stored key).
    pub fn authenticate(&self, presented: Option<&str>) -> Result<Scope, AuthError> {
        let Some(admin_hash) = self.settings.admin_key_hash else {
            return Ok(Scope::Admin);
        };
        let presented = presented.ok_or(AuthError::Missing)?;
        let digest = hash_key(presented);
        if bool::from(digest.ct_eq(&admin_hash)) {
            return Ok(Scope::Admin);
        }
        self.cache
            .read()
            .api_keys
            .get(&digest)
            .map(|key| key.level())
            .ok_or(AuthError::Invalid)
    }

    pub fn is_open(&self) -> bool {
        self.settings.admin_key_hash.is_none()
    }

    /// Creates a key; returns it with its secret, which is never shown again.
    pub async fn create_api_key(&self, input: NewApiKey) -> ServiceResult<(ApiKey, String)> {
        let mut random = [0u8; 32];
        rand::rng().fill_bytes(&mut random);
        let secret = format!("{KEY_PREFIX}{}", URL_SAFE_NO_PAD.encode(random));
        let key = ApiKey::create(
            self.new_id(IdKind::ApiKey),
            input,
            &secret,
            self.clock.now(),
        )?;
        let op = ConfigOp::Put {
            kind: Kind::ApiKey,
            id: key.id.clone(),
            doc: to_doc(&key)?,
            guard: Guard::Absent,
        };
        self.commit(&[op])
            .await?
            .map_err(|_| ServiceError::Conflict("API key ID collision".into()))?;
        Ok((key, secret))
    }

    pub async fn list_api_keys(&self, request: &PageRequest) -> ServiceResult<Page<ApiKey>> {
        page::list(self.store.as_ref(), Kind::ApiKey, request, |_: &ApiKey| {
            true
        })
        .await
    }

    /// Revokes a key: at once on this node, within a poll interval on the others.
    pub async fn delete_api_key(&self, id: &str) -> ServiceResult<()> {
        if !IdKind::ApiKey.is_plausible(id) {
            return Err(ServiceError::NotFound(Resource::ApiKey));
        }
        let op = ConfigOp::Delete {
            kind: Kind::ApiKey,
            id: id.to_string(),
            guard: Guard::Present,
        };
        self.commit(&[op])
            .await?
            .map_err(|_| ServiceError::NotFound(Resource::ApiKey))
    }
}
