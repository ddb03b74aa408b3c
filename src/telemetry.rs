//! Metrics: one Prometheus recorder per process, and the name of every series it exports.

use std::collections::HashMap;
use std::sync::{LazyLock, OnceLock, RwLock};

use axum::http::Method;
use metrics::{Counter, Histogram};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

pub const HTTP_REQUESTS: &str = "quotagate_http_requests_total";
pub const HTTP_DURATION: &str = "quotagate_http_request_duration_seconds";
pub const DECISIONS: &str = "quotagate_decisions_total";
pub const STORAGE_DURATION: &str = "quotagate_storage_call_duration_seconds";
pub const STORAGE_ERRORS: &str = "quotagate_storage_errors_total";
pub const WEBHOOK_DELIVERIES: &str = "quotagate_webhook_deliveries_total";
pub const CONFIG_CACHE_AGE: &str = "quotagate_config_cache_age_seconds";
pub const BALANCE_MOVEMENTS: &str = "quotagate_balance_movements_total";
pub const HTTP_ABANDONED: &str = "quotagate_http_requests_abandoned_total";

const BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// The process-wide recorder, installed on first use. (Several gateways in one process, as in
/// the tests, share it.)
pub fn prometheus() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let builder = PrometheusBuilder::new()
            .set_buckets(&BUCKETS)
            .expect("the bucket list is not empty");
        let handle = match builder.install_recorder() {
            Ok(handle) => handle,
            // Another recorder is already global: keep a private one so /metrics still answers.
            Err(_) => return PrometheusBuilder::new().build_recorder().handle(),
        };
        register_documented();
        handle
    })
}

/// Every label value of the series whose labels are few and known in advance.
pub const DECISION_KINDS: [&str; 3] = ["check", "consume", "reserve"];
pub const DECISION_OUTCOMES: [&str; 3] = ["allowed", "refused", "degraded"];
pub const STORAGE_ERROR_KINDS: [&str; 2] = ["unavailable", "internal"];
pub const WEBHOOK_STATUSES: [&str; 3] = ["succeeded", "retrying", "failed"];
pub const BALANCE_TYPES: [&str; 2] = ["credit", "debit"];
pub const BALANCE_OUTCOMES: [&str; 3] = ["applied", "refused", "replayed"];

/// Makes every documented series with a known label set present from the start, at zero: a
/// series that appears only with its first increment makes `rate()` and alerts on it blind to
/// that first one (and an absent series reads as "not exported" rather than "none yet"). The
/// HTTP series are per route and status, too many to list: each appears with its first answer.
/// The storage call histogram has no labels and fills with the calls every store makes while
/// the gateway starts (loading the configuration); the cache age is set at each scrape.
fn register_documented() {
    for kind in DECISION_KINDS {
        for outcome in DECISION_OUTCOMES {
            metrics::counter!(DECISIONS, "kind" => kind, "outcome" => outcome).absolute(0);
        }
    }
    for kind in STORAGE_ERROR_KINDS {
        metrics::counter!(STORAGE_ERRORS, "kind" => kind).absolute(0);
    }
    for status in WEBHOOK_STATUSES {
        metrics::counter!(WEBHOOK_DELIVERIES, "status" => status).absolute(0);
    }
    for kind in BALANCE_TYPES {
        for outcome in BALANCE_OUTCOMES {
            metrics::counter!(BALANCE_MOVEMENTS, "type" => kind, "outcome" => outcome).absolute(0);
        }
    }
    metrics::counter!(HTTP_ABANDONED).absolute(0);
}

// The hot path records through handles looked up once per series: finding a series in the
// recorder (building its key, hashing and comparing its labels) costs more than recording,
// several thousand instructions per request. Looking one up also installs the recorder, so
// a handle taken before the router is built (storage calls at start-up) is never a no-op.

/// HTTP series by route, then method and status.
type HttpHandles = HashMap<String, Vec<(&'static str, u16, Counter, Histogram)>>;
/// Decision series by kind and outcome.
type DecisionHandles = Vec<(&'static str, &'static str, Counter)>;

/// Counts an answer and records its duration.
pub fn record_http(route: &str, method: &Method, status: u16, seconds: f64) {
    static SERIES: LazyLock<RwLock<HttpHandles>> = LazyLock::new(RwLock::default);
    let method = method_label(method);
    {
        let handles = SERIES.read().unwrap_or_else(|p| p.into_inner());
        let known = handles
            .get(route)
            .and_then(|list| list.iter().find(|(m, s, ..)| *m == method && *s == status));
        if let Some((.., counter, histogram)) = known {
            counter.increment(1);
            histogram.record(seconds);
            return;
        }
    }
    prometheus();
    let counter = metrics::counter!(HTTP_REQUESTS, "route" => route.to_string(),
        "method" => method, "status" => status.to_string());
    let histogram =
        metrics::histogram!(HTTP_DURATION, "route" => route.to_string(), "method" => method);
    counter.increment(1);
    histogram.record(seconds);
    SERIES
        .write()
        .unwrap_or_else(|p| p.into_inner())
        .entry(route.to_string())
        .or_default()
        .push((method, status, counter, histogram));
}

/// Standard methods by name, anything else as `OTHER`, so that clients cannot create series
/// at will.
fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        _ => "OTHER",
    }
}

/// Counts a decision by kind (`check`, `consume`, `reserve`) and outcome.
pub fn record_decision(kind: &'static str, outcome: &'static str) {
    static SERIES: LazyLock<RwLock<DecisionHandles>> = LazyLock::new(RwLock::default);
    {
        let handles = SERIES.read().unwrap_or_else(|p| p.into_inner());
        if let Some((.., counter)) = handles.iter().find(|(k, o, _)| *k == kind && *o == outcome) {
            counter.increment(1);
            return;
        }
    }
    prometheus();
    let counter = metrics::counter!(DECISIONS, "kind" => kind, "outcome" => outcome);
    counter.increment(1);
    SERIES
        .write()
        .unwrap_or_else(|p| p.into_inner())
        .push((kind, outcome, counter));
}

/// Records how long one storage call took.
pub fn record_storage_call(seconds: f64) {
    static SERIES: LazyLock<Histogram> = LazyLock::new(|| {
        prometheus();
        metrics::histogram!(STORAGE_DURATION)
    });
    SERIES.record(seconds);
}

/// Counts a request whose client stopped waiting before the answer (the request still ran to
/// its end). Many of them mean callers give up sooner than the node answers. Rare, so through
/// the macro.
pub fn record_abandoned() {
    prometheus();
    metrics::counter!(HTTP_ABANDONED).increment(1);
}

/// Counts a credit or debit by type and outcome (`applied`, `refused`, `replayed`). Not on
/// the hot path, so through the macro.
pub fn record_balance_movement(kind: &'static str, outcome: &'static str) {
    prometheus();
    metrics::counter!(BALANCE_MOVEMENTS, "type" => kind, "outcome" => outcome).increment(1);
}
