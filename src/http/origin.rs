//! Where this server is: the origins a browser's `Origin` header or a DPoP proof's `htu` may name, and
//! whether a request reached it over HTTPS. One rule for every route that compares a client-given URL
//! with the server: the configured issuer and `public_base_url`, and the request's own `Host` only when
//! no issuer is configured (one machine, the issuer derived from the listen address). A configured
//! issuer never trusts `Host`: a DNS-rebinding page, or a server replaying a proof made for itself,
//! names its own host there.

use axum::extract::ConnectInfo;
use axum::http::{header, Extensions, HeaderMap};
use std::net::SocketAddr;

use super::state::AppState;

/// `scheme://host[:port]` of a URL, lower-cased, without a default port; `None` for an opaque origin.
pub fn origin_of(url: &str) -> Option<String> {
    let url = url::Url::parse(url).ok()?;
    match url.origin() {
        origin @ url::Origin::Tuple(..) => Some(origin.ascii_serialization()),
        url::Origin::Opaque(_) => None,
    }
}

/// The origins this server answers as (see the module's rule).
pub fn server_origins(state: &AppState, headers: &HeaderMap, https: bool) -> Vec<String> {
    let host = if state.config.issuer.is_empty() {
        let scheme = if https { "https" } else { "http" };
        headers
            .get(header::HOST)
            .and_then(|v| v.to_str().ok())
            .and_then(|host| origin_of(&format!("{scheme}://{host}")))
    } else {
        None
    };
    [
        origin_of(&state.issuer),
        origin_of(&state.config.public_base_url),
        host,
    ]
    .into_iter()
    .flatten()
    .collect()
}

/// Whether the client reached us over HTTPS: our own TLS, or a trusted proxy saying so.
pub fn over_https(state: &AppState, extensions: &Extensions, headers: &HeaderMap) -> bool {
    if state.config.tls_enabled() {
        return true;
    }
    let peer = extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip());
    peer.is_some_and(|ip| state.config.trusted_proxies.contains(&ip))
        && headers
            .get("x-forwarded-proto")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.trim().eq_ignore_ascii_case("https"))
}

#[cfg(test)]
mod tests {
    use super::origin_of;

    #[test]
    fn origins_compare_without_default_ports_or_paths() {
        assert_eq!(
            origin_of("http://127.0.0.1:80/x").as_deref(),
            Some("http://127.0.0.1")
        );
        assert_eq!(
            origin_of("HTTPS://Example.COM:443").as_deref(),
            Some("https://example.com")
        );
        assert_eq!(origin_of("null"), None);
    }
}
