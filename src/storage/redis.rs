//! The Redis store: one server (`redis://`) or a cluster (`redis+cluster://host:port,...`).
//!
//! One multiplexed connection per node carries every request: redis-rs pipelines concurrent
//! commands on it, which beats a pool of connections for this many small calls.

use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster_async::ClusterConnection;
use redis::{
    Cmd, ConnectionInfo, IntoConnectionInfo, Pipeline, RedisError, RedisFuture, Script, Value,
};

use super::alerts::{
    ATTEMPT_LOG_LEN, AlertStore, AttemptEnd, Claim, MESSAGE_TTL_MS, delivery_member,
    split_delivery_member,
};
use super::balances::{
    BalanceReading, BalanceStore, DROPPED_SPENT_TTL_MS, Movement, MovementOutcome, first_movement,
    movement_dedupe_key,
};
use super::keys::Keys;
use super::replays::{ReplayClaim, ReplayStore};
use super::usage::{
    AlertOp, CounterReading, EventOps, EventWrite, Extension, Finish, Mode, OpKind,
    RESERVATION_AFTERLIFE_MS, RecordOutcome, Retention, Rollups, StoredReservation, UsageStore,
    UsageToForget, decode_rollup, event_ops, number_text, parse_counter, usage_keys_to_forget,
};
use super::{
    ConfigChange, ConfigOp, ConfigStore, Guard, GuardFailed, Kind, LogPosition, StoreError,
    StoreResult,
};
use crate::domain::ids::CustomerId;
use crate::domain::time::{ClockExchange, estimate_offset};
use crate::domain::usage::CounterId;

/// How many changes the config log keeps (approximately); a node further behind reloads.
const CHANGE_LOG_LEN: usize = 100_000;

/// Deadline of a configuration call: these are not on the decision path, so they get longer
/// than `QUOTAGATE_STORAGE_TIMEOUT_MS`.
const CONFIG_DEADLINE: Duration = Duration::from_secs(2);
/// Deadline of the whole readiness probe (PING, then a script load). API.md §5.4 wants
/// `/readyz` to answer 503 within 2 s of Redis hanging, so a probe that starts the moment it
/// hangs must give up well inside that; and probers (Kubernetes: 1 s by default) stop waiting
/// sooner still. A healthy Redis answers both in milliseconds, so this never flaps under load.
const READY_DEADLINE: Duration = Duration::from_millis(500);
/// Documents per `HSCAN` page of a full config read: Redis serves other clients between pages.
const CONFIG_SCAN_COUNT: usize = 1000;
/// `RedisStore::server_offset_micros` before the first `TIME` exchange.
const NO_OFFSET: i64 = i64::MIN;

/// A connection to one server or to a cluster; both pipeline concurrent requests.
#[derive(Clone)]
pub enum RedisConnection {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl ConnectionLike for RedisConnection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            RedisConnection::Single(conn) => conn.req_packed_command(cmd),
            RedisConnection::Cluster(conn) => conn.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            RedisConnection::Single(conn) => conn.req_packed_commands(pipeline, offset, count),
            RedisConnection::Cluster(conn) => conn.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            RedisConnection::Single(conn) => conn.get_db(),
            RedisConnection::Cluster(conn) => conn.get_db(),
        }
    }
}

/// The servers a Redis URL names: one, or a cluster's seed nodes.
pub enum RedisTarget {
    Single(ConnectionInfo),
    Cluster(Vec<ConnectionInfo>),
}

impl RedisTarget {
    /// Parses `redis://…` (or any form redis-rs takes: `rediss://`, `redis+unix://`…) or
    /// `redis+cluster://h:p,h:p`. A URL that does not parse is a configuration error, for
    /// the process to refuse at start; only a valid one is worth retrying until it answers.
    pub fn parse(url: &str) -> Result<RedisTarget, RedisError> {
        let Some(seeds) = url.strip_prefix("redis+cluster://") else {
            return Ok(RedisTarget::Single(url.into_connection_info()?));
        };
        let nodes = seeds
            .split(',')
            .filter(|s| !s.is_empty())
            .map(|seed| format!("redis://{seed}").into_connection_info())
            .collect::<Result<Vec<_>, _>>()?;
        if nodes.is_empty() {
            return Err(RedisError::from((
                redis::ErrorKind::InvalidClientConfig,
                "a cluster URL needs at least one seed node",
            )));
        }
        Ok(RedisTarget::Cluster(nodes))
    }
}

impl RedisConnection {
    /// Connects to `redis://…` or `redis+cluster://h:p,h:p`. Reconnection after a lost
    /// connection is automatic in both cases.
    pub async fn connect(url: &str, timeout: Duration) -> Result<RedisConnection, RedisError> {
        let info = match RedisTarget::parse(url)? {
            RedisTarget::Single(info) => info,
            RedisTarget::Cluster(nodes) => return Self::connect_cluster(nodes, timeout).await,
        };
        let client = redis::Client::open(info.set_tcp_settings(tcp_settings()))?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(1)))
            .set_response_timeout(Some(timeout))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(500));
        Ok(RedisConnection::Single(
            ConnectionManager::new_with_config(client, config).await?,
        ))
    }

    async fn connect_cluster(
        nodes: Vec<ConnectionInfo>,
        timeout: Duration,
    ) -> Result<RedisConnection, RedisError> {
        // A slot in the middle of a migration (TRYAGAIN) or a failover is retried within
        // milliseconds, so the call's own deadline bounds it, not the library's default waits
        // of more than a second.
        let client = redis::cluster::ClusterClient::builder(nodes)
            .tcp_settings(tcp_settings())
            .connection_timeout(Duration::from_secs(1))
            .response_timeout(timeout)
            .min_retry_wait(1)
            .max_retry_wait(50)
            .retry_wait_formula(2, 2)
            .build()?;
        Ok(RedisConnection::Cluster(
            client.get_async_connection().await?,
        ))
    }
}

/// Every command goes out at once: redis-rs leaves Nagle's algorithm on, which holds a
/// command back while an earlier one waits for its acknowledgement.
fn tcp_settings() -> redis::io::tcp::TcpSettings {
    redis::io::tcp::TcpSettings::default().set_nodelay(true)
}

/// What the client library itself would retry (a lost connection, a timeout, a cluster
/// redirect, a slot whose keys are split by a migration, a failover in progress) and a full
/// Redis are outages that pass: callers answer 503 or decide by fail mode. What it would not
/// retry (a script error, a reply of the wrong shape) is a bug.
pub fn store_error(error: RedisError) -> StoreError {
    // LATE: the usage script arrived after its deadline and wrote nothing.
    let passing = error.is_io_error()
        || !matches!(error.retry_method(), redis::RetryMethod::NoRetry)
        || matches!(error.code(), Some("OOM" | "LATE"));
    if passing {
        StoreError::Unavailable(error.to_string())
    } else {
        StoreError::Internal(error.to_string())
    }
}

/// Runs a storage call under a deadline; a missed deadline is an outage, not a bug.
pub async fn with_deadline<T>(
    deadline: Duration,
    call: impl std::future::Future<Output = Result<T, RedisError>>,
) -> StoreResult<T> {
    match tokio::time::timeout(deadline, call).await {
        Ok(result) => result.map_err(store_error),
        Err(_) => Err(StoreError::Unavailable(format!(
            "no answer within {deadline:?}"
        ))),
    }
}

/// Consecutive outage errors after which the breaker opens.
const FAILURES_TO_OPEN: u32 = 3;
/// How long an open breaker fails calls before letting a probe through.
const OPEN_FOR_MS: i64 = 250;

/// A circuit breaker: after a few outage errors in a row, calls fail fast for a short while,
/// then one goes through as a probe; success closes it again.
#[derive(Default)]
struct Breaker {
    failures: std::sync::atomic::AtomicU32,
    open_until_ms: std::sync::atomic::AtomicI64,
}

impl Breaker {
    fn admit(&self) -> StoreResult<()> {
        use std::sync::atomic::Ordering;
        if chrono::Utc::now().timestamp_millis() < self.open_until_ms.load(Ordering::Relaxed) {
            return Err(StoreError::Unavailable(
                "circuit open: storage failed repeatedly".into(),
            ));
        }
        Ok(())
    }

