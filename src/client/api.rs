//! The gateway's API as the CLI uses it: a signed-in session that refreshes its access token (under
//! a file lock, saving the rotated refresh token before using it), and the API's errors as values
//! with their stable codes.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use reqwest::{Method, StatusCode};
use serde::Deserialize;
use serde_json::Value;

use super::credentials::{self, Credentials};

/// The most a JSON answer (or an error's body) may be: a hostile server cannot make the CLI hold more.
pub const MAX_ANSWER_BYTES: usize = 16 * 1024 * 1024;

/// A response's body, at most `MAX_ANSWER_BYTES` of it.
pub async fn read_capped(mut response: reqwest::Response) -> anyhow::Result<Vec<u8>> {
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await? {
        anyhow::ensure!(
            body.len() + chunk.len() <= MAX_ANSWER_BYTES,
            "the server's answer is larger than {} MiB",
            MAX_ANSWER_BYTES / (1024 * 1024)
        );
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// A JSON answer, read with `read_capped`, every string in it cleaned for the terminal.
pub async fn read_json<T: serde::de::DeserializeOwned>(
    response: reqwest::Response,
) -> anyhow::Result<T> {
    let value: Value = serde_json::from_slice(&read_capped(response).await?)?;
    Ok(serde_json::from_value(super::terminal::clean_json(value))?)
}

/// When a token that lives `expires_in` seconds from now expires, in Unix seconds; a server's
/// nonsense lifetime (negative, or past a month) is taken as none or a month.
fn expiry(expires_in: i64) -> i64 {
    crate::time::now_s().saturating_add(expires_in.clamp(0, 30 * 24 * 3600))
}

/// Refresh the access token when less than this is left of it.
const REFRESH_MARGIN_S: i64 = 30;

/// An answer of the API that is not a success: its status, stable code and explanation.
#[derive(Debug, thiserror::Error)]
#[error("{code}: {detail}")]
pub struct ApiFailure {
    pub status: u16,
    pub code: String,
    pub detail: String,
    /// Field errors: (field, message).
    pub fields: Vec<(String, String)>,
}

impl ApiFailure {
    /// Reads a problem document (`code`, `detail`, `errors`) or an OAuth error (`error`,
    /// `error_description`) from a failed response.
    pub async fn from_response(response: reqwest::Response) -> Self {
        let status = response.status();
        let location = response
            .headers()
            .get(reqwest::header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let text = read_capped(response)
            .await
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default();
        if status.is_redirection() {
            return Self {
                status: status.as_u16(),
                code: "redirected".to_owned(),
                detail: format!(
                    "the server answers with a redirect to {}; use that address with `sonicgw login --server` (redirects are not followed, so that tokens go nowhere else)",
                    location
                        .as_deref()
                        .map_or_else(|| "another address".to_owned(), super::terminal::clean_text)
                ),
                fields: Vec::new(),
            };
        }
        let body = super::terminal::clean_json(serde_json::from_str(&text).unwrap_or(Value::Null));
        let string = |key: &str| body.get(key).and_then(Value::as_str).map(str::to_owned);
        let code = string("code")
            .or_else(|| string("error"))
            .unwrap_or_else(|| format!("http_{}", status.as_u16()));
        let detail = string("detail")
            .or_else(|| string("error_description"))
            .unwrap_or_else(|| status.canonical_reason().unwrap_or("failed").to_owned());
        let fields = body
            .get("errors")
            .and_then(Value::as_array)
            .map(|errors| {
                errors
                    .iter()
                    .map(|e| {
                        let get =
                            |k: &str| e.get(k).and_then(Value::as_str).unwrap_or("").to_owned();
                        (get("field"), get("message"))
                    })
                    .collect()
            })
            .unwrap_or_default();
        Self {
            status: status.as_u16(),
            code,
            detail,
            fields,
        }
    }
}

/// An HTTP client for `server`, with the system's root certificates; `insecure` accepts any
/// certificate (and says so on stderr).
pub fn http_client(insecure: bool) -> anyhow::Result<reqwest::Client> {
    if insecure {
        eprintln!("warning: --insecure: the server's TLS certificate is NOT checked; anyone on the network can read and change this traffic");
    }
    Ok(reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(15))
        // A token must never follow a redirect to another address.
        .redirect(reqwest::redirect::Policy::none())
        .danger_accept_invalid_certs(insecure)
        .user_agent(concat!("sonicgw-cli/", env!("CARGO_PKG_VERSION")))
        .build()?)
}

#[derive(Deserialize)]
struct TokenAnswer {
    access_token: String,
    expires_in: i64,
    refresh_token: String,
}

/// Signs in with a password; the tokens, ready to save.
pub async fn password_login(
    http: &reqwest::Client,
    server: &str,
    username: &str,
    password: &str,
    tenant: Option<&str>,
) -> Result<(String, i64, String), anyhow::Error> {
    let mut form = vec![
        ("grant_type", "password"),
        ("username", username),
        ("password", password),
    ];
    if let Some(tenant) = tenant {
        form.push(("tenant", tenant));
    }
    let response = http
        .post(format!("{server}/v1/auth/token"))
        .form(&form)
        .timeout(Duration::from_secs(60))
        .send()
        .await
        .with_context(|| format!("reaching {server}"))?;
    if !response.status().is_success() {
        return Err(ApiFailure::from_response(response).await.into());
    }
    let answer: TokenAnswer = read_json(response).await?;
    Ok((
        answer.access_token,
        expiry(answer.expires_in),
        answer.refresh_token,
    ))
}

/// A signed-in session of the CLI.
pub struct Session {
    pub http: reqwest::Client,
    path: PathBuf,
    credentials: tokio::sync::Mutex<Credentials>,
    pub server: String,
}

impl Session {
    /// The stored sign-in at `path`; an error telling to sign in when there is none.
    pub fn open(path: PathBuf) -> anyhow::Result<Self> {
        let credentials = credentials::load(&path)?
            .context("not signed in: run `sonicgw login --server URL` first")?;
        let http = http_client(credentials.insecure)?;
        Ok(Self {
            http,
            path,
            server: credentials.server.clone(),
            credentials: tokio::sync::Mutex::new(credentials),
        })
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.server)
    }

    /// A valid access token, refreshed first when it is about to expire.
    pub async fn access_token(&self) -> anyhow::Result<String> {
        let mut current = self.credentials.lock().await;
        if current.access_expires_at - REFRESH_MARGIN_S > crate::time::now_s() {
            return Ok(current.access_token.clone());
        }
        self.refresh(&mut current).await?;
        Ok(current.access_token.clone())
    }

    /// Spends the refresh token under the file lock: another command may have refreshed meanwhile,
    /// in which case its tokens are taken instead.
    async fn refresh(&self, current: &mut Credentials) -> anyhow::Result<()> {
        let path = self.path.clone();
        let lock = tokio::task::spawn_blocking(move || credentials::lock(&path)).await??;
        if let Some(stored) = credentials::load(&self.path)? {
            if stored.access_expires_at - REFRESH_MARGIN_S > crate::time::now_s() {
                *current = stored;
                drop(lock);
                return Ok(());
            }
            *current = stored;
        }
        let response = self
            .http
            .post(self.url("/v1/auth/token"))
            .form(&[
                ("grant_type", "refresh_token"),
                ("refresh_token", current.refresh_token.as_str()),
            ])
            .timeout(Duration::from_secs(60))
            .send()
            .await
            .with_context(|| format!("reaching {}", self.server))?;
        if !response.status().is_success() {
            let failure = ApiFailure::from_response(response).await;
            if failure.code == "invalid_grant" {
                credentials::remove(&self.path)?;
                anyhow::bail!("the sign-in has ended ({failure}); run `sonicgw login` again");
            }
            return Err(failure.into());
        }
        let answer: TokenAnswer = read_json(response).await?;
        current.access_token = answer.access_token;
        current.access_expires_at = expiry(answer.expires_in);
        current.refresh_token = answer.refresh_token;
        credentials::save(&self.path, current)?;
        drop(lock);
        Ok(())
    }

    /// Forgets the access token so the next call refreshes (after a 401).
    pub async fn expire(&self) {
        self.credentials.lock().await.access_expires_at = 0;
    }

    /// Sends the request `build` makes, with the bearer token; once more after a refresh when the
    /// token was refused. A non-success answer is an `ApiFailure`.
    pub async fn send(
        &self,
        build: impl Fn(&reqwest::Client) -> reqwest::RequestBuilder,
    ) -> anyhow::Result<reqwest::Response> {
        for attempt in 0..2 {
            let token = self.access_token().await?;
            let response = build(&self.http)
                .bearer_auth(token)
                .send()
                .await
                .with_context(|| format!("reaching {}", self.server))?;
            if response.status() == StatusCode::UNAUTHORIZED && attempt == 0 {
                self.expire().await;
                continue;
            }
            if !response.status().is_success() {
                return Err(ApiFailure::from_response(response).await.into());
            }
            return Ok(response);
        }
        unreachable!("the second attempt returns")
    }

    /// A JSON call: `method path` with an optional JSON body.
    pub async fn json(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> anyhow::Result<Value> {
        let url = self.url(path);
        let response = self
            .send(|http| {
                let request = http
                    .request(method.clone(), &url)
                    .timeout(Duration::from_secs(60));
                match body {
                    Some(body) => request.json(body),
                    None => request,
                }
            })
            .await?;
        if response.status() == StatusCode::NO_CONTENT {
            return Ok(Value::Null);
        }
        read_json(response).await
    }

    /// Signs out: revokes the sign-in on the server (every token of it), then forgets it here. The
    /// local file goes even when the server cannot be reached; that is said, not hidden.
    pub async fn logout(self) -> anyhow::Result<()> {
        let refresh = self.credentials.lock().await.refresh_token.clone();
        let revoked = self
            .http
            .post(self.url("/v1/auth/revoke"))
            .form(&[
                ("token", refresh.as_str()),
                ("token_type_hint", "refresh_token"),
            ])
            .timeout(Duration::from_secs(30))
            .send()
            .await;
        credentials::remove(&self.path)?;
        match revoked {
            Ok(response) if response.status().is_success() => Ok(()),
            Ok(response) => Err(ApiFailure::from_response(response).await)
                .context("signed out here, but the server did not revoke the sign-in"),
            Err(err) => Err(err).context(
                "signed out here, but the server could not be reached to revoke the sign-in",
            ),
        }
    }
}
