//! Configuration: the only place that reads the environment. Flags win over variables.

use std::net::SocketAddr;
use std::time::Duration;

use chrono_tz::Tz;
use clap::{Parser, ValueEnum};

use crate::http::HttpLimits;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Parser)]
#[command(
    name = "quotagate",
    version,
    about = "Usage metering and limit enforcement gateway"
)]
pub struct Config {
    /// Address to bind.
    #[arg(long, env = "QUOTAGATE_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,

    /// `redis://host:port/db` for one Redis, `redis+cluster://host:port,host:port` for a
    /// cluster. Unset: the embedded in-memory store.
    #[arg(long, env = "QUOTAGATE_REDIS_URL", value_parser = parse_redis_url)]
    pub redis_url: Option<String>,

    /// Bootstrap admin key. Unset: the gateway runs open, and only on a loopback address.
    #[arg(long, env = "QUOTAGATE_ADMIN_KEY", hide_env_values = true)]
    pub admin_key: Option<String>,

    /// Prefix of every Redis key, so several deployments can share one Redis.
    #[arg(long, env = "QUOTAGATE_KEY_PREFIX", default_value = "qg", value_parser = parse_key_prefix)]
    pub key_prefix: String,

    /// Timezone of customers created without one.
    #[arg(long, env = "QUOTAGATE_DEFAULT_TIMEZONE", default_value = "UTC", value_parser = parse_timezone)]
    pub default_timezone: Tz,

    /// Deadline of a storage call on the decision path, in milliseconds.
    #[arg(long, env = "QUOTAGATE_STORAGE_TIMEOUT_MS", default_value_t = 50)]
    pub storage_timeout_ms: u64,

    /// Log filter, tracing `EnvFilter` syntax.
    #[arg(long, env = "QUOTAGATE_LOG", default_value = "info")]
    pub log: String,

    /// `text` or `json` (one JSON object per line).
    #[arg(long, env = "QUOTAGATE_LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,

    /// The largest share of a limit one reservation may hold, in (0, 1].
    #[arg(long, env = "QUOTAGATE_MAX_HOLD_FRACTION", default_value_t = 1.0, value_parser = parse_fraction)]
    pub max_hold_fraction: f64,

    /// Refuse webhook URLs on loopback and private addresses (when saved, and when a
    /// delivery resolves the name).
    #[arg(long, env = "QUOTAGATE_WEBHOOK_DENY_PRIVATE", default_value_t = false, action = clap::ArgAction::Set)]
    pub webhook_deny_private: bool,

    /// How often every customer's alert outbox is swept (messages a dead node left); one node
    /// sweeps per interval.
    #[arg(long, env = "QUOTAGATE_ALERT_SWEEP_SECONDS", default_value_t = 10)]
    pub alert_sweep_seconds: u64,

    /// How often each node reads the whole configuration again (the safety net beside the
    /// change log, which it tails every 200 ms).
    #[arg(long, env = "QUOTAGATE_CONFIG_REFRESH_SECONDS", default_value_t = 600)]
    pub config_refresh_seconds: u64,

    /// How long each customer's event log keeps events, in days.
    #[arg(long, env = "QUOTAGATE_EVENT_RETENTION_DAYS", default_value_t = 30)]
    pub event_retention_days: u64,

    /// The most events each customer's log keeps (the oldest go first).
    #[arg(long, env = "QUOTAGATE_EVENTS_PER_CUSTOMER", default_value_t = 1000)]
    pub events_per_customer: usize,

    /// How long hourly roll-ups (meter queries with dates) are kept, in days.
    #[arg(long, env = "QUOTAGATE_ROLLUP_RETENTION_DAYS", default_value_t = 400)]
    pub rollup_retention_days: u64,

    /// Largest accepted request body, in bytes.
    #[arg(long, env = "QUOTAGATE_MAX_BODY_BYTES", default_value_t = HttpLimits::default().max_body_bytes)]
    pub max_body_bytes: usize,

    /// API requests this node serves at once; beyond it, `429 rate_limit_exceeded` with
    /// `Retry-After: 1` (health, readiness and metrics are never refused).
    #[arg(long, env = "QUOTAGATE_MAX_IN_FLIGHT", default_value_t = HttpLimits::default().max_in_flight, value_parser = parse_positive)]
    pub max_in_flight: usize,

    /// Threads serving requests; one per CPU when unset. Fewer pay off when Redis (or the
    /// clients) share this machine's CPUs: each thread handing work to another costs CPU.
    /// One runs everything (accepting, requests, Redis replies, background tasks) on a single
    /// thread, with none of the bookkeeping that sharing work between threads takes.
    #[arg(long, env = "QUOTAGATE_WORKER_THREADS", value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub worker_threads: Option<u16>,
}

impl Config {
    pub fn http_limits(&self) -> HttpLimits {
        HttpLimits {
            max_body_bytes: self.max_body_bytes,
            max_in_flight: self.max_in_flight,
        }
    }

