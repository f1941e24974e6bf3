//! Configuration: a TOML file (`--config`) with `SONICGW_<KEY>` environment variables laid over it.
//! Every key is documented in the README.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use anyhow::bail;
use figment::providers::{Env, Format, Toml};
use figment::Figment;
use serde::Deserialize;

use crate::auth::keys::SigningAlg;
use crate::blobs::StorageLocation;
use crate::domain::{Plan, Plans};
use crate::videos::delivery::Delivery;

/// The whole configuration, with defaults for the embedded single-machine setup. Its `Debug` hides the
/// secrets (see [`Redacted`] and [`redacted_url`]).
#[derive(Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub listen: SocketAddr,
    /// Prometheus metrics listener; empty disables it.
    #[serde(deserialize_with = "text")]
    pub metrics_listen: String,
    pub data_dir: PathBuf,
    /// `sqlite://...` or `postgres://...`; empty means `sqlite://<data_dir>/sonicgw.db`.
    #[serde(deserialize_with = "text")]
    pub database_url: String,
    /// Empty: revocations live in the database and process memory.
    #[serde(deserialize_with = "text")]
    pub redis_url: String,
    #[serde(deserialize_with = "text")]
    pub redis_prefix: String,
    /// `iss` of issued tokens; empty means `http://<listen>`.
    #[serde(deserialize_with = "text")]
    pub issuer: String,
    #[serde(deserialize_with = "text")]
    pub audience: String,
    #[serde(deserialize_with = "text")]
    pub signing_alg: String,
    #[serde(deserialize_with = "text")]
    pub hs256_secret: String,
    /// Directory of signing keys; empty means `<data_dir>/keys`.
    #[serde(deserialize_with = "text")]
    pub keys_dir: String,
    /// The issuer's JWKS; set: this process holds no private key, verifies with these keys only and
    /// does not serve `/v1/auth/*` or `/login`.
    #[serde(deserialize_with = "text")]
    pub jwks_url: String,
    pub access_token_ttl_s: i64,
    pub refresh_token_ttl_s: i64,
    pub token_leeway_s: i64,
    pub token_cache_size: usize,
    pub password_min_length: usize,
    pub password_max_length: usize,
    pub login_max_failures: u32,
    pub login_ip_max_failures: u32,
    pub login_window_s: u64,
    pub login_lockout_s: u64,
    /// `text` or `json`.
    #[serde(deserialize_with = "text")]
    pub log_format: String,
    #[serde(deserialize_with = "text")]
    pub tls_cert: String,
    #[serde(deserialize_with = "text")]
    pub tls_key: String,
    pub require_https: bool,
    /// Addresses whose `X-Forwarded-For` / `X-Forwarded-Proto` are believed (a list, or in the
    /// environment a comma-separated string).
    #[serde(deserialize_with = "addresses")]
    pub trusted_proxies: Vec<IpAddr>,
    pub plans: BTreeMap<String, Plan>,
    /// In-process video workers of `serve` (0: this process only serves the API).
    pub workers: usize,
    /// Engine used when a job names none.
    #[serde(deserialize_with = "text")]
    pub default_engine: String,
    pub max_image_bytes: u64,
    pub max_image_side: u32,
    pub max_audio_bytes: u64,
    /// A running job's lease; a worker that misses it is presumed dead and its job requeued.
    pub job_lease_s: u64,
    /// Runs of a job before it fails with `worker_lost`.
    pub job_max_attempts: i64,
    /// Seconds between looks at the database for job changes no event announced (idle workers,
    /// lease requests, event streams): other processes' changes without a bus, or while it is down.
    pub job_poll_s: u64,
    /// Lifetime of signed download links.
    pub link_ttl_s: i64,
    /// `file://<dir>` or `s3://bucket/prefix`; empty means `file://<data_dir>/blobs`.
    #[serde(deserialize_with = "text")]
    pub storage_url: String,
    /// object_store's S3 settings laid over the `AWS_*` environment (a table, or in the environment
    /// `name=value` pairs separated by commas): secret.
    #[serde(deserialize_with = "headers")]
    pub storage_options: BTreeMap<String, String>,
    /// `proxy` (signed links served by the gateway) or `presigned` (S3 presigned URLs).
    #[serde(deserialize_with = "text")]
    pub delivery: String,
    /// Origin of signed links when a CDN is in front of the gateway; empty: links are paths.
    #[serde(deserialize_with = "text")]
    pub public_base_url: String,
    /// Files of jobs that ended longer ago are removed; unset keeps them until the job is deleted.
    pub retention_days: Option<u32>,
    /// HMAC key of signed links; empty: generated once under `keys_dir`.
    #[serde(deserialize_with = "text")]
    pub url_signing_secret: String,
    /// Longest an engine may take for one job.
    pub engine_timeout_s: u64,
    /// On SIGTERM, how long requests in flight may take to finish before their connections close.
    pub shutdown_grace_s: u64,
    /// Starting speeds of the ETA model per engine, in engine seconds per second of 512x512 video at
    /// 25 steps (a table, or in the environment `engine=seconds` pairs separated by commas); engines
    /// not named keep their defaults (`videos::eta::default_seed`).
    #[serde(deserialize_with = "speeds")]
    pub engine_speed_seed: BTreeMap<String, f64>,
    /// Enables the simulated engine (tests and benchmarks only) with this duration per job.
    pub simulated_engine_ms: u64,
    /// Allow webhook targets on loopback and private networks.
    pub webhook_allow_private: bool,
    /// ComfyUI servers with the ComfyUI_Sonic nodes (a list, or in the environment a
    /// comma-separated string); set: the `sonic` engine is registered.
    #[serde(deserialize_with = "list")]
    pub comfyui_urls: Vec<String>,
    /// Extra headers sent to ComfyUI (e.g. a reverse proxy's token): secret.
    #[serde(deserialize_with = "headers")]
    pub comfyui_headers: BTreeMap<String, String>,
    #[serde(deserialize_with = "text")]
    pub sonic_checkpoint: String,
    #[serde(deserialize_with = "text")]
    pub sonic_unet: String,
    #[serde(deserialize_with = "text")]
    pub sonic_dtype: String,
    /// Engines whose jobs this process accepts though only remote workers run them (`sonic` on
    /// an API server that does not reach the GPU hosts).
    #[serde(deserialize_with = "list")]
    pub remote_engines: Vec<String>,
    /// Prompts one ComfyUI server is given at once (1: the gateway's queue decides every order).
    pub comfyui_max_in_flight: usize,
    /// Seconds between health checks of a healthy ComfyUI server.
    pub comfyui_health_interval_s: u64,
    /// Seconds between signed checkpoints of the audit chain (0: only `sonicgw audit checkpoint`).
    pub audit_checkpoint_interval_s: u64,
    /// An API-format workflow with placeholders used instead of the built-in graph; empty: built-in.
    #[serde(deserialize_with = "text")]
    pub sonic_workflow: String,
    /// The visible AI label on every video; `false`: only the metadata label (an operator's
    /// decision for jurisdictions without the duty).
    pub explicit_label: bool,
    /// The corner mark after the opening label.
    pub label_corner_mark: bool,
    /// A font with CJK glyphs for the visible label (TrueType/OpenType, collections too).
    #[serde(deserialize_with = "text")]
    pub label_font: String,
    /// The service's name or code written as `ContentProducer` in the AIGC metadata.
    #[serde(deserialize_with = "text")]
    pub aigc_producer_id: String,
    /// The C2PA signing certificate chain (PEM, signing certificate first); empty: a self-signed
    /// chain generated once under `keys_dir`, which verifiers report as untrusted.
    #[serde(deserialize_with = "text")]
    pub c2pa_cert: String,
    /// The C2PA signing key (PKCS#8 PEM, P-256: ES256).
    #[serde(deserialize_with = "text")]
    pub c2pa_key: String,
    /// Root certificates (PEM) whose C2PA signers the verify endpoints report as trusted (the C2PA
    /// trust list, your own CA); empty: every signer is untrusted.
    #[serde(deserialize_with = "text")]
    pub c2pa_trust_anchors: String,
    /// Largest video `POST /v1/provenance/verify` accepts.
    pub verify_max_bytes: u64,
}

