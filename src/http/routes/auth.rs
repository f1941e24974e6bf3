//! The OAuth 2.0 endpoints: token (password, refresh_token and client_credentials grants), revoke (RFC 7009) and logout.

use std::collections::HashMap;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;

use crate::auth::sessions::{GrantError, TokenPair};
use crate::http::caller::{Caller, ClientInfo};
use crate::http::error::ApiError;
use crate::http::extract::form_pairs;
use crate::http::state::AppState;

/// A successful token response (RFC 6749 5.1).
#[derive(Serialize, utoipa::ToSchema)]
pub struct TokenResponse {
    pub access_token: String,
    /// `Bearer`, or `DPoP` when the request carried a DPoP proof (the tokens are then bound to its key).
    pub token_type: &'static str,
    /// Seconds until the access token expires.
    pub expires_in: i64,
    pub refresh_token: String,
    pub scope: String,
}

/// An error response of the token endpoint (RFC 6749 5.2).
#[derive(Serialize, utoipa::ToSchema)]
pub struct OAuthError {
    pub error: &'static str,
    pub error_description: String,
}

pub(super) fn no_store(mut response: Response) -> Response {
    let headers = response.headers_mut();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    response
}

/// An RFC 6749 5.2 error, ready to send.
pub(super) struct OAuthFailure {
    status: StatusCode,
    error: &'static str,
    description: String,
}

impl IntoResponse for OAuthFailure {
    fn into_response(self) -> Response {
        no_store(
            (
                self.status,
                Json(OAuthError {
                    error: self.error,
                    error_description: self.description,
                }),
            )
                .into_response(),
        )
    }
}

pub(super) fn oauth_failure(
    status: StatusCode,
    error: &'static str,
    description: impl Into<String>,
) -> OAuthFailure {
    OAuthFailure {
        status,
        error,
        description: description.into(),
    }
}

fn invalid_request(description: impl Into<String>) -> OAuthFailure {
    oauth_failure(StatusCode::BAD_REQUEST, "invalid_request", description)
}

fn oauth_error(
    status: StatusCode,
    error: &'static str,
    description: impl Into<String>,
) -> Response {
    oauth_failure(status, error, description).into_response()
}

fn throttled(retry_after: Duration) -> Response {
    let seconds = retry_after.as_secs().max(1);
    let mut response = oauth_error(
        StatusCode::TOO_MANY_REQUESTS,
        "too_many_attempts",
        format!("too many failed sign-ins; try again in {seconds} seconds"),
    );
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
    response
}

pub(super) fn grant_response(result: Result<TokenPair, GrantError>) -> Response {
    match result {
        Ok(pair) => no_store(
            Json(TokenResponse {
                access_token: pair.access_token,
                token_type: if pair.dpop_bound { "DPoP" } else { "Bearer" },
                expires_in: pair.expires_in,
                refresh_token: pair.refresh_token,
                scope: pair.scope,
            })
            .into_response(),
        ),
        Err(GrantError::InvalidGrant) => oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_grant",
            "the credentials or refresh token are invalid (a username that exists in several tenants \
             also needs the tenant parameter)",
        ),
        Err(GrantError::InvalidClient) => invalid_client(),
        Err(GrantError::InvalidRequest(description)) => {
            oauth_error(StatusCode::BAD_REQUEST, "invalid_request", description)
        }
        Err(GrantError::Throttled(retry_after)) => throttled(retry_after),
        Err(GrantError::DpopKeyMismatch) => oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_dpop_proof",
            "this refresh token is bound to a DPoP key: send a DPoP proof signed by that key",
        ),
        Err(GrantError::Internal(err)) => ApiError::Internal(err).into_response(),
    }
}

/// RFC 6749 5.2 `invalid_client`: 401 with the Basic challenge.
fn invalid_client() -> Response {
    let mut response = oauth_error(
        StatusCode::UNAUTHORIZED,
        "invalid_client",
        "client authentication failed",
    );
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Basic realm=\"sonicgw\""),
    );
    response
}

/// A token response without a refresh token: the client_credentials grant (RFC 6749 4.4.3).
#[derive(Serialize, utoipa::ToSchema)]
pub struct ClientTokenResponse {
    pub access_token: String,
    /// Always `Bearer`.
    pub token_type: &'static str,
    pub expires_in: i64,
    /// Always `worker`.
    pub scope: &'static str,
}

/// HTTP Basic client credentials (RFC 6749 2.3.1: each part form-urlencoded), if the header is there.
fn basic_credentials(
    headers: &axum::http::HeaderMap,
) -> Result<Option<(String, String)>, OAuthFailure> {
    use base64::Engine as _;
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Ok(None);
    };
    let malformed = || invalid_request("malformed Basic credentials");
    let value = value.to_str().map_err(|_| malformed())?;
    let Some((scheme, encoded)) = value.split_once(' ') else {
        return Err(malformed());
    };
    if !scheme.eq_ignore_ascii_case("basic") {
        return Ok(None);
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .map_err(|_| malformed())?;
    let decoded = String::from_utf8(decoded).map_err(|_| malformed())?;
    let (id, secret) = decoded.split_once(':').ok_or_else(malformed)?;
    let unescape = |part: &str| {
        url::form_urlencoded::parse(format!("x={part}").as_bytes())
            .next()
            .map(|(_, v)| v.into_owned())
            .unwrap_or_default()
    };
    Ok(Some((unescape(id), unescape(secret))))
}