    fn observe<T>(&self, result: &StoreResult<T>) {
        use std::sync::atomic::Ordering;
        match result {
            Ok(_) => self.failures.store(0, Ordering::Relaxed),
            Err(StoreError::Unavailable(_)) => {
                if self.failures.fetch_add(1, Ordering::Relaxed) + 1 >= FAILURES_TO_OPEN {
                    let until = chrono::Utc::now().timestamp_millis() + OPEN_FOR_MS;
                    self.open_until_ms.store(until, Ordering::Relaxed);
                }
            }
            Err(StoreError::Internal(_)) => {}
        }
    }
}

pub struct RedisStore {
    conn: RedisConnection,
    keys: Keys,
    url: String,
    /// Deadline of calls on the decision path (`QUOTAGATE_STORAGE_TIMEOUT_MS`).
    timeout: Duration,
    retention: Retention,
    breaker: Breaker,
    /// This node's clock against Redis's (microseconds to add), from the last `TIME`
    /// exchange, or [`NO_OFFSET`]: usage scripts' deadlines are set on Redis's clock.
    server_offset_micros: AtomicI64,
    config_apply: Script,
    usage: Script,
    reservation_finish: Script,
    reservation_extend: Script,
    alert_hand_over: Script,
    alert_claim: Script,
    sweep_claim: Script,
    alert_finish: Script,
    balance_move: Script,
}

impl RedisStore {
    pub fn new(conn: RedisConnection, keys: Keys, url: &str, timeout: Duration) -> RedisStore {
        RedisStore {
            conn,
            keys,
            url: url.to_string(),
            timeout,
            retention: Retention::default(),
            breaker: Breaker::default(),
            server_offset_micros: AtomicI64::new(NO_OFFSET),
            config_apply: Script::new(include_str!("../../lua/config_apply.lua")),
            usage: Script::new(include_str!("../../lua/usage.lua")),
            reservation_finish: Script::new(include_str!("../../lua/reservation_finish.lua")),
            reservation_extend: Script::new(include_str!("../../lua/reservation_extend.lua")),
            alert_hand_over: Script::new(include_str!("../../lua/alert_hand_over.lua")),
            alert_claim: Script::new(include_str!("../../lua/alert_claim.lua")),
            sweep_claim: Script::new(include_str!("../../lua/sweep_claim.lua")),
            alert_finish: Script::new(include_str!("../../lua/alert_finish.lua")),
            balance_move: Script::new(include_str!("../../lua/balance_move.lua")),
        }
    }

    /// Runs a storage call under `deadline` and the circuit breaker: while Redis is known to
    /// be down, calls fail at once instead of each waiting for the deadline.
    async fn guarded<T>(
        &self,
        deadline: Duration,
        call: impl std::future::Future<Output = Result<T, RedisError>>,
    ) -> StoreResult<T> {
        self.breaker.admit()?;
        let started = std::time::Instant::now();
        let result = with_deadline(deadline, call).await;
        crate::telemetry::record_storage_call(started.elapsed().as_secs_f64());
        if let Err(error) = &result {
            let kind = match error {
                StoreError::Unavailable(_) => "unavailable",
                StoreError::Internal(_) => "internal",
            };
            metrics::counter!(crate::telemetry::STORAGE_ERRORS, "kind" => kind).increment(1);
        }
        self.breaker.observe(&result);
        result
    }

    /// The owner pointer lives as long as the record it points to (a separate key: the record
    /// is in its customer's slot, the pointer is found by the reservation ID alone). Best
    /// effort, after the change it follows: that change is made, and a pointer that fails to
    /// follow still lives a day past the reservation's expiry as it was.
    async fn keep_owner(&self, id: &str, ttl_ms: i64) {
        let mut conn = self.conn();
        let refresh = redis::cmd("PEXPIRE")
            .arg(self.keys.reservation_owner(id))
            .arg(ttl_ms)
            .to_owned();
        let refreshed: StoreResult<i64> = self
            .guarded(CONFIG_DEADLINE, refresh.query_async(&mut conn))
            .await;
        if let Err(error) = refreshed {
            tracing::warn!(%error, reservation = id, "reservation owner pointer not extended");
        }
    }

    async fn get_within(
        &self,
        deadline: Duration,
        kind: Kind,
        id: &str,
    ) -> StoreResult<Option<String>> {
        let mut conn = self.conn();
        let cmd = redis::cmd("HGET")
            .arg(self.keys.config_docs(kind))
            .arg(id)
            .to_owned();
        self.guarded(deadline, cmd.query_async(&mut conn)).await
    }

    pub fn with_retention(mut self, retention: Retention) -> RedisStore {
        self.retention = retention;
        self
    }

    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    pub fn retention(&self) -> &Retention {
        &self.retention
    }

    /// The instant, unix ms on Redis's clock, after which a usage script sent now under
    /// `deadline` must not write (0: none, before the clocks were first compared). Three
    /// quarters of the deadline: a script that wrote has the last quarter for its answer to
    /// come back before the node gives up on it and answers without it.
    fn script_deadline_ms(&self, deadline: Duration) -> i64 {
        let offset = self.server_offset_micros.load(Ordering::Relaxed);
        if offset == NO_OFFSET {
            return 0;
        }
        let on_server = chrono::Utc::now() + chrono::TimeDelta::microseconds(offset);
        on_server.timestamp_millis() + (deadline * 3 / 4).as_millis() as i64
    }

    /// Deadline for a batch of `n` calls: the decision deadline for one, more for many.
    fn deadline_for(&self, calls: usize) -> Duration {
        if calls <= 1 {
            self.timeout
        } else {
            self.timeout.max(CONFIG_DEADLINE)
        }
    }

    /// Runs many `EVALSHA` of one script in one round trip. Calls answered `NOSCRIPT` (Redis
    /// restarted and lost its scripts) did not run: the script is loaded and only those are
    /// sent again, so nothing runs twice.
    async fn eval_many(
        &self,
        script: &Script,
        calls: &[Cmd],
        deadline: Duration,
    ) -> StoreResult<Vec<Value>> {
        let mut results: Vec<Option<Value>> = vec![None; calls.len()];
        let mut pending: Vec<usize> = (0..calls.len()).collect();
        for attempt in 0..2 {
            let answers = self
                .concurrently(deadline, pending.iter().map(|&i| &calls[i]))
                .await?;
            let mut missing = Vec::new();
            for (&index, answer) in pending.iter().zip(answers) {
                match answer {
                    Ok(value) => results[index] = Some(value),
                    Err(error)
                        if error.kind()
                            == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) =>
                    {
                        missing.push(index)
                    }
                    Err(error) => return Err(store_error(error)),
                }
            }
            if missing.is_empty() {
                break;
            }
            if attempt == 1 {
                return Err(StoreError::Unavailable(
                    "scripts could not be loaded".into(),
                ));
            }
            let mut conn = self.conn();
            let _: String = self.guarded(deadline, script.load_async(&mut conn)).await?;
            pending = missing;
        }
        Ok(results
            .into_iter()
            .map(|v| v.unwrap_or(Value::Nil))
            .collect())
    }

    /// Sends independent commands at once, each answered on its own (one failing fails only
    /// itself). One server gets them as one pipeline (one message, one round trip); a cluster
    /// gets each on its own shard, which a pipeline could not do across slots.
    async fn concurrently<'a>(
        &self,
        deadline: Duration,
        commands: impl Iterator<Item = &'a Cmd>,
    ) -> StoreResult<Vec<Result<Value, RedisError>>> {
        let mut conn = self.conn();
        match conn {
            RedisConnection::Single(_) => {
                let commands: Vec<&Cmd> = commands.collect();
                match commands.as_slice() {
                    [] => Ok(Vec::new()),
                    // Most decisions send one command: sent as it is, without copying it into
                    // a pipeline. An error reply is that command's answer, not the call's.
                    [cmd] => {
                        let answer = self.guarded(deadline, conn.req_packed_command(cmd)).await?;
                        Ok(vec![answer.extract_error()])
                    }
                    _ => {
                        let mut pipe = redis::pipe();
                        pipe.ignore_errors();
                        for cmd in commands {
                            pipe.add_command(cmd.clone());
                        }
                        self.guarded(deadline, pipe.query_async(&mut conn)).await
                    }
                }
            }
            RedisConnection::Cluster(_) => {
                let calls = commands.map(|cmd| {
                    let mut conn = self.conn();
                    async move { cmd.query_async::<Value>(&mut conn).await }
                });
                self.guarded(deadline, async {
                    Ok(futures_util::future::join_all(calls).await)
                })
                .await
            }
        }
    }

    fn conn(&self) -> RedisConnection {
        self.conn.clone()
    }

    /// Which events share one usage script call (indexes into `writes`, in order). One
    /// server takes any events together; on a cluster a script's keys must share a slot, so
    /// only one customer's events do.
    fn call_groups(&self, writes: &[EventWrite<'_>]) -> Vec<Vec<usize>> {
        let mut groups: Vec<Vec<usize>> = Vec::new();
        match self.conn {
            RedisConnection::Single(_) => {
                let indexes: Vec<usize> = (0..writes.len()).collect();
                groups.extend(indexes.chunks(EVENTS_PER_CALL).map(<[usize]>::to_vec));
            }
            RedisConnection::Cluster(_) => {
                let mut open: std::collections::HashMap<&str, usize> = Default::default();
                for (index, write) in writes.iter().enumerate() {
                    let customer = write.event.customer_id.as_str();
                    match open.get(customer) {
                        Some(&group) if groups[group].len() < EVENTS_PER_CALL => {
                            groups[group].push(index)
                        }
                        _ => {
                            open.insert(customer, groups.len());
                            groups.push(vec![index]);
                        }
                    }
                }
            }
        }
        groups
    }
}

