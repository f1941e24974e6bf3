//! Refresh tokens, access-token records and revocations in PostgreSQL.

use async_trait::async_trait;

use super::PgStore;
use crate::domain::{FamilyId, Jti, UserId};
use crate::storage::shared::{
    parse_stored, refresh_from_row, revoked_from_row, token_id_from_row, StoredRow, REFRESH_COLUMNS,
};
use crate::storage::{
    RefreshTokenRecord, RevokedToken, StoreError, StoreResult, TokenId, TokenStore,
};
use crate::time::UnixMillis;

#[async_trait]
impl TokenStore for PgStore {
    async fn insert_refresh_token(&self, token: &RefreshTokenRecord) -> StoreResult<()> {
        let sql = format!(
            "INSERT INTO refresh_tokens ({REFRESH_COLUMNS})
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)"
        );
        sqlx::query(&sql)
            .bind(&token.token_hash)
            .bind(token.family_id.as_str())
            .bind(token.user_id.to_string())
            .bind(token.tenant_id.to_string())
            .bind(token.issued_at)
            .bind(token.expires_at)
            .bind(token.used_at)
            .bind(token.revoked_at)
            .bind(token.dpop_jkt.as_deref())
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

    async fn mark_refresh_token_used(
        &self,
        token_hash: &str,
        now: UnixMillis,
    ) -> StoreResult<bool> {
        let done = sqlx::query(
            "UPDATE refresh_tokens SET used_at = $2
             WHERE token_hash = $1 AND used_at IS NULL AND revoked_at IS NULL",
        )
        .bind(token_hash)
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn revoke_refresh_family(
        &self,
        family_id: &FamilyId,
        now: UnixMillis,
    ) -> StoreResult<u64> {
        let done = sqlx::query(
            "UPDATE refresh_tokens SET revoked_at = $2
             WHERE family_id = $1 AND revoked_at IS NULL",
        )
        .bind(family_id.as_str())
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected())
    }

    async fn revoke_user_refresh_tokens(&self, user: UserId, now: UnixMillis) -> StoreResult<u64> {
        let done = sqlx::query(
            "UPDATE refresh_tokens SET revoked_at = $2
             WHERE user_id = $1 AND revoked_at IS NULL",
        )
        .bind(user.to_string())
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected())
    }

    async fn family_revoked(&self, family_id: &FamilyId) -> StoreResult<bool> {
        let row = sqlx::query(
            "SELECT COUNT(*) AS n FROM refresh_tokens
             WHERE family_id = $1 AND revoked_at IS NOT NULL",
        )
        .bind(family_id.as_str())
        .fetch_one(&self.pool)
        .await?;
        Ok(row.int("n")? > 0)
    }

    async fn insert_access_token(
        &self,
        token: &TokenId,
        user: UserId,
        family_id: &FamilyId,
    ) -> StoreResult<()> {
        sqlx::query(
            "INSERT INTO access_tokens (jti, user_id, family_id, expires_at)
             VALUES ($1, $2, $3, $4)",
        )
        .bind(token.jti.as_str())
        .bind(user.to_string())
        .bind(family_id.as_str())
        .bind(token.expires_at)
        .execute(&self.pool)
        .await
        .map_err(StoreError::from_sqlx)?;
        Ok(())
    }

    async fn family_access_tokens(
        &self,
        family_id: &FamilyId,
        now: UnixMillis,
    ) -> StoreResult<Vec<TokenId>> {
        sqlx::query(
            "SELECT jti, expires_at FROM access_tokens
             WHERE family_id = $1 AND expires_at > $2",
        )
        .bind(family_id.as_str())
        .bind(now)
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(token_id_from_row)
        .collect()
    }

    async fn user_access_tokens(&self, user: UserId, now: UnixMillis) -> StoreResult<Vec<TokenId>> {
        sqlx::query(
            "SELECT jti, expires_at FROM access_tokens
             WHERE user_id = $1 AND expires_at > $2",
        )
        .bind(user.to_string())
        .bind(now)
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(token_id_from_row)
        .collect()
    }

    async fn access_token_family(&self, jti: &Jti) -> StoreResult<Option<FamilyId>> {
        let row = sqlx::query("SELECT family_id FROM access_tokens WHERE jti = $1")
            .bind(jti.as_str())
            .fetch_optional(&self.pool)
            .await?;
        match row {
            Some(row) => Ok(Some(parse_stored(
                "access_tokens.family_id",
                &row.text("family_id")?,
            )?)),
            None => Ok(None),
        }
    }

    async fn insert_revoked_token(&self, token: &RevokedToken) -> StoreResult<()> {
        sqlx::query(
            "INSERT INTO revoked_tokens (jti, expires_at, revoked_at) VALUES ($1, $2, $3)
             ON CONFLICT (jti) DO NOTHING",
        )
        .bind(token.jti.as_str())
        .bind(token.expires_at)
        .bind(token.revoked_at)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn revoked_tokens_since(
        &self,
        since: UnixMillis,
        now: UnixMillis,
    ) -> StoreResult<Vec<RevokedToken>> {
        sqlx::query(
            "SELECT jti, expires_at, revoked_at FROM revoked_tokens
             WHERE revoked_at >= $1 AND expires_at > $2
             ORDER BY revoked_at",
        )
        .bind(since)
        .bind(now)
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(revoked_from_row)
        .collect()
    }

    async fn purge_expired(&self, now: UnixMillis) -> StoreResult<()> {
        for sql in [
            "DELETE FROM revoked_tokens WHERE expires_at <= $1",
            "DELETE FROM access_tokens WHERE expires_at <= $1",
            "DELETE FROM refresh_tokens WHERE expires_at <= $1",
        ] {
            sqlx::query(sql).bind(now).execute(&self.pool).await?;
        }
        Ok(())
    }
}
