//! Webhooks: when a job with a `callback_url` ends, its final JSON is POSTed there, signed the Standard
//! Webhooks way (`webhook-id`, `webhook-timestamp`, `webhook-signature: v1,<base64 HMAC-SHA256 of
//! id.timestamp.body>`) with the tenant's secret, and retried with backoff. Targets must be http(s) and,
//! unless `webhook_allow_private` is set, resolve only to public addresses; the request goes to the
//! address that was checked, so a DNS change between check and send cannot redirect it.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::Sha256;
use tracing::Instrument;

use crate::domain::TenantId;
use crate::storage::Store;

/// Delays before each retry; the first attempt is immediate.
pub const RETRY_DELAYS: [Duration; 3] = [
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

/// IPv4 ranges a webhook may not target: every block of the IANA IPv4 Special-Purpose Address Registry
/// (whether or not the registry calls it globally reachable: none is a plausible webhook receiver),
/// plus multicast. `(network, prefix length)`.
const SPECIAL_V4: &[([u8; 4], u8)] = &[
    ([0, 0, 0, 0], 8),       // "this network" (RFC 791)
    ([10, 0, 0, 0], 8),      // private (RFC 1918)
    ([100, 64, 0, 0], 10),   // shared address space, carrier-grade NAT (RFC 6598)
    ([127, 0, 0, 0], 8),     // loopback
    ([169, 254, 0, 0], 16),  // link-local, including cloud metadata services
    ([172, 16, 0, 0], 12),   // private (RFC 1918)
    ([192, 0, 0, 0], 24),    // IETF protocol assignments (RFC 6890)
    ([192, 0, 2, 0], 24),    // documentation TEST-NET-1
    ([192, 31, 196, 0], 24), // AS112-v4 (RFC 7535)
    ([192, 52, 193, 0], 24), // AMT (RFC 7450)
    ([192, 88, 99, 0], 24),  // deprecated 6to4 relay anycast (RFC 7526)
    ([192, 168, 0, 0], 16),  // private (RFC 1918)
    ([192, 175, 48, 0], 24), // direct delegation AS112 (RFC 7534)
    ([198, 18, 0, 0], 15),   // benchmarking (RFC 2544)
    ([198, 51, 100, 0], 24), // documentation TEST-NET-2
    ([203, 0, 113, 0], 24),  // documentation TEST-NET-3
    ([224, 0, 0, 0], 4),     // multicast
    ([240, 0, 0, 0], 4),     // reserved, including 255.255.255.255 (limited broadcast)
];

/// IPv6 ranges inside global unicast (2000::/3) that a webhook may not target, from the IANA IPv6
/// Special-Purpose Address Registry. Everything outside 2000::/3 is refused anyway, except the two
/// IPv4-embedding prefixes handled by [`embedded_v4`].
const SPECIAL_V6: &[(u128, u8)] = &[
    (0x2001_0000_0000_0000_0000_0000_0000_0000, 23), // IETF protocol assignments, incl. Teredo, ORCHID
    (0x2001_0db8_0000_0000_0000_0000_0000_0000, 32), // documentation
    (0x2620_004f_8000_0000_0000_0000_0000_0000, 48), // direct delegation AS112 (RFC 7534)
    (0x3fff_0000_0000_0000_0000_0000_0000_0000, 20), // documentation (RFC 9637)
];

fn in_v4(ip: Ipv4Addr, (network, len): ([u8; 4], u8)) -> bool {
    let mask = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
    u32::from(ip) & mask == u32::from_be_bytes(network) & mask
}

fn in_v6(ip: Ipv6Addr, (network, len): (u128, u8)) -> bool {
    let mask = u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0);
    u128::from(ip) & mask == network & mask
}

/// The IPv4 address an IPv6 address stands for, when it is one of the forms whose traffic reaches an
/// IPv4 host and which may be used on the Internet: IPv4-mapped `::ffff:a.b.c.d` (a dual-stack socket
/// connects to the IPv4 host), NAT64 well-known prefix `64:ff9b::a.b.c.d` (RFC 6052) and 6to4
/// `2002:aabb:ccdd::/48` (RFC 3056). Such an address is exactly as public as its IPv4 address, so NAT64
/// of a public host (`64:ff9b::808:808`) is allowed: on an IPv6-only network with DNS64 every IPv4
/// receiver looks like that. The other embedding forms (IPv4-compatible `::a.b.c.d`, IPv4-translated
/// `::ffff:0:a.b.c.d`, local-use NAT64 `64:ff9b:1::/48`) lie outside 2000::/3 and are refused whole.
fn embedded_v4(ip: Ipv6Addr) -> Option<Ipv4Addr> {
    let bits = u128::from(ip);
    if in_v6(ip, (0xffff_0000_0000, 96)) || in_v6(ip, (0x0064_ff9b << 96, 96)) {
        return Some(Ipv4Addr::from(bits as u32));
    }
    if in_v6(ip, (0x2002 << 112, 16)) {
        return Some(Ipv4Addr::from((bits >> 80) as u32));
    }
    None
}