/// `grant_type=client_credentials` for remote workers: credentials in the form or as HTTP Basic,
/// not both.
async fn client_credentials_grant(
    state: &AppState,
    client: &ClientInfo,
    basic: Option<(String, String)>,
    params: &HashMap<String, String>,
) -> Result<Response, OAuthFailure> {
    let in_form = params.contains_key("client_id") || params.contains_key("client_secret");
    let (client_id, client_secret) = match basic {
        Some(_) if in_form => {
            return Err(invalid_request(
                "send the client credentials either as HTTP Basic or in the form, not both",
            ))
        }
        Some(pair) => pair,
        None => (
            required(params, "client_id")?.to_owned(),
            required(params, "client_secret")?.to_owned(),
        ),
    };
    let result = state
        .workers
        .client_credentials_grant(
            &state.tokens,
            state.sessions.throttle(),
            &client.audit_context(),
            &client_id,
            &client_secret,
        )
        .await;
    Ok(match result {
        Ok(issued) => no_store(
            Json(ClientTokenResponse {
                access_token: issued.token,
                token_type: "Bearer",
                expires_in: issued.expires_in,
                scope: crate::auth::tokens::WORKER_SCOPE,
            })
            .into_response(),
        ),
        Err(err) => grant_response(Err(err)),
    })
}

/// The form's parameters; each may appear once (RFC 6749 3.2).
fn parameters(pairs: Vec<(String, String)>) -> Result<HashMap<String, String>, OAuthFailure> {
    let mut map = HashMap::new();
    for (name, value) in pairs {
        if map.insert(name.clone(), value).is_some() {
            return Err(invalid_request(format!(
                "parameter {name} was sent more than once"
            )));
        }
    }
    Ok(map)
}

pub(super) async fn read_form(request: Request) -> Result<HashMap<String, String>, OAuthFailure> {
    match form_pairs(request).await {
        Ok(Some(pairs)) => parameters(pairs),
        Ok(None) => Err(invalid_request(
            "send the parameters as application/x-www-form-urlencoded",
        )),
        Err(err) => Err(invalid_request(err.to_string())),
    }
}

pub(super) fn required<'a>(
    params: &'a HashMap<String, String>,
    name: &str,
) -> Result<&'a str, OAuthFailure> {
    params
        .get(name)
        .map(String::as_str)
        .filter(|v| !v.is_empty())
        .ok_or_else(|| invalid_request(format!("missing parameter {name}")))
}

