//! Webhooks: when a job with a `callback_url` ends, its final JSON is POSTed there, signed the Standard
//! Webhooks way (`webhook-id`, `webhook-timestamp`, `webhook-signature: v1,<base64 HMAC-SHA256 of
//! id.timestamp.body>`) with the tenant's secret, and retried with backoff. Targets must be http(s) and,
//! unless `webhook_allow_private` is set, resolve only to public addresses; the request goes to the
//! address that was checked, so a DNS change between check and send cannot redirect it.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::Sha256;

use crate::domain::TenantId;
use crate::storage::Store;

/// Delays before each retry; the first attempt is immediate.
const RETRY_DELAYS: [Duration; 3] = [
    Duration::from_secs(2),
    Duration::from_secs(10),
    Duration::from_secs(30),
];
const TIMEOUT: Duration = Duration::from_secs(10);

/// A new secret in the Standard Webhooks format.
pub fn new_secret() -> String {
    let mut bytes = [0u8; 24];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    format!("whsec_{}", STANDARD.encode(bytes))
}

/// The tenant's secret, made on first use.
pub async fn tenant_secret(store: &dyn Store, tenant: TenantId) -> anyhow::Result<String> {
    if let Some(secret) = store.webhook_secret(tenant).await? {
        return Ok(secret);
    }
    Ok(store
        .put_webhook_secret(tenant, &new_secret(), false, crate::time::now_ms())
        .await?)
}

/// `v1,<signature>` for a message.
pub fn sign(secret: &str, id: &str, timestamp: i64, body: &str) -> anyhow::Result<String> {
    let key = STANDARD.decode(secret.strip_prefix("whsec_").unwrap_or(secret))?;
    let mut mac = Hmac::<Sha256>::new_from_slice(&key)?;
    mac.update(format!("{id}.{timestamp}.{body}").as_bytes());
    Ok(format!(
        "v1,{}",
        STANDARD.encode(mac.finalize().into_bytes())
    ))
}

fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            !(v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_multicast()
                || v4.is_documentation()
                || v4.octets()[0] == 100 && (v4.octets()[1] & 0xc0) == 64
                || v4.octets()[0] == 192 && v4.octets()[1] == 0 && v4.octets()[2] == 0
                || v4.octets()[0] == 198 && (v4.octets()[1] & 0xfe) == 18
                || v4.octets()[0] >= 240
                || v4.octets()[0] == 0)
        }
        IpAddr::V6(v6) => {
            if v6.is_loopback() || v6.is_unspecified() {
                return false;
            }
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_public(IpAddr::V4(v4));
            }
            let segments = v6.segments();
            // IPv4-compatible (::a.b.c.d) and NAT64 (64:ff9b::/96) addresses reach IPv4 hosts.
            let embedded_v4 =
                segments[..6] == [0, 0, 0, 0, 0, 0] || segments[..6] == [0x64, 0xff9b, 0, 0, 0, 0];
            if embedded_v4 {
                let o = v6.octets();
                return is_public(IpAddr::V4(std::net::Ipv4Addr::new(
                    o[12], o[13], o[14], o[15],
                )));
            }
            !(v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (segments[0] & 0xfe00) == 0xfc00
                || (segments[0] & 0xffc0) == 0xfe80
                || (segments[0] & 0xffc0) == 0xfec0)
        }
    }
}

/// Checks a callback URL and resolves it to the address to send to.
pub async fn resolve_target(
    url: &str,
    allow_private: bool,
) -> Result<(url::Url, SocketAddr), String> {
    let parsed = url::Url::parse(url).map_err(|_| "is not a valid URL".to_owned())?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err("must be an http or https URL".to_owned());
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err("must not carry credentials".to_owned());
    }
    let host = parsed.host_str().ok_or("has no host")?.to_owned();
    let port = parsed.port_or_known_default().ok_or("has no port")?;
    let host_for_lookup = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    let addresses: Vec<SocketAddr> = tokio::time::timeout(
        Duration::from_secs(5),
        tokio::net::lookup_host((host_for_lookup.as_str(), port)),
    )
    .await
    .map_err(|_| "its host did not resolve in time".to_owned())?
    .map_err(|_| "its host does not resolve".to_owned())?
    .collect();
    let first = *addresses.first().ok_or("its host does not resolve")?;
    if !allow_private && addresses.iter().any(|a| !is_public(a.ip())) {
        return Err("must not point to a loopback or private address".to_owned());
    }
    Ok((parsed, first))
}