/// The default `label_font`: the font scripts/setup.sh installs (Debian's fonts-wqy-microhei).
pub const DEFAULT_LABEL_FONT: &str = "/usr/share/fonts/truetype/wqy/wqy-microhei.ttc";

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8080".parse().expect("valid default address"),
            metrics_listen: "127.0.0.1:9464".to_owned(),
            data_dir: PathBuf::from("./sonicgw-data"),
            database_url: String::new(),
            redis_url: String::new(),
            redis_prefix: "sonicgw".to_owned(),
            issuer: String::new(),
            audience: "sonicgw".to_owned(),
            signing_alg: "RS256".to_owned(),
            hs256_secret: String::new(),
            keys_dir: String::new(),
            jwks_url: String::new(),
            access_token_ttl_s: 30 * 60,
            refresh_token_ttl_s: 14 * 24 * 3600,
            token_leeway_s: 30,
            token_cache_size: 10_000,
            password_min_length: 12,
            password_max_length: 256,
            login_max_failures: 10,
            login_ip_max_failures: 100,
            login_window_s: 15 * 60,
            login_lockout_s: 15 * 60,
            log_format: "text".to_owned(),
            tls_cert: String::new(),
            tls_key: String::new(),
            require_https: false,
            trusted_proxies: Vec::new(),
            plans: BTreeMap::new(),
            workers: 1,
            default_engine: String::new(),
            max_image_bytes: 20 * 1024 * 1024,
            max_image_side: 4096,
            max_audio_bytes: 50 * 1024 * 1024,
            job_lease_s: 30,
            job_poll_s: 5,
            job_max_attempts: 3,
            link_ttl_s: 3600,
            storage_url: String::new(),
            storage_options: BTreeMap::new(),
            delivery: "proxy".to_owned(),
            public_base_url: String::new(),
            retention_days: None,
            url_signing_secret: String::new(),
            engine_timeout_s: 1800,
            shutdown_grace_s: 20,
            engine_speed_seed: BTreeMap::new(),
            simulated_engine_ms: 0,
            webhook_allow_private: false,
            comfyui_urls: Vec::new(),
            comfyui_headers: BTreeMap::new(),
            sonic_checkpoint: "svd_xt_1_1.safetensors".to_owned(),
            sonic_unet: "unet.pth".to_owned(),
            sonic_dtype: "fp16".to_owned(),
            remote_engines: Vec::new(),
            comfyui_max_in_flight: 1,
            comfyui_health_interval_s: 10,
            audit_checkpoint_interval_s: 3600,
            sonic_workflow: String::new(),
            explicit_label: true,
            label_corner_mark: true,
            label_font: DEFAULT_LABEL_FONT.to_owned(),
            aigc_producer_id: "sonicgw".to_owned(),
            c2pa_cert: String::new(),
            c2pa_key: String::new(),
            c2pa_trust_anchors: String::new(),
            verify_max_bytes: 64 * 1024 * 1024,
        }
    }
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Destructured, so that a new field cannot be added without deciding here how it is shown.
        let Config {
            listen,
            metrics_listen,
            data_dir,
            database_url,
            redis_url,
            redis_prefix,
            issuer,
            audience,
            signing_alg,
            hs256_secret,
            keys_dir,
            jwks_url,
            access_token_ttl_s,
            refresh_token_ttl_s,
            token_leeway_s,
            token_cache_size,
            password_min_length,
            password_max_length,
            login_max_failures,
            login_ip_max_failures,
            login_window_s,
            login_lockout_s,
            log_format,
            tls_cert,
            tls_key,
            require_https,
            trusted_proxies,
            plans,
            workers,
            default_engine,
            max_image_bytes,
            max_image_side,
            max_audio_bytes,
            job_lease_s,
            job_poll_s,
            job_max_attempts,
            link_ttl_s,
            storage_url,
            storage_options,
            delivery,
            public_base_url,
            retention_days,
            url_signing_secret,
            engine_timeout_s,
            shutdown_grace_s,
            engine_speed_seed,
            simulated_engine_ms,
            webhook_allow_private,
            comfyui_urls,
            comfyui_headers,
            sonic_checkpoint,
            sonic_unet,
            sonic_dtype,
            remote_engines,
            comfyui_max_in_flight,
            comfyui_health_interval_s,
            audit_checkpoint_interval_s,
            sonic_workflow,
            explicit_label,
            label_corner_mark,
            label_font,
            aigc_producer_id,
            c2pa_cert,
            c2pa_key,
            c2pa_trust_anchors,
            verify_max_bytes,
        } = self;
        f.debug_struct("Config")
            .field("listen", listen)
            .field("metrics_listen", metrics_listen)
            .field("data_dir", data_dir)
            .field("database_url", &redacted_url(database_url))
            .field("redis_url", &redacted_url(redis_url))
            .field("redis_prefix", redis_prefix)
            .field("issuer", issuer)
            .field("audience", audience)
            .field("signing_alg", signing_alg)
            .field("hs256_secret", &Redacted(hs256_secret))
            .field("keys_dir", keys_dir)
            .field("jwks_url", &redacted_url(jwks_url))
            .field("access_token_ttl_s", access_token_ttl_s)
            .field("refresh_token_ttl_s", refresh_token_ttl_s)
            .field("token_leeway_s", token_leeway_s)
            .field("token_cache_size", token_cache_size)
            .field("password_min_length", password_min_length)
            .field("password_max_length", password_max_length)
            .field("login_max_failures", login_max_failures)
            .field("login_ip_max_failures", login_ip_max_failures)
            .field("login_window_s", login_window_s)
            .field("login_lockout_s", login_lockout_s)
            .field("log_format", log_format)
            .field("tls_cert", tls_cert)
            // A path, not the key itself.
            .field("tls_key", tls_key)
            .field("require_https", require_https)
            .field("trusted_proxies", trusted_proxies)
            .field("plans", plans)
            .field("workers", workers)
            .field("default_engine", default_engine)
            .field("max_image_bytes", max_image_bytes)
            .field("max_image_side", max_image_side)
            .field("max_audio_bytes", max_audio_bytes)
            .field("job_lease_s", job_lease_s)
            .field("job_poll_s", job_poll_s)
            .field("job_max_attempts", job_max_attempts)
            .field("link_ttl_s", link_ttl_s)
            .field("storage_url", storage_url)
            .field(
                "storage_options",
                &storage_options
                    .iter()
                    .map(|(name, value)| (name.as_str(), Redacted(value)))
                    .collect::<BTreeMap<_, _>>(),
            )
            .field("delivery", delivery)
            .field("public_base_url", public_base_url)
            .field("retention_days", retention_days)
            .field("url_signing_secret", &Redacted(url_signing_secret))
            .field("engine_timeout_s", engine_timeout_s)
            .field("shutdown_grace_s", shutdown_grace_s)
            .field("engine_speed_seed", engine_speed_seed)
            .field("simulated_engine_ms", simulated_engine_ms)
            .field("webhook_allow_private", webhook_allow_private)
            .field(
                "comfyui_urls",
                &comfyui_urls
                    .iter()
                    .map(|u| redacted_url(u))
                    .collect::<Vec<_>>(),
            )
            .field(
                "comfyui_headers",
                &comfyui_headers
                    .iter()
                    .map(|(name, value)| (name.as_str(), Redacted(value)))
                    .collect::<BTreeMap<_, _>>(),
            )
            .field("sonic_checkpoint", sonic_checkpoint)
            .field("sonic_unet", sonic_unet)
            .field("sonic_dtype", sonic_dtype)
            .field("remote_engines", remote_engines)
            .field("comfyui_max_in_flight", comfyui_max_in_flight)
            .field("comfyui_health_interval_s", comfyui_health_interval_s)
            .field("audit_checkpoint_interval_s", audit_checkpoint_interval_s)
            .field("sonic_workflow", sonic_workflow)
            .field("explicit_label", explicit_label)
            .field("label_corner_mark", label_corner_mark)
            .field("label_font", label_font)
            .field("aigc_producer_id", aigc_producer_id)
            .field("c2pa_cert", c2pa_cert)
            // A path, not the key itself.
            .field("c2pa_key", c2pa_key)
            .field("c2pa_trust_anchors", c2pa_trust_anchors)
            .field("verify_max_bytes", verify_max_bytes)
            .finish()
    }
}

