//! Test servers, databases and token forging.

use std::net::SocketAddr;
use std::path::PathBuf;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use reqwest::{Response, StatusCode};
use serde_json::{json, Value};
use sonicgw::app::RunningServer;
use sonicgw::config::Config;

pub const ADMIN_PASSWORD: &str = "admin-password-for-tests";
pub const USER_PASSWORD: &str = "user-password-for-tests";

/// Where the PostgreSQL server for tests is (`SONICGW_TEST_POSTGRES_URL`).
pub fn postgres_admin_url() -> String {
    std::env::var("SONICGW_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

/// Where the Redis server for tests is (`SONICGW_TEST_REDIS_URL`).
pub fn redis_url() -> String {
    std::env::var("SONICGW_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned())
}

/// A database of its own for one test, dropped afterwards.
pub struct PgDatabase {
    pub name: String,
    pub url: String,
}

impl PgDatabase {
    pub async fn create() -> Self {
        use sqlx::Connection;
        let name = format!("sonicgw_test_{}", uuid::Uuid::new_v4().simple());
        let admin = postgres_admin_url();
        let mut conn = sqlx::PgConnection::connect(&admin)
            .await
            .expect("PostgreSQL for tests is reachable");
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut conn)
            .await
            .expect("create test database");
        let base = admin.rsplit_once('/').expect("URL has a database").0;
        Self {
            url: format!("{base}/{name}"),
            name,
        }
    }
}

impl Drop for PgDatabase {
    fn drop(&mut self) {
        let name = self.name.clone();
        // Drop runs outside async context; a short-lived runtime on its own thread does the cleanup.
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            runtime.block_on(async {
                use sqlx::Connection;
                if let Ok(mut conn) = sqlx::PgConnection::connect(&postgres_admin_url()).await {
                    let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                        .execute(&mut conn)
                        .await;
                }
            });
        })
        .join();
    }
}

/// Which database a test server uses.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// A server on port 0 with its own data directory and database.
pub struct TestServer {
    pub addr: SocketAddr,
    pub metrics_addr: Option<SocketAddr>,
    pub config: Config,
    pub client: reqwest::Client,
    server: Option<RunningServer>,
    pub dir: tempfile::TempDir,
    pub pg: Option<PgDatabase>,
}

/// An access and refresh token pair.
#[derive(Debug, Clone)]
pub struct Session {
    pub access: String,
    pub refresh: String,
}

/// A request rate no test reaches by accident: tests of the rate limit set their own.
pub const UNLIMITED_REQUESTS_PER_MINUTE: u32 = 1_000_000;

/// A configuration for a test: port 0 everywhere, data under `dir`, the built-in plans with a request
/// rate limit that tests issuing many requests quickly never reach.
pub fn test_config(dir: &std::path::Path, database_url: Option<&str>) -> Config {
    let plans = [
        ("free", sonicgw::domain::Plan::free()),
        ("pro", sonicgw::domain::Plan::pro()),
    ]
    .into_iter()
    .map(|(name, plan)| {
        let plan = sonicgw::domain::Plan {
            requests_per_minute: UNLIMITED_REQUESTS_PER_MINUTE,
            ..plan
        };
        (name.to_owned(), plan)
    })
    .collect();
    let mut config = Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        metrics_listen: "127.0.0.1:0".to_owned(),
        data_dir: dir.to_path_buf(),
        plans,
        ..Config::default()
    };
    if let Some(url) = database_url {
        config.database_url = url.to_owned();
    }
    config
}

impl TestServer {
    pub async fn start() -> Self {
        Self::start_with(Backend::Sqlite, |_| {}).await
    }

