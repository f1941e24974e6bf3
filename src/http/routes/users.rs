//! `/v1/users`: tenant admins manage their tenant's users; platform admins any tenant's.
//! Another tenant's user answers 404.

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::Json;
use serde::{Deserialize, Deserializer, Serialize};

use crate::accounts::{NewUser, UserChanges};
use crate::domain::{PlanName, Role, TenantId, UserId};
use crate::http::caller::Admin;
use crate::http::error::ApiError;
use crate::http::extract::{ApiJson, ApiPath};
use crate::http::state::AppState;
use crate::storage::UserRecord;

/// A user as the API shows it (never the password hash).
#[derive(Serialize, utoipa::ToSchema)]
pub struct UserView {
    pub id: UserId,
    pub tenant_id: TenantId,
    pub username: String,
    pub role: Role,
    /// The user's own plan; absent when the tenant's plan applies.
    pub plan: Option<PlanName>,
    pub disabled: bool,
    pub created_at: String,
    pub updated_at: String,
}

impl From<UserRecord> for UserView {
    fn from(user: UserRecord) -> Self {
        Self {
            id: user.id,
            tenant_id: user.tenant_id,
            username: user.username.as_str().to_owned(),
            role: user.role,
            plan: user.plan,
            disabled: user.disabled,
            created_at: user.created_at.to_rfc3339(),
            updated_at: user.updated_at.to_rfc3339(),
        }
    }
}

/// A list of users.
#[derive(Serialize, utoipa::ToSchema)]
pub struct UserList {
    pub items: Vec<UserView>,
}

/// A user to create.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateUser {
    pub username: String,
    pub password: String,
    /// `user` (default), `admin` or `platform_admin` (platform admins only).
    pub role: Option<String>,
    /// Overrides the tenant's plan.
    pub plan: Option<String>,
    /// Platform admins only; defaults to the caller's tenant.
    #[schema(value_type = Option<String>)]
    pub tenant_id: Option<TenantId>,
}

/// Changes to a user. Send `"plan": null` to fall back to the tenant's plan.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateUser {
    pub role: Option<String>,
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>)]
    pub plan: Option<Option<String>>,
    pub disabled: Option<bool>,
    /// A new password: revokes every token of the user.
    pub password: Option<String>,
}

/// Distinguishes an absent field (`None`) from an explicit null (`Some(None)`).
fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Option<String>>, D::Error> {
    Option::<String>::deserialize(d).map(Some)
}

pub(crate) fn parse_user_id(raw: &str) -> Result<UserId, ApiError> {
    raw.parse().map_err(|_| ApiError::NotFound)
}

#[utoipa::path(get, path = "/v1/users", tag = "admin",
    responses((status = 200, body = UserList), (status = 403, body = crate::http::error::Problem)),
    security(("bearer" = [])))]
pub async fn list(
    State(state): State<AppState>,
    Admin(caller): Admin,
) -> Result<Json<UserList>, ApiError> {
    let users = state.store.list_users(caller.scope()).await?;
    Ok(Json(UserList {
        items: users.into_iter().map(UserView::from).collect(),
    }))
}

#[utoipa::path(post, path = "/v1/users", tag = "admin", request_body = CreateUser,
    responses((status = 201, body = UserView), (status = 409, body = crate::http::error::Problem),
        (status = 422, body = crate::http::error::Problem)),
    security(("bearer" = [])))]
pub async fn create(
    State(state): State<AppState>,
    Admin(caller): Admin,
    ApiJson(body): ApiJson<CreateUser>,
) -> Result<impl IntoResponse, ApiError> {
    let user = state
        .accounts
        .create_user(
            &caller.audit_context(),
            caller.actor(),
            NewUser {
                username: body.username,
                password: body.password,
                role: body.role,
                plan: body.plan,
                tenant_id: body.tenant_id,
            },
        )
        .await?;
    let location = format!("/v1/users/{}", user.id);
    Ok((
        StatusCode::CREATED,
        [(header::LOCATION, location)],
        Json(UserView::from(user)),
    ))
}

#[utoipa::path(get, path = "/v1/users/{id}", tag = "admin",
    params(("id" = String, Path)),
    responses((status = 200, body = UserView), (status = 404, body = crate::http::error::Problem)),
    security(("bearer" = [])))]
pub async fn get(
    State(state): State<AppState>,
    Admin(caller): Admin,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<UserView>, ApiError> {
    let user = state
        .accounts
        .user(caller.actor(), parse_user_id(&id)?)
        .await?;
    Ok(Json(user.into()))
}

#[utoipa::path(patch, path = "/v1/users/{id}", tag = "admin", request_body = UpdateUser,
    params(("id" = String, Path)),
    responses((status = 200, body = UserView), (status = 404, body = crate::http::error::Problem),
        (status = 409, description = "conflict: changing your own role or disabling yourself", body = crate::http::error::Problem),
        (status = 422, body = crate::http::error::Problem)),
    security(("bearer" = [])))]
pub async fn update(
    State(state): State<AppState>,
    Admin(caller): Admin,
    ApiPath(id): ApiPath<String>,
    ApiJson(body): ApiJson<UpdateUser>,
) -> Result<Json<UserView>, ApiError> {
    let id = parse_user_id(&id)?;
    let user = state
        .accounts
        .update_user(
            &caller.audit_context(),
            caller.actor(),
            id,
            UserChanges {
                role: body.role,
                plan: body.plan,
                disabled: body.disabled,
                password: body.password,
            },
        )
        .await?;
    state.directory.forget(id);
    Ok(Json(user.into()))
}

#[utoipa::path(delete, path = "/v1/users/{id}", tag = "admin",
    params(("id" = String, Path)),
    responses((status = 204), (status = 404, body = crate::http::error::Problem),
        (status = 409, description = "conflict: deleting yourself", body = crate::http::error::Problem)),
    security(("bearer" = [])))]
pub async fn delete(
    State(state): State<AppState>,
    Admin(caller): Admin,
    ApiPath(id): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    let id = parse_user_id(&id)?;
    state
        .accounts
        .delete_user(&caller.audit_context(), caller.actor(), id)
        .await?;
    state.directory.forget(id);
    Ok(StatusCode::NO_CONTENT)
}
