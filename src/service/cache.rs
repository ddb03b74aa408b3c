//! Each node's in-memory copy of the configuration, read on every request without I/O.
//!
//! Local writes update it at once (read your writes); everything else arrives through the
//! store's change log, tailed every [`POLL_INTERVAL`]. The node reads everything again when
//! the log cannot answer (unreachable, or trimmed past the node's cursor) and, as the safety
//! net, every `QUOTAGATE_CONFIG_REFRESH_SECONDS`: with 100 000 customers a full read costs the
//! node and Redis most of a second of CPU, so it is not a routine.

use std::collections::HashMap;
use std::sync::{Arc, RwLock, RwLockReadGuard};
use std::time::Duration;

use serde::de::DeserializeOwned;

use super::Gateway;
use super::error::{ServiceError, ServiceResult};
use crate::domain::apikey::{ApiKey, parse_hex_digest};
use crate::domain::balance::Balance;
use crate::domain::customer::Customer;
use crate::domain::ids::CustomerId;
use crate::domain::limit::Limit;
use crate::domain::meter::Meter;
use crate::domain::usage::{ResolvedLimit, governing};
use crate::domain::webhook::Webhook;
use crate::storage::{ConfigChange, ConfigOp, ConfigStore, Kind, LogPosition, StoreError};

pub const POLL_INTERVAL: Duration = Duration::from_millis(200);
const CHANGES_PER_POLL: usize = 1000;

#[derive(Default)]
pub struct ConfigCache {
    state: RwLock<CacheState>,
    /// When the cache last caught up with storage.
    synced_at: RwLock<Option<std::time::Instant>>,
}

/// What planning an event for one customer needs: every meter (by ID), and the limits that
/// govern the customer (its own, then the defaults it does not override).
pub struct Governing {
    pub meters: Arc<[Arc<Meter>]>,
    pub limits: Vec<ResolvedLimit>,
    /// The customer's balances (planning debits those with a meter).
    pub balances: Vec<Arc<Balance>>,
}

/// Limits resolved against their meters, kept in step with every change: a limit change
/// touches only its owner's list, so a node with many customer limits never resolves them all
/// again (a meter change re-resolves that meter's limits).
#[derive(Default)]
struct ResolvedLimits {
    /// By meter ID.
    meters: Arc<[Arc<Meter>]>,
    /// Default limits, by limit ID.
    defaults: Arc<[ResolvedLimit]>,
    /// Each customer's own limits, by limit ID.
    own: HashMap<CustomerId, Vec<ResolvedLimit>>,
}

impl ResolvedLimits {
    fn remove(&mut self, limit: &Limit) {
        let id = limit.id.as_str();
        match &limit.customer_id {
            None => {
                let mut defaults = self.defaults.to_vec();
                defaults.retain(|resolved| resolved.limit.id != id);
                self.defaults = defaults.into();
            }
            Some(customer) => {
                if let Some(own) = self.own.get_mut(customer) {
                    own.retain(|resolved| resolved.limit.id != id);
                    if own.is_empty() {
                        self.own.remove(customer);
                    }
                }
            }
        }
    }

    /// A limit whose meter is unknown (deleted, or not yet seen) counts nothing.
    fn insert(&mut self, limit: &Arc<Limit>, meters: &HashMap<String, Arc<Meter>>) {
        let Some(meter) = meters.get(&limit.meter_id) else {
            return;
        };
        let resolved = ResolvedLimit::new(Arc::clone(limit), Arc::clone(meter));
        let insert_sorted = |list: &mut Vec<ResolvedLimit>| {
            let at = list.partition_point(|other| other.limit.id < limit.id);
            list.insert(at, resolved);
        };
        match &limit.customer_id {
            None => {
                let mut defaults = self.defaults.to_vec();
                insert_sorted(&mut defaults);
                self.defaults = defaults.into();
            }
            Some(customer) => insert_sorted(self.own.entry(customer.clone()).or_default()),
        }
    }

