//! `/v1/webhook-secret`: the tenant's secret for verifying webhook signatures (admins).

use axum::extract::State;
use axum::Json;
use serde::Serialize;

use crate::audit::{AuditAction, AuditEvent, Outcome};
use crate::http::caller::Admin;
use crate::http::error::ApiError;
use crate::http::state::AppState;
use crate::videos::webhook;

/// A Standard Webhooks secret (`whsec_` + base64).
#[derive(Serialize, utoipa::ToSchema)]
pub struct WebhookSecret {
    pub secret: String,
}

/// The caller's tenant's secret, made on first use.
#[utoipa::path(get, path = "/v1/webhook-secret", tag = "videos",
    responses((status = 200, body = WebhookSecret), (status = 403, body = crate::http::error::Problem)),
    security(("bearer" = [])))]
pub async fn get(
    State(state): State<AppState>,
    Admin(caller): Admin,
) -> Result<Json<WebhookSecret>, ApiError> {
    let secret = webhook::tenant_secret(state.store.as_ref(), caller.tenant_id).await?;
    Ok(Json(WebhookSecret { secret }))
}

/// Replaces the tenant's secret; deliveries from now on are signed with the new one.
#[utoipa::path(post, path = "/v1/webhook-secret", tag = "videos",
    responses((status = 200, body = WebhookSecret), (status = 403, body = crate::http::error::Problem)),
    security(("bearer" = [])))]
pub async fn rotate(
    State(state): State<AppState>,
    Admin(caller): Admin,
) -> Result<Json<WebhookSecret>, ApiError> {
    let secret = state
        .store
        .put_webhook_secret(
            caller.tenant_id,
            &webhook::new_secret(),
            true,
            crate::time::now_ms(),
        )
        .await?;
    state
        .auditor
        .record(
            &caller.audit_context(),
            AuditEvent::new(AuditAction::WebhookSecretRotate, Outcome::Success)
                .target(caller.tenant_id),
        )
        .await;
    Ok(Json(WebhookSecret { secret }))
}
