//! Webhook endpoints, and the delivery of alert messages to them.
//!
//! The counting script queues each crossing in the customer's outbox. Every node then hands
//! outboxes over to the shared delivery schedule (at once for what it wrote itself, and by a
//! periodic sweep for what a dead node left behind), and runs a worker that leases due
//! deliveries, posts them signed, and schedules retries. Nothing of this runs on the request
//! path.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, TimeDelta, Utc};
use rand::RngCore;

use super::Gateway;
use super::config::to_doc;
use super::error::{Resource, ServiceError, ServiceResult, corrupt};
use super::page::{Page, PageRequest};
use crate::domain::alert::{Crossing, QueuedMessage};
use crate::domain::ids::{CustomerId, IdKind};
use crate::domain::time::rfc3339;
use crate::domain::webhook::{
    DISABLE_AFTER_FAILURES, DeliveryAttempt, DeliveryStatus, Destinations, NewWebhook, Webhook,
    WebhookPatch, is_private_host, is_private_ip, new_secret, next_attempt_ms, sign,
};
use crate::storage::alerts::{AttemptEnd, Claim};
use crate::storage::{ConfigOp, Guard, Kind};

/// How often the pump hands over the outboxes this node wrote to.
const PUMP_INTERVAL: Duration = Duration::from_millis(100);
/// How often the worker looks for due deliveries.
const WORKER_INTERVAL: Duration = Duration::from_millis(200);
/// How long a worker holds a delivery before another may take it (longer than the timeout).
const LEASE: TimeDelta = TimeDelta::seconds(30);
pub const DELIVERY_TIMEOUT: Duration = Duration::from_secs(10);
const CLAIMS_PER_ROUND: usize = 32;
/// Outboxes one step of a sweep reads (one round trip), and the time a step takes at least:
/// a sweep reads at most this many outboxes a second, so however many customers there are,
/// its load on storage stays small; with many customers a sweep takes longer instead.
const SWEEP_STEP: usize = 1000;
const SWEEP_STEP_TIME: Duration = Duration::from_secs(1);

/// How often one sweep over `customers` outboxes starts: the configured interval, or the
/// time the sweep's steps take when that is longer.
fn sweep_interval(configured: Duration, customers: usize) -> Duration {
    let steps = u32::try_from(customers.div_ceil(SWEEP_STEP)).unwrap_or(u32::MAX);
    configured.max(SWEEP_STEP_TIME.saturating_mul(steps))
}

/// The client that posts deliveries: no redirects (a redirect could lead anywhere), and when
/// private destinations are refused, a resolver that drops loopback and private addresses, so
/// a public-looking name that resolves to one is refused at delivery.
pub fn delivery_client(destinations: Destinations) -> reqwest::Result<reqwest::Client> {
    let builder = reqwest::Client::builder()
        .timeout(DELIVERY_TIMEOUT)
        .redirect(reqwest::redirect::Policy::none());
    match destinations {
        Destinations::Any => builder.build(),
        Destinations::PublicOnly => builder.dns_resolver(Arc::new(PublicOnlyResolver)).build(),
    }
}

/// The system resolver, keeping only public addresses.
struct PublicOnlyResolver;

impl reqwest::dns::Resolve for PublicOnlyResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let host = name.as_str().to_string();
        Box::pin(async move {
            let public: Vec<_> = tokio::net::lookup_host((host.as_str(), 0))
                .await?
                .filter(|address| !is_private_ip(address.ip()))
                .collect();
            if public.is_empty() {
                return Err(
                    format!("{host} resolves only to loopback or private addresses").into(),
                );
            }
            Ok(Box::new(public.into_iter()) as reqwest::dns::Addrs)
        })
    }
}
/// Customers whose outbox this node wrote to and has not handed over yet.
#[derive(Default)]
pub struct Outboxes {
    pending: std::sync::Mutex<HashSet<CustomerId>>,
    wake: tokio::sync::Notify,
}

