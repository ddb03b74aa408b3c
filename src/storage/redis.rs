//! The Redis store: one server (`redis://`) or a cluster (`redis+cluster://host:port,...`).
//!
//! One multiplexed connection per node carries every request: redis-rs pipelines concurrent
//! commands on it, which beats a pool of connections for this many small calls.

use std::time::Duration;

use async_trait::async_trait;
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Pipeline, RedisError, RedisFuture, Script, Value};

use super::keys::Keys;
use super::{
    ConfigChange, ConfigOp, ConfigStore, Guard, GuardFailed, Kind, StoreError, StoreResult,
};

/// How many changes the config log keeps (approximately); a node further behind reloads.
const CHANGE_LOG_LEN: usize = 100_000;

/// Deadline of a configuration call: these are not on the decision path, so they get longer
/// than `QUOTAGATE_STORAGE_TIMEOUT_MS`.
const CONFIG_DEADLINE: Duration = Duration::from_secs(2);

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

impl RedisConnection {
    /// Connects to `redis://…` or `redis+cluster://h:p,h:p`. Reconnection after a lost
    /// connection is automatic in both cases.
    pub async fn connect(url: &str, timeout: Duration) -> Result<RedisConnection, RedisError> {
        if let Some(seeds) = url.strip_prefix("redis+cluster://") {
            let nodes: Vec<String> = seeds
                .split(',')
                .filter(|s| !s.is_empty())
                .map(|seed| format!("redis://{seed}"))
                .collect();
            let client = redis::cluster::ClusterClient::builder(nodes)
                .connection_timeout(Duration::from_secs(1))
                .response_timeout(timeout)
                .build()?;
            return Ok(RedisConnection::Cluster(
                client.get_async_connection().await?,
            ));
        }
        let client = redis::Client::open(url)?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(1)))
            .set_response_timeout(Some(timeout))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(500));
        Ok(RedisConnection::Single(
            ConnectionManager::new_with_config(client, config).await?,
        ))
    }
}

pub fn store_error(error: RedisError) -> StoreError {
    if error.is_timeout()
        || error.is_io_error()
        || error.is_connection_dropped()
        || error.is_connection_refusal()
    {
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

pub struct RedisStore {
    conn: RedisConnection,
    keys: Keys,
    url: String,
    config_apply: Script,
}

impl RedisStore {
    pub fn new(conn: RedisConnection, keys: Keys, url: &str) -> RedisStore {
        RedisStore {
            conn,
            keys,
            url: url.to_string(),
            config_apply: Script::new(include_str!("../../lua/config_apply.lua")),
        }
    }

    fn conn(&self) -> RedisConnection {
        self.conn.clone()
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
    }
}

fn decode_change(fields: &redis::streams::StreamId) -> Option<ConfigChange> {
    let text = |name: &str| -> Option<String> { fields.get::<String>(name) };
    let position: usize = text("kind")?.parse().ok()?;
    let kind = *Kind::ALL.get(position.checked_sub(1)?)?;
    let doc = text("doc")?;
    Some(ConfigChange {
        kind,
        id: text("id")?,
        doc: (!doc.is_empty()).then_some(doc),
    })
}

#[async_trait]
impl ConfigStore for RedisStore {
    async fn get(&self, kind: Kind, id: &str) -> StoreResult<Option<String>> {
        let mut conn = self.conn();
        let cmd = redis::cmd("HGET")
            .arg(self.keys.config_docs(kind))
            .arg(id)
            .to_owned();
        with_deadline(CONFIG_DEADLINE, cmd.query_async(&mut conn)).await
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
        let ids: Vec<String> = with_deadline(
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
        let docs: Vec<Option<String>> = with_deadline(
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

    async fn all(&self, kind: Kind) -> StoreResult<Vec<String>> {
        let mut conn = self.conn();
        with_deadline(
            CONFIG_DEADLINE,
            redis::cmd("HVALS")
                .arg(self.keys.config_docs(kind))
                .query_async(&mut conn),
        )
        .await
    }

    async fn apply(&self, ops: &[ConfigOp]) -> StoreResult<Result<(), GuardFailed>> {
        let mut invocation = self.config_apply.prepare_invoke();
        invocation.key(self.keys.config_changes());
        for kind in Kind::ALL {
            invocation
                .key(self.keys.config_docs(kind))
                .key(self.keys.config_index(kind));
        }
        invocation.arg(CHANGE_LOG_LEN);
        for op in ops {
            let (id, doc) = match op {
                ConfigOp::Put { id, doc, .. } | ConfigOp::PutIfAbsent { id, doc, .. } => {
                    (id, doc.as_str())
                }
                ConfigOp::Delete { id, .. } | ConfigOp::Require { id, .. } => (id, ""),
            };
            invocation
                .arg(opcode(op))
                .arg(op.kind().position())
                .arg(id)
                .arg(doc);
        }
        let mut conn = self.conn();
        let failed: usize =
            with_deadline(CONFIG_DEADLINE, invocation.invoke_async(&mut conn)).await?;
        Ok(match failed {
            0 => Ok(()),
            n => Err(GuardFailed { index: n - 1 }),
        })
    }

    async fn change_cursor(&self) -> StoreResult<String> {
        let mut conn = self.conn();
        let reply: redis::streams::StreamRangeReply = with_deadline(
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
        Ok(reply
            .ids
            .first()
            .map_or_else(|| "0-0".to_string(), |entry| entry.id.clone()))
    }

    async fn changes_after(
        &self,
        cursor: &str,
        max: usize,
    ) -> StoreResult<(Vec<ConfigChange>, String)> {
        let mut conn = self.conn();
        let reply: redis::streams::StreamRangeReply = with_deadline(
            CONFIG_DEADLINE,
            redis::cmd("XRANGE")
                .arg(self.keys.config_changes())
                .arg(format!("({cursor}"))
                .arg("+")
                .arg("COUNT")
                .arg(max)
                .query_async(&mut conn),
        )
        .await?;
        let next = reply
            .ids
            .last()
            .map_or_else(|| cursor.to_string(), |entry| entry.id.clone());
        let changes = reply.ids.iter().filter_map(decode_change).collect();
        Ok((changes, next))
    }

    async fn ping(&self) -> StoreResult<()> {
        let mut conn = self.conn();
        let _: String =
            with_deadline(CONFIG_DEADLINE, redis::cmd("PING").query_async(&mut conn)).await?;
        let _: String =
            with_deadline(CONFIG_DEADLINE, self.config_apply.load_async(&mut conn)).await?;
        Ok(())
    }

    fn describe(&self) -> String {
        format!(
            "redis at {} (key prefix {})",
            redact(&self.url),
            self.keys.prefix()
        )
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_never_reach_the_log() {
        assert_eq!(
            redact("redis://:secret@host:6379/0"),
            "redis://***@host:6379/0"
        );
        assert_eq!(redact("redis://host:6379"), "redis://host:6379");
    }
}
