//! The frame of the OpenAPI 3.1 document: info, tags, the bearer scheme and the problem schemas.
//! The paths are added by the router (`http::router`), from the same list that registers the routes.

use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::Modify;

/// The document before any route is added.
#[derive(utoipa::OpenApi)]
#[openapi(
    info(title = "Sonic Gateway", description = "Multi-tenant, authenticated API in front of the Sonic talking-head model."),
    components(schemas(crate::http::error::Problem, crate::http::error::FieldError)),
    modifiers(&BearerAuth),
    tags(
        (name = "auth", description = "Tokens, revocation and key discovery"),
        (name = "account", description = "The signed-in user"),
        (name = "admin", description = "Tenant administration"),
        (name = "platform", description = "Platform administration"),
        (name = "videos", description = "Video generation"),
        (name = "provenance", description = "Labels and C2PA Content Credentials of any video (no account needed)"),
        (name = "ops", description = "Health"),
        (name = "worker", description = "The remote worker protocol (worker tokens only)"),
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