impl Outboxes {
    pub fn note(&self, customer: &CustomerId) {
        self.pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(customer.clone());
        self.wake.notify_one();
    }

    fn take(&self) -> Vec<CustomerId> {
        self.pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain()
            .collect()
    }
}

/// The outcome of posting one message.
struct Posted {
    response_status: Option<u16>,
    error: Option<String>,
    duration: Duration,
}

impl Posted {
    fn succeeded(&self) -> bool {
        self.response_status
            .is_some_and(|s| (200..300).contains(&s))
    }
}

impl Gateway {
    // --- endpoints ---------------------------------------------------------------------------

    pub async fn create_webhook(&self, input: NewWebhook) -> ServiceResult<Webhook> {
        let mut random = [0u8; 24];
        rand::rng().fill_bytes(&mut random);
        let webhook = Webhook::create(
            self.new_id(IdKind::Webhook),
            input,
            new_secret(random),
            self.settings.webhook_destinations,
            self.clock.now(),
        )?;
        let op = ConfigOp::Put {
            kind: Kind::Webhook,
            id: webhook.id.clone(),
            doc: to_doc(&webhook)?,
            guard: Guard::Absent,
        };
        self.commit(&[op])
            .await?
            .map_err(|_| ServiceError::Conflict("webhook ID collision".into()))?;
        Ok(webhook)
    }

    pub async fn get_webhook(&self, id: &str) -> ServiceResult<Webhook> {
        if !IdKind::Webhook.is_plausible(id) {
            return Err(ServiceError::NotFound(Resource::Webhook));
        }
        let doc = self
            .store
            .get(Kind::Webhook, id)
            .await?
            .ok_or(ServiceError::NotFound(Resource::Webhook))?;
        serde_json::from_str(&doc).map_err(|e| corrupt("webhooks", e))
    }

    pub async fn list_webhooks(&self, request: &PageRequest) -> ServiceResult<Page<Webhook>> {
        super::page::list(
            self.store.as_ref(),
            Kind::Webhook,
            request,
            |_: &Webhook| true,
        )
        .await
    }

    pub async fn update_webhook(&self, id: &str, patch: WebhookPatch) -> ServiceResult<Webhook> {
        let mut webhook = self.get_webhook(id).await?;
        let was_enabled = webhook.enabled;
        webhook.apply(patch, self.settings.webhook_destinations, self.clock.now())?;
        if webhook.enabled && !was_enabled {
            // Before the endpoint is enabled: its first failure must not disable it at once.
            self.store.reset_failures(&webhook.id).await?;
        }
        self.put_webhook(&webhook).await?;
        Ok(webhook)
    }

    async fn put_webhook(&self, webhook: &Webhook) -> ServiceResult<()> {
        let op = ConfigOp::Put {
            kind: Kind::Webhook,
            id: webhook.id.clone(),
            doc: to_doc(webhook)?,
            guard: Guard::Present,
        };
        self.commit(&[op])
            .await?
            .map_err(|_| ServiceError::NotFound(Resource::Webhook))
    }

    pub async fn delete_webhook(&self, id: &str) -> ServiceResult<()> {
        if !IdKind::Webhook.is_plausible(id) {
            return Err(ServiceError::NotFound(Resource::Webhook));
        }
        let op = ConfigOp::Delete {
            kind: Kind::Webhook,
            id: id.to_string(),
            guard: Guard::Present,
        };
        self.commit(&[op])
            .await?
            .map_err(|_| ServiceError::NotFound(Resource::Webhook))
    }