    pub fn retention(&self) -> crate::storage::usage::Retention {
        let days = |n: u64| Duration::from_secs(n.max(1) * 24 * 3600);
        crate::storage::usage::Retention {
            events: days(self.event_retention_days),
            events_per_customer: self.events_per_customer.max(1),
            rollups: days(self.rollup_retention_days),
            ..Default::default()
        }
    }

    pub fn storage_timeout(&self) -> Duration {
        Duration::from_millis(self.storage_timeout_ms.max(1))
    }

    /// Refuses a configuration that would expose an unauthenticated gateway.
    pub fn check(&self) -> Result<(), String> {
        if self.admin_key.as_deref().is_some_and(str::is_empty) {
            return Err("QUOTAGATE_ADMIN_KEY is set but empty".into());
        }
        if self.admin_key.is_none() && !self.listen.ip().is_loopback() {
            return Err(format!(
                "refusing to listen on {} without QUOTAGATE_ADMIN_KEY: without keys the gateway is open, which is allowed on loopback only",
                self.listen
            ));
        }
        Ok(())
    }
}

fn parse_timezone(raw: &str) -> Result<Tz, String> {
    raw.parse::<Tz>()
        .map_err(|_| format!("unknown IANA timezone `{raw}`"))
}

fn parse_fraction(raw: &str) -> Result<f64, String> {
    match raw.parse::<f64>() {
        Ok(value) if value > 0.0 && value <= 1.0 => Ok(value),
        _ => Err("must be a number in (0, 1]".into()),
    }
}

fn parse_positive(raw: &str) -> Result<usize, String> {
    match raw.parse::<usize>() {
        Ok(value) if (1..=1 << 24).contains(&value) => Ok(value),
        _ => Err("must be a whole number from 1 to 16777216".into()),
    }
}

/// A URL that does not parse can never connect: refused at start (exit 2, naming the flag)
/// rather than retried like a server that is not up yet.
fn parse_redis_url(raw: &str) -> Result<String, String> {
    crate::storage::redis::RedisTarget::parse(raw)
        .map(|_| raw.to_string())
        .map_err(|error| {
            format!(
                "not a Redis URL ({error}); QUOTAGATE_REDIS_URL takes redis://host:port/db or \
                 redis+cluster://host:port,host:port"
            )
        })
}

fn parse_key_prefix(raw: &str) -> Result<String, String> {
    let valid = !raw.is_empty()
        && raw.len() <= 64
        && raw
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b':'));
    if valid {
        Ok(raw.to_string())
    } else {
        Err("must be 1 to 64 characters of [A-Za-z0-9_.:-]".into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Config, clap::Error> {
        Config::try_parse_from(std::iter::once("quotagate").chain(args.iter().copied()))
    }

    #[test]
    fn defaults_follow_the_contract() {
        let config = parse(&[]).unwrap();
        assert_eq!(config.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(config.key_prefix, "qg");
        assert_eq!(config.default_timezone, Tz::UTC);
        assert_eq!(config.storage_timeout_ms, 50);
        assert_eq!(config.http_limits().max_body_bytes, 1024 * 1024);
        assert_eq!(config.http_limits().max_in_flight, 4096);
        assert!(config.check().is_ok());
    }

    #[test]
    fn open_mode_only_on_loopback() {
        let config = parse(&["--listen", "0.0.0.0:8080"]).unwrap();
        assert!(config.check().is_err());
        let config = parse(&["--listen", "0.0.0.0:8080", "--admin-key", "k"]).unwrap();
        assert!(config.check().is_ok());
        let config = parse(&["--listen", "[::1]:8080"]).unwrap();
        assert!(config.check().is_ok());
    }

    #[test]
    fn bad_values_are_refused() {
        assert!(parse(&["--default-timezone", "Mars/Olympus"]).is_err());
        assert!(parse(&["--key-prefix", "a{b}"]).is_err());
        assert!(parse(&["--worker-threads", "0"]).is_err());
        assert!(parse(&["--worker-threads", "two"]).is_err());
        assert!(parse(&["--max-in-flight", "0"]).is_err());
        assert!(parse(&["--max-in-flight", "many"]).is_err());
        assert_eq!(parse(&["--max-in-flight", "64"]).unwrap().max_in_flight, 64);
    }

    #[test]
    fn redis_urls_must_parse() {
        for bad in [
            "foo://x",
            "redis://127.0.0.1:notaport",
            "redis+cluster://",
            "nonsense",
        ] {
            assert!(parse(&["--redis-url", bad]).is_err(), "{bad}");
        }
        // Valid, whether or not anything answers there yet (the gateway retries those).
        for good in [
            "redis://127.0.0.1:1/0",
            "redis://:secret@redis.internal:6379",
            "redis+cluster://10.0.0.1:7000,10.0.0.2:7000",
        ] {
            assert_eq!(
                parse(&["--redis-url", good]).unwrap().redis_url.as_deref(),
                Some(good)
            );
        }
    }

    #[test]
    fn worker_threads_default_to_one_per_cpu() {
        assert_eq!(parse(&[]).unwrap().worker_threads, None);
        assert_eq!(
            parse(&["--worker-threads", "1"]).unwrap().worker_threads,
            Some(1)
        );
    }
}
