//! Operational and discovery endpoints: health, readiness, JWKS, authorization-server metadata,
//! the OpenAPI document and its interactive docs (assets vendored, nothing fetched).

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::{Extension, Json};
use serde::Serialize;

use crate::http::state::AppState;

/// Health status.
#[derive(Serialize, utoipa::ToSchema)]
pub struct Health {
    pub status: &'static str,
}

/// Liveness: the process answers.
#[utoipa::path(get, path = "/healthz", tag = "ops", responses((status = 200, body = Health)))]
pub async fn healthz() -> Json<Health> {
    Json(Health { status: "ok" })
}

/// Readiness: the database answers, its schema is this release's, signing keys are loaded, and the
/// process is not shutting down.
#[derive(Serialize, utoipa::ToSchema)]
pub struct Readiness {
    pub status: &'static str,
    pub database: bool,
    /// Every migration of this release is applied (`sonicgw migrate`).
    pub migrations: bool,
    pub keys: bool,
    /// SIGTERM was received: finishing what is in flight, taking nothing new.
    pub shutting_down: bool,
}

#[utoipa::path(get, path = "/readyz", tag = "ops",
    responses((status = 200, body = Readiness), (status = 503, body = Readiness)))]
pub async fn readyz(State(state): State<AppState>) -> Response {
    let schema = state.store.schema().await;
    let database = schema.is_ok();
    let migrations = schema.is_ok_and(|s| s.is_current());
    let shutting_down = state.shutdown.is_cancelled();
    let keys = !state.tokens.jwks()["keys"]
        .as_array()
        .is_none_or(|k| k.is_empty())
        || state.tokens.settings().alg == crate::auth::keys::SigningAlg::HS256;
    let ready = database && migrations && keys && !shutting_down;
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        Json(Readiness {
            status: if ready { "ready" } else { "unavailable" },
            database,
            migrations,
            keys,
            shutting_down,
        }),
    )
        .into_response()
}

/// The public signing keys (RFC 7517).
#[utoipa::path(get, path = "/.well-known/jwks.json", tag = "auth",
    responses((status = 200, description = "JSON Web Key Set")))]
pub async fn jwks(State(state): State<AppState>) -> Response {
    (
        [(header::CACHE_CONTROL, "public, max-age=300")],
        Json(state.tokens.jwks()),
    )
        .into_response()
}

/// Authorization server metadata (RFC 8414).
#[utoipa::path(get, path = "/.well-known/oauth-authorization-server", tag = "auth",
    responses((status = 200, description = "Authorization server metadata")))]
pub async fn oauth_metadata(State(state): State<AppState>) -> Json<serde_json::Value> {
    let issuer = &state.issuer;
    Json(serde_json::json!({
        "issuer": issuer,
        "token_endpoint": format!("{issuer}/v1/auth/token"),
        "jwks_uri": format!("{issuer}/.well-known/jwks.json"),
        "revocation_endpoint": format!("{issuer}/v1/auth/revoke"),
        "grant_types_supported": ["password", "refresh_token", "client_credentials"],
        "response_types_supported": [],
        "token_endpoint_auth_methods_supported": ["none", "client_secret_basic", "client_secret_post"],
        "revocation_endpoint_auth_methods_supported": ["none"],
        "token_endpoint_auth_signing_alg_values_supported": [state.tokens.settings().alg.as_str()],
        "dpop_signing_alg_values_supported": crate::auth::dpop::SUPPORTED_ALGS,
    }))
}

/// The OpenAPI document as JSON, serialised once by the router that it describes.
#[derive(Clone)]
pub struct OpenApiJson(pub Bytes);

/// The OpenAPI 3.1 document, generated from the code.
pub async fn openapi(Extension(OpenApiJson(document)): Extension<OpenApiJson>) -> Response {
    ([(header::CONTENT_TYPE, "application/json")], document).into_response()
}

const DOCS_HTML: &str = r#"<!doctype html>
<html lang="en">
<head><meta charset="utf-8"><title>Sonic Gateway API</title>
<link rel="stylesheet" href="/docs/swagger-ui.css"></head>
<body><div id="swagger-ui"></div>
<script src="/docs/swagger-ui-bundle.js"></script>
<script src="/docs/init.js"></script>
</body></html>
"#;

const DOCS_INIT: &str = r##"window.ui = SwaggerUIBundle({
  url: "/openapi.json",
  dom_id: "#swagger-ui",
  validatorUrl: null,
  deepLinking: true
});
"##;

/// Interactive API docs (Swagger UI, vendored). Never framed by another site (clickjacking of the
/// "Authorize" dialog) and never sending a referrer; everything it loads is ours.
pub async fn docs() -> impl IntoResponse {
    (
        [
            (header::X_FRAME_OPTIONS, "DENY"),
            (
                header::CONTENT_SECURITY_POLICY,
                "frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
            ),
            (header::REFERRER_POLICY, "no-referrer"),
        ],
        Html(DOCS_HTML),
    )
}

pub async fn docs_init() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/javascript")], DOCS_INIT)
}

pub async fn docs_bundle() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/javascript"),
            (header::CACHE_CONTROL, "public, max-age=86400"),
        ],
        include_str!("../../../assets/swagger-ui/swagger-ui-bundle.js"),
    )
}

pub async fn docs_css() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/css"),
            (header::CACHE_CONTROL, "public, max-age=86400"),
        ],
        include_str!("../../../assets/swagger-ui/swagger-ui.css"),
    )
}