/// A secret for `Debug` output: shows whether it is set (`""` when empty), never its value.
pub struct Redacted<'a>(pub &'a str);

impl fmt::Debug for Redacted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            f.write_str("\"\"")
        } else {
            f.write_str("\"<redacted>\"")
        }
    }
}

/// What replaces a password inside a URL.
const URL_PASSWORD_PLACEHOLDER: &str = "REDACTED";

/// A database or Redis URL fit for logs: its password, and the value of any query parameter that looks
/// like a credential (`password=`, `sslpassword=`, `token=`, ...), replaced. Text that does not parse as
/// a URL is shown only if it cannot hold credentials (no `@`, no `=`).
pub fn redacted_url(raw: &str) -> String {
    let Ok(mut url) = url::Url::parse(raw) else {
        return if raw.contains(['@', '=']) {
            "<redacted>".to_owned()
        } else {
            raw.to_owned()
        };
    };
    if url.password().is_some() && url.set_password(Some(URL_PASSWORD_PLACEHOLDER)).is_err() {
        return "<redacted>".to_owned();
    }
    let secret_name = |name: &str| {
        let name = name.to_ascii_lowercase();
        ["pass", "secret", "token", "key", "auth"]
            .iter()
            .any(|word| name.contains(word))
    };
    if url.query_pairs().any(|(name, _)| secret_name(&name)) {
        let pairs: Vec<(String, String)> = url
            .query_pairs()
            .map(|(name, value)| {
                let value = if secret_name(&name) {
                    URL_PASSWORD_PLACEHOLDER.to_owned()
                } else {
                    value.into_owned()
                };
                (name.into_owned(), value)
            })
            .collect();
        url.query_pairs_mut().clear().extend_pairs(pairs);
    }
    url.to_string()
}