    /// Sends a signed `ping` now and answers how it went (also logged as a delivery).
    pub async fn test_webhook(&self, id: &str) -> ServiceResult<DeliveryAttempt> {
        let webhook = self.get_webhook(id).await?;
        let now = self.clock.now();
        let message = QueuedMessage {
            id: self.new_id(IdKind::Message),
            kind: "ping".into(),
            created_at_ms: now.timestamp_millis(),
            data: serde_json::json!({"webhookId": webhook.id}),
        };
        let text = to_doc(&message)?;
        let claim = Claim {
            message_id: message.id.clone(),
            endpoint_id: webhook.id.clone(),
            message: text,
            attempts: 0,
            first_attempt_ms: now.timestamp_millis(),
        };
        let posted = self.post(&webhook, &message).await;
        let end = if posted.succeeded() {
            AttemptEnd::Succeeded
        } else {
            AttemptEnd::GaveUp
        };
        self.log_attempt(&claim, &message, &posted, &end).await
    }

    /// Attempts of one endpoint, newest first.
    pub async fn list_deliveries(
        &self,
        id: &str,
        request: &PageRequest,
    ) -> ServiceResult<Page<DeliveryAttempt>> {
        self.get_webhook(id).await?;
        let members = self
            .store
            .attempts(id, request.after.as_deref(), request.limit + 1)
            .await?;
        let mut items: Vec<(String, DeliveryAttempt)> = Vec::with_capacity(members.len());
        for member in members {
            let Some((attempt_id, json)) = member.split_once(':') else {
                continue;
            };
            let attempt: DeliveryAttempt =
                serde_json::from_str(json).map_err(|e| corrupt("deliveries", e))?;
            items.push((attempt_id.to_string(), attempt));
        }
        Ok(Page::from_items(items, request.limit))
    }

    /// Schedules the message of an earlier attempt again for this endpoint, now.
    pub async fn redeliver(&self, id: &str, delivery_id: &str) -> ServiceResult<String> {
        self.get_webhook(id).await?;
        let not_found = || ServiceError::NotFound(Resource::Delivery);
        let upper = format!("{delivery_id};");
        let member = self
            .store
            .attempts(id, Some(&upper), 1)
            .await?
            .pop()
            .ok_or_else(not_found)?;
        let (attempt_id, json) = member.split_once(':').ok_or_else(not_found)?;
        if attempt_id != delivery_id {
            return Err(not_found());
        }
        let attempt: DeliveryAttempt =
            serde_json::from_str(json).map_err(|e| corrupt("deliveries", e))?;
        let message = self
            .store
            .message(&attempt.message_id)
            .await?
            .ok_or_else(|| ServiceError::Conflict("the message is no longer kept".into()))?;
        self.store
            .redeliver(
                &attempt.message_id,
                &message,
                id,
                self.clock.now().timestamp_millis(),
            )
            .await?;
        Ok(attempt.message_id)
    }

    // --- outboxes ----------------------------------------------------------------------------

    /// Called after a write queued alert messages for `customer`.
    pub(super) fn note_alerts(&self, customer: &CustomerId) {
        self.outboxes.note(customer);
    }

    /// Hands a customer's outbox over to the delivery schedule: each crossing becomes a
    /// message, named from the limit's current config, for the endpoints that want it.
    pub async fn hand_over_outbox(&self, customer: &CustomerId) -> ServiceResult<usize> {
        let entries = self.store.outbox(customer).await?;
        let now = self.clock.now().timestamp_millis();
        for entry in &entries {
            let crossing: Crossing = match serde_json::from_str(entry) {
                Ok(crossing) => crossing,
                Err(error) => {
                    tracing::error!(%error, "dropping an undecodable alert crossing");
                    self.store
                        .hand_over(customer, "", "", entry, &[], now)
                        .await?;
                    continue;
                }
            };
            let (message, endpoints) = {
                let cache = self.cache.read();
                let message = crossing.message(
                    customer,
                    cache.limits.get(&crossing.limit_id).map(|l| l.as_ref()),
                );
                let mut endpoints: Vec<String> = cache
                    .webhooks
                    .values()
                    .filter(|w| w.wants(&message.kind))
                    .map(|w| w.id.clone())
                    .collect();
                endpoints.sort();
                (message, endpoints)
            };
            let text = to_doc(&message)?;
            self.store
                .hand_over(customer, &message.id, &text, entry, &endpoints, now)
                .await?;
        }
        Ok(entries.len())
    }

