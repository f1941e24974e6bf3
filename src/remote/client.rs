//! The worker protocol over HTTP: a `client_credentials` token renewed before it expires, lease,
//! input downloads, heartbeats, result upload (streamed, with its SHA-256) and failure reports.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use reqwest::StatusCode;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::Mutex;
use zeroize::Zeroizing;

use crate::domain::{JobId, Stage};
use crate::engines::EngineError;

/// A leased job as the gateway sends it.
#[derive(Debug, Deserialize)]
pub struct LeasedJob {
    pub id: JobId,
    pub engine: String,
    pub attempt: i64,
    pub params: serde_json::Value,
    pub input: serde_json::Value,
    pub output: serde_json::Value,
    pub image_url: String,
    pub audio_url: String,
    /// Seconds the gateway expects the engine to take (its cost model), for progress estimates.
    #[serde(default)]
    pub expected_s: Option<f64>,
}

/// A granted lease.
#[derive(Debug, Deserialize)]
pub struct Lease {
    pub lease_id: String,
    pub lease_expires_in_s: u64,
    pub job: LeasedJob,
}

/// What a heartbeat found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Heartbeat {
    Renewed,
    /// The job is no longer ours (cancelled, deleted, taken over): stop it.
    Lost,
}

#[derive(Deserialize)]
struct TokenResponse {
    access_token: String,
    expires_in: u64,
}

#[derive(Serialize)]
struct FailBody<'a> {
    lease_id: &'a str,
    code: &'a str,
    message: &'a str,
    detail: &'a str,
    server_side: bool,
    retry: bool,
}

/// A gateway, as one service account sees it.
pub struct Client {
    http: reqwest::Client,
    server: String,
    client_id: String,
    client_secret: Zeroizing<String>,
    token: Mutex<Option<(String, Instant)>>,
}

impl Client {
    pub fn new(server: &str, client_id: String, client_secret: String) -> anyhow::Result<Self> {
        let parsed = url::Url::parse(server).context("--server is not a URL")?;
        let loopback = match parsed.host() {
            Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
            Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
            Some(url::Host::Domain(name)) => name == "localhost",
            None => false,
        };
        if parsed.scheme() != "https" && !loopback {
            tracing::warn!(server, "the gateway is reached over plain HTTP: the worker's secret and tokens cross the network unencrypted; use https://");
        }
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .build()?;
        Ok(Self {
            http,
            server: server.trim_end_matches('/').to_owned(),
            client_id,
            client_secret: Zeroizing::new(client_secret),
            token: Mutex::new(None),
        })
    }

    /// The current token, fetched again at half its life: a gateway that refuses new tokens for a
    /// while (throttled, restarting) leaves the worker half a token's life to ride it out.
    async fn token(&self) -> anyhow::Result<String> {
        let mut token = self.token.lock().await;
        if let Some((value, renew_at)) = token.as_ref() {
            if Instant::now() < *renew_at {
                return Ok(value.clone());
            }
        }
        let response = self
            .http
            .post(format!("{}/v1/auth/token", self.server))
            .basic_auth(&self.client_id, Some(self.client_secret.as_str()))
            .form(&[("grant_type", "client_credentials")])
            .timeout(Duration::from_secs(30))
            .send()
            .await
            .context("requesting a worker token")?;
        if !response.status().is_success() {
            bail!(
                "the gateway refused the worker's credentials ({})",
                response.status()
            );
        }
        let issued: TokenResponse = response.json().await?;
        let renew_at = Instant::now() + Duration::from_secs(issued.expires_in / 2);
        *token = Some((issued.access_token.clone(), renew_at));
        Ok(issued.access_token)
    }

    /// Sends a request built by `build` with the token; once more with a fresh token after a 401.
    async fn send(
        &self,
        build: impl Fn(&reqwest::Client) -> reqwest::RequestBuilder,
    ) -> anyhow::Result<reqwest::Response> {
        for attempt in 0..2 {
            let token = self.token().await?;
            let response = build(&self.http).bearer_auth(token).send().await?;
            if response.status() == StatusCode::UNAUTHORIZED && attempt == 0 {
                *self.token.lock().await = None;
                continue;
            }
            return Ok(response);
        }
        unreachable!("the loop returns on its second attempt")
    }

    /// Leases a job of one of `engines`, waiting up to `wait` on the gateway.
    pub async fn lease(&self, engines: &[String], wait: Duration) -> anyhow::Result<Option<Lease>> {
        let url = format!("{}/v1/worker/lease", self.server);
        let body = serde_json::json!({ "engines": engines, "wait_s": wait.as_secs() });
        let response = self
            .send(|http| {
                http.post(&url)
                    .json(&body)
                    .timeout(wait + Duration::from_secs(30))
            })
            .await?;
        match response.status() {
            StatusCode::NO_CONTENT => Ok(None),
            StatusCode::OK => Ok(Some(response.json().await?)),
            status => bail!(
                "lease refused: {status}: {}",
                response.text().await.unwrap_or_default()
            ),
        }
    }