/// Keys settable through `SONICGW_<KEY>` (upper case). `plans` only in the file.
const ENV_KEYS: &[&str] = &[
    "listen",
    "metrics_listen",
    "data_dir",
    "database_url",
    "redis_url",
    "redis_prefix",
    "issuer",
    "audience",
    "signing_alg",
    "hs256_secret",
    "keys_dir",
    "jwks_url",
    "access_token_ttl_s",
    "refresh_token_ttl_s",
    "token_leeway_s",
    "token_cache_size",
    "password_min_length",
    "password_max_length",
    "login_max_failures",
    "login_ip_max_failures",
    "login_window_s",
    "login_lockout_s",
    "log_format",
    "tls_cert",
    "tls_key",
    "require_https",
    "trusted_proxies",
    "workers",
    "default_engine",
    "max_image_bytes",
    "max_image_side",
    "max_audio_bytes",
    "job_lease_s",
    "job_poll_s",
    "job_max_attempts",
    "link_ttl_s",
    "storage_url",
    "storage_options",
    "delivery",
    "public_base_url",
    "retention_days",
    "url_signing_secret",
    "engine_timeout_s",
    "shutdown_grace_s",
    "engine_speed_seed",
    "simulated_engine_ms",
    "webhook_allow_private",
    "comfyui_urls",
    "comfyui_headers",
    "sonic_checkpoint",
    "sonic_unet",
    "sonic_dtype",
    "remote_engines",
    "comfyui_max_in_flight",
    "comfyui_health_interval_s",
    "audit_checkpoint_interval_s",
    "sonic_workflow",
    "explicit_label",
    "label_corner_mark",
    "label_font",
    "aigc_producer_id",
    "c2pa_cert",
    "c2pa_key",
    "c2pa_trust_anchors",
    "verify_max_bytes",
];

