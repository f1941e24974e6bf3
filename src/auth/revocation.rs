//! The access-token denylist. Checking is an in-memory lookup, so a request costs no network round trip;
//! what feeds the memory depends on the deployment:
//! - embedded default: revocations are written to the database too (they survive a restart), and the
//!   table is polled every second so the CLI and other processes on the same database are seen;
//! - with `redis_url`: Redis keeps each revocation (expiring with the token) and a pub/sub channel
//!   pushes it to every replica.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use dashmap::DashMap;
use futures::StreamExt;

use crate::domain::Jti;
use crate::storage::{RevokedToken, Store};
use crate::time::{now_ms, now_s, UnixMillis};

/// The largest clock leeway verification may apply (`token_leeway_s` is at most 60).
const MAX_LEEWAY_S: i64 = 60;

/// How far back each database poll looks, to tolerate clock skew between processes.
const POLL_OVERLAP: Duration = Duration::from_millis(5_000);
/// With Redis, how often the database is read anyway (the safety net for what Redis did not carry).
const SAFETY_POLL: Duration = Duration::from_secs(5);

/// Revoked access tokens by `jti`, with their expiry (Unix seconds).
pub struct Revocations {
    denied: DashMap<Jti, i64>,
    store: Arc<dyn Store>,
    redis: Option<RedisChannel>,
}

struct RedisChannel {
    client: redis::Client,
    conn: redis::aio::ConnectionManager,
    prefix: String,
}

impl RedisChannel {
    fn key(&self, jti: &Jti) -> String {
        format!("{}:revoked:{jti}", self.prefix)
    }

    fn channel(&self) -> String {
        format!("{}:revocations", self.prefix)
    }
}

impl Revocations {
    /// Loads current revocations and starts the task that keeps them up to date.
    pub async fn start(
        store: Arc<dyn Store>,
        redis_url: Option<&str>,
        redis_prefix: &str,
    ) -> anyhow::Result<Arc<Self>> {
        let redis = match redis_url {
            Some(url) => {
                let client = redis::Client::open(url).context("redis_url is invalid")?;
                let conn = redis::aio::ConnectionManager::new(client.clone())
                    .await
                    .context("connecting to Redis")?;
                Some(RedisChannel {
                    client,
                    conn,
                    prefix: redis_prefix.to_owned(),
                })
            }
            None => None,
        };
        let revocations = Arc::new(Self {
            denied: DashMap::new(),
            store,
            redis,
        });
        // The database is the record; Redis carries revocations to every replica at once. With Redis
        // the database is still read at start and polled every few seconds, so a revocation whose
        // publication failed, one made while this replica's link to Redis was down, or one Redis lost
        // (a restart without persistence) still arrives, a few seconds late.
        if revocations.redis.is_some() {
            // Subscribe before loading, so nothing published in between is missed.
            let pubsub = revocations.subscribe().await?;
            revocations.load_from_redis().await?;
            tokio::spawn(Arc::clone(&revocations).follow_redis(pubsub));
        }
        let loaded = revocations.load_from_store(UnixMillis::EPOCH).await?;
        let poll_every = if revocations.redis.is_some() {
            SAFETY_POLL
        } else {
            Duration::from_secs(1)
        };
        tokio::spawn(Arc::clone(&revocations).poll_store(loaded, poll_every));
        tokio::spawn(Arc::clone(&revocations).purge_expired());
        Ok(revocations)
    }

    /// True when the token with this `jti` was revoked.
    pub fn is_revoked(&self, jti: &Jti) -> bool {
        self.denied.contains_key(jti)
    }

    /// Revokes one access token until it expires (`expires_at`, Unix seconds).
    pub async fn revoke(&self, jti: &Jti, expires_at: i64) -> anyhow::Result<()> {
        // Verification accepts a token until `exp` plus the clock leeway; the revocation must outlive that.
        let expires_at = expires_at + MAX_LEEWAY_S;
        self.denied.insert(jti.clone(), expires_at);
        self.store
            .insert_revoked_token(&RevokedToken {
                jti: jti.clone(),
                expires_at: UnixMillis::from_secs(expires_at),
                revoked_at: now_ms(),
            })
            .await?;
        if let Some(redis) = &self.redis {
            let ttl = (expires_at - now_s()).max(1);
            let mut conn = redis.conn.clone();
            let published = redis::pipe()
                .cmd("SET")
                .arg(redis.key(jti))
                .arg(expires_at)
                .arg("EX")
                .arg(ttl)
                .ignore()
                .cmd("PUBLISH")
                .arg(redis.channel())
                .arg(format!("{jti} {expires_at}"))
                .ignore()
                .query_async::<()>(&mut conn)
                .await;
            // Recorded in the database already: the other replicas' poll takes it from there.
            if let Err(err) = published {
                tracing::warn!(error = %err, "publishing a revocation to Redis failed; replicas will read it from the database within {} s", SAFETY_POLL.as_secs());
            }
        }
        Ok(())
    }

