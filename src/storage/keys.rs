//! Every Redis key format lives here, pinned by tests.
//!
//! Keys of one customer share the hash tag `{c:<customerId>}` so that a multi-key script for
//! one customer stays in one Redis Cluster slot. Configuration shares the tag `{cfg}`: it is
//! small, read through each node's cache, and changed atomically across kinds.

use super::Kind;

#[derive(Debug, Clone)]
pub struct Keys {
    prefix: String,
}

impl Keys {
    pub fn new(prefix: &str) -> Keys {
        Keys {
            prefix: prefix.to_string(),
        }
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Hash: ID → JSON document.
    pub fn config_docs(&self, kind: Kind) -> String {
        format!("{}:{{cfg}}:{}", self.prefix, kind.name())
    }

    /// Sorted set of IDs (all scores 0, ordered by ID) for stable cursor pages.
    pub fn config_index(&self, kind: Kind) -> String {
        format!("{}:{{cfg}}:{}:ids", self.prefix, kind.name())
    }

    /// Stream of config changes that every node tails to refresh its cache.
    pub fn config_changes(&self) -> String {
        format!("{}:{{cfg}}:changes", self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_keys_share_one_slot_tag() {
        let keys = Keys::new("qg");
        assert_eq!(keys.config_docs(Kind::Meter), "qg:{cfg}:meters");
        assert_eq!(keys.config_index(Kind::Limit), "qg:{cfg}:limits:ids");
        assert_eq!(keys.config_changes(), "qg:{cfg}:changes");
    }
}