fn opcode(op: &ConfigOp) -> &'static str {
    match op {
        ConfigOp::Put {
            guard: Guard::Always,
            ..
        } => "put",
        ConfigOp::Put {
            guard: Guard::Absent,
            ..
        } => "put_absent",
        ConfigOp::Put {
            guard: Guard::Present,
            ..
        } => "put_present",
        ConfigOp::PutIfAbsent { .. } => "put_if_absent",
        ConfigOp::Delete {
            guard: Guard::Present,
            ..
        } => "del_present",
        // Deleting what must be absent is meaningless; treat as an unconditional delete.
        ConfigOp::Delete { .. } => "del",
        ConfigOp::Require { .. } => "require",
        ConfigOp::Touch { .. } => "touch",
        ConfigOp::Unchanged { .. } => "unchanged",
    }
}

fn decode_change(fields: &redis::streams::StreamId) -> Option<ConfigChange> {
    let text = |name: &str| -> Option<String> { fields.get::<String>(name) };
    let kind_position: usize = text("kind")?.parse().ok()?;
    let kind = *Kind::ALL.get(kind_position.checked_sub(1)?)?;
    let doc = text("doc")?;
    Some(ConfigChange {
        position: LogPosition::parse(&fields.id)?,
        kind,
        id: text("id")?,
        doc: (!doc.is_empty()).then_some(doc),
    })
}

#[async_trait]
impl ConfigStore for RedisStore {
    async fn get(&self, kind: Kind, id: &str) -> StoreResult<Option<String>> {
        self.get_within(CONFIG_DEADLINE, kind, id).await
    }

    async fn get_for_decision(&self, kind: Kind, id: &str) -> StoreResult<Option<String>> {
        self.get_within(self.timeout, kind, id).await
    }

    async fn page(
        &self,
        kind: Kind,
        after: Option<&str>,
        limit: usize,
    ) -> StoreResult<Vec<(String, String)>> {
        let mut conn = self.conn();
        let start = match after {
            Some(after) => format!("({after}"),
            None => "-".to_string(),
        };
        let ids: Vec<String> = self
            .guarded(
                CONFIG_DEADLINE,
                redis::cmd("ZRANGE")
                    .arg(self.keys.config_index(kind))
                    .arg(start)
                    .arg("+")
                    .arg("BYLEX")
                    .arg("LIMIT")
                    .arg(0)
                    .arg(limit)
                    .query_async(&mut conn),
            )
            .await?;
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let docs: Vec<Option<String>> = self
            .guarded(
                CONFIG_DEADLINE,
                redis::cmd("HMGET")
                    .arg(self.keys.config_docs(kind))
                    .arg(&ids)
                    .query_async(&mut conn),
            )
            .await?;
        // An ID deleted between the two calls is simply skipped.
        Ok(ids
            .into_iter()
            .zip(docs)
            .filter_map(|(id, doc)| doc.map(|doc| (id, doc)))
            .collect())
    }

    async fn all(&self, kind: Kind) -> StoreResult<Vec<(String, String)>> {
        let key = self.keys.config_docs(kind);
        let mut conn = self.conn();
        // HSCAN may return an entry twice; each document is returned once.
        let mut documents = std::collections::HashMap::new();
        let mut cursor = 0u64;
        loop {
            let (next, page): (u64, Vec<(String, String)>) = self
                .guarded(
                    CONFIG_DEADLINE,
                    redis::cmd("HSCAN")
                        .arg(&key)
                        .arg(cursor)
                        .arg("COUNT")
                        .arg(CONFIG_SCAN_COUNT)
                        .query_async(&mut conn),
                )
                .await?;
            documents.extend(page);
            if next == 0 {
                return Ok(documents.into_iter().collect());
            }
            cursor = next;
        }
    }

    async fn apply(
        &self,
        ops: &[ConfigOp],
    ) -> StoreResult<Result<Option<LogPosition>, GuardFailed>> {
        let mut invocation = self.config_apply.prepare_invoke();
        invocation.key(self.keys.config_changes());
        for kind in Kind::ALL {
            invocation
                .key(self.keys.config_docs(kind))
                .key(self.keys.config_index(kind));
        }
        invocation.key(self.keys.config_versions());
        invocation.arg(CHANGE_LOG_LEN);
        for op in ops {
            let version;
            let (id, doc) = match op {
                ConfigOp::Put { id, doc, .. } | ConfigOp::PutIfAbsent { id, doc, .. } => {
                    (id.as_str(), doc.as_str())
                }
                ConfigOp::Delete { id, .. }
                | ConfigOp::Require { id, .. }
                | ConfigOp::Touch { id, .. } => (id.as_str(), ""),
                ConfigOp::Unchanged { id, version: v, .. } => {
                    version = v.to_string();
                    (id.as_str(), version.as_str())
                }
            };
            invocation
                .arg(opcode(op))
                .arg(op.kind().position())
                .arg(id)
                .arg(doc);
        }
        let mut conn = self.conn();
        let (failed, last_logged): (usize, String) = self
            .guarded(CONFIG_DEADLINE, invocation.invoke_async(&mut conn))
            .await?;
        if failed > 0 {
            return Ok(Err(GuardFailed { index: failed - 1 }));
        }
        if last_logged.is_empty() {
            return Ok(Ok(None));
        }
        Ok(Ok(Some(stream_position(&last_logged)?)))
    }

    async fn version(&self, kind: Kind, id: &str) -> StoreResult<u64> {
        let mut conn = self.conn();
        let version: Option<u64> = self
            .guarded(
                CONFIG_DEADLINE,
                redis::cmd("HGET")
                    .arg(self.keys.config_versions())
                    .arg(Keys::config_version_field(kind, id))
                    .query_async(&mut conn),
            )
            .await?;
        Ok(version.unwrap_or(0))
    }

    async fn change_cursor(&self) -> StoreResult<LogPosition> {
        let mut conn = self.conn();
        let reply: redis::streams::StreamRangeReply = self
            .guarded(
                CONFIG_DEADLINE,
                redis::cmd("XREVRANGE")
                    .arg(self.keys.config_changes())
                    .arg("+")
                    .arg("-")
                    .arg("COUNT")
                    .arg(1)
                    .query_async(&mut conn),
            )
            .await?;
        reply
            .ids
            .first()
            .map_or(Ok(LogPosition::START), |entry| stream_position(&entry.id))
    }

