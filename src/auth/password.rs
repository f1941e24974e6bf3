//! Password hashing with Argon2id. Hashing runs on the blocking pool, a few at a time, so a burst of
//! logins cannot take every core or much memory.

use std::sync::Arc;

use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHash, PasswordHasher as _, PasswordVerifier as _, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use tokio::sync::Semaphore;
use zeroize::Zeroizing;

use crate::domain::Password;

/// Argon2id with m = 19 MiB, t = 2, p = 1 (OWASP's baseline).
fn argon2() -> Argon2<'static> {
    let params = Params::new(19 * 1024, 2, 1, None).expect("valid Argon2 parameters");
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
}

/// Hashes and checks passwords.
#[derive(Clone)]
pub struct Passwords {
    permits: Arc<Semaphore>,
    /// Checked against when the user does not exist, so that case costs the same time.
    dummy_hash: Arc<String>,
}

impl Passwords {
    pub fn new() -> Self {
        let parallel = std::thread::available_parallelism().map_or(2, |n| n.get());
        let dummy = hash_blocking("dummy password for timing equalisation");
        Self {
            permits: Arc::new(Semaphore::new(parallel)),
            dummy_hash: Arc::new(dummy),
        }
    }

    /// The PHC string of a new password.
    pub async fn hash(&self, password: &Password) -> anyhow::Result<String> {
        let _permit = self.permits.acquire().await?;
        let plain = Zeroizing::new(password.expose().to_owned());
        Ok(tokio::task::spawn_blocking(move || hash_blocking(&plain)).await?)
    }

    /// Checks a candidate against a stored hash; with `None`, checks against a dummy and returns false.
    pub async fn verify(&self, stored_hash: Option<&str>, candidate: &str) -> anyhow::Result<bool> {
        let _permit = self.permits.acquire().await?;
        let known = stored_hash.is_some();
        let hash = stored_hash.unwrap_or(&self.dummy_hash).to_owned();
        let candidate = Zeroizing::new(candidate.to_owned());
        let matches =
            tokio::task::spawn_blocking(move || verify_blocking(&hash, &candidate)).await?;
        Ok(known && matches)
    }
}

impl Default for Passwords {
    fn default() -> Self {
        Self::new()
    }
}

/// Hashes on the current thread (for the CLI and start-up).
pub fn hash_blocking(plain: &str) -> String {
    let salt = SaltString::generate(&mut OsRng);
    argon2()
        .hash_password(plain.as_bytes(), &salt)
        .expect("Argon2 hashing with valid parameters cannot fail")
        .to_string()
}

fn verify_blocking(hash: &str, candidate: &str) -> bool {
    PasswordHash::new(hash)
        .map(|parsed| {
            argon2()
                .verify_password(candidate.as_bytes(), &parsed)
                .is_ok()
        })
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn hash_is_argon2id_with_required_cost_and_verifies() {
        let passwords = Passwords::new();
        let password = Password::parse("correct horse battery".into(), Default::default()).unwrap();
        let hash = passwords.hash(&password).await.unwrap();
        assert!(
            hash.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"),
            "{hash}"
        );
        assert!(passwords
            .verify(Some(&hash), "correct horse battery")
            .await
            .unwrap());
        assert!(!passwords
            .verify(Some(&hash), "wrong horse battery")
            .await
            .unwrap());
        assert!(!passwords
            .verify(None, "correct horse battery")
            .await
            .unwrap());
    }
}
