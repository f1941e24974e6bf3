//! The bus over Redis pub/sub: `PUBLISH <prefix>:job-events <message>`, one subscriber connection
//! per process, named `<prefix>:job-events` in `CLIENT LIST`.

use anyhow::Context;
use futures::StreamExt;

use super::{Inbox, Transport};

pub(super) struct RedisBus {
    client: redis::Client,
    /// Publishing; reconnects by itself.
    conn: redis::aio::ConnectionManager,
    channel: String,
}

impl RedisBus {
    pub(super) async fn connect(url: &str, prefix: &str) -> anyhow::Result<Self> {
        let client = redis::Client::open(url).context("redis_url is invalid")?;
        let conn = redis::aio::ConnectionManager::new(client.clone())
            .await
            .context("connecting to Redis")?;
        Ok(Self {
            client,
            conn,
            channel: format!("{prefix}:job-events"),
        })
    }
}

#[async_trait::async_trait]
impl Transport for RedisBus {
    fn name(&self) -> &'static str {
        "redis"
    }

    async fn publish(&self, messages: &[String]) -> anyhow::Result<()> {
        let mut pipe = redis::pipe();
        for message in messages {
            pipe.cmd("PUBLISH").arg(&self.channel).arg(message).ignore();
        }
        let mut conn = self.conn.clone();
        pipe.query_async::<()>(&mut conn).await?;
        Ok(())
    }

    async fn listen(&self, inbox: &Inbox) -> anyhow::Result<()> {
        let mut pubsub = self.client.get_async_pubsub().await?;
        pubsub.subscribe(&self.channel).await?;
        inbox.connected();
        let mut messages = pubsub.on_message();
        while let Some(message) = messages.next().await {
            inbox.receive(message.get_payload_bytes());
        }
        Ok(())
    }
}
