//! Use cases: orchestrate domain rules and storage. No HTTP types here.

pub mod auth;
pub mod balances;
pub mod cache;
pub mod clock;
pub mod config;
pub mod decision;
pub mod error;
pub mod page;
pub mod replay;
pub mod usage;
pub mod webhooks;

use std::sync::Arc;

use chrono_tz::Tz;

use crate::storage::Store;

pub use error::{Resource, ServiceError, ServiceResult};

/// Settings the service needs from configuration.
#[derive(Debug, Clone)]
pub struct Settings {
    pub default_timezone: Tz,
    /// SHA-256 of the bootstrap admin key; `None` runs the gateway open (loopback only).
    pub admin_key_hash: Option<[u8; 32]>,
    /// The largest share of a limit one reservation may hold (1.0: the whole limit).
    pub max_hold_fraction: f64,
    pub webhook_destinations: crate::domain::webhook::Destinations,
    /// How often one node sweeps all outboxes for alerts a dead node left behind (longer
    /// when the customers are too many to sweep in that time at the sweep's pace).
    pub alert_sweep: std::time::Duration,
    /// How often each node reads the whole configuration again, whatever the change log says.
    pub config_refresh: std::time::Duration,
    /// How far back meter queries with dates can reach (the storage's roll-up retention).
    pub rollup_retention: std::time::Duration,
    /// How long listed events stay visible (the storage's event retention).
    pub event_retention: std::time::Duration,
}

/// Everything a request handler needs: storage, the config cache, the clock and settings.
pub struct Gateway {
    pub(crate) store: Arc<dyn Store>,
    pub(crate) cache: cache::ConfigCache,
    pub(crate) clock: clock::Clock,
    pub(crate) settings: Settings,
    pub(crate) outboxes: webhooks::Outboxes,
    pub(crate) http: reqwest::Client,
}

impl Gateway {
    /// Builds the gateway and loads the config cache once. Call [`Gateway::spawn_background`]
    /// to keep the cache in step with other nodes.
    pub async fn start(store: Arc<dyn Store>, settings: Settings) -> ServiceResult<Arc<Gateway>> {
        let http = webhooks::delivery_client(settings.webhook_destinations).map_err(|e| {
            ServiceError::Storage(crate::storage::StoreError::Internal(e.to_string()))
        })?;
        let gateway = Arc::new(Gateway {
            store,
            cache: cache::ConfigCache::default(),
            clock: clock::Clock::default(),
            settings,
            outboxes: webhooks::Outboxes::default(),
            http,
        });
        gateway.cache.reload(gateway.store.as_ref()).await?;
        // Before the first request: the store sets its scripts' deadlines on the server's
        // clock from the same exchange.
        gateway.calibrate_clock_logged().await;
        Ok(gateway)
    }

    pub fn spawn_background(self: &Arc<Self>) {
        tokio::spawn(cache::follow_changes(Arc::clone(self)));
        tokio::spawn(calibrate_clock(Arc::clone(self)));
        tokio::spawn(webhooks::run_alert_pump(Arc::clone(self)));
        tokio::spawn(webhooks::run_alert_sweep(
            Arc::clone(self),
            self.settings.alert_sweep,
        ));
        tokio::spawn(webhooks::run_delivery_worker(Arc::clone(self)));
    }

    /// Measures this node's clock against the storage server's once.
    pub async fn calibrate_clock(&self) -> ServiceResult<()> {
        if let Some(offset) = self.store.clock_offset().await? {
            if offset.num_milliseconds().abs() > 100 {
                tracing::warn!(
                    offset_ms = offset.num_milliseconds(),
                    "this node's clock differs from the storage server's"
                );
            }
            self.clock.set_offset(offset);
        }
        Ok(())
    }

    async fn calibrate_clock_logged(&self) {
        if let Err(error) = self.calibrate_clock().await {
            tracing::debug!(%error, "clock calibration skipped");
        }
    }

    pub fn clock(&self) -> &clock::Clock {
        &self.clock
    }

    /// How long since this node's config cache last caught up with storage.
    pub fn config_age(&self) -> std::time::Duration {
        self.cache.age()
    }

    pub fn describe_store(&self) -> String {
        self.store.describe()
    }

    /// Whether storage answers; `/readyz`.
    pub async fn ready(&self) -> ServiceResult<()> {
        Ok(self.store.ping().await?)
    }
}

/// Calibrates the clock every [`CALIBRATION_INTERVAL`] after the start's calibration.
async fn calibrate_clock(gateway: Arc<Gateway>) {
    loop {
        tokio::time::sleep(CALIBRATION_INTERVAL).await;
        gateway.calibrate_clock_logged().await;
    }
}

const CALIBRATION_INTERVAL: std::time::Duration = std::time::Duration::from_secs(30);
