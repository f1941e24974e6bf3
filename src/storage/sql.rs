//! The SQL both backends share. SQLite and PostgreSQL accept the same `$n` placeholders and the same
//! statements here, so one body implements `Store` for each concrete pool type; each backend supplies
//! only what differs (how the audit chain is locked).

use std::str::FromStr;

use super::StoreError;

pub(super) fn parse_stored<T: FromStr>(column: &str, value: &str) -> Result<T, StoreError> {
    value
        .parse()
        .map_err(|_| StoreError::Corrupt(format!("{column}: {value:?}")))
}

macro_rules! impl_sql_store {
    ($store:ty, $row:ty) => {
        use async_trait::async_trait;
        use sqlx::Row as _;

        use crate::domain::{PlanName, TenantId, TenantName, UserId, Username};
        use crate::storage::sql::parse_stored;
        use crate::storage::chain::{chain_hash, GENESIS_HASH};
        use crate::storage::{
            AuditQuery, AuditRecord, AuditStore, HealthCheck, NewAuditRecord, RefreshTokenRecord,
            RevokedToken, StoreError, StoreResult, TenantRecord, TenantScope, TenantStore, TenantUpdate,
            TokenId, TokenStore, UserRecord, UserStore, WebhookSecretStore,
        };

        const TENANT_COLUMNS: &str = "id, name, plan, created_at, updated_at";
        const USER_COLUMNS: &str =
            "id, tenant_id, username, password_hash, role, plan, disabled, created_at, updated_at";
        const REFRESH_COLUMNS: &str =
            "token_hash, family_id, user_id, tenant_id, issued_at, expires_at, used_at, revoked_at";
        const AUDIT_COLUMNS: &str = "seq, at, request_id, actor_user_id, actor_tenant_id, tenant_id, \
             client_ip, user_agent, action, target, outcome, reason, prev_hash, hash";

        fn tenant_from_row(row: &$row) -> StoreResult<TenantRecord> {
            Ok(TenantRecord {
                id: parse_stored("tenants.id", &row.try_get::<String, _>("id")?)?,
                name: TenantName::from_stored(row.try_get("name")?),
                plan: PlanName::from_stored(row.try_get("plan")?),
                created_at: row.try_get("created_at")?,
                updated_at: row.try_get("updated_at")?,
            })
        }

        fn user_from_row(row: &$row) -> StoreResult<UserRecord> {
            Ok(UserRecord {
                id: parse_stored("users.id", &row.try_get::<String, _>("id")?)?,
                tenant_id: parse_stored("users.tenant_id", &row.try_get::<String, _>("tenant_id")?)?,
                username: Username::from_stored(row.try_get("username")?),
                password_hash: row.try_get("password_hash")?,
                role: parse_stored("users.role", &row.try_get::<String, _>("role")?)?,
                plan: row.try_get::<Option<String>, _>("plan")?.map(PlanName::from_stored),
                disabled: row.try_get("disabled")?,
                created_at: row.try_get("created_at")?,
                updated_at: row.try_get("updated_at")?,
            })
        }

        fn refresh_from_row(row: &$row) -> StoreResult<RefreshTokenRecord> {
            Ok(RefreshTokenRecord {
                token_hash: row.try_get("token_hash")?,
                family_id: row.try_get("family_id")?,
                user_id: parse_stored("refresh_tokens.user_id", &row.try_get::<String, _>("user_id")?)?,
                tenant_id: parse_stored(
                    "refresh_tokens.tenant_id",
                    &row.try_get::<String, _>("tenant_id")?,
                )?,
                issued_at: row.try_get("issued_at")?,
                expires_at: row.try_get("expires_at")?,
                used_at: row.try_get("used_at")?,
                revoked_at: row.try_get("revoked_at")?,
            })
        }

        fn audit_from_row(row: &$row) -> StoreResult<AuditRecord> {
            Ok(AuditRecord {
                seq: row.try_get("seq")?,
                event: NewAuditRecord {
                    at: row.try_get("at")?,
                    request_id: row.try_get("request_id")?,
                    actor_user_id: row.try_get("actor_user_id")?,
                    actor_tenant_id: row.try_get("actor_tenant_id")?,
                    tenant_id: row.try_get("tenant_id")?,
                    client_ip: row.try_get("client_ip")?,
                    user_agent: row.try_get("user_agent")?,
                    action: row.try_get("action")?,
                    target: row.try_get("target")?,
                    outcome: row.try_get("outcome")?,
                    reason: row.try_get("reason")?,
                },
                prev_hash: row.try_get("prev_hash")?,
                hash: row.try_get("hash")?,
            })
        }

        fn token_ids(rows: Vec<$row>) -> StoreResult<Vec<TokenId>> {
            rows.iter()
                .map(|row| {
                    Ok(TokenId {
                        jti: row.try_get("jti")?,
                        expires_at: row.try_get("expires_at")?,
                    })
                })
                .collect()
        }

        #[async_trait]
        impl HealthCheck for $store {
            async fn ping(&self) -> StoreResult<()> {
                sqlx::query("SELECT 1").execute(&self.pool).await?;
                Ok(())
            }

        }

        #[async_trait]
        impl TenantStore for $store {
            async fn count_tenants(&self) -> StoreResult<i64> {
                let row = sqlx::query("SELECT COUNT(*) AS n FROM tenants")
                    .fetch_one(&self.pool)
                    .await?;
                Ok(row.try_get("n")?)
            }

            async fn insert_tenant(&self, tenant: &TenantRecord) -> StoreResult<()> {
                sqlx::query(
                    "INSERT INTO tenants (id, name, plan, created_at, updated_at) VALUES ($1, $2, $3, $4, $5)",
                )
                .bind(tenant.id.to_string())
                .bind(tenant.name.as_str())
                .bind(tenant.plan.as_str())
                .bind(tenant.created_at)
                .bind(tenant.updated_at)
                .execute(&self.pool)
                .await
                .map_err(StoreError::from_sqlx)?;
                Ok(())
            }

            async fn tenant(&self, scope: TenantScope, id: TenantId) -> StoreResult<Option<TenantRecord>> {
                if !scope.allows(id) {
                    return Ok(None);
                }
                let sql = format!("SELECT {TENANT_COLUMNS} FROM tenants WHERE id = $1");
                sqlx::query(&sql)
                    .bind(id.to_string())
                    .fetch_optional(&self.pool)
                    .await?
                    .as_ref()
                    .map(tenant_from_row)
                    .transpose()
            }

            async fn tenant_by_name(&self, name: &TenantName) -> StoreResult<Option<TenantRecord>> {
                let sql = format!("SELECT {TENANT_COLUMNS} FROM tenants WHERE name = $1");
                sqlx::query(&sql)
                    .bind(name.as_str())
                    .fetch_optional(&self.pool)
                    .await?
                    .as_ref()
                    .map(tenant_from_row)
                    .transpose()
            }

            async fn list_tenants(&self) -> StoreResult<Vec<TenantRecord>> {
                let sql = format!("SELECT {TENANT_COLUMNS} FROM tenants ORDER BY name");
                sqlx::query(&sql)
                    .fetch_all(&self.pool)
                    .await?
                    .iter()
                    .map(tenant_from_row)
                    .collect()
            }

            async fn update_tenant(
                &self,
                id: TenantId,
                update: &TenantUpdate,
                now: i64,
            ) -> StoreResult<Option<TenantRecord>> {
                let sql = format!(
                    "UPDATE tenants SET name = COALESCE($2, name), plan = COALESCE($3, plan), updated_at = $4 \
                     WHERE id = $1 RETURNING {TENANT_COLUMNS}"
                );
                sqlx::query(&sql)
                    .bind(id.to_string())
                    .bind(update.name.as_ref().map(|n| n.as_str().to_owned()))
                    .bind(update.plan.as_ref().map(|p| p.as_str().to_owned()))
                    .bind(now)
                    .fetch_optional(&self.pool)
                    .await
                    .map_err(StoreError::from_sqlx)?
                    .as_ref()
                    .map(tenant_from_row)
                    .transpose()
            }

        }

        #[async_trait]
        impl UserStore for $store {
            async fn insert_user(&self, user: &UserRecord) -> StoreResult<()> {
                let sql = format!(
                    "INSERT INTO users ({USER_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)"
                );
                sqlx::query(&sql)
                    .bind(user.id.to_string())
                    .bind(user.tenant_id.to_string())
                    .bind(user.username.as_str())
                    .bind(&user.password_hash)
                    .bind(user.role.as_str())
                    .bind(user.plan.as_ref().map(|p| p.as_str().to_owned()))
                    .bind(user.disabled)
                    .bind(user.created_at)
                    .bind(user.updated_at)
                    .execute(&self.pool)
                    .await
                    .map_err(StoreError::from_sqlx)?;
                Ok(())
            }

            async fn user(&self, scope: TenantScope, id: UserId) -> StoreResult<Option<UserRecord>> {
                let sql = format!(
                    "SELECT {USER_COLUMNS} FROM users WHERE id = $1 AND ($2 IS NULL OR tenant_id = $2)"
                );
                sqlx::query(&sql)
                    .bind(id.to_string())
                    .bind(scope.tenant_filter())
                    .fetch_optional(&self.pool)
                    .await?
                    .as_ref()
                    .map(user_from_row)
                    .transpose()
            }

            async fn users_by_username(&self, username: &Username) -> StoreResult<Vec<UserRecord>> {
                let sql = format!("SELECT {USER_COLUMNS} FROM users WHERE username = $1");
                sqlx::query(&sql)
                    .bind(username.as_str())
                    .fetch_all(&self.pool)
                    .await?
                    .iter()
                    .map(user_from_row)
                    .collect()
            }

            async fn list_users(&self, scope: TenantScope) -> StoreResult<Vec<UserRecord>> {
                let sql = format!(
                    "SELECT {USER_COLUMNS} FROM users WHERE ($1 IS NULL OR tenant_id = $1) ORDER BY id"
                );
                sqlx::query(&sql)
                    .bind(scope.tenant_filter())
                    .fetch_all(&self.pool)
                    .await?
                    .iter()
                    .map(user_from_row)
                    .collect()
            }

            async fn update_user(&self, scope: TenantScope, user: &UserRecord) -> StoreResult<bool> {
                let done = sqlx::query(
                    "UPDATE users SET username = $3, password_hash = $4, role = $5, plan = $6, disabled = $7, \
                     updated_at = $8 WHERE id = $1 AND ($2 IS NULL OR tenant_id = $2)",
                )
                .bind(user.id.to_string())
                .bind(scope.tenant_filter())
                .bind(user.username.as_str())
                .bind(&user.password_hash)
                .bind(user.role.as_str())
                .bind(user.plan.as_ref().map(|p| p.as_str().to_owned()))
                .bind(user.disabled)
                .bind(user.updated_at)
                .execute(&self.pool)
                .await
                .map_err(StoreError::from_sqlx)?;
                Ok(done.rows_affected() == 1)
            }

            async fn delete_user(&self, scope: TenantScope, id: UserId) -> StoreResult<bool> {
                let mut tx = self.pool.begin().await?;
                let done = sqlx::query("DELETE FROM users WHERE id = $1 AND ($2 IS NULL OR tenant_id = $2)")
                    .bind(id.to_string())
                    .bind(scope.tenant_filter())
                    .execute(&mut *tx)
                    .await?;
                if done.rows_affected() == 1 {
                    sqlx::query("DELETE FROM refresh_tokens WHERE user_id = $1")
                        .bind(id.to_string())
                        .execute(&mut *tx)
                        .await?;
                }
                tx.commit().await?;
                Ok(done.rows_affected() == 1)
            }

        }

        #[async_trait]
        impl TokenStore for $store {
            async fn insert_refresh_token(&self, token: &RefreshTokenRecord) -> StoreResult<()> {
                let sql = format!(
                    "INSERT INTO refresh_tokens ({REFRESH_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"
                );
                sqlx::query(&sql)
                    .bind(&token.token_hash)
                    .bind(&token.family_id)
                    .bind(token.user_id.to_string())
                    .bind(token.tenant_id.to_string())
                    .bind(token.issued_at)
                    .bind(token.expires_at)
                    .bind(token.used_at)
                    .bind(token.revoked_at)
                    .execute(&self.pool)
                    .await
                    .map_err(StoreError::from_sqlx)?;
                Ok(())
            }

            async fn refresh_token(&self, token_hash: &str) -> StoreResult<Option<RefreshTokenRecord>> {
                let sql = format!("SELECT {REFRESH_COLUMNS} FROM refresh_tokens WHERE token_hash = $1");
                sqlx::query(&sql)
                    .bind(token_hash)
                    .fetch_optional(&self.pool)
                    .await?
                    .as_ref()
                    .map(refresh_from_row)
                    .transpose()
            }

            async fn mark_refresh_token_used(&self, token_hash: &str, now: i64) -> StoreResult<bool> {
                let done = sqlx::query(
                    "UPDATE refresh_tokens SET used_at = $2 \
                     WHERE token_hash = $1 AND used_at IS NULL AND revoked_at IS NULL",
                )
                .bind(token_hash)
                .bind(now)
                .execute(&self.pool)
                .await?;
                Ok(done.rows_affected() == 1)
            }

            async fn revoke_refresh_family(&self, family_id: &str, now: i64) -> StoreResult<u64> {
                let done = sqlx::query(
                    "UPDATE refresh_tokens SET revoked_at = $2 WHERE family_id = $1 AND revoked_at IS NULL",
                )
                .bind(family_id)
                .bind(now)
                .execute(&self.pool)
                .await?;
                Ok(done.rows_affected())
            }

            async fn revoke_user_refresh_tokens(&self, user: UserId, now: i64) -> StoreResult<u64> {
                let done = sqlx::query(
                    "UPDATE refresh_tokens SET revoked_at = $2 WHERE user_id = $1 AND revoked_at IS NULL",
                )
                .bind(user.to_string())
                .bind(now)
                .execute(&self.pool)
                .await?;
                Ok(done.rows_affected())
            }

            async fn family_revoked(&self, family_id: &str) -> StoreResult<bool> {
                let row = sqlx::query(
                    "SELECT COUNT(*) AS n FROM refresh_tokens WHERE family_id = $1 AND revoked_at IS NOT NULL",
                )
                .bind(family_id)
                .fetch_one(&self.pool)
                .await?;
                Ok(row.try_get::<i64, _>("n")? > 0)
            }

            async fn insert_access_token(
                &self,
                token: &TokenId,
                user: UserId,
                family_id: &str,
            ) -> StoreResult<()> {
                sqlx::query(
                    "INSERT INTO access_tokens (jti, user_id, family_id, expires_at) VALUES ($1, $2, $3, $4)",
                )
                .bind(&token.jti)
                .bind(user.to_string())
                .bind(family_id)
                .bind(token.expires_at)
                .execute(&self.pool)
                .await
                .map_err(StoreError::from_sqlx)?;
                Ok(())
            }

            async fn family_access_tokens(&self, family_id: &str, now: i64) -> StoreResult<Vec<TokenId>> {
                token_ids(
                    sqlx::query("SELECT jti, expires_at FROM access_tokens WHERE family_id = $1 AND expires_at > $2")
                        .bind(family_id)
                        .bind(now)
                        .fetch_all(&self.pool)
                        .await?,
                )
            }

            async fn user_access_tokens(&self, user: UserId, now: i64) -> StoreResult<Vec<TokenId>> {
                token_ids(
                    sqlx::query("SELECT jti, expires_at FROM access_tokens WHERE user_id = $1 AND expires_at > $2")
                        .bind(user.to_string())
                        .bind(now)
                        .fetch_all(&self.pool)
                        .await?,
                )
            }

            async fn access_token_family(&self, jti: &str) -> StoreResult<Option<String>> {
                let row = sqlx::query("SELECT family_id FROM access_tokens WHERE jti = $1")
                    .bind(jti)
                    .fetch_optional(&self.pool)
                    .await?;
                Ok(row.map(|r| r.try_get("family_id")).transpose()?)
            }

            async fn insert_revoked_token(&self, token: &RevokedToken) -> StoreResult<()> {
                sqlx::query(
                    "INSERT INTO revoked_tokens (jti, expires_at, revoked_at) VALUES ($1, $2, $3) \
                     ON CONFLICT (jti) DO NOTHING",
                )
                .bind(&token.jti)
                .bind(token.expires_at)
                .bind(token.revoked_at)
                .execute(&self.pool)
                .await?;
                Ok(())
            }

            async fn revoked_tokens_since(&self, since: i64, now: i64) -> StoreResult<Vec<RevokedToken>> {
                let rows = sqlx::query(
                    "SELECT jti, expires_at, revoked_at FROM revoked_tokens \
                     WHERE revoked_at >= $1 AND expires_at > $2 ORDER BY revoked_at",
                )
                .bind(since)
                .bind(now)
                .fetch_all(&self.pool)
                .await?;
                rows.iter()
                    .map(|row| {
                        Ok(RevokedToken {
                            jti: row.try_get("jti")?,
                            expires_at: row.try_get("expires_at")?,
                            revoked_at: row.try_get("revoked_at")?,
                        })
                    })
                    .collect()
            }

            async fn purge_expired(&self, now: i64) -> StoreResult<()> {
                for table in ["revoked_tokens", "access_tokens", "refresh_tokens"] {
                    sqlx::query(&format!("DELETE FROM {table} WHERE expires_at <= $1"))
                        .bind(now)
                        .execute(&self.pool)
                        .await?;
                }
                Ok(())
            }

        }

        #[async_trait]
        impl AuditStore for $store {
            async fn append_audit(&self, event: &NewAuditRecord) -> StoreResult<AuditRecord> {
                let _local = self.audit_lock.lock().await;
                // Rolled back if dropped before commit, so an abandoned append never holds the lock.
                let mut conn = self.write_transaction().await?;
                if let Some(lock) = Self::AUDIT_LOCK {
                    sqlx::query(lock).execute(&mut *conn).await?;
                }
                let record = {
                    let head = sqlx::query("SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1")
                        .fetch_optional(&mut *conn)
                        .await?;
                    let (prev_seq, prev_hash) = match head {
                        Some(row) => (row.try_get::<i64, _>("seq")?, row.try_get::<String, _>("hash")?),
                        None => (0, GENESIS_HASH.to_owned()),
                    };
                    let seq = prev_seq + 1;
                    let hash = chain_hash(seq, &prev_hash, event);
                    let sql = format!(
                        "INSERT INTO audit_log ({AUDIT_COLUMNS}) \
                         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)"
                    );
                    sqlx::query(&sql)
                        .bind(seq)
                        .bind(event.at)
                        .bind(&event.request_id)
                        .bind(&event.actor_user_id)
                        .bind(&event.actor_tenant_id)
                        .bind(&event.tenant_id)
                        .bind(&event.client_ip)
                        .bind(&event.user_agent)
                        .bind(&event.action)
                        .bind(&event.target)
                        .bind(&event.outcome)
                        .bind(&event.reason)
                        .bind(&prev_hash)
                        .bind(&hash)
                        .execute(&mut *conn)
                        .await?;
                    AuditRecord {
                        seq,
                        event: event.clone(),
                        prev_hash,
                        hash,
                    }
                };
                conn.commit().await?;
                Ok(record)
            }

            async fn query_audit(&self, scope: TenantScope, query: &AuditQuery) -> StoreResult<Vec<AuditRecord>> {
                let sql = format!(
                    "SELECT {AUDIT_COLUMNS} FROM audit_log WHERE ($1 IS NULL OR tenant_id = $1) \
                     AND ($2 IS NULL OR actor_user_id = $2) AND ($3 IS NULL OR action = $3) \
                     AND ($4 IS NULL OR outcome = $4) AND ($5 IS NULL OR at >= $5) AND ($6 IS NULL OR at <= $6) \
                     AND ($7 IS NULL OR seq < $7) ORDER BY seq DESC LIMIT $8"
                );
                sqlx::query(&sql)
                    .bind(scope.tenant_filter())
                    .bind(&query.actor)
                    .bind(&query.action)
                    .bind(&query.outcome)
                    .bind(query.since)
                    .bind(query.until)
                    .bind(query.before_seq)
                    .bind(query.limit)
                    .fetch_all(&self.pool)
                    .await?
                    .iter()
                    .map(audit_from_row)
                    .collect()
            }

            async fn audit_chain_page(&self, after_seq: i64, limit: i64) -> StoreResult<Vec<AuditRecord>> {
                let sql = format!(
                    "SELECT {AUDIT_COLUMNS} FROM audit_log WHERE seq > $1 ORDER BY seq LIMIT $2"
                );
                sqlx::query(&sql)
                    .bind(after_seq)
                    .bind(limit)
                    .fetch_all(&self.pool)
                    .await?
                    .iter()
                    .map(audit_from_row)
                    .collect()
            }
        }

        #[async_trait]
        impl WebhookSecretStore for $store {
            async fn webhook_secret(&self, tenant: TenantId) -> StoreResult<Option<String>> {
                let row = sqlx::query("SELECT secret FROM webhook_secrets WHERE tenant_id = $1")
                    .bind(tenant.to_string())
                    .fetch_optional(&self.pool)
                    .await?;
                Ok(row.map(|r| r.try_get("secret")).transpose()?)
            }

            async fn put_webhook_secret(
                &self,
                tenant: TenantId,
                secret: &str,
                replace: bool,
                now: i64,
            ) -> StoreResult<String> {
                let sql = if replace {
                    "INSERT INTO webhook_secrets (tenant_id, secret, created_at) VALUES ($1, $2, $3) \
                     ON CONFLICT (tenant_id) DO UPDATE SET secret = excluded.secret, created_at = excluded.created_at"
                } else {
                    "INSERT INTO webhook_secrets (tenant_id, secret, created_at) VALUES ($1, $2, $3) \
                     ON CONFLICT (tenant_id) DO NOTHING"
                };
                sqlx::query(sql)
                    .bind(tenant.to_string())
                    .bind(secret)
                    .bind(now)
                    .execute(&self.pool)
                    .await?;
                Ok(self
                    .webhook_secret(tenant)
                    .await?
                    .ok_or_else(|| StoreError::Corrupt("webhook secret vanished".into()))?)
            }
        }
    };
}

pub(super) use impl_sql_store;