    fn governing(&self, customer: &CustomerId) -> Governing {
        let own = self.own.get(customer).map_or(&[][..], Vec::as_slice);
        Governing {
            meters: Arc::clone(&self.meters),
            limits: governing(own, &self.defaults),
            balances: Vec::new(),
        }
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
    resolved: ResolvedLimits,
    /// Each customer's balances, by ID.
    balances: HashMap<CustomerId, Vec<Arc<Balance>>>,
    balance_owners: HashMap<String, CustomerId>,
    /// How far into the change log the cache is: every change up to here is in it.
    cursor: LogPosition,
    /// This node's own writes beyond `cursor`, the latest per document: until the log read
    /// reaches them, a change read from it may be older than what the node wrote.
    local: HashMap<(Kind, String), LocalWrite>,
}

struct LocalWrite {
    position: LogPosition,
    doc: Option<String>,
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
    /// Applies the version of a document logged at `position`, unless this node wrote a
    /// later one itself. Changes reach a node in two ways (its own writes, at once, and the
    /// change log, later), so they are ordered by their place in the log, not by arrival.
    /// Returns whether it applied.
    fn apply_logged(
        &mut self,
        position: LogPosition,
        kind: Kind,
        id: &str,
        doc: Option<&str>,
    ) -> bool {
        let superseded = self
            .local
            .get(&(kind, id.to_string()))
            .is_some_and(|write| write.position > position);
        if !superseded {
            self.set(kind, id, doc);
        }
        !superseded
    }