    async fn changes_after(
        &self,
        cursor: LogPosition,
        max: usize,
    ) -> StoreResult<Option<(Vec<ConfigChange>, LogPosition)>> {
        let key = self.keys.config_changes();
        // The oldest entry kept, read with the page: if it is newer than the cursor, entries
        // after the cursor may have been trimmed (stream IDs do not say whether any were). A
        // node that loaded an empty log (position zero) reads it from its start: the log would have
        // had to grow past its length before that node's next poll.
        let oldest = redis::cmd("XRANGE")
            .arg(&key)
            .arg("-")
            .arg("+")
            .arg("COUNT")
            .arg(1)
            .to_owned();
        let page = redis::cmd("XRANGE")
            .arg(&key)
            .arg(format!("({cursor}"))
            .arg("+")
            .arg("COUNT")
            .arg(max)
            .to_owned();
        let answers = self
            .concurrently(CONFIG_DEADLINE, [&oldest, &page].into_iter())
            .await?;
        let [oldest, page] = <[_; 2]>::try_from(answers).map_err(|_| unexpected_answer())?;
        let oldest: redis::streams::StreamRangeReply = decode_answer(oldest)?;
        let page: redis::streams::StreamRangeReply = decode_answer(page)?;
        if let Some(entry) = oldest.ids.first()
            && cursor != LogPosition::START
            && stream_position(&entry.id)? > cursor
        {
            return Ok(None);
        }
        let changes = page.ids.iter().filter_map(decode_change).collect();
        let next = match page.ids.last() {
            Some(entry) => stream_position(&entry.id)?,
            None => cursor,
        };
        Ok(Some((changes, next)))
    }

    async fn ping(&self) -> StoreResult<()> {
        let mut conn = self.conn();
        let probe = async {
            let _: String = redis::cmd("PING").query_async(&mut conn).await?;
            self.config_apply.load_async(&mut conn).await
        };
        self.guarded(READY_DEADLINE, probe).await?;
        Ok(())
    }

    async fn clock_offset(&self) -> StoreResult<Option<chrono::TimeDelta>> {
        // Usage scripts refuse to write after a deadline set on Redis's clock, so an offset
        // off by more than the deadline's last quarter would let a call the node gave up on
        // still write: a few exchanges, and the quickest decides.
        let mut conn = self.conn();
        let mut exchanges = Vec::with_capacity(CLOCK_EXCHANGES);
        for _ in 0..CLOCK_EXCHANGES {
            let sent = chrono::Utc::now();
            let (secs, micros): (i64, i64) = self
                .guarded(CONFIG_DEADLINE, redis::cmd("TIME").query_async(&mut conn))
                .await?;
            let received = chrono::Utc::now();
            if let Some(server) = chrono::DateTime::from_timestamp(secs, (micros * 1000) as u32) {
                exchanges.push(ClockExchange {
                    sent,
                    received,
                    server,
                });
            }
        }
        let offset = estimate_offset(&exchanges);
        if let Some(offset) = offset {
            self.server_offset_micros
                .store(offset.num_microseconds().unwrap_or(0), Ordering::Relaxed);
        }
        Ok(offset)
    }

    fn describe(&self) -> String {
        format!(
            "redis at {} (key prefix {})",
            redact(&self.url),
            self.keys.prefix()
        )
    }
}

fn evalsha(script: &Script, keys: &[&str], args: &[&str]) -> Cmd {
    let mut cmd = redis::cmd("EVALSHA");
    cmd.arg(script.get_hash())
        .arg(keys.len())
        .arg(keys)
        .arg(args);
    cmd
}

/// `TIME` exchanges per clock calibration (every 30 s).
const CLOCK_EXCHANGES: usize = 5;

/// Most events one usage script call carries: enough to share its fixed cost, few enough to
/// keep one call short (Redis runs nothing else meanwhile).
const EVENTS_PER_CALL: usize = 32;

/// One event's keys, in the usage script's layout (see `lua/usage.lua`).
fn usage_keys(event: &EventOps) -> impl Iterator<Item = &str> {
    [
        event.log_key.as_str(),
        event.holds_key.as_str(),
        event.outbox_key.as_str(),
    ]
    .into_iter()
    .chain(event.ops.iter().map(|op| op.key.as_str()))
    .chain(event.dedupe_key.as_deref())
    .chain(event.reservation_key.as_deref())
}

fn usage_arg_count(event: &EventOps) -> usize {
    let reservation = if event.mode == "reserve" {
        2 + event.counters
    } else {
        0
    };
    10 + 4 * event.ops.len() + 3 * event.alerts.len() + reservation + event.released_holds.len()
}

/// One event's arguments, in the usage script's layout.
fn push_usage_args(cmd: &mut Cmd, event: &EventOps) {
    let dedupe_ttl = if event.dedupe_key.is_some() {
        event.dedupe_ttl_ms
    } else {
        0
    };
    cmd.arg(event.mode)
        .arg(event.now_ms)
        .arg(dedupe_ttl)
        .arg(&event.event_id)
        .arg(&event.log_member)
        .arg(event.log_cap)
        .arg(event.log_ttl_ms)
        .arg(event.ops.len())
        .arg(event.counters)
        .arg(event.alerts.len());
    for op in &event.ops {
        cmd.arg(op.kind.code());
        match op.kind {
            OpKind::Latest | OpKind::HashLatest => cmd.arg(format!("{}@{}", op.value, op.at_ms)),
            _ => cmd.arg(&op.value),
        };
        cmd.arg(op.expire_at_ms);
        match (op.kind.is_hash(), op.cap) {
            (true, _) => cmd.arg(&op.field),
            (false, Some(cap)) => cmd.arg(number_text(cap)),
            (false, None) => cmd.arg(""),
        };
    }
    for alert in &event.alerts {
        cmd.arg(alert.op_index + 1)
            .arg(number_text(alert.rule.lowest_level))
            .arg(rule_details(alert));
    }
    if event.mode == "reserve" {
        cmd.arg(&event.reservation_doc)
            .arg(event.reservation_ttl_ms);
        for op in &event.ops[..event.counters] {
            cmd.arg(op.hold_expires_ms);
        }
    }
    for field in &event.released_holds {
        cmd.arg(field);
    }
}

/// An alert rule's packed details: "limit|thresholds|limit ID|window start|window end|fired
/// set", read by the script only when usage reaches the rule's lowest level.
fn rule_details(alert: &AlertOp) -> String {
    let rule = &alert.rule;
    let (start, end) = rule.window_ms.unwrap_or((0, 0));
    let mut details = number_text(rule.limit_value);
    for part in [
        rule.thresholds.as_str(),
        rule.limit_id.as_str(),
        itoa::Buffer::new().format(start),
        itoa::Buffer::new().format(end),
        alert.fired_key.as_str(),
    ] {
        details.push('|');
        details.push_str(part);
    }
    details
}

/// One `EVALSHA` of `lua/usage.lua` for several events (see the script's header).
fn usage_call<'a>(
    script: &Script,
    events: impl Iterator<Item = &'a EventOps> + Clone,
    deadline_ms: i64,
) -> Cmd {
    let keys: usize = events.clone().map(|e| usage_keys(e).count()).sum();
    let args: usize = 2 + events
        .clone()
        .map(|e| 2 + usage_arg_count(e))
        .sum::<usize>();
    let log_bytes: usize = events.clone().map(|e| e.log_member.len()).sum();
    let mut cmd = Cmd::with_capacity(3 + keys + args, 64 * (keys + args) + log_bytes);
    cmd.arg("EVALSHA").arg(script.get_hash()).arg(keys);
    for event in events.clone() {
        for key in usage_keys(event) {
            cmd.arg(key);
        }
    }
    cmd.arg(events.clone().count()).arg(deadline_ms);
    for event in events {
        cmd.arg(usage_keys(event).count())
            .arg(usage_arg_count(event));
        push_usage_args(&mut cmd, event);
    }
    cmd
}

fn text(value: &Value) -> Option<String> {
    match value {
        Value::BulkString(bytes) => String::from_utf8(bytes.clone()).ok(),
        Value::SimpleString(text) => Some(text.clone()),
        Value::Int(n) => Some(n.to_string()),
        Value::Double(n) => Some(n.to_string()),
        _ => None,
    }
}

