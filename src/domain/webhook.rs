//! Webhook endpoints, the Standard Webhooks signature, and the retry schedule.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use std::net::IpAddr;

use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use super::field::{FieldError, MAX_DESCRIPTION_CHARS, bounded_str};
use super::time::serde_rfc3339;

pub const SECRET_PREFIX: &str = "whsec_";
pub const EVENT_TYPES: [&str; 3] = ["limit.threshold_reached", "limit.exceeded", "ping"];
/// Failed deliveries in a row (messages, each counted once however often it is retried) after
/// which an endpoint is disabled.
pub const DISABLE_AFTER_FAILURES: u32 = 20;
/// How long a message is retried before it is marked failed.
pub const RETRY_FOR_MS: i64 = 24 * 3600 * 1000;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Webhook {
    pub id: String,
    pub url: String,
    pub description: Option<String>,
    /// Empty: every event type.
    pub event_types: Vec<String>,
    pub enabled: bool,
    /// `whsec_<base64>`; shown to the caller only when the endpoint is created.
    pub secret: String,
    #[serde(with = "serde_rfc3339")]
    pub created_at: DateTime<Utc>,
    #[serde(with = "serde_rfc3339")]
    pub updated_at: DateTime<Utc>,
}

/// `POST /v1/webhooks` body.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NewWebhook {
    #[schema(min_length = 1, max_length = 2048)]
    pub url: String,
    pub description: Option<String>,
    pub event_types: Option<Vec<String>>,
}

/// `PUT /v1/webhooks/{id}` body.
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WebhookPatch {
    pub url: Option<String>,
    pub description: Option<String>,
    pub event_types: Option<Vec<String>>,
    pub enabled: Option<bool>,
}

/// Whether deliveries may go to loopback and private addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Destinations {
    Any,
    PublicOnly,
}

fn validate_url(raw: &str, destinations: Destinations) -> Result<(), FieldError> {
    bounded_str("url", raw, 1, 2048)?;
    let url = url::Url::parse(raw)
        .map_err(|_| FieldError::invalid("url", "must be an absolute http(s) URL"))?;
    if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
        return Err(FieldError::invalid(
            "url",
            "must be an absolute http(s) URL",
        ));
    }
    if destinations == Destinations::PublicOnly && is_private_host(&url) {
        return Err(FieldError::invalid(
            "url",
            "must not point to a loopback or private address",
        ));
    }
    Ok(())
}

/// Whether a URL names a loopback or private host, as far as its text tells; a domain name
/// that resolves to such an address is caught when a delivery resolves it (see
/// [`is_private_ip`]).
pub fn is_private_host(url: &url::Url) -> bool {
    match url.host() {
        Some(url::Host::Domain(name)) => {
            let name = name.trim_end_matches('.');
            name.eq_ignore_ascii_case("localhost")
                || name.to_ascii_lowercase().ends_with(".localhost")
        }
        Some(url::Host::Ipv4(ip)) => is_private_ip(IpAddr::V4(ip)),
        Some(url::Host::Ipv6(ip)) => is_private_ip(IpAddr::V6(ip)),
        None => true,
    }
}

/// Addresses a gateway that refuses private destinations must not post to: loopback,
/// unspecified, private, shared (carrier-grade NAT), link-local (cloud metadata services
/// live there), broadcast and multicast, and the IPv6 equivalents, IPv4-mapped included.
pub fn is_private_ip(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, ..] = v4.octets();
            v4.is_loopback()
                || v4.is_unspecified()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_broadcast()
                || v4.is_multicast()
                || (a == 100 && (b & 0xc0) == 64)
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_private_ip(IpAddr::V4(v4));
            }
            let first = v6.segments()[0];
            v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (first & 0xfe00) == 0xfc00
                || (first & 0xffc0) == 0xfe80
        }
    }
}

fn validate_event_types(types: &[String]) -> Result<(), FieldError> {
    for (index, kind) in types.iter().enumerate() {
        if !EVENT_TYPES.contains(&kind.as_str()) {
            return Err(FieldError::invalid(
                format!("eventTypes[{index}]"),
                "must be one of limit.threshold_reached, limit.exceeded, ping",
            ));
        }
    }
    Ok(())
}

fn validate_description(description: &Option<String>) -> Result<(), FieldError> {
    description.as_deref().map_or(Ok(()), |d| {
        bounded_str("description", d, 0, MAX_DESCRIPTION_CHARS)
    })
}

impl Webhook {
    pub fn create(
        id: String,
        input: NewWebhook,
        secret: String,
        destinations: Destinations,
        now: DateTime<Utc>,
    ) -> Result<Webhook, FieldError> {
        validate_url(&input.url, destinations)?;
        validate_description(&input.description)?;
        let event_types = input.event_types.unwrap_or_default();
        validate_event_types(&event_types)?;
        Ok(Webhook {
            id,
            url: input.url,
            description: input.description,
            event_types,
            enabled: true,
            secret,
            created_at: now,
            updated_at: now,
        })
    }

    pub fn apply(
        &mut self,
        patch: WebhookPatch,
        destinations: Destinations,
        now: DateTime<Utc>,
    ) -> Result<(), FieldError> {
        if let Some(url) = &patch.url {
            validate_url(url, destinations)?;
        }
        validate_description(&patch.description)?;
        if let Some(types) = &patch.event_types {
            validate_event_types(types)?;
        }
        if let Some(url) = patch.url {
            self.url = url;
        }
        if patch.description.is_some() {
            self.description = patch.description;
        }
        if let Some(types) = patch.event_types {
            self.event_types = types;
        }
        if let Some(enabled) = patch.enabled {
            self.enabled = enabled;
        }
        self.updated_at = now;
        Ok(())
    }

