//! Wiring: opens the database, bootstraps the first tenant and admin, builds the services, and runs
//! the API and metrics listeners.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use rand::RngCore;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::accounts::{Accounts, Actor, NewUser};
use crate::audit::{AuditContext, Auditor};
use crate::auth::password::Passwords;
use crate::auth::revocation::Revocations;
use crate::auth::sessions::Sessions;
use crate::auth::shared_throttle::SharedThrottle;
use crate::auth::throttle::{LoginThrottle, ThrottleLimits};
use crate::auth::tokens::{TokenSettings, Tokens};
use crate::config::Config;
use crate::domain::{PasswordPolicy, Plans};
use crate::http::directory::Directory;
use crate::http::{AppState, Services};
use crate::storage::{Migrations, Store};

/// The parts shared by the server and the operator's CLI.
pub struct Core {
    pub store: Arc<dyn Store>,
    pub revocations: Arc<Revocations>,
    pub accounts: Accounts,
    pub plans: Plans,
}

impl Core {
    /// Opens the database (applying migrations) and the revocation channel.
    pub async fn open(config: &Config) -> anyhow::Result<Self> {
        Self::open_with(config, Migrations::Apply).await
    }

    /// `open`, treating the schema as `migrations` says.
    pub async fn open_with(config: &Config, migrations: Migrations) -> anyhow::Result<Self> {
        let store = open_database(config, migrations).await?;
        let revocations =
            Revocations::start(Arc::clone(&store), config.redis_url(), &config.redis_prefix)
                .await?;
        let plans = config.plans().map_err(anyhow::Error::msg)?;
        let accounts = Accounts {
            store: Arc::clone(&store),
            passwords: Passwords::new(),
            revocations: Arc::clone(&revocations),
            auditor: Auditor::new(store.clone()),
            plans: plans.clone(),
            policy: PasswordPolicy {
                min_length: config.password_min_length,
                max_length: config.password_max_length,
            },
            current_plans: Arc::new(crate::accounts::CurrentPlans::new(
                config.token_cache_size.max(1000),
                crate::accounts::CURRENT_PLAN_TTL,
            )),
        };
        Ok(Self {
            store,
            revocations,
            accounts,
            plans,
        })
    }

    /// On an empty database: tenant `default` and platform admin `admin`. The password is
    /// `admin_password` (from `SONICGW_ADMIN_PASSWORD`) or generated and printed once, to the console only.
    pub async fn bootstrap(&self, admin_password: Option<String>) -> anyhow::Result<()> {
        if self.store.count_tenants().await? > 0 {
            return Ok(());
        }
        let context = AuditContext::cli();
        let tenant = match self
            .accounts
            .create_tenant(&context, "default", Some("pro"))
            .await
        {
            Ok(tenant) => tenant,
            // Replicas starting together on an empty database: another one bootstraps it.
            Err(_) if self.store.count_tenants().await? > 0 => return Ok(()),
            Err(e) => anyhow::bail!("creating the default tenant: {e}"),
        };
        let (password, generated) = match admin_password.filter(|p| !p.is_empty()) {
            Some(password) => (password, false),
            None => (generate_password(), true),
        };
        self.accounts
            .create_user(
                &context,
                Actor::Operator,
                NewUser {
                    username: "admin".to_owned(),
                    password: password.clone(),
                    role: Some("platform_admin".to_owned()),
                    plan: None,
                    tenant_id: Some(tenant.id),
                },
            )
            .await
            .map_err(|e| anyhow::anyhow!("creating the admin user: {e}"))?;
        if generated {
            // Deliberately not through tracing: shown once on the console, never in the logs.
            eprintln!(
                "\n  First start: created tenant \"default\" and platform admin \"admin\".\n  \
                 Admin password (shown only now): {password}\n"
            );
        }
        Ok(())
    }
}

/// Opens the store of `config` (creating `data_dir` and an owner-only SQLite file first).
pub async fn open_database(
    config: &Config,
    migrations: Migrations,
) -> anyhow::Result<Arc<dyn Store>> {
    create_private_dir(&config.data_dir)
        .with_context(|| format!("creating data_dir {}", config.data_dir.display()))?;
    secure_sqlite_file(&config.database_url())?;
    crate::storage::connect_with(&config.database_url(), migrations).await
}

