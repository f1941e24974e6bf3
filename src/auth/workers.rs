//! Remote workers' service accounts: creating them (the secret is shown once and stored hashed),
//! disabling them, and the OAuth 2.0 `client_credentials` grant that gives a worker its token.

use std::sync::Arc;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use rand::RngCore as _;

use super::password::Passwords;
use super::sessions::GrantError;
use super::throttle::LoginThrottle;
use super::tokens::{IssuedWorkerToken, Tokens};
use crate::audit::{AuditAction, AuditContext, AuditEvent, Auditor, Outcome};
use crate::storage::{Store, StoreError, WorkerAccount};
use crate::time::now_ms;

/// Creates, disables and authenticates worker service accounts.
#[derive(Clone)]
pub struct WorkerAccounts {
    store: Arc<dyn Store>,
    passwords: Passwords,
    auditor: Auditor,
}

/// A new account and its secret, which exists nowhere else.
pub struct CreatedWorker {
    pub account: WorkerAccount,
    pub client_secret: String,
}

fn random_base64url(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    rand::rngs::OsRng.fill_bytes(&mut buf);
    URL_SAFE_NO_PAD.encode(buf)
}

/// A worker name: 1 to 64 of `a-z 0-9 _ -`.
fn valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

impl WorkerAccounts {
    pub fn new(accounts: &crate::accounts::Accounts) -> Self {
        Self {
            store: Arc::clone(&accounts.store),
            passwords: accounts.passwords.clone(),
            auditor: accounts.auditor.clone(),
        }
    }

    /// Creates an account with a fresh client id and a 32-byte secret.
    pub async fn create(
        &self,
        context: &AuditContext,
        name: &str,
    ) -> anyhow::Result<CreatedWorker> {
        if !valid_name(name) {
            anyhow::bail!("a worker name is 1 to 64 of a-z, 0-9, _ and -");
        }
        let client_secret = random_base64url(32);
        let secret = zeroize::Zeroizing::new(client_secret.clone());
        let secret_hash =
            tokio::task::spawn_blocking(move || super::password::hash_blocking(&secret)).await?;
        let account = WorkerAccount {
            id: uuid::Uuid::new_v4(),
            name: name.to_owned(),
            client_id: format!("wkr_{}", random_base64url(12)),
            secret_hash,
            disabled: false,
            created_at: now_ms(),
            last_seen_at: None,
            token_generation: 0,
        };
        match self.store.insert_worker_account(&account).await {
            Err(StoreError::Conflict) => anyhow::bail!("a worker named {name} already exists"),
            other => other?,
        }
        self.auditor
            .record(
                context,
                AuditEvent::new(AuditAction::WorkerCreate, Outcome::Success).target(account.id),
            )
            .await;
        Ok(CreatedWorker {
            account,
            client_secret,
        })
    }

    /// Disables (its worker is refused at its next call) or enables the named account.
    pub async fn set_disabled(
        &self,
        context: &AuditContext,
        name: &str,
        disabled: bool,
    ) -> anyhow::Result<WorkerAccount> {
        let Some(account) = self.store.set_worker_disabled(name, disabled).await? else {
            anyhow::bail!("no worker named {name}");
        };
        let reason = if disabled { "disabled" } else { "enabled" };
        self.auditor
            .record(
                context,
                AuditEvent::new(AuditAction::WorkerUpdate, Outcome::Success)
                    .target(account.id)
                    .reason(reason),
            )
            .await;
        Ok(account)
    }

    /// Gives the named account a new secret (shown once) and refuses every token issued with the
    /// old one; its worker is refused at its next call until it is given the new secret.
    pub async fn rotate_secret(
        &self,
        context: &AuditContext,
        name: &str,
    ) -> anyhow::Result<CreatedWorker> {
        let client_secret = random_base64url(32);
        let secret = zeroize::Zeroizing::new(client_secret.clone());
        let secret_hash =
            tokio::task::spawn_blocking(move || super::password::hash_blocking(&secret)).await?;
        let Some(account) = self.store.set_worker_secret(name, &secret_hash).await? else {
            anyhow::bail!("no worker named {name}");
        };
        self.auditor
            .record(
                context,
                AuditEvent::new(AuditAction::WorkerUpdate, Outcome::Success)
                    .target(account.id)
                    .reason("secret_rotated"),
            )
            .await;
        Ok(CreatedWorker {
            account,
            client_secret,
        })
    }

    pub async fn list(&self) -> anyhow::Result<Vec<WorkerAccount>> {
        Ok(self.store.worker_accounts().await?)
    }

    /// `grant_type=client_credentials`: unknown client, wrong secret and disabled account fail
    /// alike (`invalid_client`) after one Argon2 check, throttled by client id and address.
    pub async fn client_credentials_grant(
        &self,
        tokens: &Tokens,
        throttle: &LoginThrottle,
        context: &AuditContext,
        client_id: &str,
        client_secret: &str,
    ) -> Result<IssuedWorkerToken, GrantError> {
        let address = context.client_ip.clone().unwrap_or_default();
        // Throttled by address only: a secret is 256 random bits, so counting failures per client
        // id would guard nothing and let anyone who knows the id lock its worker out. The address's
        // count is its own, apart from user sign-ins: failed sign-ins from a shared address (a NAT)
        // must not lock a worker out, nor wrong secrets the people behind it.
        let attempt = match throttle
            .begin(
                &format!("client-from:{address}"),
                &match address.parse::<std::net::IpAddr>() {
                    Ok(ip) => format!("worker-client:{}", crate::net::client_network(ip)),
                    Err(_) => format!("worker-client:{address}"),
                },
            )
            .await
        {
            Ok(attempt) => attempt,
            Err(retry_after) => {
                crate::metrics::login_throttled();
                return Err(GrantError::Throttled(retry_after));
            }
        };
        let account = self.store.worker_account_by_client_id(client_id).await?;
        let verified = self
            .passwords
            .verify(
                account.as_ref().map(|a| a.secret_hash.as_str()),
                client_secret,
            )
            .await?;
        let refusal = match &account {
            None => Some("unknown_client"),
            Some(_) if !verified => Some("wrong_secret"),
            Some(a) if a.disabled => Some("client_disabled"),
            Some(_) => None,
        };
        let mut event = AuditEvent::new(AuditAction::AuthClientCredentials, Outcome::Success);
        if let Some(account) = &account {
            event = event.target(account.id);
        }
        if let Some(reason) = refusal {
            attempt.failed();
            crate::metrics::auth_failure(reason);
            let event = AuditEvent {
                outcome: Outcome::Failure,
                ..event
            }
            .reason(reason);
            self.auditor.record(context, event).await;
            return Err(GrantError::InvalidClient);
        }
        attempt.succeeded();
        let account = account.expect("refused above when absent");
        let issued = tokens.issue_worker(account.id, account.token_generation)?;
        self.store
            .touch_worker_account(account.id, now_ms())
            .await?;
        self.auditor.record(context, event).await;
        Ok(issued)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn worker_names_are_short_lowercase_words() {
        assert!(valid_name("gpu-host_1"));
        assert!(!valid_name(""));
        assert!(!valid_name("GPU"));
        assert!(!valid_name(&"a".repeat(65)));
        assert!(!valid_name("a b"));
    }
}