/// Delivers `body` to `url` with retries; logs the outcome.
pub async fn deliver(
    store: &dyn Store,
    tenant: TenantId,
    url: &str,
    message_id: &str,
    body: String,
    allow_private: bool,
) {
    let secret = match tenant_secret(store, tenant).await {
        Ok(secret) => secret,
        Err(err) => {
            tracing::error!(error = %err, "no webhook secret; delivery skipped");
            return;
        }
    };
    for attempt in 0..=RETRY_DELAYS.len() {
        if attempt > 0 {
            tokio::time::sleep(RETRY_DELAYS[attempt - 1]).await;
        }
        match send_once(&secret, url, message_id, &body, allow_private).await {
            Ok(()) => {
                tracing::info!(message_id, attempt, "webhook delivered");
                return;
            }
            Err((err, retry)) => {
                tracing::warn!(message_id, attempt, error = %err, "webhook delivery failed");
                if !retry {
                    return;
                }
            }
        }
    }
}

/// One attempt; the error says whether another attempt could succeed.
async fn send_once(
    secret: &str,
    url: &str,
    message_id: &str,
    body: &str,
    allow_private: bool,
) -> Result<(), (String, bool)> {
    let (parsed, address) = resolve_target(url, allow_private)
        .await
        .map_err(|e| (e, false))?;
    let host = parsed.host_str().unwrap_or_default().to_owned();
    let client = reqwest::Client::builder()
        .timeout(TIMEOUT)
        .redirect(reqwest::redirect::Policy::none())
        // A proxy would resolve the host itself and void the address check.
        .no_proxy()
        .resolve(&host, address)
        .build()
        .map_err(|e| (e.to_string(), false))?;
    let timestamp = crate::time::now_s();
    let signature =
        sign(secret, message_id, timestamp, body).map_err(|e| (e.to_string(), false))?;
    let response = client
        .post(parsed)
        .header("content-type", "application/json")
        .header("webhook-id", message_id)
        .header("webhook-timestamp", timestamp.to_string())
        .header("webhook-signature", signature)
        .body(body.to_owned())
        .send()
        .await
        // Without the URL: a callback's query string may carry the receiver's own token.
        .map_err(|e| (e.without_url().to_string(), true))?;
    let status = response.status();
    if status.is_success() {
        Ok(())
    } else {
        let retry = status.is_server_error() || status == reqwest::StatusCode::TOO_MANY_REQUESTS;
        Err((format!("the receiver answered {status}"), retry))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_matches_the_standard_webhooks_reference_example() {
        // From the Standard Webhooks specification's test vectors.
        let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
        let body = r#"{"test": 2432232314}"#;
        let signature = sign(secret, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body).unwrap();
        assert_eq!(signature, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    }

    #[test]
    fn private_and_loopback_addresses_are_not_public() {
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "192.168.0.1",
            "172.16.5.5",
            "169.254.1.1",
            "::1",
            "fc00::1",
            "fe80::1",
            "::ffff:127.0.0.1",
            "100.64.0.1",
            "0.0.0.0",
        ] {
            assert!(!is_public(ip.parse().unwrap()), "{ip}");
        }
        for ip in ["8.8.8.8", "2001:4860:4860::8888"] {
            assert!(is_public(ip.parse().unwrap()), "{ip}");
        }
    }

    #[tokio::test]
    async fn loopback_targets_are_refused_unless_allowed() {
        assert!(resolve_target("http://127.0.0.1:9/hook", false)
            .await
            .is_err());
        assert!(resolve_target("http://localhost:9/hook", false)
            .await
            .is_err());
        assert!(resolve_target("http://127.0.0.1:9/hook", true)
            .await
            .is_ok());
        assert!(resolve_target("ftp://127.0.0.1/x", true).await.is_err());
        assert!(resolve_target("http://user:pw@127.0.0.1/x", true)
            .await
            .is_err());
    }
}
