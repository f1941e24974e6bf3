//! The OpenAPI 3.1 document, assembled from the handlers' annotations.

use std::sync::OnceLock;

use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use super::routes;

#[derive(OpenApi)]
#[openapi(
    info(title = "Sonic Gateway", description = "Multi-tenant, authenticated API in front of the Sonic talking-head model."),
    paths(
        routes::ops::healthz, routes::ops::readyz, routes::ops::jwks, routes::ops::oauth_metadata,
        routes::auth::token, routes::auth::login, routes::auth::revoke, routes::auth::logout,
        routes::me::me,
        routes::users::list, routes::users::create, routes::users::get, routes::users::update, routes::users::delete,
        routes::tenants::list, routes::tenants::create, routes::tenants::get, routes::tenants::update,
        routes::audit::list, routes::audit::verify,
        routes::videos::create, routes::videos::get, routes::videos::list, routes::videos::cancel,
        routes::videos::delete, routes::videos::events, routes::files::content, routes::files::signed,
        routes::engines::list, routes::webhooks::get, routes::webhooks::rotate,
    ),
    components(schemas(crate::http::error::Problem, crate::http::error::FieldError)),
    modifiers(&BearerAuth),
    tags(
        (name = "auth", description = "Tokens, revocation and key discovery"),
        (name = "account", description = "The signed-in user"),
        (name = "admin", description = "Tenant administration"),
        (name = "platform", description = "Platform administration"),
        (name = "videos", description = "Video generation"),
        (name = "ops", description = "Health"),
    )
)]
pub struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .build(),
            ),
        );
    }
}

/// The document as JSON, built once.
pub fn document_json() -> &'static str {
    static DOCUMENT: OnceLock<String> = OnceLock::new();
    DOCUMENT.get_or_init(|| {
        ApiDoc::openapi()
            .to_json()
            .expect("the OpenAPI document serialises")
    })
}