    fn set(&mut self, kind: Kind, id: &str, doc: Option<&str>) {
        match kind {
            Kind::Customer => upsert(&mut self.customers, kind, id, doc),
            Kind::Meter => {
                upsert(&mut self.meters, kind, id, doc);
                self.meter_changed(id);
            }
            Kind::Limit => {
                if let Some(old) = self.limits.get(id) {
                    self.resolved.remove(old);
                }
                upsert(&mut self.limits, kind, id, doc);
                if let Some(new) = self.limits.get(id) {
                    self.resolved.insert(new, &self.meters);
                }
            }
            Kind::Webhook => upsert(&mut self.webhooks, kind, id, doc),
            Kind::Balance => self.balance_changed(id, doc),
            // Names are found through the balances themselves.
            Kind::BalanceName => {}
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

    fn balance_changed(&mut self, id: &str, doc: Option<&str>) {
        if let Some(owner) = self.balance_owners.remove(id)
            && let Some(list) = self.balances.get_mut(&owner)
        {
            list.retain(|balance| balance.id != id);
            if list.is_empty() {
                self.balances.remove(&owner);
            }
        }
        let Some(balance) = doc.and_then(|doc| decode::<Balance>(Kind::Balance, doc)) else {
            return;
        };
        let owner = balance.customer_id.clone();
        let list = self.balances.entry(owner.clone()).or_default();
        let at = list.partition_point(|other| other.id.as_str() < id);
        list.insert(at, Arc::new(balance));
        self.balance_owners.insert(id.to_string(), owner);
    }

    /// Re-resolves the meter's limits against its new version (or drops them with it).
    fn meter_changed(&mut self, meter_id: &str) {
        let mut meters: Vec<Arc<Meter>> = self.meters.values().cloned().collect();
        meters.sort_by(|a, b| a.id.cmp(&b.id));
        self.resolved.meters = meters.into();
        for limit in self.limits.values().filter(|l| l.meter_id == meter_id) {
            self.resolved.remove(limit);
            self.resolved.insert(limit, &self.meters);
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

    /// Every meter, the limits governing `customer` and its balances.
    pub fn governing(&self, customer: &CustomerId) -> Governing {
        let state = self.read();
        let mut governing = state.resolved.governing(customer);
        if let Some(balances) = state.balances.get(customer) {
            governing.balances.clone_from(balances);
        }
        governing
    }

    /// The customer's balances, by ID.
    pub fn balances_of(&self, customer: &CustomerId) -> Vec<Arc<Balance>> {
        self.read()
            .balances
            .get(customer)
            .cloned()
            .unwrap_or_default()
    }

    pub fn customer(&self, id: &CustomerId) -> Option<Arc<Customer>> {
        self.read().customers.get(id.as_str()).cloned()
    }

    /// How far into the change log the cache is; a read of storage outside the log takes it
    /// first, for [`Self::remember_customer`].
    pub fn cursor(&self) -> LogPosition {
        self.read().cursor
    }

    /// Adds a customer this node learned about outside the change log (read from storage on
    /// a cache miss, or just created implicitly) when the cache was at `read_at`. Only if the
    /// cache has applied nothing since: a change applied meanwhile may be newer than what was
    /// read (a delete would otherwise be undone here until the next full reload), and the
    /// next miss reads storage again. A copy already cached is kept.
    pub fn remember_customer(&self, customer: Customer, read_at: LogPosition) {
        let mut state = self.write();
        if state.cursor != read_at {
            return;
        }
        state
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
        // Balance names are an index that only storage reads: nothing to load.
        for kind in Kind::ALL.into_iter().filter(|k| *k != Kind::BalanceName) {
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
        let loaded = fresh.customers.len() + fresh.meters.len() + fresh.limits.len();
        let mut state = self.write();
        // A write this node made during the load, beyond the cursor, may be missing from it:
        // it is applied again. Another node's later version of the same document, if the load
        // holds one, comes back with the next poll, which replays the log from the cursor.
        let mut fresh = fresh;
        fresh.cursor = cursor;
        for ((kind, id), write) in std::mem::take(&mut state.local) {
            if write.position > cursor {
                fresh.set(kind, &id, write.doc.as_deref());
                fresh.local.insert((kind, id), write);
            }
        }
        let stale = std::mem::replace(&mut *state, fresh);
        drop(state);
        // Freeing the old copy is as long as decoding was, and needs no lock.
        tokio::task::spawn_blocking(move || drop(stale));
        self.mark_synced();
        tracing::debug!(
            documents = loaded,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "config cache reloaded"
        );
        Ok(())
    }

    /// Applies what a successful local write did, so this node reads its own writes at once.
    /// `logged` is where storage logged the batch's last change (`None`: it changed nothing).
    /// Implicit creations (`PutIfAbsent`) are left to the change log: only storage knows
    /// whether they wrote.
    pub fn apply_local(&self, ops: &[ConfigOp], logged: Option<LogPosition>) {
        let mut state = self.write();
        // When the log read already reaches the write, the cache holds it, or a later version.
        let Some(position) = logged.filter(|position| *position > state.cursor) else {
            return;
        };
        for op in ops {
            let (kind, id, doc) = match op {
                ConfigOp::Put { kind, id, doc, .. } => (*kind, id, Some(doc.clone())),
                ConfigOp::Delete { kind, id, .. } => (*kind, id, None),
                ConfigOp::PutIfAbsent { .. }
                | ConfigOp::Require { .. }
                | ConfigOp::Touch { .. }
                | ConfigOp::Unchanged { .. } => continue,
            };
            // Concurrent writes of one document may finish here in either order.
            if state.apply_logged(position, kind, id, doc.as_deref()) {
                state
                    .local
                    .insert((kind, id.clone()), LocalWrite { position, doc });
            }
        }
    }

    /// Applies a batch of the change log, read after the cursor, and moves the cursor to
    /// `next`, its last position. Returns whether a write of this node that the batch should
    /// hold is missing from it: the log lost it (a Redis failover drops what the replica had
    /// not yet received), and a server whose clock is behind may log other nodes' later
    /// changes at lower positions, which the cache would wrongly order before it. The lost
    /// write is forgotten; the caller reads everything again.
    fn apply_polled(&self, changes: &[ConfigChange], next: LogPosition) -> bool {
        let mut state = self.write();
        for change in changes {
            state.apply_logged(
                change.position,
                change.kind,
                &change.id,
                change.doc.as_deref(),
            );
        }
        state.cursor = next;
        let mut lost = false;
        state.local.retain(|_, write| {
            if write.position > next {
                return true;
            }
            // A batch's last change sits at the position its write was given.
            lost |= !changes.iter().any(|c| c.position == write.position);
            false
        });
        lost
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
        let cursor = self.read().cursor;
        let Some((changes, next)) = store.changes_after(cursor, CHANGES_PER_POLL).await? else {
            tracing::info!("the config change log no longer reaches back to this node; reloading");
            self.reload(store).await?;
            return Ok(0);
        };
        if self.apply_polled(&changes, next) {
            tracing::warn!(
                "a config write of this node is missing from the change log (lost in a failover?); reloading"
            );
            self.reload(store).await?;
            return Ok(0);
        }
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
        let result = if !healthy || last_full.elapsed() >= gateway.settings.config_refresh {
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

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn meter_doc(id: &str) -> String {
        let input = serde_json::from_value(
            json!({"name": id, "aggregation": "sum", "field": "values.tokens"}),
        )
        .unwrap();
        serde_json::to_string(&Meter::create(id.into(), input, chrono::Utc::now()).unwrap())
            .unwrap()
    }

    fn limit_doc(
        id: &str,
        meter: &str,
        customer: Option<&str>,
        period: &str,
        value: u32,
    ) -> String {
        let meter: Meter = serde_json::from_str(&meter_doc(meter)).unwrap();
        let input = serde_json::from_value(json!({"name": id, "meterId": meter.id,
            "limitValue": value, "period": period, "customerId": customer}))
        .unwrap();
        let limit = Limit::create(id.into(), input, &meter, chrono::Utc::now()).unwrap();
        serde_json::to_string(&limit).unwrap()
    }

    fn governing_ids(state: &CacheState, customer: &str) -> Vec<String> {
        let customer = CustomerId::parse("customerId", customer).unwrap();
        state
            .resolved
            .governing(&customer)
            .limits
            .iter()
            .map(|l| format!("{}={}", l.limit.id, l.limit.limit_value.get()))
            .collect()
    }

    #[test]
    fn resolved_limits_follow_every_change() {
        let mut state = CacheState::default();
        state.set(Kind::Meter, "m1", Some(&meter_doc("m1")));
        state.set(
            Kind::Limit,
            "d1",
            Some(&limit_doc("d1", "m1", None, "day", 10)),
        );
        state.set(
            Kind::Limit,
            "o2",
            Some(&limit_doc("o2", "m1", Some("c1"), "month", 20)),
        );
        state.set(
            Kind::Limit,
            "o1",
            Some(&limit_doc("o1", "m1", Some("c1"), "hour", 30)),
        );
        // A limit on a meter this node has not seen yet counts nothing until the meter comes.
        state.set(
            Kind::Limit,
            "x1",
            Some(&limit_doc("x1", "m2", Some("c2"), "day", 40)),
        );
        assert_eq!(governing_ids(&state, "c1"), ["o1=30", "o2=20", "d1=10"]);
        assert_eq!(governing_ids(&state, "c2"), ["d1=10"]);
        assert_eq!(governing_ids(&state, "c3"), ["d1=10"]);
        state.set(Kind::Meter, "m2", Some(&meter_doc("m2")));
        assert_eq!(governing_ids(&state, "c2"), ["x1=40", "d1=10"]);
        assert_eq!(state.resolved.meters.len(), 2);

        // A customer's own limit for the same counter overrides the default.
        state.set(
            Kind::Limit,
            "o3",
            Some(&limit_doc("o3", "m1", Some("c3"), "day", 5)),
        );
        assert_eq!(governing_ids(&state, "c3"), ["o3=5"]);

        // Updates replace, deletes remove, in place.
        state.set(
            Kind::Limit,
            "o1",
            Some(&limit_doc("o1", "m1", Some("c1"), "hour", 31)),
        );
        state.set(
            Kind::Limit,
            "d1",
            Some(&limit_doc("d1", "m1", None, "day", 11)),
        );
        assert_eq!(governing_ids(&state, "c1"), ["o1=31", "o2=20", "d1=11"]);
        state.set(Kind::Limit, "o2", None);
        assert_eq!(governing_ids(&state, "c1"), ["o1=31", "d1=11"]);

        // A meter that goes takes its limits' effect with it.
        state.set(Kind::Meter, "m1", None);
        assert_eq!(governing_ids(&state, "c1"), Vec::<String>::new());
        assert_eq!(governing_ids(&state, "c2"), ["x1=40"]);
        assert_eq!(state.resolved.meters.len(), 1);
        state.set(Kind::Meter, "m1", Some(&meter_doc("m1")));
        assert_eq!(governing_ids(&state, "c1"), ["o1=31", "d1=11"]);
    }

    fn limit_put(id: &str, doc: &str) -> ConfigOp {
        ConfigOp::Put {
            kind: Kind::Limit,
            id: id.into(),
            doc: doc.to_string(),
            guard: crate::storage::Guard::Always,
        }
    }

    fn limit_change(position: u64, id: &str, doc: &str) -> ConfigChange {
        ConfigChange {
            position: LogPosition(position, 0),
            kind: Kind::Limit,
            id: id.into(),
            doc: Some(doc.to_string()),
        }
    }

    fn meter_put(id: &str) -> ConfigOp {
        ConfigOp::Put {
            kind: Kind::Meter,
            id: id.into(),
            doc: meter_doc(id),
            guard: crate::storage::Guard::Always,
        }
    }

    /// A cache that knows meter m1, logged at position 1.
    fn cache_with_meter() -> ConfigCache {
        let cache = ConfigCache::default();
        cache.apply_local(&[meter_put("m1")], Some(LogPosition(1, 0)));
        cache
    }

    /// Read your writes: a batch of the change log read before this node's own write landed
    /// may hold an older version of what it wrote; it is not applied over the write. The
    /// batch's other changes are.
    #[test]
    fn a_poll_never_undoes_a_local_write_made_while_it_read() {
        let cache = cache_with_meter();
        let day = |value| limit_doc("d1", "m1", None, "day", value);
        cache.apply_local(&[limit_put("d1", &day(20))], Some(LogPosition(5, 0)));
        let batch = [
            limit_change(2, "d1", &day(10)),
            limit_change(3, "d2", &limit_doc("d2", "m1", None, "day", 30)),
        ];
        cache.apply_polled(&batch, LogPosition(3, 0));
        assert_eq!(governing_ids(&cache.read(), "c1"), ["d1=20", "d2=30"]);
        // The next batch reaches the write and what came after it, in the log's order.
        let batch = [
            limit_change(4, "d1", &day(10)),
            limit_change(5, "d1", &day(20)),
            limit_change(6, "d1", &day(40)),
        ];
        cache.apply_polled(&batch, LogPosition(6, 0));
        assert_eq!(governing_ids(&cache.read(), "c1"), ["d1=40", "d2=30"]);
        assert!(
            cache.read().local.is_empty(),
            "the log read reached every write"
        );
    }

    /// A poll may apply another node's later version of a document between this node's write
    /// of it landing and the write reaching the cache: the write is then left out.
    #[test]
    fn a_local_write_never_undoes_a_later_change_already_polled() {
        let cache = cache_with_meter();
        let day = |value| limit_doc("d1", "m1", None, "day", value);
        let batch = [
            limit_change(2, "d1", &day(10)),
            limit_change(3, "d1", &day(30)),
        ];
        cache.apply_polled(&batch, LogPosition(3, 0));
        cache.apply_local(&[limit_put("d1", &day(10))], Some(LogPosition(2, 0)));
        assert_eq!(governing_ids(&cache.read(), "c1"), ["d1=30"]);
        // Two writes of this node that finish in the other order than storage applied them.
        cache.apply_local(&[limit_put("d1", &day(50))], Some(LogPosition(5, 0)));
        cache.apply_local(&[limit_put("d1", &day(40))], Some(LogPosition(4, 0)));
        assert_eq!(governing_ids(&cache.read(), "c1"), ["d1=50"]);
        // A batch that changed nothing in storage has nothing to mirror.
        cache.apply_local(&[limit_put("d1", &day(60))], None);
        assert_eq!(governing_ids(&cache.read(), "c1"), ["d1=50"]);
    }

    /// A write of this node that the log lost (a failover) is not kept over the changes the log
    /// holds, whatever their positions.
    #[test]
    fn a_write_the_log_lost_is_forgotten() {
        let cache = cache_with_meter();
        let day = |value| limit_doc("d1", "m1", None, "day", value);
        cache.apply_local(&[limit_put("d1", &day(20))], Some(LogPosition(5, 0)));
        let delete = ConfigOp::Delete {
            kind: Kind::Limit,
            id: "d2".into(),
            guard: crate::storage::Guard::Always,
        };
        cache.apply_local(&[delete], Some(LogPosition(6, 0)));
        // The log holds the delete's entry, but not the put's.
        let batch = [
            limit_change(3, "d2", &limit_doc("d2", "m1", None, "day", 40)),
            limit_change(4, "d1", &day(30)),
            ConfigChange {
                position: LogPosition(6, 0),
                kind: Kind::Limit,
                id: "d2".into(),
                doc: None,
            },
        ];
        assert!(
            cache.apply_polled(&batch, LogPosition(6, 0)),
            "the put is lost"
        );
        assert!(cache.read().local.is_empty());
        assert_eq!(
            governing_ids(&cache.read(), "c1"),
            ["d1=20"],
            "until the reload"
        );
        // A batch that holds every write is not a loss.
        cache.apply_local(&[limit_put("d1", &day(50))], Some(LogPosition(8, 0)));
        let batch = [limit_change(8, "d1", &day(50))];
        assert!(!cache.apply_polled(&batch, LogPosition(8, 0)));
        // Nor one that does not reach them yet.
        cache.apply_local(&[limit_put("d1", &day(60))], Some(LogPosition(9, 0)));
        assert!(!cache.apply_polled(&[], LogPosition(8, 0)));
        assert_eq!(governing_ids(&cache.read(), "c1"), ["d1=60"]);
    }

    /// A customer read from storage while a poll applied changes is not cached: the poll may
    /// have deleted it after the read.
    #[test]
    fn a_customer_read_while_the_log_moved_is_not_remembered() {
        let cache = ConfigCache::default();
        let customer = |id: &str| {
            let id = CustomerId::parse("customerId", id).unwrap();
            Customer::with_defaults(id, chrono_tz::UTC, chrono::Utc::now())
        };
        let read_at = cache.cursor();
        cache.apply_polled(&[], LogPosition(4, 0));
        cache.remember_customer(customer("c1"), read_at);
        assert!(!cache.read().customers.contains_key("c1"));
        cache.remember_customer(customer("c1"), cache.cursor());
        assert!(cache.read().customers.contains_key("c1"));
    }

    /// A full read of storage may miss a write this node made while it read; the node keeps
    /// reading its own write.
    #[tokio::test]
    async fn a_reload_keeps_the_writes_it_may_have_missed() {
        let store = crate::storage::memory::MemoryStore::new();
        let cache = ConfigCache::default();
        let meter = meter_put("m1");
        let logged = store
            .apply(std::slice::from_ref(&meter))
            .await
            .unwrap()
            .unwrap();
        cache.apply_local(&[meter], logged);
        // Beyond the store's log: as if logged after the reload took its cursor.
        let day = limit_doc("d1", "m1", None, "day", 10);
        cache.apply_local(&[limit_put("d1", &day)], Some(LogPosition(7, 0)));
        cache.reload(&store).await.unwrap();
        let state = cache.read();
        assert_eq!(governing_ids(&state, "c1"), ["d1=10"]);
        let local: Vec<_> = state.local.keys().cloned().collect();
        assert_eq!(
            local,
            [(Kind::Limit, "d1".to_string())],
            "the meter is loaded"
        );
    }

    /// A node whose cursor the change log has moved past (more changes than it keeps) reads
    /// everything again, instead of missing the changes that were dropped.
    #[tokio::test]
    async fn a_node_left_behind_by_the_change_log_reloads() {
        use crate::storage::Guard;
        use crate::storage::memory::MemoryStore;

        let store = MemoryStore::new();
        let cache = ConfigCache::default();
        cache.reload(&store).await.unwrap();
        let put = |kind: Kind, id: String, doc: String| ConfigOp::Put {
            kind,
            id,
            doc,
            guard: Guard::Always,
        };
        let meter = put(Kind::Meter, "m1".into(), meter_doc("m1"));
        store.apply(&[meter]).await.unwrap().unwrap();
        // The embedded store keeps the latest 10 000 changes: the meter's falls out.
        let customer = |i: usize| {
            let id = CustomerId::parse("customerId", &format!("c{i}")).unwrap();
            let doc = Customer::with_defaults(id, chrono_tz::UTC, chrono::Utc::now());
            put(
                Kind::Customer,
                format!("c{i}"),
                serde_json::to_string(&doc).unwrap(),
            )
        };
        let customers: Vec<ConfigOp> = (0..10_000).map(customer).collect();
        store.apply(&customers).await.unwrap().unwrap();

        cache.poll(&store).await.unwrap();
        assert_eq!(cache.read().resolved.meters.len(), 1, "the meter is known");
        assert_eq!(cache.read().customers.len(), 10_000);
    }
}
