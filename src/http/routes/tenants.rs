//! `/v1/tenants`: platform admins manage tenants; a tenant admin may read their own tenant.

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::Json;
use serde::{Deserialize, Serialize};

use crate::domain::{PlanName, TenantId};
use crate::http::caller::{Admin, PlatformAdmin};
use crate::http::error::ApiError;
use crate::http::extract::{ApiJson, ApiPath};
use crate::http::state::AppState;
use crate::storage::TenantRecord;

/// A tenant as the API shows it.
#[derive(Serialize, utoipa::ToSchema)]
pub struct TenantView {
    pub id: TenantId,
    pub name: String,
    pub plan: PlanName,
    pub created_at: String,
    pub updated_at: String,
}

impl From<TenantRecord> for TenantView {
    fn from(t: TenantRecord) -> Self {
        Self {
            id: t.id,
            name: t.name.as_str().to_owned(),
            plan: t.plan,
            created_at: t.created_at.to_rfc3339(),
            updated_at: t.updated_at.to_rfc3339(),
        }
    }
}

/// A list of tenants.
#[derive(Serialize, utoipa::ToSchema)]
pub struct TenantList {
    pub items: Vec<TenantView>,
}

/// A tenant to create.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateTenant {
    pub name: String,
    /// Defaults to `free`.
    pub plan: Option<String>,
}

/// Changes to a tenant.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateTenant {
    pub name: Option<String>,
    pub plan: Option<String>,
}

fn parse_tenant_id(raw: &str) -> Result<TenantId, ApiError> {
    raw.parse().map_err(|_| ApiError::NotFound)
}

#[utoipa::path(get, path = "/v1/tenants", tag = "platform",
    responses((status = 200, body = TenantList), (status = 403, body = crate::http::error::Problem)),
    security(("bearer" = [])))]
pub async fn list(
    State(state): State<AppState>,
    _: PlatformAdmin,
) -> Result<Json<TenantList>, ApiError> {
    let tenants = state.store.list_tenants().await?;
    Ok(Json(TenantList {
        items: tenants.into_iter().map(TenantView::from).collect(),
    }))
}

#[utoipa::path(post, path = "/v1/tenants", tag = "platform", request_body = CreateTenant,
    responses((status = 201, body = TenantView), (status = 409, body = crate::http::error::Problem),
        (status = 422, body = crate::http::error::Problem)),
    security(("bearer" = [])))]
pub async fn create(
    State(state): State<AppState>,
    PlatformAdmin(caller): PlatformAdmin,
    ApiJson(body): ApiJson<CreateTenant>,
) -> Result<impl IntoResponse, ApiError> {
    let tenant = state
        .accounts
        .create_tenant(&caller.audit_context(), &body.name, body.plan.as_deref())
        .await?;
    let location = format!("/v1/tenants/{}", tenant.id);
    Ok((
        StatusCode::CREATED,
        [(header::LOCATION, location)],
        Json(TenantView::from(tenant)),
    ))
}

/// A platform admin reads any tenant; a tenant admin only their own (others answer 404).
#[utoipa::path(get, path = "/v1/tenants/{id}", tag = "platform",
    params(("id" = String, Path)),
    responses((status = 200, body = TenantView), (status = 404, body = crate::http::error::Problem)),
    security(("bearer" = [])))]
pub async fn get(
    State(state): State<AppState>,
    Admin(caller): Admin,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<TenantView>, ApiError> {
    let tenant = state
        .store
        .tenant(caller.scope(), parse_tenant_id(&id)?)
        .await?
        .ok_or(ApiError::NotFound)?;
    Ok(Json(tenant.into()))
}

#[utoipa::path(patch, path = "/v1/tenants/{id}", tag = "platform", request_body = UpdateTenant,
    params(("id" = String, Path)),
    responses((status = 200, body = TenantView), (status = 404, body = crate::http::error::Problem),
        (status = 409, description = "already_exists: another tenant has this name", body = crate::http::error::Problem)),
    security(("bearer" = [])))]
pub async fn update(
    State(state): State<AppState>,
    PlatformAdmin(caller): PlatformAdmin,
    ApiPath(id): ApiPath<String>,
    ApiJson(body): ApiJson<UpdateTenant>,
) -> Result<Json<TenantView>, ApiError> {
    let tenant = state
        .accounts
        .update_tenant(
            &caller.audit_context(),
            parse_tenant_id(&id)?,
            body.name.as_deref(),
            body.plan.as_deref(),
        )
        .await?;
    state.directory.clear();
    Ok(Json(tenant.into()))
}

/// The visible AI label's texts a tenant's videos show.
#[derive(Serialize, utoipa::ToSchema)]
pub struct TenantLabelView {
    /// Shown for `label_language` `zh` and `both`.
    pub zh: String,
    /// Shown for `label_language` `en` and `both`.
    pub en: String,
    /// `false`: the defaults ("AI生成", "AI-generated").
    pub custom: bool,
}

impl TenantLabelView {
    fn of(texts: crate::domain::LabelTexts) -> Self {
        let custom = texts != crate::domain::LabelTexts::default();
        Self {
            zh: texts.zh.into(),
            en: texts.en.into(),
            custom,
        }
    }
}

/// New label texts: each one line, at most 32 characters and 13 CJK characters wide; an omitted one
/// is the default. `reset: true` goes back to both defaults.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateTenantLabel {
    pub zh: Option<String>,
    pub en: Option<String>,
    #[serde(default)]
    pub reset: bool,
}

/// A platform admin reads any tenant's label texts; a tenant admin their own.
#[utoipa::path(get, path = "/v1/tenants/{id}/label", tag = "platform",
    params(("id" = String, Path)),
    responses((status = 200, body = TenantLabelView), (status = 404, body = crate::http::error::Problem)),
    security(("bearer" = [])))]
pub async fn get_label(
    State(state): State<AppState>,
    Admin(caller): Admin,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<TenantLabelView>, ApiError> {
    let tenant = state
        .store
        .tenant(caller.scope(), parse_tenant_id(&id)?)
        .await?
        .ok_or(ApiError::NotFound)?;
    let texts = state
        .store
        .tenant_label(tenant.id)
        .await?
        .unwrap_or_default();
    Ok(Json(TenantLabelView::of(texts)))
}

/// Only platform admins change a label: what it says is the operator's legal duty.
#[utoipa::path(put, path = "/v1/tenants/{id}/label", tag = "platform", request_body = UpdateTenantLabel,
    params(("id" = String, Path)),
    responses((status = 200, body = TenantLabelView), (status = 404, body = crate::http::error::Problem),
        (status = 422, body = crate::http::error::Problem)),
    security(("bearer" = [])))]
pub async fn put_label(
    State(state): State<AppState>,
    PlatformAdmin(caller): PlatformAdmin,
    ApiPath(id): ApiPath<String>,
    ApiJson(body): ApiJson<UpdateTenantLabel>,
) -> Result<Json<TenantLabelView>, ApiError> {
    let texts = state
        .accounts
        .set_tenant_label(
            &caller.audit_context(),
            parse_tenant_id(&id)?,
            body.zh.as_deref(),
            body.en.as_deref(),
            body.reset,
        )
        .await?;
    Ok(Json(TenantLabelView::of(texts)))
}