    /// Tells the gateway how many jobs of `engine` this process can run at once now (healthy GPU
    /// places, or lanes), so that its queue ETAs count this host; `process` names this process.
    /// Returns how long until the next report is due.
    pub async fn report_presence(
        &self,
        process: &str,
        engine: &str,
        capacity: usize,
    ) -> anyhow::Result<Duration> {
        #[derive(Deserialize)]
        struct Answer {
            report_every_s: u64,
        }
        let url = format!("{}/v1/worker/presence", self.server);
        let body = serde_json::json!({
            "process": process,
            "engines": [{ "engine": engine, "capacity": capacity }],
        });
        let response = self
            .send(|http| http.post(&url).json(&body).timeout(Duration::from_secs(30)))
            .await?;
        if !response.status().is_success() {
            bail!(
                "the presence report was refused: {}: {}",
                response.status(),
                response.text().await.unwrap_or_default()
            );
        }
        let answer: Answer = response.json().await?;
        Ok(Duration::from_secs(answer.report_every_s.clamp(1, 300)))
    }

    /// Downloads an input of a leased job to `path`.
    /// Only the path of `url` is used, under `--server`: the worker's token goes to no other host,
    /// whatever URL the gateway names.
    pub async fn download(&self, url: &str, lease: &str, path: &Path) -> anyhow::Result<()> {
        let given = url::Url::parse(url).context("the gateway sent an invalid input URL")?;
        let url = format!("{}{}", self.server, given.path());
        let url = url.as_str();
        let mut response = self
            .send(|http| {
                http.get(url)
                    .header("x-lease-id", lease)
                    .timeout(Duration::from_secs(600))
            })
            .await?;
        if !response.status().is_success() {
            bail!("downloading an input failed: {}", response.status());
        }
        let mut file = tokio::fs::File::create(path).await?;
        while let Some(chunk) = response.chunk().await? {
            file.write_all(&chunk).await?;
        }
        file.flush().await?;
        Ok(())
    }

    /// Renews the lease with the job's progress.
    pub async fn heartbeat(
        &self,
        job: JobId,
        lease: &str,
        stage: Stage,
        progress: f64,
    ) -> anyhow::Result<Heartbeat> {
        let url = format!("{}/v1/worker/jobs/{job}/heartbeat", self.server);
        let body = serde_json::json!({
            "lease_id": lease, "stage": stage, "progress": progress.clamp(0.0, 1.0)
        });
        let response = self
            .send(|http| http.post(&url).json(&body).timeout(Duration::from_secs(30)))
            .await?;
        match response.status() {
            StatusCode::OK => Ok(Heartbeat::Renewed),
            StatusCode::CONFLICT => Ok(Heartbeat::Lost),
            status => bail!("heartbeat refused: {status}"),
        }
    }

    /// Uploads the finished video, streamed, with its length and SHA-256. `Ok(Err(why))`: the gateway
    /// refused the file itself (422), so sending it again is pointless.
    pub async fn upload(
        &self,
        job: JobId,
        lease: &str,
        path: &Path,
        instance: Option<&str>,
    ) -> anyhow::Result<Result<(), String>> {
        let digest = sha256_file(path).await?;
        let length = tokio::fs::metadata(path).await?.len();
        let url = format!("{}/v1/worker/jobs/{job}/result", self.server);
        let token = self.token().await?;
        let file = tokio::fs::File::open(path).await?;
        let mut request = self.http.put(&url);
        if let Some(instance) = instance {
            request = request.header("x-engine-instance", instance);
        }
        let response = request
            .bearer_auth(token)
            .header("x-lease-id", lease)
            .header("x-content-sha256", digest)
            .header(reqwest::header::CONTENT_LENGTH, length)
            .header(reqwest::header::CONTENT_TYPE, "video/mp4")
            .body(reqwest::Body::wrap_stream(
                tokio_util::io::ReaderStream::new(file),
            ))
            .timeout(Duration::from_secs(3600))
            .send()
            .await?;
        if response.status() == StatusCode::UNPROCESSABLE_ENTITY {
            return Ok(Err(response.text().await.unwrap_or_default()));
        }
        if !response.status().is_success() {
            bail!(
                "the result was refused: {}: {}",
                response.status(),
                response.text().await.unwrap_or_default()
            );
        }
        Ok(Ok(()))
    }

    /// Reports the engine's failure (with its retry flag).
    pub async fn fail(&self, job: JobId, lease: &str, err: &EngineError) -> anyhow::Result<()> {
        let url = format!("{}/v1/worker/jobs/{job}/fail", self.server);
        let message: String = err
            .message
            .lines()
            .next()
            .unwrap_or("")
            .chars()
            .take(300)
            .collect();
        let detail: String = err.detail.chars().take(4000).collect();
        let body = FailBody {
            lease_id: lease,
            code: err.code,
            message: &message,
            detail: &detail,
            server_side: err.server_side,
            retry: err.retry,
        };
        let response = self
            .send(|http| http.post(&url).json(&body).timeout(Duration::from_secs(30)))
            .await?;
        if !response.status().is_success() {
            bail!("the failure report was refused: {}", response.status());
        }
        Ok(())
    }
}

/// Hex SHA-256 of a file, read in chunks.
async fn sha256_file(path: &Path) -> anyhow::Result<String> {
    let mut file = tokio::fs::File::open(path).await?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = file.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex::encode(hasher.finalize()))
}
