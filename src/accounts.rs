//! Managing tenants and users, shared by the admin API and the operator's CLI. The rules about who
//! may change whom live here, once.

use std::sync::Arc;

use crate::audit::{AuditAction, AuditContext, AuditEvent, Auditor, Outcome};
use crate::auth::password::Passwords;
use crate::auth::revocation::Revocations;
use crate::auth::sessions::revoke_all_user_tokens;
use crate::domain::{
    FieldError, Password, PasswordPolicy, PlanName, Plans, Role, TenantId, TenantName, UserId,
    Username,
};
use crate::storage::{Store, StoreError, TenantRecord, TenantScope, TenantUpdate, UserRecord};
use crate::time::now_ms;

/// Who is making a change.
#[derive(Debug, Clone, Copy)]
pub enum Actor {
    /// The operator, through `sonicgw admin` on the database directly.
    Operator,
    /// A signed-in user.
    User {
        id: UserId,
        tenant: TenantId,
        role: Role,
    },
}

impl Actor {
    fn role(self) -> Role {
        match self {
            Actor::Operator => Role::PlatformAdmin,
            Actor::User { role, .. } => role,
        }
    }

    fn scope(self) -> TenantScope {
        match self {
            Actor::User { role, tenant, .. } if role != Role::PlatformAdmin => {
                TenantScope::tenant(tenant)
            }
            Actor::User { .. } => TenantScope::platform_admin(),
            Actor::Operator => TenantScope::operator(),
        }
    }

    fn is(self, user: UserId) -> bool {
        matches!(self, Actor::User { id, .. } if id == user)
    }
}