/// Creates a directory (and missing parents) readable by the owner only. An existing directory keeps its
/// mode: `data_dir` may be one the operator chose and shares; the files in it that matter are tightened
/// one by one.
fn create_private_dir(path: &std::path::Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
}

/// The SQLite database holds password hashes and webhook secrets: its file is created owner-only before
/// sqlx opens it (SQLite gives the `-wal` and `-shm` files the database file's mode), and an existing
/// database and its `-wal`/`-shm` files are made owner-only on start. The process umask is left alone.
fn secure_sqlite_file(database_url: &str) -> anyhow::Result<()> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    use std::str::FromStr;
    if !database_url.starts_with("sqlite:") || database_url.contains("mode=memory") {
        return Ok(());
    }
    // An invalid URL is reported by the store when it connects.
    let Ok(options) = sqlx::sqlite::SqliteConnectOptions::from_str(database_url) else {
        return Ok(());
    };
    let path = options.get_filename();
    if path.to_string_lossy().starts_with("file:sqlx-in-memory-") {
        return Ok(());
    }
    if !database_url.contains("mode=ro") {
        let created = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path);
        match created {
            Ok(_) => {}
            Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(err) => {
                return Err(err).with_context(|| format!("creating database {}", path.display()))
            }
        }
    }
    let mut files = vec![path.to_path_buf()];
    for suffix in ["-wal", "-shm"] {
        let mut name = path.as_os_str().to_owned();
        name.push(suffix);
        files.push(name.into());
    }
    for file in files {
        match std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)) {
            Ok(()) => {}
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
            // Not ours to change (another owner): say so rather than refuse to start.
            Err(err) => {
                tracing::warn!(file = %file.display(), error = %err, "cannot make the database file owner-only")
            }
        }
    }
    Ok(())
}

/// A random password of 24 URL-safe characters.
pub fn generate_password() -> String {
    let mut bytes = [0u8; 18];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    URL_SAFE_NO_PAD.encode(bytes)
}

/// A running server.
pub struct RunningServer {
    pub addr: SocketAddr,
    pub metrics_addr: Option<SocketAddr>,
    pub state: AppState,
    shutdown: watch::Sender<bool>,
    task: JoinHandle<anyhow::Result<()>>,
    background: tokio_util::task::TaskTracker,
    grace: Duration,
}

/// The least time background work gets at shutdown, even when requests used up the grace period:
/// enough for workers to hand their jobs back.
const BACKGROUND_MIN_GRACE: Duration = Duration::from_secs(2);
/// How long a stopping server waits for its last job events to reach the bus.
const EVENTS_FLUSH_GRACE: Duration = Duration::from_secs(1);

impl RunningServer {
    /// Shuts down gracefully: stops accepting connections and ends event streams (their clients
    /// reconnect elsewhere), workers stop their engines and hand their jobs back to the queue,
    /// requests in flight get `shutdown_grace_s` to finish, then background work (webhook
    /// deliveries, progress writes) what is left of it.
    pub async fn stop(self) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + self.grace;
        tracing::info!(
            grace_s = self.grace.as_secs(),
            "shutting down: no new connections, finishing requests in flight"
        );
        self.state.shutdown.cancel();
        let _ = self.shutdown.send(true);
        let mut task = self.task;
        let served = match tokio::time::timeout_at(deadline, &mut task).await {
            Ok(served) => served?,
            Err(_) => {
                tracing::warn!("requests still in flight after shutdown_grace_s; closing them");
                task.abort();
                Ok(())
            }
        };
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        Self::drain(self.background, left.max(BACKGROUND_MIN_GRACE)).await;
        // The jobs handed back are announced to the other processes before this one exits.
        self.state.videos.events.flush(EVENTS_FLUSH_GRACE).await;
        served
    }

    /// Runs until the server fails or `signal` completes (see `shutdown_signal`), then shuts down
    /// gracefully (`stop`).
    pub async fn run_until(
        mut self,
        signal: impl std::future::Future<Output = ()>,
    ) -> anyhow::Result<()> {
        let ended = tokio::select! {
            served = &mut self.task => Some(served),
            () = signal => None,
        };
        match ended {
            Some(served) => {
                Self::drain(self.background, BACKGROUND_MIN_GRACE).await;
                served?
            }
            None => self.stop().await,
        }
    }

    /// Waits for workers and housekeeping, which stop on the shutdown signal, and deliveries in
    /// flight, at most `grace`.
    async fn drain(background: tokio_util::task::TaskTracker, grace: Duration) {
        background.close();
        if tokio::time::timeout(grace, background.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                tasks = background.len(),
                "background work still running at shutdown; abandoned"
            );
        }
    }
}

