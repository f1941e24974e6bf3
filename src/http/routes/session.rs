//! The web app's sign-in, on top of the same grants as `/v1/auth/token`: the access token comes back in
//! the body (the page keeps it in memory only) and the refresh token in a cookie the page's script cannot
//! read (`HttpOnly`, `SameSite=Strict`, `Secure` over HTTPS) that is sent only to `/v1/auth/session`.
//! Every route here checks that `Origin` is this server's own, so another site cannot make a browser
//! use the cookie. API clients keep using `/v1/auth/token` with the refresh token in the body.

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;

use super::auth::{
    grant_response, no_store, oauth_failure, password_grant, read_form, OAuthFailure,
};
use crate::auth::sessions::TokenPair;
use crate::http::caller::{Caller, ClientInfo};
use crate::http::error::ApiError;
use crate::http::origin;
use crate::http::state::AppState;

/// The refresh token's cookie.
pub const REFRESH_COOKIE: &str = "sonicgw_refresh";
/// The only path the cookie is sent to: these routes.
pub const COOKIE_PATH: &str = "/v1/auth/session";

/// A web sign-in or refresh: the access token only; the refresh token is in the cookie.
#[derive(Serialize, utoipa::ToSchema)]
pub struct SessionResponse {
    pub access_token: String,
    /// Always `Bearer`.
    pub token_type: &'static str,
    /// Seconds until the access token expires.
    pub expires_in: i64,
    pub scope: String,
}

/// Whether the client reached us over HTTPS: our own TLS, or a trusted proxy saying so.
fn over_https(state: &AppState, request: &Request) -> bool {
    origin::over_https(state, request.extensions(), request.headers())
}

/// Refuses a request whose `Origin` is missing or is not one of this server's (`http::origin`).
fn check_origin(state: &AppState, request: &Request, https: bool) -> Result<(), ApiError> {
    let refused = |detail: &str| ApiError::Forbidden {
        code: "cross_origin",
        detail: detail.to_owned(),
    };
    let origin = request
        .headers()
        .get(header::ORIGIN)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| refused("this endpoint needs the Origin header a browser sends"))?;
    let origin =
        origin::origin_of(origin).ok_or_else(|| refused("the Origin header is not an origin"))?;
    if origin::server_origins(state, request.headers(), https).contains(&origin) {
        Ok(())
    } else {
        Err(refused("requests from another site are refused"))
    }
}

/// The `Set-Cookie` value carrying a refresh token, or clearing it (`None`).
fn refresh_cookie(token: Option<&str>, max_age_s: i64, https: bool) -> HeaderValue {
    let (value, max_age) = match token {
        Some(token) => (token, max_age_s.max(0)),
        None => ("", 0),
    };
    let secure = if https { "; Secure" } else { "" };
    HeaderValue::from_str(&format!(
        "{REFRESH_COOKIE}={value}; Path={COOKIE_PATH}; Max-Age={max_age}; HttpOnly; SameSite=Strict{secure}"
    ))
    .expect("a refresh token is URL-safe base64")
}

/// The refresh token from the request's cookies.
fn cookie_token(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, value)| *name == REFRESH_COOKIE && !value.is_empty())
        .map(|(_, value)| value.to_owned())
}

/// The answer of a successful grant: the access token in the body, the refresh token in the cookie.
fn session_response(state: &AppState, pair: TokenPair, https: bool) -> Response {
    let cookie = refresh_cookie(
        Some(&pair.refresh_token),
        state.config.refresh_token_ttl_s,
        https,
    );
    let mut response = no_store(
        Json(SessionResponse {
            access_token: pair.access_token,
            token_type: "Bearer",
            expires_in: pair.expires_in,
            scope: pair.scope,
        })
        .into_response(),
    );
    response.headers_mut().insert(header::SET_COOKIE, cookie);
    response
}

/// Signs in from the web app: `username`, `password` and optional `tenant`, form-encoded, from this
/// server's own origin. The refresh token is set as an `HttpOnly`, `SameSite=Strict` cookie limited to
/// `/v1/auth/session` (`Secure` over HTTPS).
#[utoipa::path(
    post, path = "/v1/auth/session", tag = "auth",
    request_body(content_type = "application/x-www-form-urlencoded", description = "username=...&password=...[&tenant=...]"),
    responses(
        (status = 200, description = "Signed in; the refresh token is in the Set-Cookie header", body = SessionResponse),
        (status = 400, description = "invalid_grant or invalid_request", body = super::auth::OAuthError),
        (status = 403, description = "cross_origin: Origin missing or another site", body = crate::http::error::Problem),
        (status = 429, description = "Too many failed sign-ins", body = super::auth::OAuthError),
    )
)]
pub async fn sign_in(
    State(state): State<AppState>,
    client: ClientInfo,
    request: Request,
) -> Response {
    let https = over_https(&state, &request);
    if let Err(refused) = check_origin(&state, &request, https) {
        return refused.into_response();
    }
    let result = async {
        let params = read_form(request).await?;
        if params.get("grant_type").is_some_and(|g| g != "password") {
            return Err(oauth_failure(
                StatusCode::BAD_REQUEST,
                "unsupported_grant_type",
                "this endpoint only takes the password grant",
            ));
        }
        // The web app's sign-in is never DPoP-bound: its refresh token is the HttpOnly cookie.
        password_grant(&state, &client, &params, None).await
    }
    .await;
    match result {
        Ok(Ok(pair)) => session_response(&state, pair, https),
        Ok(Err(err)) => grant_response(Err(err)),
        Err(failure) => failure.into_response(),
    }
}