/// Issues tokens: `grant_type=password` (username, password, optional tenant),
/// `grant_type=refresh_token` (refresh_token), or for remote workers `grant_type=client_credentials`
/// (client_id and client_secret in the form or as HTTP Basic; no refresh token).
#[utoipa::path(
    post, path = "/v1/auth/token", tag = "auth",
    request_body(content_type = "application/x-www-form-urlencoded", description = "grant_type=password&username=...&password=...[&tenant=...], grant_type=refresh_token&refresh_token=... or grant_type=client_credentials&client_id=...&client_secret=..."),
    responses(
        (status = 200, description = "Tokens issued (client_credentials: ClientTokenResponse)", body = TokenResponse),
        (status = 401, description = "invalid_client (client_credentials)", body = OAuthError),
        (status = 400, description = "invalid_grant, invalid_request or unsupported_grant_type", body = OAuthError),
        (status = 429, description = "Too many failed sign-ins", body = OAuthError),
    )
)]
pub async fn token(
    State(state): State<AppState>,
    client: ClientInfo,
    request: Request,
) -> Response {
    token_grant(&state, &client, request)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

async fn token_grant(
    state: &AppState,
    client: &ClientInfo,
    request: Request,
) -> Result<Response, OAuthFailure> {
    let basic = basic_credentials(request.headers())?;
    let dpop_jkt = token_request_proof(state, proof_context(state, &request)).await?;
    let params = read_form(request).await?;
    let context = client.audit_context();
    let result = match params.get("grant_type").map(String::as_str) {
        Some("client_credentials") => {
            if dpop_jkt.is_some() {
                return Err(invalid_request(
                    "worker tokens are not DPoP-bound; send client_credentials without a DPoP header",
                ));
            }
            return client_credentials_grant(state, client, basic, &params).await;
        }
        Some("password") => password_grant(state, client, &params, dpop_jkt).await?,
        Some("refresh_token") => {
            let token = required(&params, "refresh_token")?;
            state.sessions.refresh_grant(&context, token, dpop_jkt).await
        }
        Some(other) => {
            return Err(oauth_failure(
                StatusCode::BAD_REQUEST,
                "unsupported_grant_type",
                format!("grant_type {other:?} is not supported; use password, refresh_token or client_credentials"),
            ))
        }
        None => return Err(invalid_request("missing parameter grant_type")),
    };
    Ok(grant_response(result))
}

/// What a token request's DPoP proof is checked against, taken from the request before it is read:
/// its method, path, headers and whether it came over HTTPS; `None` when it has no `DPoP` header.
type ProofContext = (axum::http::Method, String, axum::http::HeaderMap, bool);

fn proof_context(state: &AppState, request: &Request) -> Option<ProofContext> {
    request.headers().contains_key("dpop").then(|| {
        (
            request.method().clone(),
            request.uri().path().to_owned(),
            request.headers().clone(),
            crate::http::origin::over_https(state, request.extensions(), request.headers()),
        )
    })
}

/// The DPoP proof of a token request, if any (RFC 9449 5): checked against this request and recorded,
/// the thumbprint of its key; a bad proof is `400 invalid_dpop_proof`.
async fn token_request_proof(
    state: &AppState,
    context: Option<ProofContext>,
) -> Result<Option<String>, OAuthFailure> {
    let Some((method, path, headers, https)) = context else {
        return Ok(None);
    };
    crate::http::dpop::request_proof(state, &method, &path, &headers, https, None)
        .await
        .map_err(|refused| {
            crate::metrics::auth_failure(refused.code());
            oauth_failure(
                StatusCode::BAD_REQUEST,
                "invalid_dpop_proof",
                refused.to_string(),
            )
        })
}

/// The password grant at the URL that FastAPI-style OAuth2 password clients post to
/// (`grant_type` may be omitted).
#[utoipa::path(
    post, path = "/login", tag = "auth",
    request_body(content_type = "application/x-www-form-urlencoded", description = "username=...&password=...[&tenant=...]"),
    responses(
        (status = 200, description = "Tokens issued", body = TokenResponse),
        (status = 400, description = "invalid_grant or invalid_request", body = OAuthError),
        (status = 429, description = "Too many failed sign-ins", body = OAuthError),
    )
)]
pub async fn login(
    State(state): State<AppState>,
    client: ClientInfo,
    request: Request,
) -> Response {
    login_grant(&state, &client, request)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

async fn login_grant(
    state: &AppState,
    client: &ClientInfo,
    request: Request,
) -> Result<Response, OAuthFailure> {
    let dpop_jkt = token_request_proof(state, proof_context(state, &request)).await?;
    let params = read_form(request).await?;
    if params.get("grant_type").is_some_and(|g| g != "password") {
        return Err(oauth_failure(
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            "this endpoint only takes the password grant",
        ));
    }
    Ok(grant_response(
        password_grant(state, client, &params, dpop_jkt).await?,
    ))
}

/// The password grant's parameters (`username`, `password`, optional `tenant`), then the grant.
pub(super) async fn password_grant(
    state: &AppState,
    client: &ClientInfo,
    params: &HashMap<String, String>,
    dpop_jkt: Option<String>,
) -> Result<Result<TokenPair, GrantError>, OAuthFailure> {
    let username = required(params, "username")?;
    let password = required(params, "password")?;
    let tenant = params
        .get("tenant")
        .map(String::as_str)
        .filter(|t| !t.is_empty());
    Ok(state
        .sessions
        .password_grant(
            &client.audit_context(),
            username,
            password,
            tenant,
            dpop_jkt,
        )
        .await)
}

/// Revokes a refresh token (with every token of its sign-in) or an access token (RFC 7009).
/// Answers 200 for unknown tokens too. Possession of the token is the authority to revoke it.
#[utoipa::path(
    post, path = "/v1/auth/revoke", tag = "auth",
    request_body(content_type = "application/x-www-form-urlencoded", description = "token=...[&token_type_hint=refresh_token|access_token]"),
    responses(
        (status = 200, description = "Revoked, or unknown"),
        (status = 400, description = "Missing token", body = OAuthError),
    )
)]
pub async fn revoke(
    State(state): State<AppState>,
    client: ClientInfo,
    request: Request,
) -> Response {
    let token_and_hint = read_form(request).await.and_then(|params| {
        let token = required(&params, "token")?.to_owned();
        Ok((token, params.get("token_type_hint").cloned()))
    });
    let (token, hint) = match token_and_hint {
        Ok(found) => found,
        Err(failure) => return failure.into_response(),
    };
    match state
        .sessions
        .revoke_token(&client.audit_context(), &token, hint.as_deref())
        .await
    {
        Ok(()) => no_store(StatusCode::OK.into_response()),
        Err(err) => ApiError::Internal(err).into_response(),
    }
}

/// Signs out: revokes the presented access token and every token of its sign-in.
#[utoipa::path(
    post, path = "/v1/auth/logout", tag = "auth",
    responses(
        (status = 204, description = "Signed out"),
        (status = 401, description = "No valid access token", body = crate::http::error::Problem),
    ),
    security(("bearer" = []))
)]
pub async fn logout(State(state): State<AppState>, caller: Caller) -> Result<StatusCode, ApiError> {
    state
        .sessions
        .logout(&caller.audit_context(), &caller.claims)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}
