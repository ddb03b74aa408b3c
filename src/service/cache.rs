//! Each node's in-memory copy of the configuration, read on every request without I/O.
//!
//! Local writes update it at once (read your writes); everything else arrives through the
//! store's change log, tailed every [`POLL_INTERVAL`], with a full reload every
//! [`FULL_RELOAD_INTERVAL`] as the safety net (and whenever the log could not be read).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard};
use std::time::Duration;

use serde::de::DeserializeOwned;

use super::Gateway;
use super::error::{ServiceError, ServiceResult};
use crate::domain::apikey::{ApiKey, parse_hex_digest};
use crate::domain::customer::Customer;
use crate::domain::ids::CustomerId;
use crate::domain::limit::Limit;
use crate::domain::meter::Meter;
use crate::domain::usage::{ResolvedLimit, governing};
use crate::domain::webhook::Webhook;
use crate::storage::{ConfigChange, ConfigOp, ConfigStore, Kind, StoreError};

pub const POLL_INTERVAL: Duration = Duration::from_millis(200);
pub const FULL_RELOAD_INTERVAL: Duration = Duration::from_secs(60);
const CHANGES_PER_POLL: usize = 1000;

#[derive(Default)]
pub struct ConfigCache {
    state: RwLock<CacheState>,
    cursor: RwLock<String>,
    /// Limits resolved against their meters, rebuilt on first use after a limit or meter
    /// changed (customer changes, the frequent kind, leave it alone).
    limit_index: RwLock<Option<(u64, Arc<LimitIndex>)>>,
    /// Bumped on every limit or meter change; an index built from an older generation is
    /// never stored.
    limit_generation: AtomicU64,
    /// When the cache last caught up with storage.
    synced_at: RwLock<Option<std::time::Instant>>,
}

/// What the hot path needs to plan an event: meters, and limits by customer.
#[derive(Debug, Default)]
pub struct LimitIndex {
    pub meters: Vec<Arc<Meter>>,
    pub defaults: Vec<ResolvedLimit>,
    pub by_customer: HashMap<CustomerId, Vec<ResolvedLimit>>,
}

impl LimitIndex {
    fn build(state: &CacheState) -> LimitIndex {
        let mut index = LimitIndex {
            meters: state.meters.values().cloned().collect(),
            ..LimitIndex::default()
        };
        index.meters.sort_by(|a, b| a.id.cmp(&b.id));
        let mut limits: Vec<&Arc<Limit>> = state.limits.values().collect();
        limits.sort_by(|a, b| a.id.cmp(&b.id));
        for limit in limits {
            // A limit whose meter is gone (deleted on another node a moment ago) counts nothing.
            let Some(meter) = state.meters.get(&limit.meter_id) else {
                continue;
            };
            let resolved = ResolvedLimit::new(Arc::clone(limit), Arc::clone(meter));
            match &limit.customer_id {
                None => index.defaults.push(resolved),
                Some(customer) => index
                    .by_customer
                    .entry(customer.clone())
                    .or_default()
                    .push(resolved),
            }
        }
        index
    }

    /// The limits governing `customer`: its own plus the defaults it does not override.
    pub fn governing(&self, customer: &CustomerId) -> Vec<ResolvedLimit> {
        let own = self
            .by_customer
            .get(customer)
            .map_or(&[][..], Vec::as_slice);
        governing(own, &self.defaults)
    }
}

#[derive(Default)]
pub struct CacheState {
    pub customers: HashMap<String, Arc<Customer>>,
    pub meters: HashMap<String, Arc<Meter>>,
    pub limits: HashMap<String, Arc<Limit>>,
    /// Keyed by the SHA-256 of the key, which is what a request presents (hashed).
    pub api_keys: HashMap<[u8; 32], Arc<ApiKey>>,
    pub webhooks: HashMap<String, Arc<Webhook>>,
    api_key_hashes: HashMap<String, [u8; 32]>,
}

fn decode<T: DeserializeOwned>(kind: Kind, doc: &str) -> Option<T> {
    match serde_json::from_str(doc) {
        Ok(value) => Some(value),
        Err(error) => {
            tracing::error!(kind = kind.name(), %error, "skipping undecodable config document");
            None
        }
    }
}

impl CacheState {
    fn set(&mut self, kind: Kind, id: &str, doc: Option<&str>) {
        match kind {
            Kind::Customer => upsert(&mut self.customers, kind, id, doc),
            Kind::Meter => upsert(&mut self.meters, kind, id, doc),
            Kind::Limit => upsert(&mut self.limits, kind, id, doc),
            Kind::Webhook => upsert(&mut self.webhooks, kind, id, doc),
            Kind::ApiKey => {
                if let Some(hash) = self.api_key_hashes.remove(id) {
                    self.api_keys.remove(&hash);
                }
                let Some(key) = doc.and_then(|doc| decode::<ApiKey>(kind, doc)) else {
                    return;
                };
                if let Some(hash) = parse_hex_digest(&key.key_hash) {
                    self.api_key_hashes.insert(id.to_string(), hash);
                    self.api_keys.insert(hash, Arc::new(key));
                }
            }
        }
    }
}

fn upsert<T: DeserializeOwned>(
    map: &mut HashMap<String, Arc<T>>,
    kind: Kind,
    id: &str,
    doc: Option<&str>,
) {
    match doc.and_then(|doc| decode::<T>(kind, doc)) {
        Some(value) => {
            map.insert(id.to_string(), Arc::new(value));
        }
        None => {
            map.remove(id);
        }
    }
}