    /// The customers a sweep visits, in ID order.
    fn known_customers(&self) -> Vec<CustomerId> {
        let mut customers: Vec<CustomerId> = self
            .cache
            .read()
            .customers
            .values()
            .map(|c| c.id.clone())
            .collect();
        customers.sort_unstable();
        customers
    }

    /// Hands over every known customer's outbox that has messages: what a node that died
    /// after counting left behind. Reads `SWEEP_STEP` outboxes a step, a step a second.
    pub async fn sweep_outboxes(&self) -> ServiceResult<usize> {
        let started = tokio::time::Instant::now();
        let mut moved = 0;
        for (step, customers) in self.known_customers().chunks(SWEEP_STEP).enumerate() {
            let step = u32::try_from(step).unwrap_or(u32::MAX);
            tokio::time::sleep_until(started + SWEEP_STEP_TIME.saturating_mul(step)).await;
            let lengths = self.store.outbox_lengths(customers).await?;
            for (customer, length) in customers.iter().zip(lengths) {
                if length > 0 {
                    moved += self.hand_over_outbox(customer).await?;
                }
            }
        }
        Ok(moved)
    }

    // --- delivery ----------------------------------------------------------------------------

    async fn post(&self, webhook: &Webhook, message: &QueuedMessage) -> Posted {
        let body = message.payload().to_string();
        let timestamp = self.clock.now().timestamp();
        let started = Instant::now();
        let Some(signature) = sign(&webhook.secret, &message.id, timestamp, &body) else {
            return Posted {
                response_status: None,
                error: Some("endpoint secret is unusable".into()),
                duration: started.elapsed(),
            };
        };
        // An endpoint stored before private destinations were refused is refused here.
        if self.settings.webhook_destinations == Destinations::PublicOnly
            && url::Url::parse(&webhook.url).map_or(true, |url| is_private_host(&url))
        {
            return Posted {
                response_status: None,
                error: Some("refused: the URL points to a loopback or private address".into()),
                duration: started.elapsed(),
            };
        }
        let result = self
            .http
            .post(&webhook.url)
            .header("content-type", "application/json")
            .header("webhook-id", &message.id)
            .header("webhook-timestamp", timestamp.to_string())
            .header("webhook-signature", signature)
            .body(body)
            .send()
            .await;
        let duration = started.elapsed();
        match result {
            Ok(response) => {
                let status = response.status().as_u16();
                let error = (!response.status().is_success())
                    .then(|| format!("endpoint answered {status}"));
                Posted {
                    response_status: Some(status),
                    error,
                    duration,
                }
            }
            Err(error) => {
                let text = if error.is_timeout() {
                    "timed out".to_string()
                } else {
                    error_chain(&error.without_url())
                };
                Posted {
                    response_status: None,
                    error: Some(text),
                    duration,
                }
            }
        }
    }

    async fn log_attempt(
        &self,
        claim: &Claim,
        message: &QueuedMessage,
        posted: &Posted,
        end: &AttemptEnd,
    ) -> ServiceResult<DeliveryAttempt> {
        let now = self.clock.now();
        let attempt = DeliveryAttempt {
            id: format!("dlv_{}", super::config::next_ulid()),
            message_id: message.id.clone(),
            event_type: message.kind.clone(),
            attempt: claim.attempts + 1,
            status: match end {
                AttemptEnd::Succeeded => DeliveryStatus::Succeeded,
                AttemptEnd::RetryAt(_) => DeliveryStatus::Pending,
                AttemptEnd::GaveUp => DeliveryStatus::Failed,
            },
            response_status: posted.response_status,
            error: posted.error.clone(),
            duration_ms: posted.duration.as_millis() as u64,
            created_at: now,
            next_attempt_at: match end {
                AttemptEnd::RetryAt(at) => DateTime::<Utc>::from_timestamp_millis(*at).map(rfc3339),
                _ => None,
            },
        };
        let status = match attempt.status {
            DeliveryStatus::Succeeded => "succeeded",
            DeliveryStatus::Pending => "retrying",
            DeliveryStatus::Failed => "failed",
        };
        metrics::counter!(crate::telemetry::WEBHOOK_DELIVERIES, "status" => status).increment(1);
        let text = to_doc(&attempt)?;
        let failures = self
            .store
            .finish_attempt(claim, &attempt.id, &text, end, now.timestamp_millis())
            .await?;
        if failures >= DISABLE_AFTER_FAILURES {
            self.disable_webhook(&claim.endpoint_id).await?;
        }
        Ok(attempt)
    }