impl Config {
    /// Layers the defaults, the file (if any) and the `SONICGW_<KEY>` environment, then checks the
    /// result. Errors name the key and where its value came from.
    pub fn load(file: Option<&Path>) -> anyhow::Result<Self> {
        let mut figment = Figment::new();
        if let Some(path) = file {
            anyhow::ensure!(path.is_file(), "reading {}: no such file", path.display());
            figment = figment.merge(Toml::file_exact(path));
        }
        let env = Env::prefixed("SONICGW_").only(ENV_KEYS);
        let config: Config = figment
            .merge(env)
            .extract()
            .map_err(|e| anyhow::anyhow!("invalid configuration: {e}"))?;
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> anyhow::Result<()> {
        self.signing_alg().map_err(anyhow::Error::msg)?;
        self.plans().map_err(anyhow::Error::msg)?;
        if self.verifies_only() {
            crate::auth::jwks::RemoteJwks::new(&self.jwks_url)?;
            if self.issuer.is_empty() {
                bail!("jwks_url needs issuer: the iss of the issuer's tokens");
            }
            if self.signing_alg().map_err(anyhow::Error::msg)? == SigningAlg::HS256 {
                bail!("jwks_url cannot be used with signing_alg = \"HS256\" (a shared secret is never published)");
            }
        }
        if !(60..=24 * 3600).contains(&self.access_token_ttl_s) {
            bail!("access_token_ttl_s must be between 60 and 86400");
        }
        if self.refresh_token_ttl_s < self.access_token_ttl_s {
            bail!("refresh_token_ttl_s must be at least access_token_ttl_s");
        }
        if !(0..=60).contains(&self.token_leeway_s) {
            bail!("token_leeway_s must be between 0 and 60");
        }
        if self.password_min_length < 8 || self.password_max_length < self.password_min_length {
            bail!("password_min_length must be at least 8 and at most password_max_length");
        }
        if self.tls_cert.is_empty() != self.tls_key.is_empty() {
            bail!("tls_cert and tls_key must be set together");
        }
        if !matches!(self.log_format.as_str(), "text" | "json") {
            bail!("log_format must be text or json");
        }
        if self.job_lease_s < 3 || self.job_max_attempts < 1 {
            bail!("job_lease_s must be at least 3 and job_max_attempts at least 1");
        }
        if !(1..=3600).contains(&self.job_poll_s) {
            bail!("job_poll_s must be between 1 and 3600");
        }
        if !(1..=3600).contains(&self.shutdown_grace_s) {
            bail!("shutdown_grace_s must be between 1 and 3600");
        }
        if self.link_ttl_s < 1 {
            bail!("link_ttl_s must be at least 1");
        }
        if self.login_max_failures == 0 || self.login_ip_max_failures == 0 {
            bail!("login_max_failures and login_ip_max_failures must be at least 1");
        }
        if !matches!(self.sonic_dtype.as_str(), "fp16" | "fp32" | "bf16") {
            bail!("sonic_dtype must be fp16, fp32 or bf16");
        }
        if let Some(engine) = self.remote_engines.iter().find(|e| e.as_str() != "sonic") {
            bail!("remote_engines: {engine:?} is not an engine that runs remotely (only sonic)");
        }
        if !(1..=16).contains(&self.comfyui_max_in_flight) {
            bail!("comfyui_max_in_flight must be between 1 and 16");
        }
        if !(1..=3600).contains(&self.comfyui_health_interval_s) {
            bail!("comfyui_health_interval_s must be between 1 and 3600");
        }
        if let Some((engine, _)) = self
            .engine_speed_seed
            .iter()
            .find(|(_, speed)| !(0.001..=10_000.0).contains(*speed))
        {
            bail!("engine_speed_seed.{engine} must be between 0.001 and 10000 seconds per second");
        }
        if !crate::provenance::aigc::valid_producer_id(&self.aigc_producer_id) {
            bail!("aigc_producer_id must be 1 to 128 characters on one line");
        }
        if self.c2pa_cert.is_empty() != self.c2pa_key.is_empty() {
            bail!("c2pa_cert and c2pa_key must be set together");
        }
        if !(1024 * 1024..=4 * 1024 * 1024 * 1024).contains(&self.verify_max_bytes) {
            bail!("verify_max_bytes must be between 1 MiB and 4 GiB");
        }
        if self.sonic_checkpoint.is_empty() || self.sonic_unet.is_empty() {
            bail!("sonic_checkpoint and sonic_unet must name model files");
        }
        let storage = self.storage().map_err(anyhow::Error::msg)?;
        if self.delivery()? == Delivery::Presigned && !storage.is_s3() {
            bail!(
                "delivery = \"presigned\" needs S3 storage (storage_url = \"s3://bucket/prefix\")"
            );
        }
        if !self.public_base_url.is_empty() {
            let url = url::Url::parse(&self.public_base_url)
                .map_err(|e| anyhow::anyhow!("public_base_url: {e}"))?;
            if !matches!(url.scheme(), "http" | "https")
                || url.query().is_some()
                || url.path() != "/"
                || !url.username().is_empty()
            {
                bail!("public_base_url must be an http(s) origin such as https://cdn.example.com, without a path or query");
            }
        }
        if self.retention_days == Some(0) {
            bail!("retention_days must be at least 1 (leave it unset to keep files)");
        }
        Ok(())
    }

    /// The engine of jobs that name none: `default_engine`, or `sonic` when ComfyUI servers are
    /// configured, else `builtin`.
    pub fn default_engine(&self) -> &str {
        if !self.default_engine.is_empty() {
            &self.default_engine
        } else if self.comfyui_urls.is_empty() && !self.remote_engines.iter().any(|e| e == "sonic")
        {
            "builtin"
        } else {
            "sonic"
        }
    }

    pub fn signing_alg(&self) -> Result<SigningAlg, String> {
        self.signing_alg.parse()
    }

    pub fn plans(&self) -> Result<Plans, String> {
        Plans::with_overrides(self.plans.clone())
    }

    pub fn database_url(&self) -> String {
        if self.database_url.is_empty() {
            format!("sqlite://{}", self.data_dir.join("sonicgw.db").display())
        } else {
            self.database_url.clone()
        }
    }

    /// Where uploads and results are stored (`storage_url`).
    pub fn storage(&self) -> Result<StorageLocation, String> {
        StorageLocation::parse(&self.storage_url, self.data_dir.join("blobs"))
    }

    pub fn delivery(&self) -> anyhow::Result<Delivery> {
        self.delivery.parse().map_err(anyhow::Error::msg)
    }

    /// `public_base_url` without its trailing slash, when set.
    pub fn public_base_url(&self) -> Option<String> {
        (!self.public_base_url.is_empty())
            .then(|| self.public_base_url.trim_end_matches('/').to_owned())
    }

    /// The C2PA trust anchors (PEM text) when configured.
    pub fn c2pa_trust_anchors(&self) -> anyhow::Result<Option<String>> {
        if self.c2pa_trust_anchors.is_empty() {
            return Ok(None);
        }
        let text = std::fs::read_to_string(&self.c2pa_trust_anchors).map_err(|e| {
            anyhow::anyhow!(
                "reading c2pa_trust_anchors {}: {e}",
                self.c2pa_trust_anchors
            )
        })?;
        if !text.contains("-----BEGIN CERTIFICATE-----") {
            bail!(
                "c2pa_trust_anchors {}: no PEM certificate in it",
                self.c2pa_trust_anchors
            );
        }
        Ok(Some(text))
    }

    pub fn keys_dir(&self) -> PathBuf {
        if self.keys_dir.is_empty() {
            self.data_dir.join("keys")
        } else {
            PathBuf::from(&self.keys_dir)
        }
    }

    /// True when this process verifies with the issuer's JWKS and issues nothing (`jwks_url`).
    pub fn verifies_only(&self) -> bool {
        !self.jwks_url.is_empty()
    }

    pub fn redis_url(&self) -> Option<&str> {
        (!self.redis_url.is_empty()).then_some(self.redis_url.as_str())
    }

    pub fn hs256_secret(&self) -> Option<&str> {
        (!self.hs256_secret.is_empty()).then_some(self.hs256_secret.as_str())
    }

    pub fn tls_enabled(&self) -> bool {
        !self.tls_cert.is_empty()
    }

    /// The issuer URL, derived from the listen address when not configured.
    pub fn issuer(&self, bound: SocketAddr) -> String {
        if self.issuer.is_empty() {
            let scheme = if self.tls_enabled() { "https" } else { "http" };
            format!("{scheme}://{bound}")
        } else {
            self.issuer.trim_end_matches('/').to_owned()
        }
    }
}

/// Text, also when the environment's value looks like a number or a boolean (`SONICGW_HS256_SECRET=
/// 12345` is the string "12345": figment reads environment values as typed).
fn text<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<String, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Scalar {
        Text(String),
        Unsigned(u64),
        Signed(i64),
        Float(f64),
        Bool(bool),
    }
    Ok(match Scalar::deserialize(deserializer)? {
        Scalar::Text(s) => s,
        Scalar::Unsigned(n) => n.to_string(),
        Scalar::Signed(n) => n.to_string(),
        Scalar::Float(n) => n.to_string(),
        Scalar::Bool(b) => b.to_string(),
    })
}