    pub async fn start_with(backend: Backend, tweak: impl FnOnce(&mut Config)) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let pg = match backend {
            Backend::Sqlite => None,
            Backend::Postgres => Some(PgDatabase::create().await),
        };
        let mut config = test_config(dir.path(), pg.as_ref().map(|p| p.url.as_str()));
        tweak(&mut config);
        Self::launch(config, dir, pg).await
    }

    /// A server on an existing data directory (SQLite), e.g. one a killed process left behind.
    pub async fn start_on(dir: tempfile::TempDir, tweak: impl FnOnce(&mut Config)) -> Self {
        let mut config = test_config(dir.path(), None);
        tweak(&mut config);
        Self::launch(config, dir, None).await
    }

    async fn launch(config: Config, dir: tempfile::TempDir, pg: Option<PgDatabase>) -> Self {
        let server = sonicgw::app::start_with_admin_password(
            config.clone(),
            Some(ADMIN_PASSWORD.to_owned()),
        )
        .await
        .expect("server starts");
        Self {
            addr: server.addr,
            metrics_addr: server.metrics_addr,
            config,
            client: reqwest::Client::new(),
            server: Some(server),
            dir,
            pg,
        }
    }

    /// Stops the server and starts a new one on the same data directory and database.
    pub async fn restart(self) -> Self {
        self.restart_with(|_| {}).await
    }

    /// `restart`, changing the configuration of the new run.
    pub async fn restart_with(mut self, tweak: impl FnOnce(&mut Config)) -> Self {
        self.server
            .take()
            .unwrap()
            .stop()
            .await
            .expect("clean stop");
        let mut config = self.config.clone();
        tweak(&mut config);
        config.listen = "127.0.0.1:0".parse().unwrap();
        // Keep the issuer of the first run, so its tokens stay valid.
        config.issuer = format!("http://{}", self.addr);
        Self::launch(config, self.dir, self.pg.take()).await
    }

    pub fn state(&self) -> &sonicgw::http::AppState {
        &self.server.as_ref().expect("running").state
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub fn database_url(&self) -> String {
        self.config.database_url()
    }

    pub fn keys_dir(&self) -> PathBuf {
        self.config.keys_dir()
    }

    pub async fn try_login(
        &self,
        username: &str,
        password: &str,
        tenant: Option<&str>,
    ) -> Response {
        let mut form = vec![
            ("grant_type", "password"),
            ("username", username),
            ("password", password),
        ];
        if let Some(tenant) = tenant {
            form.push(("tenant", tenant));
        }
        self.client
            .post(self.url("/v1/auth/token"))
            .form(&form)
            .send()
            .await
            .unwrap()
    }

    pub async fn login_in(&self, username: &str, password: &str, tenant: Option<&str>) -> Session {
        let response = self.try_login(username, password, tenant).await;
        assert_eq!(
            response.status(),
            StatusCode::OK,
            "login of {username} failed"
        );
        let body: Value = response.json().await.unwrap();
        Session {
            access: body["access_token"].as_str().unwrap().to_owned(),
            refresh: body["refresh_token"].as_str().unwrap().to_owned(),
        }
    }

    pub async fn login(&self, username: &str, password: &str) -> Session {
        self.login_in(username, password, None).await
    }

    pub async fn admin(&self) -> Session {
        self.login("admin", ADMIN_PASSWORD).await
    }

    pub async fn refresh(&self, refresh_token: &str) -> Response {
        self.client
            .post(self.url("/v1/auth/token"))
            .form(&[
                ("grant_type", "refresh_token"),
                ("refresh_token", refresh_token),
            ])
            .send()
            .await
            .unwrap()
    }

    /// An unauthenticated GET whose answer is JSON.
    pub async fn get_public(&self, path: &str) -> Value {
        self.client
            .get(self.url(path))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    pub async fn get(&self, path: &str, token: &str) -> Response {
        self.client
            .get(self.url(path))
            .bearer_auth(token)
            .send()
            .await
            .unwrap()
    }

    pub async fn send_json(
        &self,
        method: reqwest::Method,
        path: &str,
        token: &str,
        body: Value,
    ) -> Response {
        self.client
            .request(method, self.url(path))
            .bearer_auth(token)
            .json(&body)
            .send()
            .await
            .unwrap()
    }

    pub async fn post_json(&self, path: &str, token: &str, body: Value) -> Response {
        self.send_json(reqwest::Method::POST, path, token, body)
            .await
    }

    pub async fn patch_json(&self, path: &str, token: &str, body: Value) -> Response {
        self.send_json(reqwest::Method::PATCH, path, token, body)
            .await
    }

    pub async fn delete(&self, path: &str, token: &str) -> Response {
        self.client
            .delete(self.url(path))
            .bearer_auth(token)
            .send()
            .await
            .unwrap()
    }

    /// Creates a tenant as the platform admin; returns its id.
    pub async fn create_tenant(&self, admin: &str, name: &str, plan: &str) -> String {
        let response = self
            .post_json("/v1/tenants", admin, json!({ "name": name, "plan": plan }))
            .await;
        assert_eq!(response.status(), StatusCode::CREATED);
        response.json::<Value>().await.unwrap()["id"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    /// Creates a user with `USER_PASSWORD`; returns its id.
    pub async fn create_user(
        &self,
        token: &str,
        username: &str,
        role: &str,
        tenant_id: Option<&str>,
    ) -> String {
        let mut body = json!({ "username": username, "password": USER_PASSWORD, "role": role });
        if let Some(tenant) = tenant_id {
            body["tenant_id"] = tenant.into();
        }
        let response = self.post_json("/v1/users", token, body).await;
        assert_eq!(
            response.status(),
            StatusCode::CREATED,
            "{}",
            response.text().await.unwrap()
        );
        response.json::<Value>().await.unwrap()["id"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    /// The active signing key as stored: `(kid, alg, private PEM)`.
    pub fn signing_key(&self) -> (String, String, String) {
        let mut newest: Option<Value> = None;
        for entry in std::fs::read_dir(self.keys_dir()).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().and_then(|e| e.to_str()) != Some("json") {
                continue;
            }
            let file: Value =
                serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
            if newest
                .as_ref()
                .is_none_or(|n| n["created_at"].as_i64() < file["created_at"].as_i64())
            {
                newest = Some(file);
            }
        }
        let key = newest.expect("a key file");
        (
            key["kid"].as_str().unwrap().to_owned(),
            key["alg"].as_str().unwrap().to_owned(),
            key["private_key_pem"].as_str().unwrap().to_owned(),
        )
    }

    pub fn issuer(&self) -> String {
        if self.config.issuer.is_empty() {
            format!("http://{}", self.addr)
        } else {
            self.config.issuer.clone()
        }
    }

    /// Claims like the server's own for the bootstrap admin, valid now.
    pub async fn valid_claims(&self) -> Value {
        let session = self.admin().await;
        decode_part(&session.access, 1)
    }

    /// Signs `claims` with the server's real RS256 key and the given header members.
    pub fn forge(&self, header: Value, claims: &Value) -> String {
        let (kid, _alg, pem) = self.signing_key();
        let mut header_map = json!({ "alg": "RS256", "typ": "at+jwt", "kid": kid });
        for (k, v) in header.as_object().unwrap() {
            if v.is_null() {
                header_map.as_object_mut().unwrap().remove(k);
            } else {
                header_map[k] = v.clone();
            }
        }
        sign_rs256(&header_map, claims, &pem)
    }
}

/// Base64url-decodes and parses part `index` of a JWT.
pub fn decode_part(token: &str, index: usize) -> Value {
    let part = token.split('.').nth(index).unwrap();
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).unwrap()).unwrap()
}

pub fn b64_json(value: &Value) -> String {
    URL_SAFE_NO_PAD.encode(serde_json::to_vec(value).unwrap())
}

/// RS256 over an arbitrary header, the way an attacker holding the key (or a buggy issuer) would.
pub fn sign_rs256(header: &Value, claims: &Value, private_pem: &str) -> String {
    use rsa::pkcs1v15::SigningKey;
    use rsa::pkcs8::DecodePrivateKey;
    use rsa::signature::{SignatureEncoding, Signer};
    let key = rsa::RsaPrivateKey::from_pkcs8_pem(private_pem).unwrap();
    let signer = SigningKey::<sha2::Sha256>::new(key);
    let input = format!("{}.{}", b64_json(header), b64_json(claims));
    let signature = signer.sign(input.as_bytes()).to_bytes();
    format!("{input}.{}", URL_SAFE_NO_PAD.encode(signature))
}

/// HMAC-SHA256 over an arbitrary header with an arbitrary secret.
pub fn sign_hs256(header: &Value, claims: &Value, secret: &[u8]) -> String {
    use hmac::Mac;
    let input = format!("{}.{}", b64_json(header), b64_json(claims));
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret).unwrap();
    mac.update(input.as_bytes());
    format!(
        "{input}.{}",
        URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes())
    )
}

