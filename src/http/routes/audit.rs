//! `/v1/audit`: reading and verifying the audit log. Tenant admins see their tenant's records.

use axum::extract::{Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};

use std::collections::HashMap;

use crate::audit::{AuditAction, ChainReport};
use crate::domain::{Role, TenantId, UserId};
use crate::http::caller::{Admin, PlatformAdmin};
use crate::http::error::ApiError;
use crate::http::state::AppState;
use crate::storage::{AuditQuery, AuditRecord, TenantScope};
use crate::time::UnixMillis;

const DEFAULT_LIMIT: i64 = 100;
const MAX_LIMIT: i64 = 1000;

/// Filters and paging of `GET /v1/audit`.
#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct AuditParams {
    /// Actor user id.
    pub actor: Option<String>,
    /// e.g. `auth.login`, `user.update`.
    pub action: Option<String>,
    /// `success`, `failure` or `denied`.
    pub outcome: Option<String>,
    /// RFC 3339 lower bound (inclusive).
    pub since: Option<String>,
    /// RFC 3339 upper bound (inclusive).
    pub until: Option<String>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
    /// 1 to 1000, default 100.
    pub limit: Option<i64>,
    /// `json` (default), `jsonl` or `csv`.
    pub format: Option<String>,
}

/// One audit record.
#[derive(Serialize, utoipa::ToSchema)]
pub struct AuditEntry {
    pub seq: i64,
    pub at: String,
    /// Who acted: `user` (a user of the tenant, named by `actor_user_id`), `platform_staff` (a
    /// platform admin: shown to tenant admins without id, address or user agent), `link_holder`
    /// (whoever held a signed download link), or `anonymous` (no verified identity, e.g. a failed
    /// login).
    pub actor_kind: &'static str,
    pub request_id: Option<String>,
    pub actor_user_id: Option<String>,
    pub actor_tenant_id: Option<String>,
    pub tenant_id: Option<String>,
    pub client_ip: Option<String>,
    pub user_agent: Option<String>,
    pub action: String,
    pub target: Option<String>,
    pub outcome: String,
    pub reason: Option<String>,
    pub prev_hash: String,
    pub hash: String,
}

impl From<AuditRecord> for AuditEntry {
    fn from(r: AuditRecord) -> Self {
        let actor_kind = match (&r.event.actor_user_id, r.event.reason.as_deref()) {
            (Some(_), _) => "user",
            (None, Some("signed_link")) => "link_holder",
            (None, _) => "anonymous",
        };
        Self {
            seq: r.seq,
            at: r.event.at.to_rfc3339(),
            actor_kind,
            request_id: r.event.request_id,
            actor_user_id: r.event.actor_user_id,
            actor_tenant_id: r.event.actor_tenant_id,
            tenant_id: r.event.tenant_id,
            client_ip: r.event.client_ip,
            user_agent: r.event.user_agent,
            action: r.event.action,
            target: r.event.target,
            outcome: r.event.outcome,
            reason: r.event.reason,
            prev_hash: r.prev_hash,
            hash: r.hash,
        }
    }
}

/// A page of audit records, newest first.
#[derive(Serialize, utoipa::ToSchema)]
pub struct AuditPage {
    pub items: Vec<AuditEntry>,
    /// Pass as `cursor` for the next (older) page; absent on the last page.
    pub next_cursor: Option<String>,
}

fn parse_time(field: &str, value: Option<&str>) -> Result<Option<UnixMillis>, ApiError> {
    value
        .map(|v| {
            UnixMillis::parse_rfc3339(v)
                .ok_or_else(|| ApiError::invalid(field, "must be an RFC 3339 time"))
        })
        .transpose()
}

fn parse_query(params: &AuditParams) -> Result<AuditQuery, ApiError> {
    let limit = params.limit.unwrap_or(DEFAULT_LIMIT);
    if !(1..=MAX_LIMIT).contains(&limit) {
        return Err(ApiError::invalid(
            "limit",
            format!("must be 1 to {MAX_LIMIT}"),
        ));
    }
    if let Some(outcome) = &params.outcome {
        if !matches!(outcome.as_str(), "success" | "failure" | "denied") {
            return Err(ApiError::invalid(
                "outcome",
                "must be success, failure or denied",
            ));
        }
    }
    let before_seq = params
        .cursor
        .as_deref()
        .map(|c| {
            c.parse::<i64>()
                .ok()
                .filter(|n| *n > 0)
                .ok_or_else(|| ApiError::invalid("cursor", "is not a cursor this API returned"))
        })
        .transpose()?;
    if let Some(action) = &params.action {
        action.parse::<AuditAction>().map_err(|_| {
            ApiError::invalid(
                "action",
                "is not an audited action (e.g. auth.login, video.create)",
            )
        })?;
    }
    Ok(AuditQuery {
        actor: params.actor.clone(),
        action: params.action.clone(),
        outcome: params.outcome.clone(),
        since: parse_time("since", params.since.as_deref())?,
        until: parse_time("until", params.until.as_deref())?,
        before_seq,
        limit,
    })
}

