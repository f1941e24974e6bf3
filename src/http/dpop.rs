//! DPoP proofs as HTTP requests carry them: the `DPoP` header checked against the request's method,
//! path and this server's origins, then recorded against replay. `auth::dpop` does the checking; this
//! decides what "this request" is.

use axum::http::{HeaderMap, Method};

use super::state::AppState;
use crate::auth::dpop::{self, ProofRejection, ProofTarget};

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
    let origins = super::origin::server_origins(state, headers, https);
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
    // A resource request's proof comes with a verified access token; the token endpoint's with
    // nothing checked yet, so it is kept apart where a flood cannot refuse signed-in clients' proofs.
    let replays = if access_token.is_some() {
        &state.dpop_replays
    } else {
        &state.dpop_token_endpoint_replays
    };
    replays.first_use(&checked).await?;
    Ok(Some(checked.jkt))
}
