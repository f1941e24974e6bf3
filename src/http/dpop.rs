//! DPoP proofs as HTTP requests carry them: the `DPoP` header checked against the request's method,
//! path and this server's origins, then recorded against replay. `auth::dpop` does the checking; this
//! decides what "this request" is.

use axum::http::{header, Extensions, HeaderMap, Method};

use super::state::AppState;
use crate::auth::dpop::{self, ProofRejection, ProofTarget};

/// The origins this server is reached at: the issuer, `public_base_url`, and the request's own
/// `Host` with the scheme it came in on (a proof names the URL its client used).
fn server_origins(state: &AppState, headers: &HeaderMap, https: bool) -> Vec<String> {
    let origin = |url: &str| {
        url::Url::parse(url)
            .ok()
            .map(|u| u.origin())
            .filter(url::Origin::is_tuple)
            .map(|o| o.ascii_serialization())
    };
    let scheme = if https { "https" } else { "http" };
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .and_then(|host| origin(&format!("{scheme}://{host}")));
    [
        origin(&state.issuer),
        origin(&state.config.public_base_url),
        host,
    ]
    .into_iter()
    .flatten()
    .collect()
}

/// The request's `DPoP` proof, checked and recorded: `None` when there is none, else the thumbprint
/// of the key that signed it. `access_token` is the token the proof must name (resource requests).
pub async fn request_proof(
    state: &AppState,
    method: &Method,
    uri_path: &str,
    headers: &HeaderMap,
    https: bool,
    access_token: Option<&str>,
) -> Result<Option<String>, ProofRejection> {
    let Some(proof) = dpop::proof_header(headers)? else {
        return Ok(None);
    };
    let origins = server_origins(state, headers, https);
    let checked = dpop::check_proof(
        proof,
        &ProofTarget {
            method: method.as_str(),
            path: uri_path,
            origins: &origins,
            access_token,
            now: crate::time::now_s(),
        },
    )?;
    state.dpop_replays.first_use(&checked).await?;
    Ok(Some(checked.jkt))
}

/// Whether the client reached us over HTTPS: our TLS, or a trusted proxy saying so.
pub fn over_https(state: &AppState, extensions: &Extensions, headers: &HeaderMap) -> bool {
    use axum::extract::ConnectInfo;
    use std::net::SocketAddr;
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
