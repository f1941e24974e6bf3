//! A Lua script run atomically on Redis: loaded once (`SCRIPT LOAD`), called by its SHA-1
//! (`EVALSHA`), and loaded again when Redis has forgotten it (a restart, `SCRIPT FLUSH`). Limits that
//! several replicas share are such scripts, so each decision is one round trip and one atomic step.

use std::sync::RwLock;
use std::time::Duration;

use anyhow::Context;
use redis::aio::ConnectionManager;
use redis::{FromRedisValue, ToRedisArgs};

/// Longest a script call may take, reconnecting included: a request waiting on a Redis that is gone
/// would otherwise wait for the connection manager's retries. Past it the caller decides alone.
pub const SCRIPT_TIMEOUT: Duration = Duration::from_millis(500);

/// A script and the connection it runs on.
pub struct RedisScript {
    conn: ConnectionManager,
    source: String,
    sha: RwLock<String>,
}

impl RedisScript {
    /// Connects to `redis_url` and loads `source`.
    pub async fn connect(redis_url: &str, source: &str) -> anyhow::Result<Self> {
        Self::load_on(connect(redis_url).await?, source).await
    }

    /// Loads `source` for use over `conn`.
    pub async fn load_on(conn: ConnectionManager, source: &str) -> anyhow::Result<Self> {
        let script = Self {
            conn,
            source: source.to_owned(),
            sha: RwLock::new(String::new()),
        };
        script.load().await.context("loading a script into Redis")?;
        Ok(script)
    }

    async fn load(&self) -> redis::RedisResult<String> {
        let sha: String = redis::cmd("SCRIPT")
            .arg("LOAD")
            .arg(&self.source)
            .query_async(&mut self.conn.clone())
            .await?;
        *self.sha.write().unwrap_or_else(|e| e.into_inner()) = sha.clone();
        Ok(sha)
    }

    /// Runs the script with `keys` and `args`, failing after [`SCRIPT_TIMEOUT`].
    pub async fn run<T: FromRedisValue>(
        &self,
        keys: &[String],
        args: &[impl ToRedisArgs],
    ) -> redis::RedisResult<T> {
        match tokio::time::timeout(SCRIPT_TIMEOUT, self.run_untimed(keys, args)).await {
            Ok(result) => result,
            Err(_) => Err(redis::RedisError::from((
                redis::ErrorKind::IoError,
                "Redis did not answer in time",
            ))),
        }
    }

    async fn run_untimed<T: FromRedisValue>(
        &self,
        keys: &[String],
        args: &[impl ToRedisArgs],
    ) -> redis::RedisResult<T> {
        let sha = self.sha.read().unwrap_or_else(|e| e.into_inner()).clone();
        match self.evalsha(&sha, keys, args).await {
            Err(err) if err.kind() == redis::ErrorKind::NoScriptError => {
                let sha = self.load().await?;
                self.evalsha(&sha, keys, args).await
            }
            other => other,
        }
    }

    async fn evalsha<T: FromRedisValue>(
        &self,
        sha: &str,
        keys: &[String],
        args: &[impl ToRedisArgs],
    ) -> redis::RedisResult<T> {
        redis::cmd("EVALSHA")
            .arg(sha)
            .arg(keys.len())
            .arg(keys)
            .arg(args)
            .query_async(&mut self.conn.clone())
            .await
    }
}

/// A connection to `redis_url` that reconnects by itself.
pub async fn connect(redis_url: &str) -> anyhow::Result<ConnectionManager> {
    let client = redis::Client::open(redis_url).context("redis_url is invalid")?;
    ConnectionManager::new(client)
        .await
        .context("connecting to Redis")
}
