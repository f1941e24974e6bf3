//! The HTTP layer: routes, the caller extractor, errors and middleware.

pub mod caller;
pub mod directory;
pub mod dpop;
pub mod error;
pub mod extract;
pub mod middleware;
pub mod openapi;
pub mod origin;
pub mod routes;
pub mod state;
pub mod upload;
pub mod webapp;

use axum::body::Bytes;
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, MethodRouter};
use axum::{Extension, Router};
use tower_http::limit::RequestBodyLimitLayer;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::config::Config;

pub use state::{AppState, Services};

/// Largest request body accepted by the identity API.
const MAX_BODY_BYTES: usize = 1024 * 1024;

/// The whole API: the documented routes, the few undocumented ones, and the layers around them all.
pub fn router(state: AppState) -> Router {
    let (documented, mut document) = documented_routes(&state.config).split_for_parts();
    openapi::add_common_responses(&mut document);
    let document = Bytes::from(document.to_json().expect("the OpenAPI document serialises"));
    let undocumented = undocumented_routes()
        .into_iter()
        .fold(Router::new(), |router, (path, route)| {
            router.route(path, route)
        })
        .layer(Extension(routes::ops::OpenApiJson(document)))
        .layer(RequestBodyLimitLayer::new(MAX_BODY_BYTES));
    documented
        .merge(undocumented)
        .fallback(middleware::not_found)
        .method_not_allowed_fallback(|| async { middleware::method_not_allowed() })
        .layer(axum::middleware::from_fn(middleware::rate_limit_headers))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            middleware::https_policy,
        ))
        // No response may be sniffed into another type (a video read as HTML, say).
        .layer(
            tower_http::set_header::SetResponseHeaderLayer::if_not_present(
                axum::http::header::X_CONTENT_TYPE_OPTIONS,
                axum::http::HeaderValue::from_static("nosniff"),
            ),
        )
        .layer(axum::middleware::from_fn(middleware::observe))
        .with_state(state)
}

/// Every route of the API, each registered once from its handler's `#[utoipa::path]`, which gives both
/// the route and its operation in the OpenAPI document. Handlers sharing a path go in one `routes!`.
fn documented_routes(config: &Config) -> OpenApiRouter<AppState> {
    use routes::{
        audit, auth, engines, files, me, ops, provenance, session, tenants, users, videos,
        webhooks, worker,
    };
    let mut api = OpenApiRouter::with_openapi(openapi::ApiDoc::openapi())
        .routes(routes!(ops::healthz))
        .routes(routes!(ops::readyz))
        .routes(routes!(ops::jwks))
        .routes(routes!(ops::oauth_metadata));
    // A verifier (`jwks_url`) holds no signing key: token endpoints (the web app's cookie sign-in
    // too) live on the issuer only, and here they are unknown paths (404), absent from the OpenAPI
    // document too.
    if !config.verifies_only() {
        api = api
            .routes(routes!(auth::login))
            .routes(routes!(auth::token))
            .routes(routes!(auth::revoke))
            .routes(routes!(auth::logout))
            .routes(routes!(session::sign_in, session::sign_out))
            .routes(routes!(session::refresh));
    }
    let api = api
        .routes(routes!(me::me))
        .routes(routes!(users::list, users::create))
        .routes(routes!(users::get, users::update, users::delete))
        .routes(routes!(tenants::list, tenants::create))
        .routes(routes!(tenants::get, tenants::update))
        .routes(routes!(tenants::get_label, tenants::put_label))
        .routes(routes!(audit::list))
        .routes(routes!(audit::verify))
        .routes(routes!(videos::list))
        .routes(routes!(videos::get, videos::delete))
        .routes(routes!(videos::cancel))
        .routes(routes!(videos::rerun))
        .routes(routes!(videos::events))
        .routes(routes!(provenance::of_job))
        .routes(routes!(files::content))
        .routes(routes!(files::signed))
        .routes(routes!(engines::list))
        .routes(routes!(webhooks::get, webhooks::rotate))
        .routes(routes!(worker::lease))
        .routes(routes!(worker::presence))
        .routes(routes!(worker::input))
        .routes(routes!(worker::heartbeat))
        .routes(routes!(worker::fail))
        .layer(RequestBodyLimitLayer::new(MAX_BODY_BYTES));
    // Uploads stream to disk with per-file limits; the request as a whole may hold both files.
    let upload_limit = (config.max_image_bytes + config.max_audio_bytes) as usize + MAX_BODY_BYTES;
    let uploads = OpenApiRouter::default()
        .routes(routes!(videos::create))
        .routes(routes!(videos::preview))
        .layer(DefaultBodyLimit::disable())
        .layer(RequestBodyLimitLayer::new(upload_limit));
    // A worker's result streams to disk; its handler checks the declared length.
    let results = OpenApiRouter::default()
        .routes(routes!(worker::result))
        .layer(DefaultBodyLimit::disable())
        .layer(RequestBodyLimitLayer::new(
            worker::MAX_RESULT_BYTES as usize,
        ));
    // Anyone's video to check: streamed to disk, refused past `verify_max_bytes`.
    let checks = OpenApiRouter::default()
        .routes(routes!(provenance::verify))
        .layer(DefaultBodyLimit::disable())
        .layer(RequestBodyLimitLayer::new(
            config.verify_max_bytes as usize + MAX_BODY_BYTES,
        ));
    api.merge(uploads).merge(results).merge(checks)
}

/// The only routes left out of the OpenAPI document: the document itself, the vendored Swagger UI
/// that renders it, and the web app's page and files. Every other route goes through
/// `documented_routes`.
pub fn undocumented_routes() -> Vec<(&'static str, MethodRouter<AppState>)> {
    use routes::ops;
    let docs: [(&'static str, MethodRouter<AppState>); 5] = [
        ("/openapi.json", get(ops::openapi)),
        ("/docs", get(ops::docs)),
        ("/docs/init.js", get(ops::docs_init)),
        ("/docs/swagger-ui-bundle.js", get(ops::docs_bundle)),
        ("/docs/swagger-ui.css", get(ops::docs_css)),
    ];
    docs.into_iter().chain(webapp::routes()).collect()
}