/// A number in the usage script's answer: an integer, or the text of a number or counter.
fn answer_number(value: &Value) -> f64 {
    match value {
        Value::Int(n) => *n as f64,
        Value::BulkString(bytes) => std::str::from_utf8(bytes).map_or(0.0, parse_counter),
        Value::SimpleString(text) => parse_counter(text),
        Value::Double(n) => *n,
        _ => 0.0,
    }
}

/// One answer of [`RedisStore::concurrently`] as `T`: a Redis error as [`store_error`] says,
/// a reply of another shape as a bug.
fn decode_answer<T: redis::FromRedisValue>(answer: Result<Value, RedisError>) -> StoreResult<T> {
    redis::from_redis_value(answer.map_err(store_error)?)
        .map_err(|e| StoreError::Internal(e.to_string()))
}

fn unexpected_answer() -> StoreError {
    StoreError::Internal("unexpected usage script answer".into())
}

fn decode_outcome(value: Value, counters: usize) -> StoreResult<RecordOutcome> {
    let Value::Array(items) = value else {
        return Err(unexpected_answer());
    };
    let readings = |pairs: &[Value]| -> Vec<CounterReading> {
        pairs
            .chunks(2)
            .take(counters)
            .map(|pair| CounterReading {
                used: answer_number(&pair[0]),
                reserved: pair.get(1).map_or(0.0, answer_number),
            })
            .collect()
    };
    match items.as_slice() {
        [Value::Int(1), first, ..] => Ok(RecordOutcome::Duplicate {
            event_id: match first {
                Value::BulkString(bytes) => String::from_utf8_lossy(bytes).into_owned(),
                _ => return Err(unexpected_answer()),
            },
        }),
        [Value::Int(2), pairs @ ..] => Ok(RecordOutcome::Refused {
            counters: readings(pairs),
        }),
        [Value::Int(0), alerts, pairs @ ..] => Ok(RecordOutcome::Written {
            alerts: answer_number(alerts) as usize,
            after: readings(pairs),
        }),
        _ => Err(unexpected_answer()),
    }
}

#[async_trait]
impl UsageStore for RedisStore {
    async fn write(&self, writes: &[EventWrite<'_>]) -> StoreResult<Vec<RecordOutcome>> {
        let events: Vec<EventOps> = writes
            .iter()
            .map(|w| event_ops(&self.keys, &self.retention, *w))
            .collect();
        // The owner pointer goes first: a reservation must be findable by its ID alone.
        let owners: Vec<Cmd> = writes
            .iter()
            .zip(&events)
            .filter_map(|(write, event)| match write.mode {
                Mode::Reserve { reservation, .. } => Some(
                    redis::cmd("SET")
                        .arg(self.keys.reservation_owner(&reservation.id))
                        .arg(write.event.customer_id.as_str())
                        .arg("PX")
                        .arg(event.reservation_ttl_ms)
                        .to_owned(),
                ),
                _ => None,
            })
            .collect();
        for answer in self.concurrently(self.timeout, owners.iter()).await? {
            answer.map_err(store_error)?;
        }
        let deadline = self.deadline_for(writes.len());
        let script_deadline_ms = self.script_deadline_ms(deadline);
        let groups = self.call_groups(writes);
        let calls: Vec<Cmd> = groups
            .iter()
            .map(|group| {
                let events = group.iter().map(|&i| &events[i]);
                usage_call(&self.usage, events, script_deadline_ms)
            })
            .collect();
        let answers = self.eval_many(&self.usage, &calls, deadline).await?;
        let mut outcomes: Vec<Option<RecordOutcome>> = vec![None; writes.len()];
        for (group, answer) in groups.iter().zip(answers) {
            let per_event = match answer {
                Value::Array(per_event) if per_event.len() == group.len() => per_event,
                _ => return Err(unexpected_answer()),
            };
            for (&index, answer) in group.iter().zip(per_event) {
                outcomes[index] = Some(decode_outcome(answer, events[index].counters)?);
            }
        }
        outcomes
            .into_iter()
            .map(|o| o.ok_or_else(|| StoreError::Internal("an event got no answer".into())))
            .collect()
    }

    async fn read_counters(
        &self,
        customer: &CustomerId,
        counters: &[CounterId],
        now_ms: i64,
    ) -> StoreResult<Vec<CounterReading>> {
        if counters.is_empty() {
            return Ok(Vec::new());
        }
        let keys: Vec<String> = counters
            .iter()
            .map(|c| self.keys.counter(customer, c))
            .collect();
        let mut conn = self.conn();
        let (values, holds): (
            Vec<Option<String>>,
            std::collections::HashMap<String, String>,
        ) = self
            .guarded(
                self.timeout,
                redis::pipe()
                    .cmd("MGET")
                    .arg(&keys)
                    .cmd("HGETALL")
                    .arg(self.keys.holds(customer))
                    .query_async(&mut conn),
            )
            .await?;
        let held = live_holds(&holds, now_ms);
        Ok(keys
            .iter()
            .zip(values)
            .map(|(key, value)| CounterReading {
                used: value.as_deref().map_or(0.0, parse_counter),
                reserved: held.get(key.as_str()).copied().unwrap_or(0.0),
            })
            .collect())
    }

    async fn reservation(
        &self,
        customer: &CustomerId,
        id: &str,
    ) -> StoreResult<Option<StoredReservation>> {
        let mut conn = self.conn();
        let record: std::collections::HashMap<String, String> = self
            .guarded(
                self.timeout.max(CONFIG_DEADLINE),
                redis::cmd("HGETALL")
                    .arg(self.keys.reservation(customer, id))
                    .query_async(&mut conn),
            )
            .await?;
        Ok(record.get("doc").map(|doc| StoredReservation {
            doc: doc.clone(),
            status: record.get("status").cloned().unwrap_or_default(),
            event_id: record.get("eventId").filter(|e| !e.is_empty()).cloned(),
            committed_values: record.get("values").cloned(),
        }))
    }

    async fn reservation_owner(&self, id: &str) -> StoreResult<Option<CustomerId>> {
        let mut conn = self.conn();
        let owner: Option<String> = self
            .guarded(
                self.timeout.max(CONFIG_DEADLINE),
                redis::cmd("GET")
                    .arg(self.keys.reservation_owner(id))
                    .query_async(&mut conn),
            )
            .await?;
        Ok(owner.and_then(|raw| CustomerId::parse("owner", &raw).ok()))
    }

    async fn finish_reservation(
        &self,
        customer: &CustomerId,
        id: &str,
        counters: &[CounterId],
        finish: Finish<'_>,
    ) -> StoreResult<Option<(String, String)>> {
        let keys = [
            self.keys.reservation(customer, id),
            self.keys.holds(customer),
        ];
        let afterlife = RESERVATION_AFTERLIFE_MS.to_string();
        let (status, event_id, values, counted) = match finish {
            Finish::Commit {
                event_id,
                values,
                counted,
            } => (
                "committed",
                event_id,
                values,
                if counted { "1" } else { "0" },
            ),
            Finish::Release => ("released", "", "", "0"),
            Finish::Begin { event_id } => ("committing", event_id, "", "0"),
        };
        let counter_keys: Vec<String> = counters
            .iter()
            .map(|c| self.keys.counter(customer, c))
            .collect();
        let key_refs: Vec<&str> = keys.iter().map(String::as_str).collect();
        let mut args: Vec<&str> = vec![id, status, event_id, &afterlife, values, counted];
        args.extend(counter_keys.iter().map(String::as_str));
        let call = evalsha(&self.reservation_finish, &key_refs, &args);
        let answer = self
            .eval_many(&self.reservation_finish, &[call], CONFIG_DEADLINE)
            .await?
            .pop();
        let values: Vec<String> = match answer {
            Some(Value::Array(items)) => {
                items.iter().map(|v| text(v).unwrap_or_default()).collect()
            }
            _ => return Err(StoreError::Internal("unexpected reservation answer".into())),
        };
        let ended = match values.as_slice() {
            [status, _] if status == "missing" => None,
            [status, event] => Some((status.clone(), event.clone())),
            _ => return Err(StoreError::Internal("unexpected reservation answer".into())),
        };
        let finished = matches!(finish, Finish::Commit { .. } | Finish::Release);
        if finished && ended.as_ref().is_some_and(|(after, _)| after == status) {
            self.keep_owner(id, RESERVATION_AFTERLIFE_MS).await;
        }
        Ok(ended)
    }

    async fn extend_reservation(
        &self,
        customer: &CustomerId,
        id: &str,
        holds: &[(CounterId, i64)],
        doc: &str,
        expires_at_ms: i64,
        now_ms: i64,
    ) -> StoreResult<Extension> {
        let keys = [
            self.keys.reservation(customer, id),
            self.keys.holds(customer),
        ];
        let ttl_ms = (expires_at_ms - now_ms).max(1) + RESERVATION_AFTERLIFE_MS;
        let ttl = ttl_ms.to_string();
        let pairs: Vec<String> = holds
            .iter()
            .flat_map(|(c, expires)| [self.keys.counter(customer, c), expires.to_string()])
            .collect();
        let key_refs: Vec<&str> = keys.iter().map(String::as_str).collect();
        let mut args: Vec<&str> = vec![id, doc, &ttl];
        args.extend(pairs.iter().map(String::as_str));
        let call = evalsha(&self.reservation_extend, &key_refs, &args);
        let answer = self
            .eval_many(&self.reservation_extend, &[call], CONFIG_DEADLINE)
            .await?
            .pop();
        Ok(match answer {
            Some(Value::Int(1)) => {
                self.keep_owner(id, ttl_ms).await;
                Extension::Extended
            }
            Some(Value::Int(2)) => Extension::AlreadyLonger,
            Some(Value::Int(0)) => Extension::NotHeld,
            _ => return Err(unexpected_answer()),
        })
    }

    async fn read_rollups(
        &self,
        customer: &CustomerId,
        meter_id: &str,
        hours: Option<(i64, i64)>,
    ) -> StoreResult<Rollups> {
        let buckets: Vec<Option<i64>> = match hours {
            None => vec![None],
            Some((from, to)) => (from..to).step_by(3600).map(Some).collect(),
        };
        let mut conn = self.conn();
        let mut pipe = redis::pipe();
        pipe.cmd("HGETALL")
            .arg(self.keys.rollup_dimensions(customer, meter_id));
        for bucket in &buckets {
            pipe.cmd("HGETALL")
                .arg(self.keys.rollup(customer, meter_id, *bucket));
        }
        let mut hashes: Vec<std::collections::HashMap<String, String>> = self
            .guarded(CONFIG_DEADLINE, pipe.query_async(&mut conn))
            .await?;
        let rest = hashes.split_off(1);
        let dimensions = hashes
            .pop()
            .unwrap_or_default()
            .into_iter()
            .filter_map(|(hash, json)| serde_json::from_str(&json).ok().map(|dims| (hash, dims)))
            .collect();
        let buckets = buckets
            .into_iter()
            .zip(rest)
            .map(|(bucket, fields)| (bucket, decode_rollup(fields)))
            .collect();
        Ok(Rollups {
            dimensions,
            buckets,
        })
    }

    async fn event_log(&self, customer: &CustomerId) -> StoreResult<Vec<String>> {
        let mut conn = self.conn();
        self.guarded(
            CONFIG_DEADLINE,
            // The usage script lets the log outgrow its cap a little before trimming it.
            redis::cmd("LRANGE")
                .arg(self.keys.event_log(customer))
                .arg(-(self.retention.events_per_customer as i64))
                .arg(-1)
                .query_async(&mut conn),
        )
        .await
    }

    async fn forget_usage(&self, customer: &CustomerId, usage: &UsageToForget) -> StoreResult<()> {
        let mut conn = self.conn();
        let hold_fields: Vec<String> = self
            .guarded(
                CONFIG_DEADLINE,
                redis::cmd("HKEYS")
                    .arg(self.keys.holds(customer))
                    .query_async(&mut conn),
            )
            .await?;
        let fields = hold_fields.iter().map(String::as_str);
        let keys = usage_keys_to_forget(&self.keys, customer, usage, fields);
        let _: i64 = self
            .guarded(
                CONFIG_DEADLINE,
                redis::cmd("DEL").arg(keys).query_async(&mut conn),
            )
            .await?;
        Ok(())
    }
}

/// Live holds (`amount:expires_at_ms` still in the future) summed per counter key.
pub fn live_holds(
    entries: &std::collections::HashMap<String, String>,
    now_ms: i64,
) -> std::collections::HashMap<&str, f64> {
    let mut held = std::collections::HashMap::new();
    for (field, entry) in entries {
        let (Some((counter, _)), Some((amount, expires))) =
            (field.rsplit_once('|'), entry.split_once(':'))
        else {
            continue;
        };
        if expires.parse::<i64>().is_ok_and(|e| e > now_ms) {
            *held.entry(counter).or_insert(0.0) += amount.parse::<f64>().unwrap_or(0.0);
        }
    }
    held
}

/// A stream entry ID (`<ms>-<seq>`, or a bare `<ms>`) as a log position; anything else is a
/// storage error (the poll fails, and the node reads everything again).
fn stream_position(id: &str) -> StoreResult<LogPosition> {
    LogPosition::parse(id)
        .ok_or_else(|| StoreError::Internal(format!("not a change log entry ID: {id:?}")))
}

/// Hides a password in a Redis URL before it is logged.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            format!("{}://***{}", &url[..scheme_end], &url[at..])
        }
        _ => url.to_string(),
    }
}