    async fn disable_webhook(&self, id: &str) -> ServiceResult<()> {
        let mut webhook = match self.get_webhook(id).await {
            Ok(webhook) => webhook,
            Err(ServiceError::NotFound(_)) => return Ok(()),
            Err(error) => return Err(error),
        };
        if webhook.enabled {
            tracing::warn!(
                webhook = id,
                "disabling a webhook endpoint after {DISABLE_AFTER_FAILURES} failed deliveries in a row"
            );
            webhook.enabled = false;
            webhook.updated_at = self.clock.now();
            self.put_webhook(&webhook).await?;
        }
        Ok(())
    }

    /// Delivers one leased delivery and moves it on.
    async fn deliver(&self, claim: Claim) -> ServiceResult<()> {
        let message: QueuedMessage = match serde_json::from_str(&claim.message) {
            Ok(message) => message,
            Err(_) => {
                // The message expired (kept 48 h): nothing left to send.
                let gone = QueuedMessage {
                    id: claim.message_id.clone(),
                    kind: String::new(),
                    created_at_ms: 0,
                    data: serde_json::Value::Null,
                };
                let posted = Posted {
                    response_status: None,
                    error: Some("message no longer kept".into()),
                    duration: Duration::ZERO,
                };
                self.log_attempt(&claim, &gone, &posted, &AttemptEnd::GaveUp)
                    .await?;
                return Ok(());
            }
        };
        let cached = self.cache.read().webhooks.get(&claim.endpoint_id).cloned();
        // This node may not have heard yet of an endpoint created (or enabled again) on another
        // one: storage decides before the delivery is given up.
        let webhook = match cached.filter(|w| w.enabled) {
            Some(webhook) => Some(webhook),
            None => match self.get_webhook(&claim.endpoint_id).await {
                Ok(webhook) => Some(Arc::new(webhook)),
                Err(ServiceError::NotFound(_)) => None,
                Err(error) => return Err(error),
            },
        };
        let Some(webhook) = webhook.filter(|w| w.enabled) else {
            let posted = Posted {
                response_status: None,
                error: Some("endpoint disabled or deleted".into()),
                duration: Duration::ZERO,
            };
            self.log_attempt(&claim, &message, &posted, &AttemptEnd::GaveUp)
                .await?;
            return Ok(());
        };
        let posted = self.post(&webhook, &message).await;
        let end = if posted.succeeded() {
            AttemptEnd::Succeeded
        } else {
            let now = self.clock.now().timestamp_millis();
            match next_attempt_ms(claim.attempts + 1, claim.first_attempt_ms, now) {
                Some(at) => AttemptEnd::RetryAt(at),
                None => AttemptEnd::GaveUp,
            }
        };
        self.log_attempt(&claim, &message, &posted, &end).await?;
        Ok(())
    }

    /// One round of the worker: lease what is due and deliver it concurrently.
    pub async fn deliver_due(self: &Arc<Self>) -> ServiceResult<usize> {
        let now = self.clock.now().timestamp_millis();
        let claims = self
            .store
            .claim_due(now, LEASE.num_milliseconds(), CLAIMS_PER_ROUND)
            .await?;
        let count = claims.len();
        let mut tasks = tokio::task::JoinSet::new();
        for claim in claims {
            let gateway = Arc::clone(self);
            tasks.spawn(async move {
                if let Err(error) = gateway.deliver(claim).await {
                    tracing::warn!(%error, "webhook delivery could not be recorded; the lease will expire and it is retried");
                }
            });
        }
        while tasks.join_next().await.is_some() {}
        Ok(count)
    }
}