/// Whether a webhook may be sent to `ip`: public unicast only.
fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => !SPECIAL_V4.iter().any(|&range| in_v4(v4, range)),
        IpAddr::V6(v6) => {
            if let Some(v4) = embedded_v4(v6) {
                return is_public(IpAddr::V4(v4));
            }
            // Only global unicast is routed on the Internet; the rest of the space is loopback,
            // unspecified, IPv4-compatible and -translated, local-use NAT64, discard-only, SRv6 SIDs,
            // unique-local, link-local, site-local, multicast or unassigned.
            in_v6(v6, (0x2000 << 112, 3)) && !SPECIAL_V6.iter().any(|&range| in_v6(v6, range))
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

/// How one attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attempt {
    Delivered,
    /// Failed; `retry`: another attempt could succeed (a network error, 5xx, 429).
    Failed {
        retry: bool,
    },
}

/// One attempt to deliver a queued webhook; logs the outcome. The span names the tenant and the
/// message; the attempt's span adds its number and the receiver's host. Never the URL's path or
/// query (a receiver's own token often travels there), the secret, the signature or the body.
#[tracing::instrument(
    name = "webhook.deliver",
    skip_all,
    fields(tenant_id = %webhook.tenant_id, message_id = %webhook.message_id)
)]
pub async fn deliver_once(
    store: &dyn Store,
    webhook: &crate::storage::QueuedWebhook,
    allow_private: bool,
) -> Attempt {
    let secret = match tenant_secret(store, webhook.tenant_id).await {
        Ok(secret) => secret,
        Err(err) => {
            tracing::error!(error = %err, "no webhook secret; attempt skipped");
            return Attempt::Failed { retry: true };
        }
    };
    let attempt = webhook.attempts;
    let message_id = webhook.message_id.as_str();
    let span = tracing::info_span!("webhook.attempt", attempt, host = tracing::field::Empty);
    let sent = send_once(
        &secret,
        &webhook.url,
        message_id,
        &webhook.body,
        allow_private,
    )
    .instrument(span.clone())
    .await;
    let _in_span = span.enter();
    match sent {
        Ok(()) => {
            tracing::info!(message_id, attempt, "webhook delivered");
            Attempt::Delivered
        }
        Err((err, retry)) => {
            tracing::warn!(message_id, attempt, error = %err, "webhook delivery failed");
            Attempt::Failed { retry }
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
    tracing::Span::current().record("host", host.as_str());
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

    /// Every block of the IANA IPv4 and IPv6 Special-Purpose Address Registries, by its first address, an
    /// address inside and its last address.
    #[test]
    fn special_purpose_addresses_are_not_public() {
        let refused = [
            // IPv4
            ("0.0.0.0/8", ["0.0.0.0", "0.1.2.3", "0.255.255.255"]),
            ("10/8", ["10.0.0.0", "10.1.2.3", "10.255.255.255"]),
            (
                "100.64/10",
                ["100.64.0.0", "100.100.1.1", "100.127.255.255"],
            ),
            ("127/8", ["127.0.0.0", "127.0.0.1", "127.255.255.255"]),
            (
                "169.254/16",
                ["169.254.0.0", "169.254.169.254", "169.254.255.255"],
            ),
            ("172.16/12", ["172.16.0.0", "172.20.5.5", "172.31.255.255"]),
            ("192.0.0/24", ["192.0.0.0", "192.0.0.9", "192.0.0.255"]),
            ("192.0.2/24", ["192.0.2.0", "192.0.2.1", "192.0.2.255"]),
            (
                "192.31.196/24",
                ["192.31.196.0", "192.31.196.1", "192.31.196.255"],
            ),
            (
                "192.52.193/24",
                ["192.52.193.0", "192.52.193.1", "192.52.193.255"],
            ),
            (
                "192.88.99/24",
                ["192.88.99.0", "192.88.99.1", "192.88.99.255"],
            ),
            (
                "192.168/16",
                ["192.168.0.0", "192.168.1.1", "192.168.255.255"],
            ),
            (
                "192.175.48/24",
                ["192.175.48.0", "192.175.48.1", "192.175.48.255"],
            ),
            ("198.18/15", ["198.18.0.0", "198.19.1.1", "198.19.255.255"]),
            (
                "198.51.100/24",
                ["198.51.100.0", "198.51.100.7", "198.51.100.255"],
            ),
            (
                "203.0.113/24",
                ["203.0.113.0", "203.0.113.7", "203.0.113.255"],
            ),
            ("224/4", ["224.0.0.0", "239.1.2.3", "239.255.255.255"]),
            ("240/4", ["240.0.0.0", "250.1.2.3", "255.255.255.254"]),
            ("broadcast", ["255.255.255.255"; 3]),
            // IPv6
            ("::/128", ["::"; 3]),
            ("::1/128", ["::1"; 3]),
            (
                "IPv4-compatible ::/96",
                ["::10.0.0.1", "::8.8.8.8", "::ffff:ffff"],
            ),
            (
                "::ffff:0:0/96 private",
                [
                    "::ffff:127.0.0.1",
                    "::ffff:10.1.2.3",
                    "::ffff:255.255.255.255",
                ],
            ),
            (
                "IPv4-translated ::ffff:0:0:0/96",
                ["::ffff:0:0.0.0.0", "::ffff:0:10.0.0.1", "::ffff:0:8.8.8.8"],
            ),
            (
                "64:ff9b::/96 private",
                [
                    "64:ff9b::127.0.0.1",
                    "64:ff9b::10.0.0.1",
                    "64:ff9b::169.254.169.254",
                ],
            ),
            (
                "64:ff9b:1::/48",
                [
                    "64:ff9b:1::",
                    "64:ff9b:1::8.8.8.8",
                    "64:ff9b:1:ffff:ffff:ffff:ffff:ffff",
                ],
            ),
            ("100::/64", ["100::", "100::1", "100::ffff:ffff:ffff:ffff"]),
            (
                "2001::/23",
                [
                    "2001::",
                    "2001:1::1",
                    "2001:1ff:ffff:ffff:ffff:ffff:ffff:ffff",
                ],
            ),
            (
                "Teredo 2001::/32",
                [
                    "2001::",
                    "2001:0:4136:e378:8000:63bf:3fff:fdd2",
                    "2001:0:ffff:ffff:ffff:ffff:ffff:ffff",
                ],
            ),
            (
                "2001:2::/48",
                ["2001:2::", "2001:2::1", "2001:2:0:ffff:ffff:ffff:ffff:ffff"],
            ),
            (
                "2001:10::/28",
                [
                    "2001:10::",
                    "2001:10::1",
                    "2001:1f:ffff:ffff:ffff:ffff:ffff:ffff",
                ],
            ),
            (
                "2001:20::/28",
                [
                    "2001:20::",
                    "2001:20::1",
                    "2001:2f:ffff:ffff:ffff:ffff:ffff:ffff",
                ],
            ),
            (
                "2001:db8::/32",
                [
                    "2001:db8::",
                    "2001:db8:1::1",
                    "2001:db8:ffff:ffff:ffff:ffff:ffff:ffff",
                ],
            ),
            (
                "2002::/16 private",
                ["2002:7f00:1::1", "2002:a00:1::", "2002:c0a8:101:ffff::1"],
            ),
            (
                "2620:4f:8000::/48",
                [
                    "2620:4f:8000::",
                    "2620:4f:8000::1",
                    "2620:4f:8000:ffff:ffff:ffff:ffff:ffff",
                ],
            ),
            (
                "3fff::/20",
                [
                    "3fff::",
                    "3fff:1::1",
                    "3fff:fff:ffff:ffff:ffff:ffff:ffff:ffff",
                ],
            ),
            (
                "5f00::/16",
                [
                    "5f00::",
                    "5f00:1::1",
                    "5f00:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
                ],
            ),
            (
                "fc00::/7",
                [
                    "fc00::",
                    "fd12:3456::1",
                    "fdff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
                ],
            ),
            (
                "fe80::/10",
                [
                    "fe80::",
                    "fe80::1",
                    "febf:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
                ],
            ),
            (
                "fec0::/10",
                [
                    "fec0::",
                    "fec0::1",
                    "feff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
                ],
            ),
            (
                "ff00::/8",
                [
                    "ff00::",
                    "ff02::1",
                    "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
                ],
            ),
        ];
        for (range, addresses) in refused {
            for ip in addresses {
                assert!(!is_public(ip.parse().unwrap()), "{ip} in {range}");
            }
        }
    }

    #[test]
    fn public_addresses_stay_allowed() {
        for ip in [
            "8.8.8.8",
            "1.1.1.1",
            // Just outside special ranges.
            "1.0.0.0",
            "11.0.0.0",
            "100.63.255.255",
            "100.128.0.0",
            "126.255.255.255",
            "128.0.0.0",
            "169.253.255.255",
            "169.255.0.0",
            "172.15.255.255",
            "172.32.0.0",
            "192.0.1.0",
            "192.0.3.0",
            "192.167.255.255",
            "192.169.0.0",
            "198.17.255.255",
            "198.20.0.0",
            "223.255.255.255",
            "2606:4700::1111",
            "2001:4860:4860::8888",
            "2001:200::1",
            "2620:4f:7fff::1",
            // NAT64 and 6to4 of public hosts, and IPv4-mapped public: as public as their IPv4 address.
            "64:ff9b::808:808",
            "64:ff9b::1.1.1.1",
            "2002:808:808::1",
            "::ffff:8.8.8.8",
        ] {
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