fn decode_claims(items: Vec<String>, messages: Vec<Option<String>>, now_ms: i64) -> Vec<Claim> {
    items
        .chunks(2)
        .zip(messages)
        .filter_map(|(pair, message)| {
            let (message_id, endpoint_id) = split_delivery_member(&pair[0])?;
            let (attempts, first_attempt_ms) = match pair.get(1).and_then(|t| t.split_once(':')) {
                Some((n, first)) => (n.parse().unwrap_or(0), first.parse().unwrap_or(now_ms)),
                None => (0, now_ms),
            };
            Some(Claim {
                message_id: message_id.to_string(),
                endpoint_id: endpoint_id.to_string(),
                message: message.unwrap_or_default(),
                attempts,
                first_attempt_ms,
            })
        })
        .collect()
}

#[async_trait]
impl AlertStore for RedisStore {
    async fn outbox(&self, customer: &CustomerId) -> StoreResult<Vec<String>> {
        let mut conn = self.conn();
        self.guarded(
            CONFIG_DEADLINE,
            redis::cmd("LRANGE")
                .arg(self.keys.outbox(customer))
                .arg(0)
                .arg(-1)
                .query_async(&mut conn),
        )
        .await
    }

    async fn outbox_lengths(&self, customers: &[CustomerId]) -> StoreResult<Vec<usize>> {
        let commands: Vec<Cmd> = customers
            .iter()
            .map(|customer| {
                redis::cmd("LLEN")
                    .arg(self.keys.outbox(customer))
                    .to_owned()
            })
            .collect();
        self.concurrently(CONFIG_DEADLINE, commands.iter())
            .await?
            .into_iter()
            .map(decode_answer)
            .collect()
    }

    async fn hand_over(
        &self,
        customer: &CustomerId,
        message_id: &str,
        message: &str,
        outbox_entry: &str,
        endpoints: &[String],
        now_ms: i64,
    ) -> StoreResult<()> {
        if !message_id.is_empty() {
            let message_key = self.keys.webhook_message(message_id);
            let due = self.keys.webhook_due();
            let ttl = MESSAGE_TTL_MS.to_string();
            let now = now_ms.to_string();
            let mut args: Vec<&str> = vec![message_id, &ttl, &now, message];
            args.extend(endpoints.iter().map(String::as_str));
            let call = evalsha(&self.alert_hand_over, &[&message_key, &due], &args);
            self.eval_many(&self.alert_hand_over, &[call], CONFIG_DEADLINE)
                .await?;
        }
        let mut conn = self.conn();
        let _: i64 = self
            .guarded(
                CONFIG_DEADLINE,
                redis::cmd("LREM")
                    .arg(self.keys.outbox(customer))
                    .arg(1)
                    .arg(outbox_entry)
                    .query_async(&mut conn),
            )
            .await?;
        Ok(())
    }