/// Hands over the outboxes this node wrote to, promptly.
pub async fn run_alert_pump(gateway: Arc<Gateway>) {
    loop {
        tokio::select! {
            _ = gateway.outboxes.wake.notified() => {}
            _ = tokio::time::sleep(PUMP_INTERVAL) => {}
        }
        for customer in gateway.outboxes.take() {
            if let Err(error) = gateway.hand_over_outbox(&customer).await {
                tracing::warn!(%error, "alert hand-over failed; the sweep will retry");
            }
        }
    }
}

/// Sweeps every customer's outbox once per `configured` interval (longer with many
/// customers, see [`sweep_interval`]), whichever node claims the interval: the cost grows
/// with the customers, not the nodes. A task of its own, so that a long sweep never delays
/// the pump.
pub async fn run_alert_sweep(gateway: Arc<Gateway>, configured: Duration) {
    let interval_now = || sweep_interval(configured, gateway.cache.read().customers.len());
    let mut next = tokio::time::Instant::now() + interval_now();
    loop {
        tokio::time::sleep_until(next).await;
        // Counted from this attempt's start: a sweep takes up to an interval itself.
        let interval = interval_now();
        next = tokio::time::Instant::now() + interval;
        let now = gateway.clock.now().timestamp_millis();
        let claimed = gateway.store.claim_sweep(now, interval.as_millis() as i64);
        let swept = match claimed.await {
            Ok(true) => gateway.sweep_outboxes().await.map(|_| ()),
            Ok(false) => Ok(()),
            Err(error) => Err(error.into()),
        };
        if let Err(error) = swept {
            tracing::debug!(%error, "alert sweep skipped");
        }
    }
}

/// Delivers due messages for as long as the process runs.
pub async fn run_delivery_worker(gateway: Arc<Gateway>) {
    loop {
        match gateway.deliver_due().await {
            Ok(n) if n > 0 => continue,
            Ok(_) => {}
            Err(error) => tracing::debug!(%error, "webhook worker round skipped"),
        }
        tokio::time::sleep(WORKER_INTERVAL).await;
    }
}

/// An error and its causes, as one line ("error sending request: …: refused …"): reqwest's own
/// message alone does not say what went wrong.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use std::str::FromStr;

    use reqwest::dns::{Name, Resolve};

    use super::*;

    #[test]
    fn sweeps_last_longer_than_their_interval_only_when_their_steps_need_it() {
        let interval = Duration::from_secs(10);
        assert_eq!(sweep_interval(interval, 0), interval);
        assert_eq!(sweep_interval(interval, 10 * SWEEP_STEP), interval);
        assert_eq!(
            sweep_interval(interval, 10 * SWEEP_STEP + 1),
            Duration::from_secs(11)
        );
        assert_eq!(
            sweep_interval(interval, 100 * SWEEP_STEP),
            Duration::from_secs(100)
        );
    }

    #[tokio::test]
    async fn a_name_that_resolves_to_loopback_is_refused() {
        let error = PublicOnlyResolver
            .resolve(Name::from_str("localhost").unwrap())
            .await
            .err()
            .expect("localhost must not resolve");
        assert!(error.to_string().contains("loopback or private"), "{error}");
    }

    #[tokio::test]
    async fn a_refused_delivery_says_why() {
        let client = delivery_client(Destinations::PublicOnly).unwrap();
        let error = client
            .post("http://localhost:9/hook")
            .send()
            .await
            .unwrap_err();
        let text = error_chain(&error.without_url());
        assert!(
            text.contains("resolves only to loopback or private addresses"),
            "{text}"
        );
    }
}