/// Registers for SIGTERM and SIGINT at once, so a signal that arrives before the returned future
/// is first polled is not lost (the default action would kill the process), and returns a future
/// that completes at the first of them.
pub fn shutdown_signal() -> std::io::Result<impl std::future::Future<Output = ()> + Send + 'static>
{
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = interrupt.recv() => {}
        }
    })
}

/// The first admin's password from the environment, if set.
pub fn admin_password_from_env() -> Option<String> {
    std::env::var("SONICGW_ADMIN_PASSWORD").ok()
}

/// Starts the API (and metrics) listeners with everything they need.
pub async fn start(config: Config) -> anyhow::Result<RunningServer> {
    start_with_admin_password(config, admin_password_from_env()).await
}

/// `start`, with the first admin's password given rather than read from the environment.
pub async fn start_with_admin_password(
    config: Config,
    admin_password: Option<String>,
) -> anyhow::Result<RunningServer> {
    start_with_options(config, admin_password, Migrations::Apply).await
}

/// `start`, with the first admin's password given and the schema treated as `migrations` says.
pub async fn start_with_options(
    config: Config,
    admin_password: Option<String>,
    migrations: Migrations,
) -> anyhow::Result<RunningServer> {
    let core = Core::open_with(&config, migrations).await?;
    core.bootstrap(admin_password).await?;

    let std_listener = std::net::TcpListener::bind(config.listen)
        .with_context(|| format!("binding {}", config.listen))?;
    std_listener.set_nonblocking(true)?;
    let addr = std_listener.local_addr()?;
    let issuer = config.issuer(addr);

    let settings = token_settings(&config, issuer.clone())?;
    let tokens = Arc::new(if config.verifies_only() {
        let jwks = crate::auth::jwks::RemoteJwks::new(&config.jwks_url)?;
        Tokens::verifier(settings, jwks, Arc::clone(&core.revocations)).await
    } else {
        Tokens::new(settings, Arc::clone(&core.revocations))?
    });
    let account_limits = ThrottleLimits {
        max_failures: config.login_max_failures,
        window: Duration::from_secs(config.login_window_s),
        lockout: Duration::from_secs(config.login_lockout_s),
    };
    let address_limits = ThrottleLimits {
        max_failures: config.login_ip_max_failures,
        ..account_limits
    };
    let mut throttle = LoginThrottle::new(account_limits, address_limits);
    if let Some(url) = config.redis_url() {
        throttle = throttle.with_shared(
            SharedThrottle::connect(url, &config.redis_prefix, account_limits, address_limits)
                .await?,
        );
    }
    if config.verifies_only() && config.url_signing_secret.is_empty() {
        tracing::warn!("jwks_url is set but url_signing_secret is not: signed links made by one replica fail on the others");
    }
    let sessions = Arc::new(Sessions::new(
        Arc::clone(&core.store),
        Arc::clone(&tokens),
        core.accounts.passwords.clone(),
        throttle,
        core.accounts.auditor.clone(),
        config.refresh_token_ttl_s,
    ));
    let (shutdown, mut shutdown_rx) = watch::channel(false);
    let videos = Arc::new(video_service(&config, &core).await?);
    if config.workers > 0 {
        crate::videos::worker::spawn_workers(
            Arc::clone(&videos),
            config.workers,
            shutdown.subscribe(),
        );
    }
    crate::videos::worker::spawn_lease_reaper(Arc::clone(&videos), shutdown.subscribe());
    crate::videos::sweeper::spawn_sweeper(Arc::clone(&videos), shutdown.subscribe());
    crate::videos::outbox::spawn_webhook_drainer(Arc::clone(&videos), shutdown.subscribe());

    let state = AppState::new(Services {
        issuer,
        store: Arc::clone(&core.store),
        tokens: Arc::clone(&tokens),
        sessions: Arc::clone(&sessions),
        auditor: core.accounts.auditor.clone(),
        plans: core.plans.clone(),
        directory: Directory::new(config.token_cache_size),
        accounts: core.accounts.clone(),
        workers: crate::auth::workers::WorkerAccounts::new(&core.accounts),
        videos: Arc::clone(&videos),
        denials: crate::audit::Repeats::new(10_000, Duration::from_secs(60)),
        shutdown: tokio_util::sync::CancellationToken::new(),
        rate_limiter: Arc::new(match config.redis_url() {
            Some(url) => crate::ratelimit::RateLimiter::shared(url, &config.redis_prefix).await?,
            None => crate::ratelimit::RateLimiter::in_process(),
        }),
        preview_limiter: Arc::new(match config.redis_url() {
            Some(url) => {
                let prefix = format!("{}:preview", config.redis_prefix);
                crate::ratelimit::RateLimiter::shared(url, &prefix).await?
            }
            None => crate::ratelimit::RateLimiter::in_process(),
        }),
        dpop_replays: Arc::new(match config.redis_url() {
            Some(url) => crate::auth::dpop::ReplayGuard::shared(url, &config.redis_prefix).await?,
            None => crate::auth::dpop::ReplayGuard::in_process(),
        }),
        dpop_token_endpoint_replays: Arc::new(crate::auth::dpop::ReplayGuard::for_token_endpoint()),
        config: config.clone(),
    });

    let metrics_addr = if config.metrics_listen.is_empty() {
        None
    } else {
        Some(start_metrics(&config.metrics_listen).await?)
    };

    let mut stop_housekeeping = shutdown.subscribe();
    let housekeeping = housekeeping(Arc::clone(&tokens), Arc::clone(&sessions));
    videos.tasks.spawn(async move {
        tokio::select! {
            () = housekeeping => {}
            _ = stop_housekeeping.wait_for(|stop| *stop) => {}
        }
    });
    // A verifier holds no key to sign checkpoints with: the issuer signs them.
    if config.audit_checkpoint_interval_s > 0 && tokens.can_issue() {
        let mut stop_checkpoints = shutdown.subscribe();
        let checkpoints = audit_checkpoints(
            Arc::clone(&core.store),
            Arc::clone(&tokens),
            state.issuer.clone(),
            Duration::from_secs(config.audit_checkpoint_interval_s),
        );
        videos.tasks.spawn(async move {
            tokio::select! {
                () = checkpoints => {}
                _ = stop_checkpoints.wait_for(|stop| *stop) => {}
            }
        });
    }

    let app = crate::http::router(state.clone());
    let task = if config.tls_enabled() {
        serve_tls(&config, std_listener, app, shutdown_rx).await?
    } else {
        let listener = TcpListener::from_std(std_listener)?;
        tokio::spawn(async move {
            axum::serve(
                listener,
                app.into_make_service_with_connect_info::<SocketAddr>(),
            )
            .with_graceful_shutdown(async move {
                let _ = shutdown_rx.wait_for(|stop| *stop).await;
            })
            .await
            .context("serving HTTP")
        })
    };
    Ok(RunningServer {
        addr,
        metrics_addr,
        state,
        shutdown,
        task,
        background: videos.tasks.clone(),
        grace: Duration::from_secs(config.shutdown_grace_s),
    })
}

