//! Storage behind narrow traits. Two implementations keep the same semantics: the embedded
//! in-memory store (one node) and Redis (single server or cluster). One contract test suite
//! runs against both.

pub mod alerts;
pub mod balances;
pub mod keys;
pub mod memory;
pub mod redis;
pub mod replays;
pub mod usage;

use async_trait::async_trait;

/// Kinds of configuration documents. The order is part of the Redis script contract
/// (`lua/config_apply.lua` addresses kinds by 1-based position), so only append.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    Customer,
    Meter,
    Limit,
    ApiKey,
    Webhook,
    Balance,
    /// `<customerId>/<name>` → balance ID: makes a name unique per customer in the same atomic
    /// step that creates the balance.
    BalanceName,
}

impl Kind {
    pub const ALL: [Kind; 7] = [
        Kind::Customer,
        Kind::Meter,
        Kind::Limit,
        Kind::ApiKey,
        Kind::Webhook,
        Kind::Balance,
        Kind::BalanceName,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Kind::Customer => "customers",
            Kind::Meter => "meters",
            Kind::Limit => "limits",
            Kind::ApiKey => "apikeys",
            Kind::Webhook => "webhooks",
            Kind::Balance => "balances",
            Kind::BalanceName => "balance_names",
        }
    }

    pub fn from_name(name: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|kind| kind.name() == name)
    }

    /// 1-based position, as the config script expects it.
    pub fn position(self) -> usize {
        Kind::ALL.iter().position(|k| *k == self).unwrap_or(0) + 1
    }
}

/// A precondition on a document, checked against the state before the batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Guard {
    Always,
    /// Fails the batch if the document exists.
    Absent,
    /// Fails the batch if the document does not exist.
    Present,
}

/// One step of an atomic configuration change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigOp {
    Put {
        kind: Kind,
        id: String,
        doc: String,
        guard: Guard,
    },
    /// Writes only if absent; never fails the batch (implicit customer creation).
    PutIfAbsent { kind: Kind, id: String, doc: String },
    Delete {
        kind: Kind,
        id: String,
        guard: Guard,
    },
    /// Fails the batch unless the document exists (e.g. a limit's meter).
    Require { kind: Kind, id: String },
    /// Moves the document's version; never fails. A write that depends on the document (a
    /// limit on a meter, or on a customer) touches it.
    Touch { kind: Kind, id: String },
    /// Fails the batch if the document was touched since [`ConfigStore::version`] returned
    /// `version`: a change computed from a read of what depends on it (deleting a meter with
    /// its limits) is applied only to what it read.
    Unchanged {
        kind: Kind,
        id: String,
        version: u64,
    },
}

impl ConfigOp {
    pub fn kind(&self) -> Kind {
        match self {
            ConfigOp::Put { kind, .. }
            | ConfigOp::PutIfAbsent { kind, .. }
            | ConfigOp::Delete { kind, .. }
            | ConfigOp::Require { kind, .. }
            | ConfigOp::Touch { kind, .. }
            | ConfigOp::Unchanged { kind, .. } => *kind,
        }
    }
}

/// A batch was not applied because the guard of the op at `index` failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GuardFailed {
    pub index: usize,
}

/// Where a change sits in the change log; later changes sit at greater positions. In Redis it
/// is the stream entry's ID (`<ms>-<seq>`), in the embedded store a sequence number
/// (`<seq>-0`). Position zero is before every change.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct LogPosition(pub u64, pub u64);

impl LogPosition {
    pub const START: LogPosition = LogPosition(0, 0);

    /// Reads `<major>-<minor>` or `<major>`; `None` for anything else.
    pub fn parse(text: &str) -> Option<LogPosition> {
        let (major, minor) = text.split_once('-').unwrap_or((text, "0"));
        Some(LogPosition(major.parse().ok()?, minor.parse().ok()?))
    }
}

impl std::fmt::Display for LogPosition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", self.0, self.1)
    }
}

/// One entry of the change log that keeps every node's config cache in step.
/// `doc: None` means the document was deleted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigChange {
    pub position: LogPosition,
    pub kind: Kind,
    pub id: String,
    pub doc: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Unreachable, timed out or refusing: the caller may retry later.
    #[error("storage unavailable: {0}")]
    Unavailable(String),
    /// Anything else (a script error, undecodable data): a bug.
    #[error("storage error: {0}")]
    Internal(String),
}

pub type StoreResult<T> = Result<T, StoreError>;

/// Configuration documents (JSON text), each kind ordered by ID so that cursor pages are stable,
/// plus an ordered change log.
#[async_trait]
pub trait ConfigStore: Send + Sync + 'static {
    async fn get(&self, kind: Kind, id: &str) -> StoreResult<Option<String>>;

    /// As [`Self::get`], for a read on the decision path (a customer the node has not cached
    /// yet): it has the decisions' storage deadline, so a slow store degrades the decision in
    /// time instead of holding it for the configuration deadline.
    async fn get_for_decision(&self, kind: Kind, id: &str) -> StoreResult<Option<String>> {
        self.get(kind, id).await
    }

    /// Up to `limit` documents with IDs strictly after `after`, in ID order.
    async fn page(
        &self,
        kind: Kind,
        after: Option<&str>,
        limit: usize,
    ) -> StoreResult<Vec<(String, String)>>;

    /// Every document of `kind` as (ID, document), each once, in no particular order. Read in
    /// pages, so a large configuration never holds up the store: a document written meanwhile
    /// may be missed, which the change log read afterwards makes good.
    async fn all(&self, kind: Kind) -> StoreResult<Vec<(String, String)>>;

    /// How often the document was touched (see [`ConfigOp::Touch`]); 0 if never.
    async fn version(&self, kind: Kind, id: &str) -> StoreResult<u64>;

    /// Applies every op or none: all guards are checked first. Answers the position of the
    /// last change the batch logged, `None` when it changed nothing.
    async fn apply(
        &self,
        ops: &[ConfigOp],
    ) -> StoreResult<Result<Option<LogPosition>, GuardFailed>>;

    /// The position of the latest change logged ([`LogPosition::START`] for none yet).
    async fn change_cursor(&self) -> StoreResult<LogPosition>;

    /// Changes logged after `cursor`, oldest first, and the position of the last of them
    /// (`cursor` when there are none); `None` when the log, which keeps only the latest
    /// changes, may no longer reach back to `cursor`: what changed since cannot be replayed,
    /// only read in full.
    async fn changes_after(
        &self,
        cursor: LogPosition,
        max: usize,
    ) -> StoreResult<Option<(Vec<ConfigChange>, LogPosition)>>;

    /// Whether storage answers (and its scripts are loaded).
    async fn ping(&self) -> StoreResult<()>;

    /// How far the storage server's clock (Redis `TIME`) is ahead of this node's, measured
    /// now, so that nodes agree on "now" near window boundaries; `None` when it has no clock
    /// of its own, or the exchange was too slow to tell. A store that sets deadlines on its
    /// server's clock keeps the figure for them too.
    async fn clock_offset(&self) -> StoreResult<Option<chrono::TimeDelta>>;

    /// Which store this is, for the ready log line.
    fn describe(&self) -> String;
}

/// Everything the service needs from storage.
pub trait Store:
    ConfigStore + usage::UsageStore + alerts::AlertStore + balances::BalanceStore + replays::ReplayStore
{
}

impl<T> Store for T where
    T: ConfigStore
        + usage::UsageStore
        + alerts::AlertStore
        + balances::BalanceStore
        + replays::ReplayStore
{
}
