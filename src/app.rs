//! Wiring: picks the store from configuration, builds the gateway, serves it.

use std::sync::Arc;
use std::time::Duration;

use crate::config::Config;
use crate::domain::apikey::hash_key;
use crate::http::build_router;
use crate::service::{Gateway, Settings};
use crate::storage::Store;
use crate::storage::keys::Keys;
use crate::storage::memory::MemoryStore;
use crate::storage::redis::{RedisConnection, RedisStore};

/// How long startup waits for Redis before giving up.
const CONNECT_PATIENCE: Duration = Duration::from_secs(30);

pub async fn open_store(config: &Config) -> Result<Arc<dyn Store>, String> {
    let Some(url) = &config.redis_url else {
        return Ok(Arc::new(
            MemoryStore::new().with_retention(config.retention()),
        ));
    };
    let started = tokio::time::Instant::now();
    loop {
        match RedisConnection::connect(url, Duration::from_secs(2)).await {
            Ok(conn) => {
                let store = RedisStore::new(
                    conn,
                    Keys::new(&config.key_prefix),
                    url,
                    config.storage_timeout(),
                )
                .with_retention(config.retention());
                return Ok(Arc::new(store));
            }
            Err(error) if started.elapsed() < CONNECT_PATIENCE => {
                tracing::warn!(%error, "cannot reach Redis yet; retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(error) => return Err(format!("cannot reach Redis: {error}")),
        }
    }
}

pub fn settings(config: &Config) -> Settings {
    Settings {
        default_timezone: config.default_timezone,
        admin_key_hash: config.admin_key.as_deref().map(hash_key),
        max_hold_fraction: config.max_hold_fraction,
        webhook_destinations: if config.webhook_deny_private {
            crate::domain::webhook::Destinations::PublicOnly
        } else {
            crate::domain::webhook::Destinations::Any
        },
        alert_sweep: Duration::from_secs(config.alert_sweep_seconds.max(1)),
        config_refresh: Duration::from_secs(config.config_refresh_seconds.max(1)),
        rollup_retention: config.retention().rollups,
        event_retention: config.retention().events,
    }
}

/// Builds the gateway on the configured store and starts its background work.
pub async fn build_gateway(config: &Config) -> Result<Arc<Gateway>, String> {
    let store = open_store(config).await?;
    let gateway = Gateway::start(store, settings(config))
        .await
        .map_err(|e| format!("cannot load configuration: {e}"))?;
    gateway.spawn_background();
    Ok(gateway)
}

/// How long a stopping node waits for requests whose clients left.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Serves until SIGTERM/SIGINT, then finishes the requests in flight.
pub async fn run(config: Config) -> Result<(), String> {
    config.check()?;
    let gateway = build_gateway(&config).await?;
    if gateway.is_open() {
        tracing::warn!(
            "no QUOTAGATE_ADMIN_KEY: the gateway is open to anyone who can reach {}",
            config.listen
        );
    }
    let running = tokio_util::task::TaskTracker::new();
    let router = build_router(Arc::clone(&gateway), config.http_limits(), &running);
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|e| format!("cannot bind {}: {e}", config.listen))?;
    let address = listener.local_addr().map_err(|e| e.to_string())?;
    tracing::info!(%address, store = %gateway.describe_store(), "quotagate ready on http://{address}");
    // Answers are small and written whole: Nagle's algorithm would only delay them.
    let listener = axum::serve::ListenerExt::tap_io(listener, |stream| {
        let _ = stream.set_nodelay(true);
    });
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown_signal())
        .await
        .map_err(|e| format!("server error: {e}"))?;
    // Requests whose clients left before their answers may still be changing state: let them
    // end. Each step has its own storage deadline, so they end soon.
    running.close();
    if !running.is_empty() {
        tracing::info!(
            still_running = running.len(),
            "waiting for requests whose clients left"
        );
    }
    if tokio::time::timeout(SHUTDOWN_GRACE, running.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            still_running = running.len(),
            "stopping with requests that did not end within {SHUTDOWN_GRACE:?}"
        );
    }
    tracing::info!("quotagate stopped");
    Ok(())
}

async fn shutdown_signal() {
    let interrupt = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = interrupt => {},
        _ = terminate => {},
    }
    tracing::info!("shutting down: finishing requests in flight");
}