/// The HMAC key of signed links: configured, or generated once and kept beside the signing keys.
fn url_signing_secret(config: &Config) -> anyhow::Result<Vec<u8>> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    if !config.url_signing_secret.is_empty() {
        anyhow::ensure!(
            config.url_signing_secret.len() >= 32,
            "url_signing_secret must be at least 32 bytes"
        );
        return Ok(config.url_signing_secret.as_bytes().to_vec());
    }
    let dir = config.keys_dir();
    std::fs::create_dir_all(&dir)?;
    let path = dir.join("url-signing.secret");
    if let Ok(existing) = std::fs::read(&path) {
        anyhow::ensure!(
            existing.len() >= 32,
            "{} is too short to be a signing secret; delete it to have a new one generated",
            path.display()
        );
        return Ok(existing);
    }
    let mut secret = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut secret);
    let encoded = hex::encode(secret).into_bytes();
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .with_context(|| format!("creating {}", path.display()))?;
    file.write_all(&encoded)?;
    Ok(encoded)
}

/// The graph of the `sonic` engine: the operator's `sonic_workflow`, checked now, or the built-in one.
fn sonic_workflow(config: &Config) -> anyhow::Result<crate::engines::sonic::workflow::Workflow> {
    use crate::engines::sonic::workflow::{Models, Workflow};
    let models = Models {
        checkpoint: config.sonic_checkpoint.clone(),
        unet: config.sonic_unet.clone(),
        dtype: config.sonic_dtype.clone(),
    };
    if config.sonic_workflow.is_empty() {
        return Ok(Workflow::builtin(models));
    }
    let workflow = Workflow::from_file(Path::new(&config.sonic_workflow), models)
        .map_err(anyhow::Error::msg)?;
    tracing::info!(
        output_node = workflow.output_node(),
        "sonic_workflow loaded"
    );
    Ok(workflow)
}

