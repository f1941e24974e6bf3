//! The frame of the OpenAPI 3.1 document: info, tags, the bearer scheme and the problem schemas.
//! The paths are added by the router (`http::router`), from the same list that registers the routes.

use std::collections::BTreeMap;

use utoipa::openapi::path::{Operation, PathItem};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{Content, Ref, RefOr, Response, ResponseBuilder, Schema};
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

/// The answers every operation of a kind can give, whichever handler it is, added to the document
/// after the routes (utoipa knows only each handler's own `responses`): they come from the layers and
/// extractors around the handlers. Problem documents are sent as `application/problem+json`.
pub fn add_common_responses(document: &mut utoipa::openapi::OpenApi) {
    for (path, item) in document.paths.paths.iter_mut() {
        let has_path_params = path.contains('{');
        for operation in operations(item) {
            let secured = operation
                .security
                .as_ref()
                .is_some_and(|requirements| !requirements.is_empty());
            let tagged = |name: &str| {
                operation
                    .tags
                    .as_ref()
                    .is_some_and(|tags| tags.iter().any(|tag| tag == name))
            };
            // `Admin` and `PlatformAdmin` refuse other roles; worker tokens are not rate limited.
            let admin = tagged("admin") || tagged("platform");
            let worker = tagged("worker");
            let responses = &mut operation.responses.responses;
            if secured {
                add(responses, "401", "missing_token, invalid_token");
                if !worker {
                    add(responses, "429", "rate_limited");
                }
                if admin {
                    add(responses, "403", "forbidden");
                }
            }
            if operation.request_body.is_some() {
                add(
                    responses,
                    "400",
                    "invalid_json, invalid_form, invalid_multipart, unsupported_media_type",
                );
                add(responses, "422", "validation_failed");
            }
            if has_path_params {
                add(responses, "404", "not_found");
            }
            for response in responses.values_mut() {
                if let RefOr::T(response) = response {
                    as_problem_json(response);
                }
            }
        }
    }
}

fn operations(item: &mut PathItem) -> impl Iterator<Item = &mut Operation> {
    [
        &mut item.get,
        &mut item.put,
        &mut item.post,
        &mut item.delete,
        &mut item.options,
        &mut item.head,
        &mut item.patch,
        &mut item.trace,
    ]
    .into_iter()
    .filter_map(Option::as_mut)
}

/// Documents `status` as a problem document with `codes`, or adds the codes to its description.
fn add(responses: &mut BTreeMap<String, RefOr<Response>>, status: &str, codes: &str) {
    match responses.get_mut(status) {
        Some(RefOr::T(response)) => {
            let missing: Vec<&str> = codes
                .split(", ")
                .filter(|code| !response.description.contains(code))
                .collect();
            if !missing.is_empty() {
                if !response.description.is_empty() {
                    response.description.push_str(", ");
                }
                response.description.push_str(&missing.join(", "));
            }
            if response.content.is_empty() {
                response
                    .content
                    .insert(PROBLEM_JSON.to_owned(), Content::new(Some(problem_ref())));
            }
        }
        Some(RefOr::Ref(_)) => {}
        None => {
            let response = ResponseBuilder::new()
                .description(codes)
                .content(PROBLEM_JSON, Content::new(Some(problem_ref())))
                .build();
            responses.insert(status.to_owned(), RefOr::T(response));
        }
    }
}

const PROBLEM_JSON: &str = "application/problem+json";

fn problem_ref() -> RefOr<Schema> {
    RefOr::Ref(Ref::from_schema_name("Problem"))
}

/// A response whose body is a `Problem` is sent as `application/problem+json`, not `application/json`.
fn as_problem_json(response: &mut Response) {
    let is_problem = |content: &Content| matches!(&content.schema, Some(RefOr::Ref(reference)) if reference.ref_location.ends_with("/Problem"));
    if response
        .content
        .get("application/json")
        .is_some_and(is_problem)
    {
        if let Some(content) = response.content.shift_remove("application/json") {
            response.content.insert(PROBLEM_JSON.to_owned(), content);
        }
    }
}