impl ConfigCache {
    pub fn read(&self) -> RwLockReadGuard<'_, CacheState> {
        self.state
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, CacheState> {
        self.state
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn invalidate_limits(&self) {
        self.limit_generation.fetch_add(1, Ordering::SeqCst);
    }

    pub fn limit_index(&self) -> Arc<LimitIndex> {
        let generation = self.limit_generation.load(Ordering::SeqCst);
        if let Some((built, index)) = self
            .limit_index
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            && *built == generation
        {
            return Arc::clone(index);
        }
        let index = Arc::new(LimitIndex::build(&self.read()));
        let mut slot = self.limit_index.write().unwrap_or_else(|p| p.into_inner());
        if self.limit_generation.load(Ordering::SeqCst) == generation {
            *slot = Some((generation, Arc::clone(&index)));
        }
        index
    }

    pub fn customer(&self, id: &CustomerId) -> Option<Arc<Customer>> {
        self.read().customers.get(id.as_str()).cloned()
    }

    /// Adds a customer this node learned about outside the change log (read from storage on
    /// a cache miss, or just created implicitly), unless a newer copy arrived meanwhile.
    pub fn remember_customer(&self, customer: Customer) {
        self.write()
            .customers
            .entry(customer.id.to_string())
            .or_insert_with(|| Arc::new(customer));
    }

    /// Replaces the whole cache from storage. The cursor is taken first, so changes made
    /// during the load are replayed afterwards (replaying a change is harmless). Decoding
    /// runs on a blocking thread: with many customers it takes long enough (a third of a
    /// second for 100 000) to hold up every request on the worker that ran it.
    pub async fn reload(&self, store: &dyn ConfigStore) -> ServiceResult<()> {
        let started = std::time::Instant::now();
        let cursor = store.change_cursor().await?;
        let mut documents = Vec::with_capacity(Kind::ALL.len());
        for kind in Kind::ALL {
            documents.push((kind, store.all(kind).await?));
        }
        let fresh = tokio::task::spawn_blocking(move || {
            let mut fresh = CacheState::default();
            for (kind, docs) in documents {
                for (id, doc) in docs {
                    fresh.set(kind, &id, Some(&doc));
                }
            }
            fresh
        })
        .await
        .map_err(|e| {
            ServiceError::Storage(StoreError::Internal(format!("config cache reload: {e}")))
        })?;
        let documents = fresh.customers.len() + fresh.meters.len() + fresh.limits.len();
        let stale = std::mem::replace(&mut *self.write(), fresh);
        self.invalidate_limits();
        *self.cursor.write().unwrap_or_else(|p| p.into_inner()) = cursor;
        // Freeing the old copy is as long as decoding was, and needs no lock.
        tokio::task::spawn_blocking(move || drop(stale));
        self.mark_synced();
        tracing::debug!(
            documents,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "config cache reloaded"
        );
        Ok(())
    }

    /// Applies what a successful local write did, so this node reads its own writes at once.
    /// Implicit creations (`PutIfAbsent`) are left to the change log: only storage knows
    /// whether they wrote.
    pub fn apply_local(&self, ops: &[ConfigOp]) {
        let mut state = self.write();
        for op in ops {
            match op {
                ConfigOp::Put { kind, id, doc, .. } => state.set(*kind, id, Some(doc)),
                ConfigOp::Delete { kind, id, .. } => state.set(*kind, id, None),
                ConfigOp::PutIfAbsent { .. }
                | ConfigOp::Require { .. }
                | ConfigOp::Touch { .. }
                | ConfigOp::Unchanged { .. } => {}
            }
        }
        drop(state);
        if ops
            .iter()
            .any(|op| matches!(op.kind(), Kind::Limit | Kind::Meter))
        {
            self.invalidate_limits();
        }
    }

    fn apply_changes(&self, changes: &[ConfigChange]) {
        let mut state = self.write();
        for change in changes {
            state.set(change.kind, &change.id, change.doc.as_deref());
        }
        drop(state);
        if changes
            .iter()
            .any(|c| matches!(c.kind, Kind::Limit | Kind::Meter))
        {
            self.invalidate_limits();
        }
    }

    fn mark_synced(&self) {
        *self.synced_at.write().unwrap_or_else(|p| p.into_inner()) =
            Some(std::time::Instant::now());
    }

    /// How long since the cache last caught up with storage.
    pub fn age(&self) -> std::time::Duration {
        self.synced_at
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .map_or(std::time::Duration::ZERO, |at| at.elapsed())
    }

    /// Reads the change log once; returns how many changes were applied.
    pub async fn poll(&self, store: &dyn ConfigStore) -> ServiceResult<usize> {
        let cursor = self
            .cursor
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let (changes, next) = store.changes_after(&cursor, CHANGES_PER_POLL).await?;
        self.apply_changes(&changes);
        *self.cursor.write().unwrap_or_else(|p| p.into_inner()) = next;
        self.mark_synced();
        Ok(changes.len())
    }
}

/// Keeps the cache of `gateway` in step with storage for as long as the process runs.
pub async fn follow_changes(gateway: Arc<Gateway>) {
    let mut last_full = tokio::time::Instant::now();
    let mut healthy = true;
    loop {
        tokio::time::sleep(POLL_INTERVAL).await;
        let store = gateway.store.as_ref();
        let result = if !healthy || last_full.elapsed() >= FULL_RELOAD_INTERVAL {
            last_full = tokio::time::Instant::now();
            gateway.cache.reload(store).await.map(|_| 0)
        } else {
            gateway.cache.poll(store).await
        };
        match result {
            Ok(_) => {
                if !healthy {
                    tracing::info!("config cache reloaded after a storage error");
                }
                healthy = true;
            }
            Err(error) => {
                if healthy {
                    tracing::warn!(%error, "config cache cannot follow storage; will reload when it answers");
                }
                healthy = false;
            }
        }
    }
}