/// The engines `config` configures: builtin, simulated (tests), and Sonic over `comfyui_urls`. The
/// server and a remote worker (`sonicgw worker`) build them the same way.
pub async fn build_engines(config: &Config) -> anyhow::Result<crate::engines::Engines> {
    use crate::engines::{builtin::BuiltinEngine, simulated::SimulatedEngine, Engines};
    use crate::media::image::ImageLimits;
    let image_limits = ImageLimits {
        max_bytes: config.max_image_bytes,
        max_side: config.max_image_side,
    };
    let mut engines = Engines::default();
    crate::media::ffmpeg::check_available()
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))
        .context("the builtin engine and MP4 encoding need ffmpeg")?;
    engines.add(Arc::new(BuiltinEngine {
        image_limits,
        timeout: Duration::from_secs(config.engine_timeout_s),
    }));
    if config.simulated_engine_ms > 0 {
        tracing::warn!("the simulated engine is enabled: for tests and benchmarks only");
        engines.add(Arc::new(SimulatedEngine {
            duration: Duration::from_millis(config.simulated_engine_ms),
        }));
    }
    if !config.comfyui_urls.is_empty() {
        use crate::engines::sonic::{client::ComfyClient, workflow::Models, PoolSettings};
        let clients = config
            .comfyui_urls
            .iter()
            .map(|url| ComfyClient::new(url, &config.comfyui_headers))
            .collect::<Result<Vec<_>, _>>()
            .map_err(anyhow::Error::msg)
            .context("comfyui_urls / comfyui_headers")?;
        let models = Models {
            checkpoint: config.sonic_checkpoint.clone(),
            unet: config.sonic_unet.clone(),
            dtype: config.sonic_dtype.clone(),
        };
        engines.add(Arc::new(crate::engines::sonic::SonicEngine::new(
            clients,
            PoolSettings {
                max_in_flight: config.comfyui_max_in_flight,
                health_interval: Duration::from_secs(config.comfyui_health_interval_s),
                models: models.clone(),
            },
            crate::engines::sonic::SonicSettings {
                workflow: sonic_workflow(config)?,
                timeout: Duration::from_secs(config.engine_timeout_s),
                poll_interval: Duration::from_millis(250),
                image_limits,
            },
        )));
    } else if config.remote_engines.iter().any(|e| e == "sonic") {
        engines.add(Arc::new(crate::engines::remote_only::RemoteOnly {
            capabilities: crate::engines::sonic::capabilities(),
            model: crate::engines::sonic::workflow::Models {
                checkpoint: config.sonic_checkpoint.clone(),
                unet: config.sonic_unet.clone(),
                dtype: config.sonic_dtype.clone(),
            }
            .describe(),
        }));
    }
    Ok(engines)
}