/// Why an account change was refused.
#[derive(Debug, thiserror::Error)]
pub enum AccountError {
    #[error(transparent)]
    Invalid(#[from] FieldError),
    /// Absent, or outside the actor's tenant.
    #[error("not found")]
    NotFound,
    #[error("{0}")]
    Forbidden(&'static str),
    #[error("{0}")]
    Conflict(&'static str),
    /// A unique name is already taken.
    #[error("the name is already taken")]
    NameTaken,
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

impl From<StoreError> for AccountError {
    fn from(err: StoreError) -> Self {
        match err {
            StoreError::Conflict => AccountError::NameTaken,
            other => AccountError::Internal(other.into()),
        }
    }
}

/// A user to create. Strings are parsed here.
#[derive(Debug, Default)]
pub struct NewUser {
    pub username: String,
    pub password: String,
    pub role: Option<String>,
    pub plan: Option<String>,
    /// Defaults to the actor's tenant; only a platform admin may name another.
    pub tenant_id: Option<TenantId>,
}

/// Changes to a user; `None` leaves a field alone. `plan: Some(None)` clears the user's own plan.
#[derive(Debug, Default)]
pub struct UserChanges {
    pub role: Option<String>,
    pub plan: Option<Option<String>>,
    pub disabled: Option<bool>,
    pub password: Option<String>,
}

/// Tenant and user management.
#[derive(Clone)]
pub struct Accounts {
    pub store: Arc<dyn Store>,
    pub passwords: Passwords,
    pub revocations: Arc<Revocations>,
    pub auditor: Auditor,
    pub plans: Plans,
    pub policy: PasswordPolicy,
    /// Forgotten here when a plan changes, so this process's next submission sees the change at once.
    pub current_plans: Arc<CurrentPlans>,
}

/// How long a user's current plan is remembered: other processes see a plan change within this.
pub const CURRENT_PLAN_TTL: std::time::Duration = std::time::Duration::from_secs(5);

/// The plan that applies to a user now (their own, else their tenant's), read from the database and
/// remembered for [`CURRENT_PLAN_TTL`]: submissions are checked against it rather than the token's
/// `plan` claim, which can be as old as the token.
pub struct CurrentPlans {
    cache: quick_cache::sync::Cache<crate::domain::UserId, (PlanName, std::time::Instant)>,
    ttl: std::time::Duration,
}

impl CurrentPlans {
    pub fn new(capacity: usize, ttl: std::time::Duration) -> Self {
        Self {
            cache: quick_cache::sync::Cache::new(capacity.max(1)),
            ttl,
        }
    }

    /// The user's plan now; `claimed` (the token's) when the user no longer exists.
    pub async fn of(
        &self,
        store: &dyn Store,
        user: crate::domain::UserId,
        claimed: &PlanName,
    ) -> Result<PlanName, StoreError> {
        if let Some((plan, at)) = self.cache.get(&user) {
            if at.elapsed() < self.ttl {
                return Ok(plan);
            }
        }
        let plan = store
            .current_plan(user)
            .await?
            .unwrap_or_else(|| claimed.clone());
        self.cache
            .insert(user, (plan.clone(), std::time::Instant::now()));
        Ok(plan)
    }

    /// A tenant's plan changed: every user may be affected.
    pub fn forget_all(&self) {
        self.cache.clear();
    }

    pub fn forget(&self, user: crate::domain::UserId) {
        self.cache.remove(&user);
    }
}

impl Accounts {
    pub async fn create_tenant(
        &self,
        context: &AuditContext,
        name: &str,
        plan: Option<&str>,
    ) -> Result<TenantRecord, AccountError> {
        let now = now_ms();
        let tenant = TenantRecord {
            id: TenantId::generate(),
            name: TenantName::parse(name)?,
            plan: PlanName::parse(plan.unwrap_or("free"), &self.plans)?,
            created_at: now,
            updated_at: now,
        };
        self.store.insert_tenant(&tenant).await?;
        self.auditor
            .record(
                context,
                AuditEvent::new(AuditAction::TenantCreate, Outcome::Success)
                    .tenant(tenant.id)
                    .target(tenant.id),
            )
            .await;
        Ok(tenant)
    }

    pub async fn update_tenant(
        &self,
        context: &AuditContext,
        id: TenantId,
        name: Option<&str>,
        plan: Option<&str>,
    ) -> Result<TenantRecord, AccountError> {
        let update = TenantUpdate {
            name: name.map(TenantName::parse).transpose()?,
            plan: plan.map(|p| PlanName::parse(p, &self.plans)).transpose()?,
        };
        let tenant = self
            .store
            .update_tenant(id, &update, now_ms())
            .await?
            .ok_or(AccountError::NotFound)?;
        if update.plan.is_some() {
            self.current_plans.forget_all();
        }
        self.auditor
            .record(
                context,
                AuditEvent::new(AuditAction::TenantUpdate, Outcome::Success)
                    .tenant(id)
                    .target(id),
            )
            .await;
        Ok(tenant)
    }

    /// Sets the tenant's visible label texts (each `None` keeps the default), or with `reset` goes
    /// back to the defaults. Returns the texts in force.
    pub async fn set_tenant_label(
        &self,
        context: &AuditContext,
        id: TenantId,
        zh: Option<&str>,
        en: Option<&str>,
        reset: bool,
    ) -> Result<crate::domain::LabelTexts, AccountError> {
        use crate::domain::{LabelText, LabelTexts};
        self.store
            .tenant(TenantScope::by_trusted_id(), id)
            .await?
            .ok_or(AccountError::NotFound)?;
        let defaults = LabelTexts::default();
        let texts = LabelTexts {
            zh: zh
                .map(|t| LabelText::parse("zh", t))
                .transpose()?
                .unwrap_or(defaults.zh.clone()),
            en: en
                .map(|t| LabelText::parse("en", t))
                .transpose()?
                .unwrap_or(defaults.en.clone()),
        };
        let custom = !reset && texts != defaults;
        self.store
            .put_tenant_label(id, custom.then_some(&texts), now_ms())
            .await?;
        self.auditor
            .record(
                context,
                AuditEvent::new(AuditAction::TenantUpdate, Outcome::Success)
                    .tenant(id)
                    .target(id)
                    .reason("label"),
            )
            .await;
        Ok(if custom { texts } else { defaults })
    }

    pub async fn create_user(
        &self,
        context: &AuditContext,
        actor: Actor,
        new: NewUser,
    ) -> Result<UserRecord, AccountError> {
        let username = Username::parse(&new.username)?;
        let password = Password::parse(new.password, self.policy)?;
        let role = match &new.role {
            Some(role) => role.parse::<Role>()?,
            None => Role::User,
        };
        if role > actor.role() {
            return Err(AccountError::Forbidden(
                "you cannot grant a role above your own",
            ));
        }
        if new.plan.is_some() && actor.role() != Role::PlatformAdmin {
            return Err(AccountError::Forbidden(
                "only a platform admin can give a user a plan of their own",
            ));
        }
        let plan = new
            .plan
            .as_deref()
            .map(|p| PlanName::parse(p, &self.plans))
            .transpose()?;
        let tenant_id = match (new.tenant_id, actor) {
            (Some(id), _) => id,
            (None, Actor::User { tenant, .. }) => tenant,
            (None, Actor::Operator) => {
                return Err(FieldError::new("tenant_id", "is required").into())
            }
        };
        if self.store.tenant(actor.scope(), tenant_id).await?.is_none() {
            return Err(FieldError::new("tenant_id", "no such tenant").into());
        }
        let now = now_ms();
        let user = UserRecord {
            id: UserId::generate(),
            tenant_id,
            username,
            password_hash: self.passwords.hash(&password).await?,
            role,
            plan,
            disabled: false,
            created_at: now,
            updated_at: now,
        };
        self.store.insert_user(&user).await?;
        self.auditor
            .record(
                context,
                AuditEvent::new(AuditAction::UserCreate, Outcome::Success)
                    .tenant(tenant_id)
                    .target(user.id)
                    .reason(role.as_str()),
            )
            .await;
        Ok(user)
    }

    /// A user the actor may see.
    pub async fn user(&self, actor: Actor, id: UserId) -> Result<UserRecord, AccountError> {
        self.store
            .user(actor.scope(), id)
            .await?
            .ok_or(AccountError::NotFound)
    }

    /// A user the actor may change: in scope, and not more powerful than the actor.
    async fn changeable_user(&self, actor: Actor, id: UserId) -> Result<UserRecord, AccountError> {
        let user = self.user(actor, id).await?;
        if user.role > actor.role() {
            return Err(AccountError::Forbidden(
                "only a platform admin can change a platform admin",
            ));
        }
        Ok(user)
    }

    /// Applies changes. A new password or disabling revokes every token of the user; a new role or
    /// plan revokes their access tokens, so the next refresh carries the new claims.
    pub async fn update_user(
        &self,
        context: &AuditContext,
        actor: Actor,
        id: UserId,
        changes: UserChanges,
    ) -> Result<UserRecord, AccountError> {
        let mut user = self.changeable_user(actor, id).await?;
        let mut changed = Vec::new();
        let mut revoke_sessions = false;
        let mut revoke_access = false;
        if let Some(role) = &changes.role {
            let role = role.parse::<Role>()?;
            if role > actor.role() {
                return Err(AccountError::Forbidden(
                    "you cannot grant a role above your own",
                ));
            }
            if actor.is(id) && role != user.role {
                return Err(AccountError::Conflict("you cannot change your own role"));
            }
            revoke_access |= role != user.role;
            user.role = role;
            changed.push("role");
        }
        if let Some(plan) = &changes.plan {
            if actor.role() != Role::PlatformAdmin {
                // A user's plan overrides the tenant's: a tenant admin could otherwise upgrade the tenant.
                return Err(AccountError::Forbidden(
                    "only a platform admin can give a user a plan of their own",
                ));
            }
            let plan = plan
                .as_deref()
                .map(|p| PlanName::parse(p, &self.plans))
                .transpose()?;
            revoke_access |= plan != user.plan;
            user.plan = plan;
            changed.push("plan");
        }
        if let Some(disabled) = changes.disabled {
            if actor.is(id) && disabled {
                return Err(AccountError::Conflict("you cannot disable yourself"));
            }
            revoke_sessions |= disabled && !user.disabled;
            user.disabled = disabled;
            changed.push("disabled");
        }
        if let Some(password) = changes.password {
            let password = Password::parse(password, self.policy)?;
            user.password_hash = self.passwords.hash(&password).await?;
            revoke_sessions = true;
            changed.push("password");
        }
        user.updated_at = now_ms();
        if !self.store.update_user(actor.scope(), &user).await? {
            return Err(AccountError::NotFound);
        }
        self.current_plans.forget(id);
        if revoke_sessions {
            revoke_all_user_tokens(self.store.as_ref(), &self.revocations, id).await?;
        } else if revoke_access {
            for token in self.store.user_access_tokens(id, now_ms()).await? {
                self.revocations
                    .revoke(&token.jti, token.expires_at.as_secs())
                    .await?;
            }
        }
        let reason = changed.join(",");
        self.auditor
            .record(
                context,
                AuditEvent::new(AuditAction::UserUpdate, Outcome::Success)
                    .tenant(user.tenant_id)
                    .target(id)
                    .reason(&reason),
            )
            .await;
        Ok(user)
    }

    /// Deletes a user after revoking every token they hold.
    pub async fn delete_user(
        &self,
        context: &AuditContext,
        actor: Actor,
        id: UserId,
    ) -> Result<(), AccountError> {
        let user = self.changeable_user(actor, id).await?;
        if actor.is(id) {
            return Err(AccountError::Conflict("you cannot delete yourself"));
        }
        revoke_all_user_tokens(self.store.as_ref(), &self.revocations, id).await?;
        if !self.store.delete_user(actor.scope(), id).await? {
            return Err(AccountError::NotFound);
        }
        self.auditor
            .record(
                context,
                AuditEvent::new(AuditAction::UserDelete, Outcome::Success)
                    .tenant(user.tenant_id)
                    .target(id),
            )
            .await;
        Ok(())
    }
}
