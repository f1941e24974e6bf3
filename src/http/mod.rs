//! The HTTP layer: routes, the caller extractor, errors and middleware.

pub mod caller;
pub mod directory;
pub mod error;
pub mod extract;
pub mod middleware;
pub mod openapi;
pub mod routes;
pub mod state;
pub mod upload;

use axum::routing::{get, post};
use axum::Router;
use tower_http::limit::RequestBodyLimitLayer;

pub use state::{AppState, Services};

/// Largest request body accepted by the identity API.
const MAX_BODY_BYTES: usize = 1024 * 1024;

/// The whole API.
pub fn router(state: AppState) -> Router {
    use routes::{audit, auth, engines, files, me, ops, tenants, users, videos, webhooks};
    let api = Router::new()
        .route("/healthz", get(ops::healthz))
        .route("/readyz", get(ops::readyz))
        .route("/.well-known/jwks.json", get(ops::jwks))
        .route(
            "/.well-known/oauth-authorization-server",
            get(ops::oauth_metadata),
        )
        .route("/openapi.json", get(ops::openapi))
        .route("/docs", get(ops::docs))
        .route("/docs/init.js", get(ops::docs_init))
        .route("/docs/swagger-ui-bundle.js", get(ops::docs_bundle))
        .route("/docs/swagger-ui.css", get(ops::docs_css))
        .route("/login", post(auth::login))
        .route("/v1/auth/token", post(auth::token))
        .route("/v1/auth/revoke", post(auth::revoke))
        .route("/v1/auth/logout", post(auth::logout))
        .route("/v1/me", get(me::me))
        .route("/v1/users", get(users::list).post(users::create))
        .route(
            "/v1/users/{id}",
            get(users::get).patch(users::update).delete(users::delete),
        )
        .route("/v1/tenants", get(tenants::list).post(tenants::create))
        .route("/v1/tenants/{id}", get(tenants::get).patch(tenants::update))
        .route("/v1/audit", get(audit::list))
        .route("/v1/audit/verify", get(audit::verify))
        .route("/v1/videos", get(videos::list))
        .route("/v1/videos/{id}", get(videos::get).delete(videos::delete))
        .route("/v1/videos/{id}/cancel", post(videos::cancel))
        .route("/v1/videos/{id}/events", get(videos::events))
        .route("/v1/videos/{id}/content", get(files::content))
        .route("/v1/files/videos/{file}", get(files::signed))
        .route("/v1/engines", get(engines::list))
        .route(
            "/v1/webhook-secret",
            get(webhooks::get).post(webhooks::rotate),
        )
        .layer(RequestBodyLimitLayer::new(MAX_BODY_BYTES));
    // Uploads stream to disk with per-file limits; the request as a whole may hold both files.
    let upload_limit =
        (state.config.max_image_bytes + state.config.max_audio_bytes) as usize + MAX_BODY_BYTES;
    let uploads = Router::new()
        .route("/v1/videos", post(videos::create))
        .layer(axum::extract::DefaultBodyLimit::disable())
        .layer(RequestBodyLimitLayer::new(upload_limit));
    api.merge(uploads)
        .fallback(middleware::not_found)
        .method_not_allowed_fallback(|| async { middleware::method_not_allowed() })
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            middleware::https_policy,
        ))
        .layer(axum::middleware::from_fn(middleware::observe))
        .with_state(state)
}