/// Builds the engines, blob store and settings of video generation.
async fn video_service(
    config: &Config,
    core: &Core,
) -> anyhow::Result<crate::videos::VideoService> {
    let engines = build_engines(config).await?;
    anyhow::ensure!(
        engines.get(config.default_engine()).is_some(),
        "default_engine {:?} is not one of the configured engines ({})",
        config.default_engine(),
        engines.names().join(", ")
    );
    // Scratch space of uploads being checked and jobs being rendered: the users' photos and voices.
    let work_dir = config.data_dir.join("work");
    owner_only_dir(&work_dir)?;
    let link_secret = url_signing_secret(config)?;
    let credentials = crate::provenance::credentials::ContentCredentials::new(
        (!config.c2pa_cert.is_empty()).then(|| Path::new(&config.c2pa_cert)),
        (!config.c2pa_key.is_empty()).then(|| Path::new(&config.c2pa_key)),
        &config.keys_dir(),
        &link_secret,
        Duration::from_secs(config.engine_timeout_s),
    )?;
    let verifier = crate::provenance::verify::ProvenanceVerifier::new(
        config.c2pa_trust_anchors()?,
        VERIFY_BUDGET,
        VERIFY_PARALLEL,
    );
    let costs = crate::videos::eta::CostModel::load(
        Arc::clone(&core.store),
        &engines,
        &config.engine_speed_seed,
    )
    .await
    .context("loading engine speeds")?;
    Ok(crate::videos::VideoService {
        store: Arc::clone(&core.store),
        blobs: Arc::new(crate::blobs::BlobStore::open(
            &config.storage().map_err(anyhow::Error::msg)?,
            &config.storage_options,
        )?),
        engines,
        plans: core.plans.clone(),
        current_plans: Arc::clone(&core.accounts.current_plans),
        auditor: core.accounts.auditor.clone(),
        signer: crate::videos::delivery::UrlSigner::new(link_secret.clone()),
        faces: crate::media::face::FaceDetector::new().map_err(|e| anyhow::anyhow!("{e}"))?,
        events: match crate::videos::bus::BusKind::of(config) {
            Some(bus) => crate::videos::JobEvents::with_bus(bus)
                .await
                .context("starting the job event bus")?,
            None => crate::videos::JobEvents::new(),
        },
        admission: crate::videos::admission::IntakeGate::for_this_machine(),
        download_audit: crate::audit::Repeats::new(20_000, Duration::from_secs(3600)),
        tasks: tokio_util::task::TaskTracker::new(),
        streams: crate::videos::admission::PerUserSlots::new(
            crate::videos::admission::MAX_STREAMS_PER_USER,
        ),
        receiving: crate::videos::admission::PerUserSlots::new(
            crate::videos::admission::MAX_UPLOADS_RECEIVING_PER_USER,
        ),
        settings: crate::videos::VideoSettings {
            default_engine: config.default_engine().to_owned(),
            image_limits: crate::media::image::ImageLimits {
                max_bytes: config.max_image_bytes,
                max_side: config.max_image_side,
            },
            max_audio_bytes: config.max_audio_bytes,
            lease: Duration::from_secs(config.job_lease_s),
            max_attempts: config.job_max_attempts,
            poll: Duration::from_secs(config.job_poll_s),
            link_ttl_s: config.link_ttl_s,
            delivery: config.delivery()?,
            public_base_url: config.public_base_url(),
            retention: config
                .retention_days
                .map(|days| Duration::from_secs(u64::from(days) * 24 * 3600)),
            webhook_allow_private: config.webhook_allow_private,
            workers: config.workers,
            work_dir,
        },
        costs,
        remote: crate::videos::presence::RemoteCapacity::new(Arc::clone(&core.store)),
        result_uploads: Default::default(),
        labeller: crate::provenance::Labeller::new(crate::provenance::LabelSettings {
            explicit_label: config.explicit_label,
            corner_mark: config.label_corner_mark,
            font: std::path::PathBuf::from(&config.label_font),
            producer_id: config.aigc_producer_id.clone(),
            timeout: Duration::from_secs(config.engine_timeout_s),
        })?,
        webhooks: Default::default(),
        credentials,
        verifier,
    })
}

