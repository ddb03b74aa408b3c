//! Metrics: one Prometheus recorder per process, and the name of every series it exports.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

pub const HTTP_REQUESTS: &str = "quotagate_http_requests_total";
pub const HTTP_DURATION: &str = "quotagate_http_request_duration_seconds";
pub const DECISIONS: &str = "quotagate_decisions_total";
pub const STORAGE_DURATION: &str = "quotagate_storage_call_duration_seconds";
pub const STORAGE_ERRORS: &str = "quotagate_storage_errors_total";
pub const WEBHOOK_DELIVERIES: &str = "quotagate_webhook_deliveries_total";
pub const CONFIG_CACHE_AGE: &str = "quotagate_config_cache_age_seconds";

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
        match builder.install_recorder() {
            Ok(handle) => handle,
            // Another recorder is already global: keep a private one so /metrics still answers.
            Err(_) => PrometheusBuilder::new().build_recorder().handle(),
        }
    })
}
