//! Idempotency keys on requests that have no de-duplication of their own: the first request
//! with a key runs and its answer is kept as long as event keys are (24 h); a repeat gets
//! that answer back, and one that arrives while the first still runs is told so.

use std::time::Duration;

use sha2::{Digest, Sha256};

use super::Gateway;
use super::error::ServiceResult;
use crate::storage::StoreError;
use crate::storage::replays::ReplayClaim;

/// How long a claimed key waits for its request's answer (longer than any request runs).
const PENDING: Duration = Duration::from_secs(60);

/// What a request with an idempotency key is to do.
#[derive(Debug)]
pub enum Replay {
    /// Run, then [`Gateway::finish_replay`] with the ticket.
    Run(ReplayTicket),
    /// A request with the same key is still running.
    InProgress,
    /// Answer as the first request was answered.
    Answered { status: u16, body: String },
}

/// A claimed key.
#[derive(Debug)]
pub struct ReplayTicket {
    digest: String,
}

/// Keys are scoped per credential and route: two callers, or two routes, never share one.
fn digest(credential: &[u8], path: &str, key: &str) -> String {
    let mut hasher = Sha256::new();
    for part in [credential, path.as_bytes(), key.as_bytes()] {
        hasher.update((part.len() as u64).to_be_bytes());
        hasher.update(part);
    }
    crate::domain::apikey::hex(&hasher.finalize()[..16])
}

impl Gateway {
    pub async fn claim_replay(
        &self,
        credential: &[u8],
        path: &str,
        key: &str,
    ) -> ServiceResult<Replay> {
        let digest = digest(credential, path, key);
        let claim = self
            .store
            .claim_replay(&digest, PENDING.as_millis() as i64)
            .await?;
        Ok(match claim {
            ReplayClaim::Claimed => Replay::Run(ReplayTicket { digest }),
            ReplayClaim::InProgress => Replay::InProgress,
            ReplayClaim::Answered(stored) => {
                // Stored by finish_replay as "<status> <body>"; anything else is corrupt.
                let corrupt = || StoreError::Internal("unreadable stored answer".into());
                let (status, body) = stored.split_once(' ').ok_or_else(corrupt)?;
                Replay::Answered {
                    status: status.parse().map_err(|_| corrupt())?,
                    body: body.to_string(),
                }
            }
        })
    }

    /// Keeps the answer of a request that changed something (`Some`), or frees the key of one
    /// that changed nothing, so that a repeat runs. Failing here only costs the replay: the
    /// pending claim expires by itself.
    pub async fn finish_replay(&self, ticket: ReplayTicket, answer: Option<(u16, &str)>) {
        let stored = answer.map(|(status, body)| format!("{status} {body}"));
        if let Err(error) = self
            .store
            .finish_replay(&ticket.digest, stored.as_deref())
            .await
        {
            tracing::warn!(%error, "could not keep the answer for an idempotency key");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_scoped_by_credential_and_route() {
        let base = digest(b"Bearer a", "/v1/meters", "k1");
        assert_eq!(base, digest(b"Bearer a", "/v1/meters", "k1"));
        assert_ne!(base, digest(b"Bearer b", "/v1/meters", "k1"));
        assert_ne!(base, digest(b"Bearer a", "/v1/limits", "k1"));
        assert_ne!(base, digest(b"Bearer a", "/v1/meters", "k2"));
        // Parts are length-prefixed, so moving a boundary changes the digest.
        assert_ne!(digest(b"ab", "c", "k"), digest(b"a", "bc", "k"));
    }
}