/// A list of IP addresses, or one string of comma-separated addresses.
fn addresses<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Vec<IpAddr>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Addresses {
        List(Vec<IpAddr>),
        Text(String),
    }
    match Addresses::deserialize(deserializer)? {
        Addresses::List(list) => Ok(list),
        Addresses::Text(text) => text
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|s| s.parse().map_err(serde::de::Error::custom))
            .collect(),
    }
}

/// A list of strings, or one comma-separated string (the environment).
fn list<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum List {
        List(Vec<String>),
        Text(String),
    }
    Ok(match List::deserialize(deserializer)? {
        List::List(list) => list,
        List::Text(text) => text
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect(),
    })
}

/// A table of names to values (`comfyui_headers`, `storage_options`), or (the environment) `Name=value`
/// pairs separated by commas.
fn headers<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<BTreeMap<String, String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Headers {
        Table(BTreeMap<String, String>),
        Text(String),
    }
    match Headers::deserialize(deserializer)? {
        Headers::Table(table) => Ok(table),
        Headers::Text(text) => text
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|pair| {
                pair.split_once('=')
                    .map(|(name, value)| (name.trim().to_owned(), value.trim().to_owned()))
                    .ok_or_else(|| serde::de::Error::custom("expected Name=value pairs"))
            })
            .collect(),
    }
}

/// A table of engine names to speeds, or (the environment) `engine=speed` pairs separated by commas.
fn speeds<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<BTreeMap<String, f64>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Speeds {
        Table(BTreeMap<String, f64>),
        Text(String),
    }
    match Speeds::deserialize(deserializer)? {
        Speeds::Table(table) => Ok(table),
        Speeds::Text(text) => text
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|pair| {
                pair.split_once('=')
                    .and_then(|(engine, speed)| {
                        Some((engine.trim().to_owned(), speed.trim().parse().ok()?))
                    })
                    .ok_or_else(|| {
                        serde::de::Error::custom("engine_speed_seed: expected engine=seconds")
                    })
            })
            .collect(),
    }
}

#[cfg(test)]
#[path = "config_tests.rs"]
mod tests;