/// Asserts an RFC 6750 refusal: 401, `WWW-Authenticate: Bearer error="invalid_token"`, a problem body.
pub async fn assert_invalid_token(response: Response, why: &str) {
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "{why}");
    let challenge = response
        .headers()
        .get("www-authenticate")
        .unwrap_or_else(|| panic!("{why}: no WWW-Authenticate"))
        .to_str()
        .unwrap()
        .to_owned();
    assert!(challenge.starts_with("Bearer "), "{why}: {challenge}");
    assert!(
        challenge.contains("error=\"invalid_token\""),
        "{why}: {challenge}"
    );
    assert_eq!(
        response.headers()["content-type"].to_str().unwrap(),
        "application/problem+json",
        "{why}"
    );
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["status"], 401, "{why}");
    assert_eq!(body["code"], "invalid_token", "{why}");
}

/// A sqlx pool straight onto a test server's database, for inspecting and tampering.
pub enum RawDb {
    Sqlite(sqlx::SqlitePool),
    Postgres(sqlx::PgPool),
}

impl RawDb {
    pub async fn open(url: &str) -> Self {
        if url.starts_with("postgres") {
            RawDb::Postgres(sqlx::PgPool::connect(url).await.unwrap())
        } else {
            RawDb::Sqlite(sqlx::SqlitePool::connect(url).await.unwrap())
        }
    }

    pub async fn execute(&self, sql: &str) -> u64 {
        match self {
            RawDb::Sqlite(pool) => sqlx::query(sql)
                .execute(pool)
                .await
                .unwrap()
                .rows_affected(),
            RawDb::Postgres(pool) => sqlx::query(sql)
                .execute(pool)
                .await
                .unwrap()
                .rows_affected(),
        }
    }
}