    async fn claim_sweep(&self, now_ms: i64, interval_ms: i64) -> StoreResult<bool> {
        let args = [now_ms.to_string(), interval_ms.to_string()];
        let claim = self.keys.alert_sweep_claim();
        let call = evalsha(&self.sweep_claim, &[&claim], &[&args[0], &args[1]]);
        let answer = self
            .eval_many(&self.sweep_claim, &[call], CONFIG_DEADLINE)
            .await?
            .pop();
        Ok(matches!(answer, Some(Value::Int(1))))
    }

    async fn claim_due(&self, now_ms: i64, lease_ms: i64, max: usize) -> StoreResult<Vec<Claim>> {
        let (due, tries) = (self.keys.webhook_due(), self.keys.webhook_tries());
        let args = [now_ms.to_string(), lease_ms.to_string(), max.to_string()];
        let call = evalsha(
            &self.alert_claim,
            &[&due, &tries],
            &[&args[0], &args[1], &args[2]],
        );
        let answer = self
            .eval_many(&self.alert_claim, &[call], CONFIG_DEADLINE)
            .await?
            .pop();
        let items: Vec<String> = match answer {
            Some(Value::Array(items)) => {
                items.iter().map(|v| text(v).unwrap_or_default()).collect()
            }
            _ => Vec::new(),
        };
        if items.is_empty() {
            return Ok(Vec::new());
        }
        let message_keys: Vec<String> = items
            .chunks(2)
            .filter_map(|pair| {
                split_delivery_member(&pair[0]).map(|(m, _)| self.keys.webhook_message(m))
            })
            .collect();
        let mut conn = self.conn();
        let messages: Vec<Option<String>> = self
            .guarded(
                CONFIG_DEADLINE,
                redis::cmd("MGET").arg(&message_keys).query_async(&mut conn),
            )
            .await?;
        Ok(decode_claims(items, messages, now_ms))
    }

    async fn finish_attempt(
        &self,
        claim: &Claim,
        attempt_id: &str,
        attempt: &str,
        end: &AttemptEnd,
        _now_ms: i64,
    ) -> StoreResult<u32> {
        let keys = [
            self.keys.webhook_due(),
            self.keys.webhook_tries(),
            self.keys.webhook_failures(),
            self.keys.webhook_attempts(&claim.endpoint_id),
            self.keys.webhook_retried_attempts(),
        ];
        let (kind, retry_at) = match end {
            AttemptEnd::Succeeded => ("succeeded", 0),
            AttemptEnd::RetryAt(at) => ("retry", *at),
            AttemptEnd::GaveUp => ("gave_up", 0),
        };
        let args = [
            delivery_member(&claim.message_id, &claim.endpoint_id),
            claim.endpoint_id.clone(),
            format!("{attempt_id}:{attempt}"),
            kind.to_string(),
            retry_at.to_string(),
            format!("{}:{}", claim.attempts + 1, claim.first_attempt_ms),
            ATTEMPT_LOG_LEN.to_string(),
            if claim.is_first_attempt() { "1" } else { "0" }.to_string(),
        ];
        let key_refs: Vec<&str> = keys.iter().map(String::as_str).collect();
        let arg_refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let call = evalsha(&self.alert_finish, &key_refs, &arg_refs);
        match self
            .eval_many(&self.alert_finish, &[call], CONFIG_DEADLINE)
            .await?
            .pop()
        {
            Some(Value::Int(failures)) => Ok(failures.max(0) as u32),
            _ => Err(StoreError::Internal(
                "unexpected alert finish answer".into(),
            )),
        }
    }

    async fn reset_failures(&self, endpoint_id: &str) -> StoreResult<()> {
        let mut conn = self.conn();
        let reset = redis::cmd("HDEL")
            .arg(self.keys.webhook_failures())
            .arg(endpoint_id)
            .to_owned();
        let _: i64 = self
            .guarded(CONFIG_DEADLINE, reset.query_async(&mut conn))
            .await?;
        Ok(())
    }

    async fn attempts(
        &self,
        endpoint_id: &str,
        before: Option<&str>,
        limit: usize,
    ) -> StoreResult<Vec<String>> {
        let high = before.map_or_else(|| "+".to_string(), |b| format!("({b}"));
        let mut conn = self.conn();
        self.guarded(
            CONFIG_DEADLINE,
            redis::cmd("ZRANGE")
                .arg(self.keys.webhook_attempts(endpoint_id))
                .arg(high)
                .arg("-")
                .arg("BYLEX")
                .arg("REV")
                .arg("LIMIT")
                .arg(0)
                .arg(limit)
                .query_async(&mut conn),
        )
        .await
    }

    async fn message(&self, message_id: &str) -> StoreResult<Option<String>> {
        let mut conn = self.conn();
        self.guarded(
            CONFIG_DEADLINE,
            redis::cmd("GET")
                .arg(self.keys.webhook_message(message_id))
                .query_async(&mut conn),
        )
        .await
    }

    async fn redeliver(
        &self,
        message_id: &str,
        message: &str,
        endpoint_id: &str,
        now_ms: i64,
    ) -> StoreResult<()> {
        let member = delivery_member(message_id, endpoint_id);
        let mut pipe = redis::pipe();
        pipe.atomic()
            .cmd("SET")
            .arg(self.keys.webhook_message(message_id))
            .arg(message)
            .arg("PX")
            .arg(MESSAGE_TTL_MS)
            .ignore()
            .cmd("HDEL")
            .arg(self.keys.webhook_tries())
            .arg(&member)
            .ignore()
            .cmd("ZADD")
            .arg(self.keys.webhook_due())
            .arg(now_ms)
            .arg(&member)
            .ignore();
        let mut conn = self.conn();
        self.guarded(CONFIG_DEADLINE, pipe.query_async::<()>(&mut conn))
            .await
    }
}

#[async_trait]
impl BalanceStore for RedisStore {
    async fn move_balance(
        &self,
        customer: &CustomerId,
        movement: &Movement<'_>,
    ) -> StoreResult<MovementOutcome> {
        let mut keys = vec![
            self.keys.balance_spent(customer, movement.balance_id),
            self.keys
                .balance_transactions(customer, movement.balance_id),
        ];
        let ttl = match movement.idempotency_key {
            Some(key) => {
                keys.push(movement_dedupe_key(&self.keys, customer, key));
                self.retention.idempotency.as_millis().to_string()
            }
            None => "0".to_string(),
        };
        let change = number_text(movement.spent_change);
        let ceiling = movement.ceiling.map(number_text).unwrap_or_default();
        let key_refs: Vec<&str> = keys.iter().map(String::as_str).collect();
        let args = [
            change.as_str(),
            ceiling.as_str(),
            movement.transaction_id,
            movement.entry,
            ttl.as_str(),
        ];
        let call = evalsha(&self.balance_move, &key_refs, &args);
        let answer = self
            .eval_many(&self.balance_move, &[call], CONFIG_DEADLINE)
            .await?
            .pop();
        let unexpected = || StoreError::Internal("unexpected balance answer".into());
        let Some(Value::Array(items)) = answer else {
            return Err(unexpected());
        };
        match items.as_slice() {
            [Value::Int(0), member] => Ok(MovementOutcome::Applied(
                text(member).ok_or_else(unexpected)?,
            )),
            [Value::Int(1), record] => Ok(MovementOutcome::Duplicate(Box::new(first_movement(
                text(record).ok_or_else(unexpected)?,
            )))),
            [Value::Int(2), spent] => Ok(MovementOutcome::Refused {
                spent: text(spent)
                    .and_then(|spent| spent.parse().ok())
                    .ok_or_else(unexpected)?,
                first_entry: None,
            }),
            _ => Err(unexpected()),
        }
    }

