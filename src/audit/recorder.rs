//! Writing audit events with the request's context.

use std::sync::Arc;

use super::AuditAction;
use crate::domain::{TenantId, UserId};
use crate::storage::{AuditStore, NewAuditRecord};
use crate::time::now_ms;

/// Who did something, from where, in which request.
#[derive(Debug, Clone, Default)]
pub struct AuditContext {
    pub request_id: Option<String>,
    pub actor_user_id: Option<UserId>,
    pub actor_tenant_id: Option<TenantId>,
    pub client_ip: Option<String>,
    pub user_agent: Option<String>,
}

impl AuditContext {
    /// Actions taken by the operator through `sonicgw` subcommands.
    pub fn cli() -> Self {
        Self {
            user_agent: Some("sonicgw-cli".to_owned()),
            ..Self::default()
        }
    }

    pub fn with_actor(mut self, user: UserId, tenant: TenantId) -> Self {
        self.actor_user_id = Some(user);
        self.actor_tenant_id = Some(tenant);
        self
    }
}

/// How an audited action ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Success,
    Failure,
    Denied,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Success => "success",
            Outcome::Failure => "failure",
            Outcome::Denied => "denied",
        }
    }
}

/// Appends audit events. An event that cannot be written is logged loudly; the request still completes.
#[derive(Clone)]
pub struct Auditor {
    store: Arc<dyn AuditStore>,
}

/// One event to record.
pub struct AuditEvent<'a> {
    pub action: AuditAction,
    pub outcome: Outcome,
    /// The tenant the event concerns (defaults to the actor's).
    pub tenant: Option<TenantId>,
    pub target: Option<String>,
    /// A machine-readable reason code; never secrets.
    pub reason: Option<&'a str>,
}

impl<'a> AuditEvent<'a> {
    pub fn new(action: AuditAction, outcome: Outcome) -> Self {
        Self {
            action,
            outcome,
            tenant: None,
            target: None,
            reason: None,
        }
    }

    pub fn target(mut self, target: impl ToString) -> Self {
        self.target = Some(target.to_string());
        self
    }

    pub fn tenant(mut self, tenant: TenantId) -> Self {
        self.tenant = Some(tenant);
        self
    }

    pub fn reason(mut self, reason: &'a str) -> Self {
        self.reason = Some(reason);
        self
    }
}

impl Auditor {
    pub fn new(store: Arc<dyn AuditStore>) -> Self {
        Self { store }
    }

    pub async fn record(&self, context: &AuditContext, event: AuditEvent<'_>) {
        let tenant = event.tenant.or(context.actor_tenant_id);
        let record = NewAuditRecord {
            at: now_ms(),
            request_id: context.request_id.clone(),
            actor_user_id: context.actor_user_id.map(|u| u.to_string()),
            actor_tenant_id: context.actor_tenant_id.map(|t| t.to_string()),
            tenant_id: tenant.map(|t| t.to_string()),
            client_ip: context.client_ip.clone(),
            user_agent: context.user_agent.clone(),
            action: event.action.as_str().to_owned(),
            target: event.target,
            outcome: event.outcome.as_str().to_owned(),
            reason: event.reason.map(str::to_owned),
        };
        if let Err(err) = self.store.append_audit(&record).await {
            tracing::error!(action = %record.action, error = %err, "audit record could not be written");
        }
    }
}