/// A tenant admin sees that platform staff acted, not who they are or where they were: entries whose
/// actor is a platform admin, or belongs to another tenant, lose the actor's ids, address and agent.
async fn hide_platform_staff(
    state: &AppState,
    tenant: TenantId,
    items: &mut [AuditEntry],
) -> Result<(), ApiError> {
    let mut staff: HashMap<String, bool> = HashMap::new();
    for item in items.iter_mut() {
        let Some(actor) = item.actor_user_id.clone() else {
            // Whoever held a signed link may be platform staff too: no address or agent either way.
            if item.actor_kind == "link_holder" {
                item.client_ip = None;
                item.user_agent = None;
            }
            continue;
        };
        let from_elsewhere = item.actor_tenant_id.as_deref() != Some(tenant.to_string().as_str());
        let is_staff = match staff.get(&actor) {
            Some(known) => *known,
            None => {
                let platform_admin = match actor.parse::<UserId>() {
                    Ok(id) => state
                        .store
                        .user(TenantScope::by_trusted_id(), id)
                        .await?
                        .is_some_and(|u| u.role == Role::PlatformAdmin),
                    Err(_) => false,
                };
                staff.insert(actor, platform_admin);
                platform_admin
            }
        };
        if from_elsewhere || is_staff {
            item.actor_kind = "platform_staff";
            item.actor_user_id = None;
            item.actor_tenant_id = None;
            item.client_ip = None;
            item.user_agent = None;
            item.request_id = None;
        }
    }
    Ok(())
}

/// A spreadsheet would run a cell starting with `=`, `+`, `-` or `@` as a formula: such values get a
/// leading `'` (OWASP's CSV injection advice).
fn defuse_formula(value: &str) -> std::borrow::Cow<'_, str> {
    if value.starts_with(['=', '+', '-', '@']) {
        format!("'{value}").into()
    } else {
        value.into()
    }
}

fn to_csv(items: &[AuditEntry]) -> anyhow::Result<String> {
    let mut out = csv::Writer::from_writer(Vec::new());
    out.write_record([
        "seq",
        "at",
        "actor_kind",
        "request_id",
        "actor_user_id",
        "actor_tenant_id",
        "tenant_id",
        "client_ip",
        "user_agent",
        "action",
        "target",
        "outcome",
        "reason",
        "prev_hash",
        "hash",
    ])?;
    for e in items {
        let opt = |v: &Option<String>| v.clone().unwrap_or_default();
        let row = [
            e.seq.to_string(),
            e.at.clone(),
            e.actor_kind.to_owned(),
            opt(&e.request_id),
            opt(&e.actor_user_id),
            opt(&e.actor_tenant_id),
            opt(&e.tenant_id),
            opt(&e.client_ip),
            opt(&e.user_agent),
            e.action.clone(),
            opt(&e.target),
            e.outcome.clone(),
            opt(&e.reason),
            e.prev_hash.clone(),
            e.hash.clone(),
        ];
        out.write_record(row.iter().map(|v| defuse_formula(v).into_owned()))?;
    }
    Ok(String::from_utf8(out.into_inner()?)?)
}

/// Audit records, newest first, filtered and paged by cursor. `format=jsonl` and `format=csv` give the
/// page as lines; the next cursor is then in the `X-Next-Cursor` header.
#[utoipa::path(get, path = "/v1/audit", tag = "admin", params(AuditParams),
    responses((status = 200, body = AuditPage), (status = 422, body = crate::http::error::Problem)),
    security(("bearer" = [])))]
pub async fn list(
    State(state): State<AppState>,
    Admin(caller): Admin,
    params: Result<Query<AuditParams>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(params) = params.map_err(|e| ApiError::invalid("query", e.body_text()))?;
    let query = parse_query(&params)?;
    let records = state.store.query_audit(caller.scope(), &query).await?;
    let next_cursor = (records.len() as i64 == query.limit)
        .then(|| records.last().map(|r| r.seq.to_string()))
        .flatten();
    let mut items: Vec<AuditEntry> = records.into_iter().map(AuditEntry::from).collect();
    if caller.role != Role::PlatformAdmin {
        hide_platform_staff(&state, caller.tenant_id, &mut items).await?;
        // Filtering by a staff member's id must not confirm it is one.
        if params.actor.is_some() {
            items.retain(|item| item.actor_kind != "platform_staff");
        }
    }
    let cursor_header = next_cursor.clone().unwrap_or_default();
    let response = match params.format.as_deref().unwrap_or("json") {
        "json" => Json(AuditPage { items, next_cursor }).into_response(),
        "jsonl" => {
            let mut body = String::new();
            for item in &items {
                body.push_str(&serde_json::to_string(item).map_err(anyhow::Error::from)?);
                body.push('\n');
            }
            (
                [
                    (header::CONTENT_TYPE, "application/jsonl".to_owned()),
                    (
                        header::HeaderName::from_static("x-next-cursor"),
                        cursor_header,
                    ),
                ],
                body,
            )
                .into_response()
        }
        "csv" => (
            [
                (header::CONTENT_TYPE, "text/csv; charset=utf-8".to_owned()),
                (
                    header::HeaderName::from_static("x-next-cursor"),
                    cursor_header,
                ),
            ],
            to_csv(&items)?,
        )
            .into_response(),
        _ => return Err(ApiError::invalid("format", "must be json, jsonl or csv")),
    };
    Ok(response)
}

/// Walks the whole chain, reports the first broken link, and checks that the chain still reaches
/// its latest signed checkpoint (deleting the newest records is otherwise undetectable).
#[utoipa::path(get, path = "/v1/audit/verify", tag = "platform",
    responses((status = 200, body = ChainReport)),
    security(("bearer" = [])))]
pub async fn verify(
    State(state): State<AppState>,
    _: PlatformAdmin,
) -> Result<Json<ChainReport>, ApiError> {
    Ok(Json(
        crate::audit::verify_anchored(state.store.as_ref(), &state.tokens, None).await?,
    ))
}

#[cfg(test)]
mod tests {
    #[test]
    fn csv_formulas_are_neutralised() {
        assert_eq!(super::defuse_formula("=SUM(A1)"), "'=SUM(A1)");
        assert_eq!(super::defuse_formula("plain"), "plain");
    }
}