    fn remember(&self, jti: Jti, expires_at: i64) {
        if expires_at > now_s() {
            self.denied.insert(jti, expires_at);
        }
    }

    /// Loads revocations made since `since`; returns the newest `revoked_at` seen.
    async fn load_from_store(&self, since: UnixMillis) -> anyhow::Result<UnixMillis> {
        let mut newest = since;
        for token in self.store.revoked_tokens_since(since, now_ms()).await? {
            newest = newest.max(token.revoked_at);
            self.remember(token.jti, token.expires_at.as_secs());
        }
        Ok(newest)
    }

    async fn poll_store(self: Arc<Self>, mut newest: UnixMillis, every: Duration) {
        let mut tick = tokio::time::interval(every);
        loop {
            tick.tick().await;
            match self
                .load_from_store((newest - POLL_OVERLAP).max(UnixMillis::EPOCH))
                .await
            {
                Ok(seen) => newest = newest.max(seen),
                Err(err) => tracing::warn!(error = %err, "polling revocations failed"),
            }
        }
    }

    async fn subscribe(&self) -> anyhow::Result<redis::aio::PubSub> {
        let redis = self.redis.as_ref().context("no Redis configured")?;
        let mut pubsub = redis.client.get_async_pubsub().await?;
        pubsub.subscribe(redis.channel()).await?;
        Ok(pubsub)
    }

    async fn load_from_redis(&self) -> anyhow::Result<()> {
        let redis = self.redis.as_ref().context("no Redis configured")?;
        let mut conn = redis.conn.clone();
        let pattern = format!("{}:revoked:*", redis.prefix);
        let key_prefix = format!("{}:revoked:", redis.prefix);
        let mut cursor: u64 = 0;
        loop {
            let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(1000)
                .query_async(&mut conn)
                .await?;
            if !keys.is_empty() {
                let values: Vec<Option<i64>> =
                    redis::cmd("MGET").arg(&keys).query_async(&mut conn).await?;
                for (key, value) in keys.iter().zip(values) {
                    let jti = key.strip_prefix(&key_prefix).map(Jti::parse);
                    if let (Some(Ok(jti)), Some(exp)) = (jti, value) {
                        self.remember(jti, exp);
                    }
                }
            }
            if next == 0 {
                return Ok(());
            }
            cursor = next;
        }
    }

    async fn follow_redis(self: Arc<Self>, mut pubsub: redis::aio::PubSub) {
        loop {
            {
                let mut messages = pubsub.on_message();
                while let Some(message) = messages.next().await {
                    let Ok(payload) = message.get_payload::<String>() else {
                        continue;
                    };
                    if let Some((jti, exp)) = payload.split_once(' ') {
                        if let (Ok(jti), Ok(exp)) = (Jti::parse(jti), exp.parse()) {
                            self.remember(jti, exp);
                        }
                    }
                }
            }
            tracing::warn!("revocation channel closed; resubscribing");
            pubsub = loop {
                match self.subscribe().await {
                    Ok(pubsub) => break pubsub,
                    Err(err) => {
                        tracing::warn!(error = %err, "resubscribing to revocations failed");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
            };
            if let Err(err) = self.load_from_redis().await {
                tracing::warn!(error = %err, "reloading revocations from Redis failed");
            }
        }
    }

    async fn purge_expired(self: Arc<Self>) {
        let mut tick = tokio::time::interval(Duration::from_secs(60));
        loop {
            tick.tick().await;
            let now = now_s();
            self.denied.retain(|_, expires_at| *expires_at > now);
            if let Err(err) = self.store.purge_expired(now_ms()).await {
                tracing::warn!(error = %err, "purging expired tokens failed");
            }
        }
    }
}