/// Longest one provenance check may read a file (uploads and stored videos alike).
const VERIFY_BUDGET: Duration = Duration::from_secs(30);
/// Provenance checks parsing at once in this process; more are answered 503 at once.
const VERIFY_PARALLEL: usize = 2;

async fn serve_tls(
    config: &Config,
    listener: std::net::TcpListener,
    app: Router,
    mut shutdown_rx: watch::Receiver<bool>,
) -> anyhow::Result<JoinHandle<anyhow::Result<()>>> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let tls =
        axum_server::tls_rustls::RustlsConfig::from_pem_file(&config.tls_cert, &config.tls_key)
            .await
            .context("loading tls_cert / tls_key")?;
    let handle = axum_server::Handle::new();
    let stopper = handle.clone();
    let grace = Duration::from_secs(config.shutdown_grace_s);
    tokio::spawn(async move {
        let _ = shutdown_rx.wait_for(|stop| *stop).await;
        // `RunningServer::stop` bounds the wait; this bounds it too, for connections TLS holds.
        stopper.graceful_shutdown(Some(grace));
    });
    let server = axum_server::from_tcp_rustls(listener, tls)?.handle(handle);
    Ok(tokio::spawn(async move {
        server
            .serve(app.into_make_service_with_connect_info::<SocketAddr>())
            .await
            .context("serving HTTPS")
    }))
}

async fn start_metrics(listen: &str) -> anyhow::Result<SocketAddr> {
    let handle = crate::metrics::recorder();
    let listener = TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding metrics_listen {listen}"))?;
    let addr = listener.local_addr()?;
    let app = Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let handle = handle.clone();
            async move { handle.render() }
        }),
    );
    tokio::spawn(async move {
        if let Err(err) = axum::serve(listener, app).await {
            tracing::error!(error = %err, "metrics listener failed");
        }
    });
    Ok(addr)
}

/// The token settings of `config` for `issuer`.
pub fn token_settings(config: &Config, issuer: String) -> anyhow::Result<TokenSettings> {
    Ok(TokenSettings {
        issuer,
        audience: config.audience.clone(),
        ttl_s: config.access_token_ttl_s,
        leeway_s: config.token_leeway_s,
        keys_dir: config.keys_dir(),
        alg: config.signing_alg().map_err(anyhow::Error::msg)?,
        hs256_secret: config.hs256_secret().map(str::to_owned),
        cache_capacity: config.token_cache_size,
    })
}

/// Signs a checkpoint of the audit chain every `every` (when the head moved since the last one).
async fn audit_checkpoints(
    store: Arc<dyn crate::storage::Store>,
    tokens: Arc<Tokens>,
    issuer: String,
    every: Duration,
) {
    let mut tick = tokio::time::interval(every);
    tick.tick().await;
    loop {
        tick.tick().await;
        if let Err(err) = crate::audit::checkpoint::create(store.as_ref(), &tokens, &issuer).await {
            tracing::warn!(error = %format!("{err:#}"), "signing an audit checkpoint failed");
        }
    }
}

/// Picks up rotated keys (the key directory, or the issuer's JWKS) and forgets stale throttle entries.
async fn housekeeping(tokens: Arc<Tokens>, sessions: Arc<Sessions>) {
    let mut tick = tokio::time::interval(Duration::from_secs(60));
    tick.tick().await;
    loop {
        tick.tick().await;
        if let Err(err) = tokens.refresh_keys().await {
            tracing::warn!(error = %format!("{err:#}"), "refreshing the verification keys failed; keeping the ones held");
        }
        sessions.throttle().prune();
    }
}

/// Creates `dir` (and its parents) if needed and makes it owner-only (0700), also when it existed.
pub(crate) fn owner_only_dir(dir: &std::path::Path) -> anyhow::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("creating {}", dir.display()))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .with_context(|| format!("making {} owner-only", dir.display()))?;
    Ok(())
}