    pub fn wants(&self, event_type: &str) -> bool {
        self.enabled
            && (self.event_types.is_empty() || self.event_types.iter().any(|t| t == event_type))
    }
}

/// `webhook-signature` of the Standard Webhooks scheme: `v1,` and the base64 HMAC-SHA256 of
/// `{id}.{timestamp}.{body}`, keyed by the base64-decoded part of the secret after `whsec_`.
pub fn sign(secret: &str, message_id: &str, timestamp: i64, body: &str) -> Option<String> {
    let key = STANDARD.decode(secret.strip_prefix(SECRET_PREFIX)?).ok()?;
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).ok()?;
    mac.update(format!("{message_id}.{timestamp}.{body}").as_bytes());
    Some(format!(
        "v1,{}",
        STANDARD.encode(mac.finalize().into_bytes())
    ))
}

pub fn new_secret(random: [u8; 24]) -> String {
    format!("{SECRET_PREFIX}{}", STANDARD.encode(random))
}

/// When to try again after the `attempts`-th failed delivery of a message first tried at
/// `first_attempt_ms`: after 5 s, 30 s, 2 min, 10 min, 30 min, 1 h, then every 2 h, until 24 h
/// have passed; `None` then (the message has failed).
pub fn next_attempt_ms(attempts: u32, first_attempt_ms: i64, now_ms: i64) -> Option<i64> {
    const STEPS_SECS: [i64; 6] = [5, 30, 120, 600, 1800, 3600];
    let delay = STEPS_SECS
        .get(attempts.saturating_sub(1) as usize)
        .copied()
        .unwrap_or(7200)
        * 1000;
    let next = now_ms + delay;
    (next - first_attempt_ms <= RETRY_FOR_MS).then_some(next)
}

/// One delivery attempt, as `GET /v1/webhooks/{id}/deliveries` lists it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeliveryAttempt {
    pub id: String,
    pub message_id: String,
    pub event_type: String,
    pub attempt: u32,
    pub status: DeliveryStatus,
    pub response_status: Option<u16>,
    pub error: Option<String>,
    pub duration_ms: u64,
    #[serde(with = "serde_rfc3339")]
    pub created_at: DateTime<Utc>,
    pub next_attempt_at: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum DeliveryStatus {
    Succeeded,
    Failed,
    Pending,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_follows_standard_webhooks() {
        // The example of the Standard Webhooks specification.
        let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
        let body = r#"{"test": 2432232314}"#;
        let signature = sign(secret, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body).unwrap();
        assert_eq!(signature, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
        assert_eq!(sign("nope", "m", 1, "b"), None);
    }

    #[test]
    fn retries_grow_then_stop_after_a_day() {
        let first = 0;
        assert_eq!(next_attempt_ms(1, first, 0), Some(5_000));
        assert_eq!(next_attempt_ms(2, first, 5_000), Some(35_000));
        assert_eq!(next_attempt_ms(6, first, 0), Some(3_600_000));
        assert_eq!(next_attempt_ms(7, first, 0), Some(7_200_000));
        assert_eq!(
            next_attempt_ms(30, first, 22 * 3_600_000),
            Some(24 * 3_600_000)
        );
        assert_eq!(next_attempt_ms(31, first, 22 * 3_600_000 + 1), None);
    }

    #[test]
    fn urls_and_event_types_are_checked() {
        let now = Utc::now();
        let input = |url: &str| NewWebhook {
            url: url.into(),
            description: None,
            event_types: None,
        };
        assert!(
            Webhook::create(
                "wh_1".into(),
                input("https://example.com/h"),
                "s".into(),
                Destinations::PublicOnly,
                now
            )
            .is_ok()
        );
        assert!(
            Webhook::create(
                "wh_1".into(),
                input("ftp://example.com"),
                "s".into(),
                Destinations::Any,
                now
            )
            .is_err()
        );
        assert!(
            Webhook::create(
                "wh_1".into(),
                input("http://127.0.0.1:9/h"),
                "s".into(),
                Destinations::Any,
                now
            )
            .is_ok()
        );
        for private in [
            "http://127.0.0.1:9/h",
            "http://10.1.2.3/",
            "http://localhost/",
            "http://[::1]/",
            "http://192.168.0.1/",
            "http://localhost./",
            "http://API.LOCALHOST/",
            "http://[::ffff:10.0.0.1]/",
            "http://169.254.169.254/latest/meta-data",
        ] {
            let error = Webhook::create(
                "wh_1".into(),
                input(private),
                "s".into(),
                Destinations::PublicOnly,
                now,
            )
            .unwrap_err();
            assert_eq!(error.field(), "url", "{private}");
        }
        let typed = NewWebhook {
            url: "https://e.com".into(),
            description: None,
            event_types: Some(vec!["limit.exceeded".into(), "nope".into()]),
        };
        let error =
            Webhook::create("wh_1".into(), typed, "s".into(), Destinations::Any, now).unwrap_err();
        assert_eq!(error.field(), "eventTypes[1]");
    }

    #[test]
    fn private_addresses_are_told_from_public_ones() {
        for private in [
            "127.0.0.1",
            "0.0.0.0",
            "10.0.0.1",
            "172.16.5.4",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "100.127.255.255",
            "255.255.255.255",
            "224.0.0.1",
            "::1",
            "::",
            "fd00::1",
            "fe80::1",
            "::ffff:127.0.0.1",
            "ff02::1",
        ] {
            assert!(is_private_ip(private.parse().unwrap()), "{private}");
        }
        for public in [
            "8.8.8.8",
            "100.128.0.1",
            "172.32.0.1",
            "2606:4700::1111",
            "::ffff:1.1.1.1",
        ] {
            assert!(!is_private_ip(public.parse().unwrap()), "{public}");
        }
    }
}