    async fn balance_readings(
        &self,
        customer: &CustomerId,
        balance_ids: &[&str],
    ) -> StoreResult<Vec<BalanceReading>> {
        if balance_ids.is_empty() {
            return Ok(Vec::new());
        }
        let counters: Vec<String> = balance_ids
            .iter()
            .map(|id| self.keys.balance_spent(customer, id))
            .collect();
        let mut pipe = redis::pipe();
        pipe.cmd("MGET").arg(&counters);
        for id in balance_ids {
            pipe.cmd("ZREVRANGEBYLEX")
                .arg(self.keys.balance_transactions(customer, id))
                .arg("+")
                .arg("-")
                .arg("LIMIT")
                .arg(0)
                .arg(1);
        }
        let mut conn = self.conn();
        let answers: Vec<Value> = self
            .guarded(CONFIG_DEADLINE, pipe.query_async(&mut conn))
            .await?;
        let mut answers = answers.into_iter();
        let spent: Vec<Option<String>> = match answers.next() {
            Some(value) => redis::from_redis_value(value)
                .map_err(|e| StoreError::Internal(format!("unexpected balance answer: {e}")))?,
            None => return Err(StoreError::Internal("unexpected balance answer".into())),
        };
        Ok(spent
            .into_iter()
            .zip(answers)
            .map(|(spent, newest)| BalanceReading {
                spent: spent.as_deref().map_or(0.0, parse_counter),
                newest: redis::from_redis_value::<Vec<String>>(newest)
                    .ok()
                    .and_then(|mut members| members.pop()),
            })
            .collect())
    }

    async fn transactions(
        &self,
        customer: &CustomerId,
        balance_id: &str,
        before: Option<&str>,
        limit: usize,
    ) -> StoreResult<Vec<String>> {
        // Members start with their ID, so "(<id>" excludes that transaction and every later one.
        let max = before.map_or_else(|| "+".to_string(), |id| format!("({id}"));
        let mut conn = self.conn();
        self.guarded(
            CONFIG_DEADLINE,
            redis::cmd("ZREVRANGEBYLEX")
                .arg(self.keys.balance_transactions(customer, balance_id))
                .arg(max)
                .arg("-")
                .arg("LIMIT")
                .arg(0)
                .arg(limit)
                .query_async(&mut conn),
        )
        .await
    }

    async fn drop_balance(&self, customer: &CustomerId, balance_id: &str) -> StoreResult<()> {
        let mut pipe = redis::pipe();
        pipe.cmd("SET")
            .arg(self.keys.balance_spent(customer, balance_id))
            .arg(0)
            .arg("PX")
            .arg(DROPPED_SPENT_TTL_MS)
            .ignore()
            .cmd("DEL")
            .arg(self.keys.balance_transactions(customer, balance_id))
            .ignore();
        let mut conn = self.conn();
        self.guarded(CONFIG_DEADLINE, pipe.query_async::<()>(&mut conn))
            .await
    }
}

#[async_trait]
impl ReplayStore for RedisStore {
    async fn claim_replay(&self, key: &str, pending_ms: i64) -> StoreResult<ReplayClaim> {
        let mut conn = self.conn();
        // An empty value marks a request still running.
        let previous: Option<String> = self
            .guarded(
                CONFIG_DEADLINE,
                redis::cmd("SET")
                    .arg(self.keys.replay(key))
                    .arg("")
                    .arg("NX")
                    .arg("PX")
                    .arg(pending_ms)
                    .arg("GET")
                    .query_async(&mut conn),
            )
            .await?;
        Ok(match previous {
            None => ReplayClaim::Claimed,
            Some(answer) if answer.is_empty() => ReplayClaim::InProgress,
            Some(answer) => ReplayClaim::Answered(answer),
        })
    }

    async fn finish_replay(&self, key: &str, answer: Option<&str>) -> StoreResult<()> {
        let mut conn = self.conn();
        let key = self.keys.replay(key);
        let command = match answer {
            Some(answer) => redis::cmd("SET")
                .arg(key)
                .arg(answer)
                .arg("PX")
                .arg(self.retention.idempotency.as_millis() as u64)
                .to_owned(),
            None => redis::cmd("DEL").arg(key).to_owned(),
        };
        self.guarded(CONFIG_DEADLINE, command.query_async::<()>(&mut conn))
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passing_storage_states_are_outages_and_script_errors_are_bugs() {
        use redis::{ErrorKind, ServerErrorKind};
        let server = |kind| store_error(RedisError::from((ErrorKind::Server(kind), "x")));
        for kind in [
            ServerErrorKind::TryAgain,
            ServerErrorKind::ClusterDown,
            ServerErrorKind::MasterDown,
            ServerErrorKind::Moved,
            ServerErrorKind::Ask,
            ServerErrorKind::ReadOnly,
            ServerErrorKind::BusyLoading,
        ] {
            assert!(
                matches!(server(kind), StoreError::Unavailable(_)),
                "{kind:?}"
            );
        }
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        assert!(matches!(
            store_error(refused.into()),
            StoreError::Unavailable(_)
        ));
        let full =
            redis::make_extension_error("OOM".into(), Some("used memory > maxmemory".into()));
        assert!(matches!(store_error(full), StoreError::Unavailable(_)));
        for kind in [ServerErrorKind::ResponseError, ServerErrorKind::CrossSlot] {
            assert!(matches!(server(kind), StoreError::Internal(_)), "{kind:?}");
        }
        let shape = RedisError::from((ErrorKind::UnexpectedReturnType, "not a number"));
        assert!(matches!(store_error(shape), StoreError::Internal(_)));
    }

    fn event(mode: &'static str, dedupe: bool, alerts: usize) -> EventOps {
        let op = |kind, cap| super::super::usage::KeyOp {
            key: "qg:{c:a}:u:m:_:day:0".into(),
            kind,
            field: if kind.is_hash() {
                "_".into()
            } else {
                String::new()
            },
            value: "2".into(),
            at_ms: 0,
            expire_at_ms: 5,
            holds: kind == OpKind::Add,
            cap,
            hold_expires_ms: 5,
        };
        let rule = crate::domain::alert::AlertRule {
            thresholds: "80,x".into(),
            limit_value: 10.0,
            lowest_level: 8.0,
            limit_id: "lmt_1".into(),
            window_ms: Some((0, 5)),
        };
        EventOps {
            mode,
            now_ms: 1,
            event_id: "evt_1".into(),
            dedupe_key: dedupe.then(|| "qg:{c:a}:idem:x".into()),
            dedupe_ttl_ms: 9,
            log_key: "qg:{c:a}:events".into(),
            log_member: "entry".into(),
            log_ttl_ms: 9,
            log_cap: 10,
            reservation_key: (mode == "reserve").then(|| "qg:{c:a}:rsv:r".into()),
            reservation_doc: "{}".into(),
            reservation_ttl_ms: 9,
            ops: vec![
                op(OpKind::Add, Some(10.0)),
                op(OpKind::Max, None),
                op(OpKind::HashAdd, None),
            ],
            counters: 2,
            outbox_key: "qg:{c:a}:outbox".into(),
            holds_key: "qg:{c:a}:holds".into(),
            alerts: (0..alerts)
                .map(|_| AlertOp {
                    op_index: 0,
                    rule: rule.clone(),
                    fired_key: "qg:{c:a}:fired:lmt_1:0".into(),
                })
                .collect(),
            released_holds: Vec::new(),
        }
    }

    /// The script finds each event's arguments by the count sent before them.
    #[test]
    fn usage_arg_count_matches_what_is_sent() {
        for mode in ["record", "consume", "reserve"] {
            for dedupe in [false, true] {
                for alerts in [0, 2] {
                    let mut event = event(mode, dedupe, alerts);
                    let mut cmd = redis::Cmd::new();
                    push_usage_args(&mut cmd, &event);
                    assert_eq!(cmd.args_iter().count(), usage_arg_count(&event), "{mode}");
                    if mode == "record" {
                        event.released_holds = vec!["k|rsv_1".into(), "k2|rsv_1".into()];
                        let mut cmd = redis::Cmd::new();
                        push_usage_args(&mut cmd, &event);
                        assert_eq!(cmd.args_iter().count(), usage_arg_count(&event), "commit");
                    }
                }
            }
        }
    }

    #[test]
    fn rule_details_pack_what_the_script_splits() {
        let event = event("record", false, 1);
        assert_eq!(
            rule_details(&event.alerts[0]),
            "10|80,x|lmt_1|0|5|qg:{c:a}:fired:lmt_1:0"
        );
    }

    #[test]
    fn passwords_never_reach_the_log() {
        assert_eq!(
            redact("redis://:secret@host:6379/0"),
            "redis://***@host:6379/0"
        );
        assert_eq!(redact("redis://host:6379"), "redis://host:6379");
    }
}
