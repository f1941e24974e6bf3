//! `GET /v1/me`: who the caller is and what their plan allows.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::auth::tokens::TokenRejection;
use crate::domain::{Plan, PlanName, Role, TenantId, UserId};
use crate::http::caller::Caller;
use crate::http::error::ApiError;
use crate::http::state::AppState;

/// The caller's identity and limits.
#[derive(Serialize, utoipa::ToSchema)]
pub struct MeResponse {
    pub id: UserId,
    pub username: String,
    pub tenant: TenantRef,
    pub role: Role,
    pub plan: PlanName,
    pub limits: Plan,
}

/// A tenant's id and name.
#[derive(Serialize, utoipa::ToSchema)]
pub struct TenantRef {
    pub id: TenantId,
    pub name: String,
}

/// The caller's identity, role, plan and the plan's limits. Role and plan are those of the token;
/// names come from a short-lived cache (`http::directory`), which also keeps the rendered body.
#[utoipa::path(
    get, path = "/v1/me", tag = "account",
    responses(
        (status = 200, body = MeResponse),
        (status = 401, description = "No valid access token", body = crate::http::error::Problem),
    ),
    security(("bearer" = []))
)]
pub async fn me(State(state): State<AppState>, caller: Caller) -> Result<Response, ApiError> {
    if let Some(profile) = state
        .directory
        .rendered(caller.user_id, caller.role, &caller.plan)
    {
        return Ok(json_body(profile.body.clone()));
    }
    let names = state
        .directory
        .names(state.store.as_ref(), caller.user_id, caller.tenant_id)
        .await?
        .ok_or(ApiError::Unauthorized(TokenRejection::Revoked))?;
    let profile = MeResponse {
        id: caller.user_id,
        username: names.username,
        tenant: TenantRef {
            id: caller.tenant_id,
            name: names.tenant_name,
        },
        role: caller.role,
        limits: state.plans.limits(&caller.plan),
        plan: caller.plan.clone(),
    };
    let body = Bytes::from(serde_json::to_vec(&profile).map_err(anyhow::Error::from)?);
    state
        .directory
        .store_rendered(caller.user_id, caller.role, caller.plan, body.clone());
    Ok(json_body(body))
}

fn json_body(body: Bytes) -> Response {
    ([(header::CONTENT_TYPE, "application/json")], body).into_response()
}
