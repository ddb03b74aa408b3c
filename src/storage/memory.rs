//! The embedded store: one node, state in process memory, same semantics as Redis.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Mutex;

use async_trait::async_trait;

use super::{ConfigChange, ConfigOp, ConfigStore, Guard, GuardFailed, Kind, StoreResult};

/// How many changes the log keeps; a node further behind does a full reload.
const CHANGE_LOG_LEN: usize = 10_000;

#[derive(Default)]
pub struct MemoryStore {
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    docs: HashMap<Kind, BTreeMap<String, String>>,
    changes: VecDeque<(u64, ConfigChange)>,
    last_seq: u64,
}

impl State {
    fn exists(&self, kind: Kind, id: &str) -> bool {
        self.docs
            .get(&kind)
            .is_some_and(|docs| docs.contains_key(id))
    }

    fn log(&mut self, change: ConfigChange) {
        self.last_seq += 1;
        self.changes.push_back((self.last_seq, change));
        if self.changes.len() > CHANGE_LOG_LEN {
            self.changes.pop_front();
        }
    }
}

impl MemoryStore {
    pub fn new() -> MemoryStore {
        MemoryStore::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave a half-applied batch (batches are
        // checked before any write), so the state is still consistent.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

fn guard_holds(guard: Guard, exists: bool) -> bool {
    match guard {
        Guard::Always => true,
        Guard::Absent => !exists,
        Guard::Present => exists,
    }
}

#[async_trait]
impl ConfigStore for MemoryStore {
    async fn get(&self, kind: Kind, id: &str) -> StoreResult<Option<String>> {
        Ok(self
            .lock()
            .docs
            .get(&kind)
            .and_then(|docs| docs.get(id).cloned()))
    }

    async fn page(
        &self,
        kind: Kind,
        after: Option<&str>,
        limit: usize,
    ) -> StoreResult<Vec<(String, String)>> {
        let state = self.lock();
        let Some(docs) = state.docs.get(&kind) else {
            return Ok(Vec::new());
        };
        let range = match after {
            Some(after) => {
                docs.range::<str, _>((std::ops::Bound::Excluded(after), std::ops::Bound::Unbounded))
            }
            None => docs.range::<str, _>(..),
        };
        Ok(range
            .take(limit)
            .map(|(id, doc)| (id.clone(), doc.clone()))
            .collect())
    }

    async fn all(&self, kind: Kind) -> StoreResult<Vec<String>> {
        let state = self.lock();
        Ok(state
            .docs
            .get(&kind)
            .map(|docs| docs.values().cloned().collect())
            .unwrap_or_default())
    }

    async fn apply(&self, ops: &[ConfigOp]) -> StoreResult<Result<(), GuardFailed>> {
        let mut state = self.lock();
        for (index, op) in ops.iter().enumerate() {
            let holds = match op {
                ConfigOp::Put {
                    kind, id, guard, ..
                }
                | ConfigOp::Delete { kind, id, guard } => {
                    guard_holds(*guard, state.exists(*kind, id))
                }
                ConfigOp::Require { kind, id } => state.exists(*kind, id),
                ConfigOp::PutIfAbsent { .. } => true,
            };
            if !holds {
                return Ok(Err(GuardFailed { index }));
            }
        }
        for op in ops {
            match op {
                ConfigOp::Put { kind, id, doc, .. } => {
                    state
                        .docs
                        .entry(*kind)
                        .or_default()
                        .insert(id.clone(), doc.clone());
                    state.log(ConfigChange {
                        kind: *kind,
                        id: id.clone(),
                        doc: Some(doc.clone()),
                    });
                }
                ConfigOp::PutIfAbsent { kind, id, doc } => {
                    if !state.exists(*kind, id) {
                        state
                            .docs
                            .entry(*kind)
                            .or_default()
                            .insert(id.clone(), doc.clone());
                        state.log(ConfigChange {
                            kind: *kind,
                            id: id.clone(),
                            doc: Some(doc.clone()),
                        });
                    }
                }
                ConfigOp::Delete { kind, id, .. } => {
                    let removed = state.docs.get_mut(kind).and_then(|docs| docs.remove(id));
                    if removed.is_some() {
                        state.log(ConfigChange {
                            kind: *kind,
                            id: id.clone(),
                            doc: None,
                        });
                    }
                }
                ConfigOp::Require { .. } => {}
            }
        }
        Ok(Ok(()))
    }

    async fn change_cursor(&self) -> StoreResult<String> {
        Ok(self.lock().last_seq.to_string())
    }

    async fn changes_after(
        &self,
        cursor: &str,
        max: usize,
    ) -> StoreResult<(Vec<ConfigChange>, String)> {
        let state = self.lock();
        let after: u64 = cursor.parse().unwrap_or(0);
        let mut last = after;
        let changes = state
            .changes
            .iter()
            .filter(|(seq, _)| *seq > after)
            .take(max)
            .map(|(seq, change)| {
                last = *seq;
                change.clone()
            })
            .collect();
        Ok((changes, last.to_string()))
    }

    async fn ping(&self) -> StoreResult<()> {
        Ok(())
    }

    fn describe(&self) -> String {
        "embedded in-memory store".to_string()
    }
}