/// Renews the web app's access token with the refresh token in the cookie (rotated: a new cookie comes
/// back). A page load calls this to stay signed in without keeping any token in storage.
#[utoipa::path(
    post, path = "/v1/auth/session/refresh", tag = "auth",
    responses(
        (status = 200, description = "A new access token; the rotated refresh token is in the Set-Cookie header", body = SessionResponse),
        (status = 400, description = "invalid_grant: no cookie, or its token is used, revoked or expired (the cookie is cleared)", body = super::auth::OAuthError),
        (status = 403, description = "cross_origin: Origin missing or another site", body = crate::http::error::Problem),
    )
)]
pub async fn refresh(
    State(state): State<AppState>,
    client: ClientInfo,
    request: Request,
) -> Response {
    let https = over_https(&state, &request);
    if let Err(refused) = check_origin(&state, &request, https) {
        return refused.into_response();
    }
    let Some(token) = cookie_token(request.headers()) else {
        return signed_out(
            oauth_failure(
                StatusCode::BAD_REQUEST,
                "invalid_grant",
                "not signed in (no session cookie)",
            ),
            https,
        );
    };
    match state
        .sessions
        .refresh_grant(&client.audit_context(), &token, None)
        .await
    {
        Ok(pair) => session_response(&state, pair, https),
        Err(err) => {
            let mut response = grant_response(Err(err));
            if response.status() == StatusCode::BAD_REQUEST {
                response
                    .headers_mut()
                    .insert(header::SET_COOKIE, refresh_cookie(None, 0, https));
            }
            response
        }
    }
}

fn signed_out(failure: OAuthFailure, https: bool) -> Response {
    let mut response = failure.into_response();
    response
        .headers_mut()
        .insert(header::SET_COOKIE, refresh_cookie(None, 0, https));
    response
}

/// Signs the web app out: revokes the cookie's sign-in (its refresh tokens and every access token issued
/// in it) and clears the cookie. An access token sent with it (`Authorization`) ends its sign-in too, so
/// a page whose cookie is gone (cleared, or never sent) still ends the sign-in it holds. Signing out is
/// idempotent: with neither, or with tokens already revoked or invalid, it only clears the cookie.
#[utoipa::path(
    delete, path = "/v1/auth/session", tag = "auth",
    responses(
        (status = 204, description = "Signed out; the cookie is cleared"),
        (status = 403, description = "cross_origin: Origin missing or another site", body = crate::http::error::Problem),
    )
)]
pub async fn sign_out(
    State(state): State<AppState>,
    client: ClientInfo,
    bearer: Result<Caller, ApiError>,
    request: Request,
) -> Response {
    let https = over_https(&state, &request);
    if let Err(refused) = check_origin(&state, &request, https) {
        return refused.into_response();
    }
    if let Ok(caller) = bearer {
        if let Err(err) = state
            .sessions
            .logout(&caller.audit_context(), &caller.claims)
            .await
        {
            return ApiError::Internal(err).into_response();
        }
    }
    if let Some(token) = cookie_token(request.headers()) {
        if let Err(err) = state
            .sessions
            .revoke_token(&client.audit_context(), &token, Some("refresh_token"))
            .await
        {
            return ApiError::Internal(err).into_response();
        }
    }
    let mut response = no_store(StatusCode::NO_CONTENT.into_response());
    response
        .headers_mut()
        .insert(header::SET_COOKIE, refresh_cookie(None, 0, https));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookie_is_http_only_strict_and_limited_to_the_session_path() {
        let cookie = refresh_cookie(Some("abc"), 60, false);
        let text = cookie.to_str().unwrap();
        assert_eq!(
            text,
            "sonicgw_refresh=abc; Path=/v1/auth/session; Max-Age=60; HttpOnly; SameSite=Strict"
        );
        let secure = refresh_cookie(Some("abc"), 60, true);
        assert!(secure.to_str().unwrap().ends_with("; Secure"));
        let cleared = refresh_cookie(None, 60, true);
        assert!(cleared
            .to_str()
            .unwrap()
            .starts_with("sonicgw_refresh=; Path=/v1/auth/session; Max-Age=0;"));
    }

    #[test]
    fn cookie_token_finds_only_its_own_non_empty_cookie() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::COOKIE,
            HeaderValue::from_static("other=1; sonicgw_refresh=tok-1; x=y"),
        );
        assert_eq!(cookie_token(&headers).as_deref(), Some("tok-1"));
        headers.insert(header::COOKIE, HeaderValue::from_static("sonicgw_refresh="));
        assert_eq!(cookie_token(&headers), None);
        headers.insert(
            header::COOKIE,
            HeaderValue::from_static("xsonicgw_refresh=a"),
        );
        assert_eq!(cookie_token(&headers), None);
    }
}
