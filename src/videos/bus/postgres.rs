//! The bus over PostgreSQL: `NOTIFY sonicgw_job_events` (through `pg_notify`, a batch per
//! statement), and one `LISTEN` connection per process. Channels are per database, so processes
//! hear exactly those that share their database.

use sqlx::postgres::{PgListener, PgPool, PgPoolOptions};

use super::{Inbox, Transport};

const CHANNEL: &str = "sonicgw_job_events";

pub(super) struct PgBus {
    url: String,
    /// Publishing: one connection, opened when first needed and reopened after a failure.
    pool: PgPool,
}

impl PgBus {
    pub(super) fn new(url: &str) -> anyhow::Result<Self> {
        let pool = PgPoolOptions::new()
            .max_connections(1)
            .acquire_timeout(super::PUBLISH_TIMEOUT)
            .connect_lazy(url)?;
        Ok(Self {
            url: url.to_owned(),
            pool,
        })
    }
}

#[async_trait::async_trait]
impl Transport for PgBus {
    fn name(&self) -> &'static str {
        "postgres"
    }

    async fn publish(&self, messages: &[String]) -> anyhow::Result<()> {
        sqlx::query("SELECT pg_notify($1, m) FROM unnest($2::text[]) AS m")
            .bind(CHANNEL)
            .bind(messages)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn listen(&self, inbox: &Inbox) -> anyhow::Result<()> {
        let mut listener = PgListener::connect(&self.url).await?;
        // A lost connection ends this call: reconnecting is `listen_until_stopped`'s, with backoff.
        listener.eager_reconnect(false);
        listener.listen(CHANNEL).await?;
        inbox.connected();
        // `None`: the connection was lost.
        while let Some(notification) = listener.try_recv().await? {
            inbox.receive(notification.payload().as_bytes());
        }
        Ok(())
    }
}
