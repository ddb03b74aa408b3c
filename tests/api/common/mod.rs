//! Test harness: real `redis-server` processes on free loopback ports, the router driven in
//! process, and real gateway processes for multi-replica tests.

#![allow(dead_code)]

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::BodyExt;
use quotagate::domain::apikey::hash_key;
use quotagate::service::{Gateway, Settings};
use quotagate::storage::Store;
use quotagate::storage::keys::Keys;
use quotagate::storage::memory::MemoryStore;
use quotagate::storage::redis::{RedisConnection, RedisStore};
use serde_json::Value;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

pub const ADMIN_KEY: &str = "test-admin-key";

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A `redis-server` owned by the test process: stopped when dropped, and by a watchdog shell
/// when the test process dies without dropping it (statics are never dropped).
pub struct RedisServer {
    pub port: u16,
    child: Child,
}

impl RedisServer {
    pub fn start() -> RedisServer {
        Self::start_on(free_port(), &[])
    }

    pub fn start_on(port: u16, extra: &[&str]) -> RedisServer {
        let args = format!(
            "--port {port} --bind 127.0.0.1 --save '' --appendonly no --daemonize no --loglevel warning {}",
            extra.join(" ")
        );
        // The shell waits on redis-server and kills it once the test process is gone.
        let script = format!(
            "redis-server {args} & child=$!; \
             while kill -0 {parent} 2>/dev/null && kill -0 $child 2>/dev/null; do sleep 0.5; done; \
             kill $child 2>/dev/null; wait $child",
            parent = std::process::id()
        );
        let child = Command::new("sh")
            .arg("-c")
            .arg(script)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("redis-server must be installed (apt-get install -y redis-server)");
        let server = RedisServer { port, child };
        server.wait_until_up();
        server
    }

    fn wait_until_up(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(client) = redis::Client::open(self.url())
                && let Ok(mut conn) = client.get_connection()
                && redis::cmd("PING").query::<String>(&mut conn).is_ok()
            {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("redis-server on port {} did not come up", self.port);
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Runs one command on this server alone (a cluster node does not redirect it).
    pub fn query<T: redis::FromRedisValue>(&self, cmd: &redis::Cmd) -> T {
        let mut conn = redis::Client::open(self.url())
            .and_then(|client| client.get_connection())
            .unwrap_or_else(|e| panic!("port {}: {e}", self.port));
        cmd.query(&mut conn)
            .unwrap_or_else(|e| panic!("{cmd:?} on port {}: {e}", self.port))
    }

    /// Stops redis-server (the watchdog shell then exits by itself).
    pub fn kill(&mut self) {
        let _ = Command::new("redis-cli")
            .args(["-p", &self.port.to_string(), "shutdown", "nosave"])
            .output();
        let _ = self.child.wait();
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// One Redis for the whole test binary; tests share it through distinct key prefixes.
pub fn shared_redis() -> &'static RedisServer {
    static SERVER: OnceLock<RedisServer> = OnceLock::new();
    SERVER.get_or_init(RedisServer::start)
}

/// A 3-master Redis Cluster owned by the test process, on free loopback ports.
pub struct RedisCluster {
    pub nodes: Vec<RedisServer>,
    dir: std::path::PathBuf,
}

/// A free port whose cluster bus port (port + 10000) is free too.
fn free_cluster_port() -> u16 {
    loop {
        let port = free_port();
        if port < 55_000 && TcpListener::bind(("127.0.0.1", port + 10_000)).is_ok() {
            return port;
        }
    }
}

impl RedisCluster {
    pub fn start() -> RedisCluster {
        Self::start_with(0, &[])
    }

    /// 3 masters with `replicas` replicas each (`redis-cli --cluster create` pairs them up),
    /// each node started with `extra` arguments.
    pub fn start_with(replicas: usize, extra: &[&str]) -> RedisCluster {
        let dir = std::env::temp_dir().join(format!("qg-cluster-{}", unique_prefix()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut nodes = Vec::new();
        for _ in 0..3 * (1 + replicas) {
            let port = free_cluster_port();
            let config = format!("--cluster-config-file {}/nodes-{port}.conf", dir.display());
            let dir_arg = format!("--dir {}", dir.display());
            let mut args = vec!["--cluster-enabled yes", &config, &dir_arg];
            args.extend_from_slice(extra);
            nodes.push(RedisServer::start_on(port, &args));
        }
        let mut create = Command::new("redis-cli");
        create.arg("--cluster").arg("create");
        for node in &nodes {
            create.arg(format!("127.0.0.1:{}", node.port));
        }
        let output = create
            .args(["--cluster-replicas", &replicas.to_string(), "--cluster-yes"])
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "cluster create: {}",
            String::from_utf8_lossy(&output.stdout)
        );
        let cluster = RedisCluster { nodes, dir };
        cluster.wait_until_ok();
        cluster
    }

    pub fn wait_until_ok(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !self.all_ok() {
            assert!(Instant::now() < deadline, "the cluster never became ok");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Every node sees all slots served, and every replica is in sync with its master.
    fn all_ok(&self) -> bool {
        self.nodes.iter().all(|node| {
            let info: String = node.query(redis::cmd("CLUSTER").arg("INFO"));
            let replication: String = node.query(redis::cmd("INFO").arg("replication"));
            info.contains("cluster_state:ok")
                && info.contains("cluster_slots_assigned:16384")
                && (!replication.contains("role:slave")
                    || replication.contains("master_link_status:up"))
        })
    }

    /// The hash slot of `key` (of its `{hash tag}` when it has one).
    pub fn slot_of(&self, key: &str) -> u16 {
        self.nodes[0].query(redis::cmd("CLUSTER").arg("KEYSLOT").arg(key))
    }

    /// The index in `nodes` of the master that serves `slot`, as the first node sees it.
    pub fn master_of(&self, slot: u16) -> usize {
        let table: String = self.nodes[0].query(redis::cmd("CLUSTER").arg("NODES"));
        // <id> <ip:port@bus> <flags> <master> <ping> <pong> <epoch> <link> <slot ranges…>
        let port: u16 = table
            .lines()
            .find_map(|line| {
                let fields: Vec<&str> = line.split(' ').collect();
                let serves = fields[2].contains("master")
                    && !fields[2].contains("fail")
                    // Entries like `[slot->-id]` describe a migration, not ownership.
                    && fields[8..].iter().filter(|range| !range.starts_with('[')).any(|range| match range.split_once('-') {
                        Some((low, high)) => {
                            (low.parse().unwrap()..=high.parse().unwrap()).contains(&slot)
                        }
                        None => range.parse::<u16>().is_ok_and(|single| single == slot),
                    });
                serves.then(|| fields[1].split([':', '@']).nth(1).unwrap().parse().unwrap())
            })
            .unwrap_or_else(|| panic!("no live master serves slot {slot}: {table}"));
        self.nodes
            .iter()
            .position(|node| node.port == port)
            .unwrap_or_else(|| panic!("slot {slot} is served by a stopped node"))
    }

    /// Starts moving `slot` to the master `to`, the way `redis-cli --cluster reshard` does:
    /// from now on the owner answers ASK for keys it no longer has, and TRYAGAIN for a call
    /// whose keys are split between the two nodes.
    pub fn begin_slot_move(&self, slot: u16, to: usize) -> SlotMove {
        let from = self.master_of(slot);
        assert_ne!(from, to, "slot {slot} is already on node {to}");
        let id =
            |index: usize| -> String { self.nodes[index].query(redis::cmd("CLUSTER").arg("MYID")) };
        let slot_move = SlotMove {
            slot,
            from,
            to,
            from_id: id(from),
            to_id: id(to),
        };
        slot_move.set_slot(self, to, "IMPORTING", &slot_move.from_id);
        slot_move.set_slot(self, from, "MIGRATING", &slot_move.to_id);
        slot_move
    }

    /// Moves `slot` with all its keys to the master `to`.
    pub fn move_slot(&self, slot: u16, to: usize) {
        let slot_move = self.begin_slot_move(slot, to);
        while slot_move.migrate_keys(self, 100) > 0 {}
        slot_move.finish(self);
    }

    /// Stops the master serving `slot` once its replica has every write. The stopped node
    /// leaves `nodes`; the last node takes its index. [`Self::wait_until_ok`] waits for the
    /// replica to take over.
    pub fn kill_master_of(&mut self, slot: u16) {
        let index = self.master_of(slot);
        let replication =
            |node: &RedisServer| -> String { node.query(redis::cmd("INFO").arg("replication")) };
        let field = |info: &str, name: &str| -> String {
            info.lines()
                .find_map(|line| line.strip_prefix(name))
                .unwrap_or_else(|| panic!("no {name} in {info}"))
                .trim()
                .to_string()
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let info = replication(&self.nodes[index]);
            let written = field(&info, "master_repl_offset:");
            // slave0:ip=…,port=…,state=online,offset=N,lag=0
            let replica = field(&info, "slave0:");
            if replica.contains(&format!("offset={written},")) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the replica never caught up: {info}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        self.nodes.swap_remove(index).kill();
    }

    pub fn url(&self) -> String {
        let seeds: Vec<String> = self
            .nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        format!("redis+cluster://{}", seeds.join(","))
    }

    /// How many keys under `prefix` each master holds.
    pub fn keys_per_node(&self, prefix: &str) -> Vec<usize> {
        self.nodes
            .iter()
            .map(|node| {
                let output = Command::new("redis-cli")
                    .args([
                        "-p",
                        &node.port.to_string(),
                        "--scan",
                        "--pattern",
                        &format!("{prefix}:*"),
                    ])
                    .output()
                    .unwrap();
                String::from_utf8_lossy(&output.stdout).lines().count()
            })
            .collect()
    }
}

/// A slot on its way from one master to another (see [`RedisCluster::begin_slot_move`]).
pub struct SlotMove {
    slot: u16,
    from: usize,
    to: usize,
    from_id: String,
    to_id: String,
}

impl SlotMove {
    fn set_slot(&self, cluster: &RedisCluster, node: usize, state: &str, node_id: &str) {
        let _: () = cluster.nodes[node].query(
            redis::cmd("CLUSTER")
                .arg("SETSLOT")
                .arg(self.slot)
                .arg(state)
                .arg(node_id),
        );
    }

    /// Migrates up to `count` of the slot's keys; returns how many it moved.
    pub fn migrate_keys(&self, cluster: &RedisCluster, count: usize) -> usize {
        let source = &cluster.nodes[self.from];
        let keys: Vec<String> = source.query(
            redis::cmd("CLUSTER")
                .arg("GETKEYSINSLOT")
                .arg(self.slot)
                .arg(count),
        );
        if !keys.is_empty() {
            let _: () = source.query(
                redis::cmd("MIGRATE")
                    .arg("127.0.0.1")
                    .arg(cluster.nodes[self.to].port)
                    .arg("")
                    .arg(0)
                    .arg(5000)
                    .arg("KEYS")
                    .arg(&keys),
            );
        }
        keys.len()
    }

    /// Hands the slot to its new master on every node: the old one answers MOVED from now on.
    pub fn finish(self, cluster: &RedisCluster) {
        assert_eq!(self.migrate_keys(cluster, 1), 0, "keys are left to migrate");
        let mut order = vec![self.to, self.from];
        order.extend((0..cluster.nodes.len()).filter(|&n| n != self.to && n != self.from));
        for node in order {
            self.set_slot(cluster, node, "NODE", &self.to_id);
        }
        cluster.wait_until_ok();
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        self.nodes.clear();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// One cluster for the whole test binary.
pub fn shared_cluster() -> &'static RedisCluster {
    static CLUSTER: OnceLock<RedisCluster> = OnceLock::new();
    CLUSTER.get_or_init(RedisCluster::start)
}

pub fn unique_prefix() -> String {
    format!("t{}", ulid::Ulid::new())
}

pub async fn redis_store(url: &str, prefix: &str) -> Arc<dyn Store> {
    redis_store_with_timeout(url, prefix, Duration::from_millis(500)).await
}

pub async fn redis_store_with_timeout(
    url: &str,
    prefix: &str,
    timeout: Duration,
) -> Arc<dyn Store> {
    let conn = RedisConnection::connect(url, Duration::from_secs(2))
        .await
        .unwrap();
    Arc::new(RedisStore::new(conn, Keys::new(prefix), url, timeout))
}

pub fn settings() -> Settings {
    Settings {
        default_timezone: chrono_tz::UTC,
        admin_key_hash: Some(hash_key(ADMIN_KEY)),
        max_hold_fraction: 1.0,
        webhook_destinations: quotagate::domain::webhook::Destinations::Any,
        alert_sweep: Duration::from_secs(1),
        config_refresh: Duration::from_secs(600),
        rollup_retention: quotagate::storage::usage::Retention::default().rollups,
        event_retention: quotagate::storage::usage::Retention::default().events,
    }
}

/// The router on a store, driven in process (no socket).
pub struct TestApp {
    pub router: Router,
    pub gateway: Arc<Gateway>,
    pub store: Arc<dyn Store>,
    /// The requests that run to their end on their own (as a stopping node waits for them).
    running: TaskTracker,
}

#[derive(Debug)]
pub struct TestResponse {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Value,
}

impl TestResponse {
    pub fn error_code(&self) -> &str {
        self.body["error"]["code"].as_str().unwrap_or("")
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    #[track_caller]
    pub fn assert_error(&self, status: u16, code: &str) {
        assert_eq!(self.status.as_u16(), status, "{self:?}");
        assert_eq!(self.error_code(), code, "{self:?}");
        assert_eq!(self.body["error"]["status"], status, "{self:?}");
        assert!(
            self.body["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty())
        );
        assert_eq!(
            self.body["error"]["requestId"].as_str(),
            self.header("x-request-id"),
            "requestId must equal the X-Request-Id header"
        );
    }

    /// Asserts a 400 whose message names `field`.
    #[track_caller]
    pub fn assert_field_error(&self, code: &str, field: &str) {
        self.assert_error(400, code);
        let message = self.body["error"]["message"].as_str().unwrap();
        assert!(
            message.contains(&format!("`{field}`")),
            "message should name `{field}`: {message}"
        );
    }

    #[track_caller]
    pub fn assert_status(&self, status: u16) -> &Value {
        assert_eq!(self.status.as_u16(), status, "{self:?}");
        &self.body
    }
}

impl TestApp {
    pub async fn memory() -> TestApp {
        Self::on(Arc::new(MemoryStore::new()), settings()).await
    }

    pub async fn cluster() -> TestApp {
        let store = redis_store(&shared_cluster().url(), &unique_prefix()).await;
        Self::on(store, settings()).await
    }

    pub async fn redis() -> TestApp {
        Self::redis_with_prefix().await.0
    }

    /// On the shared Redis, with the key prefix it uses, for tests that look at the keys.
    pub async fn redis_with_prefix() -> (TestApp, String) {
        let prefix = unique_prefix();
        let store = redis_store(&shared_redis().url(), &prefix).await;
        (Self::on(store, settings()).await, prefix)
    }

    pub async fn on(store: Arc<dyn Store>, settings: Settings) -> TestApp {
        let app = Self::without_background(store, settings).await;
        app.gateway.spawn_background();
        app
    }

    /// A second node on this app's store that runs no background work: it counts and queues
    /// alert crossings like any node but never hands them over, as a node that dies right
    /// after each request would.
    pub async fn node_that_dies_after_counting(&self) -> TestApp {
        Self::without_background(Arc::clone(&self.store), settings()).await
    }

    /// A node that runs no background work (no config polling, no alert hand-over or
    /// delivery): its cache stays as it was at its start; tests drive the rest by hand.
    pub async fn without_background(store: Arc<dyn Store>, settings: Settings) -> TestApp {
        let gateway = Gateway::start(Arc::clone(&store), settings).await.unwrap();
        let running = TaskTracker::new();
        TestApp {
            router: quotagate::http::build_router(
                Arc::clone(&gateway),
                Default::default(),
                &running,
            ),
            gateway,
            store,
            running,
        }
    }

    /// The same gateway behind a router with other limits.
    pub fn with_http_limits(mut self, limits: quotagate::http::HttpLimits) -> TestApp {
        self.router =
            quotagate::http::build_router(Arc::clone(&self.gateway), limits, &self.running);
        self
    }

    /// Waits until every request that changes state has ended, as a stopping node does,
    /// including those whose clients stopped waiting; the app serves on afterwards.
    pub async fn requests_ended(&self) {
        self.running.close();
        self.running.wait().await;
        self.running.reopen();
    }

    /// `quotagate_http_requests_abandoned_total` in `/metrics` (0 before the first). The
    /// recorder is shared by every test in the process, so only growth says anything.
    pub async fn abandoned_requests(&self) -> f64 {
        let (_, _, text) = self.get_text("/metrics").await;
        text.lines()
            .find_map(|line| line.strip_prefix("quotagate_http_requests_abandoned_total "))
            .map_or(0.0, |value| value.trim().parse().unwrap())
    }

    /// A GET answered with text (no key), e.g. `/metrics`.
    pub async fn get_text(&self, path: &str) -> (StatusCode, HeaderMap, String) {
        let request = Request::get(path).body(Body::empty()).unwrap();
        let response = self.router.clone().oneshot(request).await.unwrap();
        let (status, headers) = (response.status(), response.headers().clone());
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        (status, headers, String::from_utf8(bytes.to_vec()).unwrap())
    }

    pub async fn send(&self, request: Request<Body>) -> TestResponse {
        let response = self.router.clone().oneshot(request).await.unwrap();
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).unwrap_or_else(|_| {
                panic!(
                    "non-JSON answer ({status}): {}",
                    String::from_utf8_lossy(&bytes)
                )
            })
        };
        assert!(
            headers.contains_key("x-request-id"),
            "every answer carries X-Request-Id"
        );
        TestResponse {
            status,
            headers,
            body,
        }
    }

    pub async fn call_as(
        &self,
        key: Option<&str>,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> TestResponse {
        let mut request = Request::builder().method(method).uri(path);
        if let Some(key) = key {
            request = request.header("authorization", format!("Bearer {key}"));
        }
        let request = match body {
            Some(body) => request
                .header("content-type", "application/json")
                .body(Body::from(body.to_string())),
            None => request.body(Body::empty()),
        };
        self.send(request.unwrap()).await
    }

    pub async fn call(&self, method: Method, path: &str, body: Option<Value>) -> TestResponse {
        self.call_as(Some(ADMIN_KEY), method, path, body).await
    }

    pub async fn get(&self, path: &str) -> TestResponse {
        self.call(Method::GET, path, None).await
    }

    pub async fn post(&self, path: &str, body: Value) -> TestResponse {
        self.call(Method::POST, path, Some(body)).await
    }

    pub async fn put(&self, path: &str, body: Value) -> TestResponse {
        self.call(Method::PUT, path, Some(body)).await
    }

    pub async fn delete(&self, path: &str) -> TestResponse {
        self.call(Method::DELETE, path, None).await
    }

    /// Sends raw bytes with the given content type (bad-input tests).
    pub async fn raw(
        &self,
        method: Method,
        path: &str,
        content_type: Option<&str>,
        body: impl Into<Body>,
    ) -> TestResponse {
        let mut request = Request::builder()
            .method(method)
            .uri(path)
            .header("authorization", format!("Bearer {ADMIN_KEY}"));
        if let Some(content_type) = content_type {
            request = request.header("content-type", content_type);
        }
        self.send(request.body(body.into()).unwrap()).await
    }

    /// Creates a meter and returns its ID.
    pub async fn meter(&self, body: Value) -> String {
        let response = self.post("/v1/meters", body).await;
        response.assert_status(201)["id"]
            .as_str()
            .unwrap()
            .to_string()
    }

    /// Creates a sum meter on `values.tokens` and returns its ID.
    pub async fn tokens_meter(&self) -> String {
        self.meter(
            serde_json::json!({"name": "tokens", "aggregation": "sum", "field": "values.tokens"}),
        )
        .await
    }
}

impl TestApp {
    /// Creates a limit and returns its ID.
    pub async fn limit(&self, body: Value) -> String {
        let response = self.post("/v1/limits", body).await;
        response.assert_status(201)["id"]
            .as_str()
            .unwrap()
            .to_string()
    }
}

/// The state of `limit_id` in a decision or record answer.
pub fn state<'a>(answer: &'a Value, limit_id: &str) -> &'a Value {
    answer["limits"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["id"] == limit_id)
        .unwrap_or_else(|| panic!("limit {limit_id} not listed in {answer}"))
}

/// The keys of a JSON object answer, sorted.
pub fn keys(answer: &Value) -> Vec<&str> {
    let mut keys: Vec<&str> = answer
        .as_object()
        .unwrap_or_else(|| panic!("not an object: {answer}"))
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort_unstable();
    keys
}

/// The keys of each decision route's allowed and refused answers, degraded or not (sorted):
/// API.md §5's shapes.
pub const CHECK_ALLOWED: [&str; 4] = ["allowed", "customerId", "degraded", "limits"];
pub const CHECK_REFUSED: [&str; 5] = ["allowed", "customerId", "degraded", "limits", "retryAfter"];
pub const CONSUME_ALLOWED: [&str; 5] = ["allowed", "balances", "degraded", "eventId", "limits"];
pub const CONSUME_REFUSED: [&str; 5] = ["allowed", "balances", "degraded", "limits", "retryAfter"];
pub const RESERVE_ALLOWED: [&str; 5] = ["allowed", "balances", "degraded", "limits", "reservation"];
pub const RESERVE_REFUSED: [&str; 5] = ["allowed", "balances", "degraded", "limits", "retryAfter"];

/// A real gateway process, on a free port (storage deadline 5 s unless the test sets one).
pub struct GatewayProcess {
    pub address: SocketAddr,
    child: Child,
}

impl GatewayProcess {
    pub fn start(envs: &[(&str, &str)]) -> GatewayProcess {
        let process = Self::spawn(envs, Stdio::null());
        process.wait_until_up();
        process
    }

    /// The process logs to stdout.
    fn spawn(envs: &[(&str, &str)], log: Stdio) -> GatewayProcess {
        let port = free_port();
        let address: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let mut command = Command::new(env!("CARGO_BIN_EXE_quotagate"));
        command
            .env_clear()
            .env("QUOTAGATE_LISTEN", address.to_string())
            .env("QUOTAGATE_LOG", "warn")
            // These tests are not about outages: a debug build on two busy cores must not
            // miss the default 50 ms deadline and answer from the fail mode (or 503). A test
            // that wants another deadline passes its own.
            .env("QUOTAGATE_STORAGE_TIMEOUT_MS", "5000")
            .stdout(log)
            .stderr(Stdio::inherit());
        for (key, value) in envs {
            command.env(key, value);
        }
        let child = command.spawn().expect("gateway binary");
        GatewayProcess { address, child }
    }

    fn wait_until_up(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if TcpStream::connect(self.address).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("gateway on {} did not come up", self.address);
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.address)
    }

    /// Kills the process at once (SIGKILL).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends SIGTERM and waits for the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        self.send_sigterm();
        self.child.wait().unwrap()
    }

    /// Sends SIGTERM without waiting.
    pub fn send_sigterm(&self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
    }

    /// Starts a process whose log lines the test reads (they are echoed to its stderr too).
    pub fn start_logged(envs: &[(&str, &str)]) -> (GatewayProcess, ProcessLog) {
        let mut process = Self::spawn(envs, Stdio::piped());
        let log = process.child.stdout.take().expect("piped log");
        let (lines_tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(log).lines() {
                let Ok(line) = line else { break };
                eprintln!("{line}");
                if lines_tx.send(line).is_err() {
                    break;
                }
            }
        });
        process.wait_until_up();
        (process, ProcessLog { lines })
    }

    /// Waits for the exit status (the process was told to stop).
    pub fn wait(&mut self) -> std::process::ExitStatus {
        self.child.wait().unwrap()
    }
}

/// A TCP proxy in front of a Redis server that holds back the first chunk a client sends with
/// `text` in it, until the test releases it: a storage call kept on its way for as long as a
/// test needs.
pub struct HoldingProxy {
    pub port: u16,
    seen: Option<tokio::sync::oneshot::Receiver<()>>,
    release: Option<tokio::sync::oneshot::Sender<()>>,
}

impl HoldingProxy {
    pub async fn start(redis_port: u16, text: &str) -> HoldingProxy {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (seen_tx, seen) = tokio::sync::oneshot::channel();
        let (release, released) = tokio::sync::oneshot::channel();
        let hold = Arc::new(std::sync::Mutex::new(Some((seen_tx, released))));
        let text = text.as_bytes().to_vec();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let server = tokio::net::TcpStream::connect(("127.0.0.1", redis_port))
                    .await
                    .unwrap();
                let (mut client_read, client_write) = client.into_split();
                let (mut server_read, mut server_write) = server.into_split();
                let (hold, text) = (Arc::clone(&hold), text.clone());
                tokio::spawn(async move {
                    let mut buffer = vec![0u8; 64 * 1024];
                    while let Ok(n @ 1..) = client_read.read(&mut buffer).await {
                        let chunk = &buffer[..n];
                        if chunk.windows(text.len()).any(|w| w == text) {
                            let held = hold.lock().unwrap().take();
                            if let Some((seen, released)) = held {
                                let _ = seen.send(());
                                let _ = released.await;
                            }
                        }
                        if server_write.write_all(chunk).await.is_err() {
                            break;
                        }
                    }
                });
                tokio::spawn(async move {
                    let mut client_write = client_write;
                    let _ = tokio::io::copy(&mut server_read, &mut client_write).await;
                });
            }
        });
        HoldingProxy {
            port,
            seen: Some(seen),
            release: Some(release),
        }
    }

    /// Waits until a client has sent the text (now held back).
    pub async fn seen(&mut self) {
        self.seen.take().expect("waited once").await.unwrap();
    }

    /// Lets the held chunk go on to Redis.
    pub fn release(&mut self) {
        let _ = self.release.take().expect("released once").send(());
    }
}

/// The log of a [`GatewayProcess::start_logged`] process, line by line.
pub struct ProcessLog {
    lines: std::sync::mpsc::Receiver<String>,
}

impl ProcessLog {
    /// Reads lines until one contains `text`: true, or false once the process has closed its
    /// log (exited) without writing it.
    pub fn wait_for(&self, text: &str) -> bool {
        self.lines.iter().any(|line| line.contains(text))
    }
}

impl Drop for GatewayProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs one scenario function against the embedded store, one Redis and a Redis Cluster.
#[macro_export]
macro_rules! every_store {
    ($($name:ident),* $(,)?) => {
        mod memory {
            $(
                #[tokio::test]
                async fn $name() {
                    super::$name($crate::common::TestApp::memory().await).await
                }
            )*
        }
        mod redis {
            $(
                #[tokio::test]
                async fn $name() {
                    super::$name($crate::common::TestApp::redis().await).await
                }
            )*
        }
        mod cluster {
            $(
                #[tokio::test]
                async fn $name() {
                    super::$name($crate::common::TestApp::cluster().await).await
                }
            )*
        }
    };
}

/// A POST as the admin whose JSON body arrives only when the test says so.
pub struct GatedRequest {
    pub request: Request<Body>,
    /// Fires once the gateway starts reading the body.
    pub reading: tokio::sync::oneshot::Receiver<()>,
    /// Sending on it, or dropping it, lets the body arrive; while it is kept, the body is held.
    pub release: tokio::sync::oneshot::Sender<()>,
}

/// A client that gives up mid-request: it sends `gated`, and once the gateway has started
/// reading the body, runs `while_held`, stops waiting for the answer, and only then lets the
/// body arrive.
pub async fn abandon(app: &TestApp, gated: GatedRequest, while_held: impl Future<Output = ()>) {
    let client = tokio::spawn(app.router.clone().oneshot(gated.request));
    gated.reading.await.unwrap();
    while_held.await;
    client.abort();
    assert!(client.await.unwrap_err().is_cancelled());
    let _ = gated.release.send(());
}

pub fn gated_post(path: &str, body: &Value, headers: &[(&str, &str)]) -> GatedRequest {
    let (reading_tx, reading) = tokio::sync::oneshot::channel::<()>();
    let (release, released) = tokio::sync::oneshot::channel::<()>();
    let body = body.to_string();
    let gated_body = futures_util::stream::once(async move {
        let _ = reading_tx.send(());
        let _ = released.await;
        Ok::<_, std::convert::Infallible>(axum::body::Bytes::from(body))
    });
    let mut request = Request::post(path)
        .header("authorization", format!("Bearer {ADMIN_KEY}"))
        .header("content-type", "application/json");
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    GatedRequest {
        request: request.body(Body::from_stream(gated_body)).unwrap(),
        reading,
        release,
    }
}
