//! The `sonicgw` command: `serve`, and operator tasks that work on the database directly.

use std::io::BufRead;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context};
use clap::{Args, Parser, Subcommand};

use crate::accounts::{Actor, NewUser, UserChanges};
use crate::app::{generate_password, Core};
use crate::audit::AuditContext;
use crate::auth::workers::WorkerAccounts;
use crate::config::Config;
use crate::domain::{TenantName, Username};
use crate::storage::UserRecord;

#[derive(Parser)]
#[command(
    name = "sonicgw",
    version,
    about = "Sonic Gateway: the multi-tenant service in front of Sonic"
)]
struct Cli {
    /// TOML configuration file; SONICGW_* environment variables override it.
    #[arg(long, global = true, env = "SONICGW_CONFIG")]
    config: Option<PathBuf>,
    #[command(flatten)]
    client: crate::client::commands::ClientOptions,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the HTTP API.
    Serve {
        /// Apply no database migrations; refuse to start when the schema is behind this release
        /// (a deploy step ran `sonicgw migrate` first).
        #[arg(long)]
        no_migrate: bool,
    },
    /// Apply the database migrations, then exit (a deploy step before the replicas start).
    Migrate,
    /// Manage tenants and users directly in the database.
    #[command(subcommand)]
    Admin(AdminCommand),
    /// Manage signing keys.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Inspect the audit log.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// Run jobs for a gateway on this host (next to its ComfyUI): a remote worker with a service
    /// account's credentials, no database and no signing keys.
    Worker(WorkerArgs),
    /// Sign in to a gateway (the CLI's commands below use this sign-in).
    Login(crate::client::commands::LoginArgs),
    /// Sign out: revoke the sign-in and forget it.
    Logout,
    /// Check a video's labels and C2PA Content Credentials on this machine (no server needed).
    Verify(crate::provenance::cli::VerifyArgs),
    /// Make a video from a face photo and a speech recording, and (with --wait or -o) download it.
    Generate(Box<crate::client::commands::GenerateArgs>),
    /// Your videos: list, get, cancel, delete, download.
    #[command(subcommand)]
    Videos(crate::client::commands::VideosCommand),
    /// Users of your tenant, for admins (over the API; `admin` works on the database directly).
    #[command(subcommand)]
    Users(crate::client::commands::UsersCommand),
    /// The whole path in one command: a fresh server, the bundled sample face and speech, an MP4.
    Demo {
        /// Where to write the video.
        #[arg(long, default_value = "sonicgw-demo.mp4")]
        out: PathBuf,
        /// Also print the server's log (otherwise only the demo's own progress is shown, unless
        /// `SONICGW_LOG` asks for a log).
        #[arg(long)]
        verbose: bool,
    },
}

#[derive(Subcommand)]
enum AdminCommand {
    /// Create a tenant.
    CreateTenant {
        name: String,
        #[arg(long, default_value = "free")]
        plan: String,
    },
    /// Create a user; the password is read from stdin with --password-stdin, else generated and printed.
    CreateUser {
        #[command(flatten)]
        who: UserRef,
        #[arg(long, default_value = "user")]
        role: String,
        /// The user's own plan (default: the tenant's).
        #[arg(long)]
        plan: Option<String>,
        #[arg(long)]
        password_stdin: bool,
    },
    /// Set a user's role (user, admin, platform_admin).
    SetRole {
        #[command(flatten)]
        who: UserRef,
        role: String,
    },
    /// Set a user's own plan.
    SetPlan {
        #[command(flatten)]
        who: UserRef,
        plan: String,
    },
    /// Set a tenant's plan.
    SetTenantPlan { tenant: String, plan: String },
    /// Disable a user and revoke all their tokens.
    DisableUser {
        #[command(flatten)]
        who: UserRef,
    },
    /// Enable a disabled user.
    EnableUser {
        #[command(flatten)]
        who: UserRef,
    },
    /// Set a new password (revokes all the user's tokens).
    ResetPassword {
        #[command(flatten)]
        who: UserRef,
        #[arg(long)]
        password_stdin: bool,
    },
    /// Create a remote worker's service account; prints its client id and secret, once.
    CreateWorker { name: String },
    /// Disable a worker's service account: its worker is refused at its next call.
    DisableWorker { name: String },
    /// Enable a disabled worker's service account (tokens issued before it was disabled stay refused).
    EnableWorker { name: String },
    /// Give a worker's service account a new secret, shown once: tokens issued with the old one are
    /// refused at once.
    RotateWorkerSecret { name: String },
    /// List the workers' service accounts.
    ListWorkers,
}

/// `sonicgw worker`'s options.
#[derive(Args)]
struct WorkerArgs {
    /// The gateway's base URL.
    #[arg(long, env = "SONICGW_SERVER")]
    server: String,
    /// A ComfyUI server with Sonic on this host (repeatable; default: the comfyui_urls setting).
    #[arg(long = "comfyui-url")]
    comfyui_urls: Vec<String>,
    /// The engine to run: builtin, sonic or simulated (tests only).
    #[arg(long, default_value = "builtin")]
    engine: String,
    /// Jobs at once for an engine that does not bound itself (Sonic runs one per ComfyUI place).
    #[arg(long, default_value_t = 1)]
    lanes: usize,
    /// The service account's client id (`sonicgw admin create-worker`).
    #[arg(long, env = "SONICGW_WORKER_CLIENT_ID", hide_env_values = true)]
    client_id: String,
    /// The service account's secret; prefer the environment to the command line.
    #[arg(long, env = "SONICGW_WORKER_CLIENT_SECRET", hide_env_values = true)]
    client_secret: String,
}

/// A user named by tenant and username.
#[derive(Args)]
struct UserRef {
    /// Tenant name.
    #[arg(long)]
    tenant: String,
    /// Username.
    username: String,
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Add a new signing key; older keys keep verifying until their tokens expire.
    Rotate,
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Check the hash chain and report the first broken link, and that the chain still reaches its
    /// latest signed checkpoint (exit status 1 when either does not hold).
    Verify {
        /// A checkpoint exported earlier (`audit checkpoint`'s `document`), instead of the stored one.
        #[arg(long)]
        checkpoint: Option<PathBuf>,
    },
    /// Sign a checkpoint of the chain's head now and print it; keep its `document` somewhere the
    /// database's administrators cannot change (servers also sign one every
    /// `audit_checkpoint_interval_s`).
    Checkpoint,
    /// Export audit records as CSV over the API (admins; uses the `login` sign-in).
    Export(crate::client::commands::AuditExportArgs),
}

/// Entry point of the binary.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let command = match runner(cli.command) {
        // A local check of a file: no configuration, database, logging or network.
        Runner::Verify(args) => return crate::provenance::cli::run(args),
        // The client commands need no configuration, database or logging: only the sign-in.
        Runner::Client(client) => {
            return match tokio::runtime::Runtime::new() {
                Ok(runtime) => runtime.block_on(crate::client::commands::run(client, cli.client)),
                Err(err) => {
                    eprintln!("sonicgw: starting the runtime: {err}");
                    ExitCode::FAILURE
                }
            }
        }
        Runner::Server(command) => command,
    };
    let config = match Config::load(cli.config.as_deref()) {
        Ok(config) => config,
        Err(err) => {
            eprintln!("sonicgw: {err:#}");
            return ExitCode::from(2);
        }
    };
    // The demo's progress bar is the point of the demo: the server it starts stays quiet.
    let quiet = matches!(command, Command::Demo { verbose: false, .. });
    let _log_writer = init_tracing(&config, quiet);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("sonicgw: starting the runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(command, config)) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("sonicgw: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// Who runs a command: the HTTP client, or this process's server side (configuration, database).
enum Runner {
    Client(crate::client::commands::ClientCommand),
    Verify(crate::provenance::cli::VerifyArgs),
    Server(Command),
}

fn runner(command: Command) -> Runner {
    use crate::client::commands::ClientCommand;
    Runner::Client(match command {
        Command::Login(args) => ClientCommand::Login(args),
        Command::Logout => ClientCommand::Logout,
        Command::Generate(args) => ClientCommand::Generate(*args),
        Command::Videos(command) => ClientCommand::Videos(command),
        Command::Users(command) => ClientCommand::Users(command),
        Command::Audit(AuditCommand::Export(args)) => ClientCommand::AuditExport(args),
        Command::Verify(args) => return Runner::Verify(args),
        other => return Runner::Server(other),
    })
}

/// Logs to stderr through a writer thread, so a request never waits for the terminal or the pipe
/// (lines are queued, never dropped: a full queue makes writers wait; written in batches). Colour only on a terminal.
/// The guard flushes what is queued when dropped at the end of `main`. Filtered by `SONICGW_LOG`
/// (default `info,sqlx=warn`; with `quiet`, nothing unless `SONICGW_LOG` is set).
fn init_tracing(config: &Config, quiet: bool) -> tracing_appender::non_blocking::WorkerGuard {
    use std::io::IsTerminal as _;
    let default = if quiet { "off" } else { "info,sqlx=warn" };
    let filter = tracing_subscriber::EnvFilter::try_from_env("SONICGW_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(false)
        .thread_name("sonicgw-log")
        // Buffered: the writer thread drains every queued line, then flushes once, so a busy server
        // makes one write per batch instead of one system call per line.
        .finish(std::io::BufWriter::with_capacity(
            64 * 1024,
            std::io::stderr(),
        ));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(writer);
    if config.log_format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
    guard
}

async fn run(command: Command, config: Config) -> anyhow::Result<ExitCode> {
    match command {
        Command::Serve { no_migrate } => {
            let signal = crate::app::shutdown_signal().context("installing signal handlers")?;
            let migrations = if no_migrate {
                crate::storage::Migrations::Require
            } else {
                crate::storage::Migrations::Apply
            };
            let server = crate::app::start_with_options(
                config,
                crate::app::admin_password_from_env(),
                migrations,
            )
            .await?;
            // A line for people and for scripts that start the server on port 0.
            println!("sonicgw listening on http://{}", server.addr);
            if let Some(metrics) = server.metrics_addr {
                println!("sonicgw metrics on http://{metrics}/metrics");
            }
            server.run_until(signal).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Demo { out, .. } => {
            let path = crate::demo::run(config, out).await?;
            let absolute = std::fs::canonicalize(&path).unwrap_or(path);
            println!("video written to {}", absolute.display());
            Ok(ExitCode::SUCCESS)
        }
        Command::Worker(args) => {
            let options = crate::remote::worker::WorkerOptions {
                server: args.server,
                client_id: args.client_id,
                client_secret: args.client_secret,
                engine: args.engine,
                comfyui_urls: args.comfyui_urls,
                lanes: args.lanes,
            };
            crate::remote::worker::serve(config, options).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Migrate => {
            let store =
                crate::app::open_database(&config, crate::storage::Migrations::Apply).await?;
            let status = store.schema().await?;
            if let Some(problem) = status.problem() {
                bail!("{problem}");
            }
            println!("database schema is current");
            if !status.newer.is_empty() {
                println!(
                    "the database also has migrations {:?} of a newer release",
                    status.newer
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Admin(command) => admin(command, &config).await.map(|()| ExitCode::SUCCESS),
        Command::Keys(KeysCommand::Rotate) => {
            let alg = config.signing_alg().map_err(anyhow::Error::msg)?;
            let kid = crate::auth::keys::rotate(&config.keys_dir(), alg)?;
            println!(
                "new signing key {kid} ({}); running servers pick it up within a minute",
                alg.as_str()
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Login(_)
        | Command::Logout
        | Command::Generate(_)
        | Command::Videos(_)
        | Command::Users(_)
        | Command::Verify(_)
        | Command::Audit(AuditCommand::Export(_)) => {
            unreachable!("client commands and verify are run before configuration (`runner`)")
        }
        Command::Audit(AuditCommand::Checkpoint) => {
            let core = Core::open(&config).await?;
            let tokens = cli_tokens(&config, &core)?;
            let issuer = config.issuer(config.listen);
            match crate::audit::checkpoint::create(core.store.as_ref(), &tokens, &issuer).await? {
                Some(checkpoint) => println!(
                    "{}",
                    serde_json::json!({
                        "seq": checkpoint.seq,
                        "hash": checkpoint.hash,
                        "created_at": checkpoint.created_at.to_rfc3339(),
                        "document": checkpoint.document,
                    })
                ),
                None => println!("the audit log is empty: nothing to sign"),
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Audit(AuditCommand::Verify { checkpoint }) => {
            let core = Core::open(&config).await?;
            let tokens = cli_tokens(&config, &core)?;
            let exported = match checkpoint {
                Some(path) => Some(
                    std::fs::read_to_string(&path)
                        .with_context(|| format!("reading {}", path.display()))?
                        .trim()
                        .to_owned(),
                ),
                None => None,
            };
            let report =
                crate::audit::verify_anchored(core.store.as_ref(), &tokens, exported.as_deref())
                    .await?;
            println!("{}", serde_json::to_string_pretty(&report)?);
            Ok(if report.valid {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
    }
}

/// The signing keys, for commands that sign or check documents (audit checkpoints).
fn cli_tokens(config: &Config, core: &Core) -> anyhow::Result<crate::auth::tokens::Tokens> {
    let settings = crate::app::token_settings(config, config.issuer(config.listen))?;
    crate::auth::tokens::Tokens::new(settings, std::sync::Arc::clone(&core.revocations))
}

fn read_password(from_stdin: bool) -> anyhow::Result<(String, bool)> {
    if from_stdin {
        let mut line = String::new();
        std::io::stdin().lock().read_line(&mut line)?;
        let password = line.trim_end_matches(['\r', '\n']).to_owned();
        if password.is_empty() {
            bail!("no password on stdin");
        }
        Ok((password, false))
    } else {
        Ok((generate_password(), true))
    }
}

async fn find_user(core: &Core, who: &UserRef) -> anyhow::Result<UserRecord> {
    let tenant = core
        .store
        .tenant_by_name(&TenantName::parse(&who.tenant)?)
        .await?
        .with_context(|| format!("no tenant named {}", who.tenant))?;
    let username = Username::parse(&who.username)?;
    core.store
        .users_by_username(&username)
        .await?
        .into_iter()
        .find(|u| u.tenant_id == tenant.id)
        .with_context(|| format!("no user {} in tenant {}", who.username, who.tenant))
}

async fn change_user(core: &Core, who: &UserRef, changes: UserChanges) -> anyhow::Result<()> {
    let user = find_user(core, who).await?;
    core.accounts
        .update_user(&AuditContext::cli(), Actor::Operator, user.id, changes)
        .await?;
    Ok(())
}

async fn admin(command: AdminCommand, config: &Config) -> anyhow::Result<()> {
    let core = Core::open(config).await?;
    core.bootstrap(crate::app::admin_password_from_env())
        .await?;
    let context = AuditContext::cli();
    match command {
        AdminCommand::CreateTenant { name, plan } => {
            let tenant = core
                .accounts
                .create_tenant(&context, &name, Some(&plan))
                .await?;
            println!("created tenant {} ({})", tenant.name, tenant.id);
        }
        AdminCommand::CreateUser {
            who,
            role,
            plan,
            password_stdin,
        } => {
            let tenant = core
                .store
                .tenant_by_name(&TenantName::parse(&who.tenant)?)
                .await?
                .with_context(|| format!("no tenant named {}", who.tenant))?;
            let (password, generated) = read_password(password_stdin)?;
            let user = core
                .accounts
                .create_user(
                    &context,
                    Actor::Operator,
                    NewUser {
                        username: who.username,
                        password: password.clone(),
                        role: Some(role),
                        plan,
                        tenant_id: Some(tenant.id),
                    },
                )
                .await?;
            println!(
                "created user {} ({}) in tenant {}",
                user.username, user.id, tenant.name
            );
            if generated {
                println!("password (shown only now): {password}");
            }
        }
        AdminCommand::SetRole { who, role } => {
            let changes = UserChanges {
                role: Some(role),
                ..UserChanges::default()
            };
            change_user(&core, &who, changes).await?;
            println!("role updated");
        }
        AdminCommand::SetPlan { who, plan } => {
            let changes = UserChanges {
                plan: Some(Some(plan)),
                ..UserChanges::default()
            };
            change_user(&core, &who, changes).await?;
            println!("plan updated");
        }
        AdminCommand::SetTenantPlan { tenant, plan } => {
            let record = core
                .store
                .tenant_by_name(&TenantName::parse(&tenant)?)
                .await?
                .with_context(|| format!("no tenant named {tenant}"))?;
            core.accounts
                .update_tenant(&context, record.id, None, Some(&plan))
                .await?;
            println!("tenant plan updated");
        }
        AdminCommand::DisableUser { who } => {
            let changes = UserChanges {
                disabled: Some(true),
                ..UserChanges::default()
            };
            change_user(&core, &who, changes).await?;
            println!("user disabled and their tokens revoked");
        }
        AdminCommand::EnableUser { who } => {
            let changes = UserChanges {
                disabled: Some(false),
                ..UserChanges::default()
            };
            change_user(&core, &who, changes).await?;
            println!("user enabled");
        }
        AdminCommand::ResetPassword {
            who,
            password_stdin,
        } => {
            let (password, generated) = read_password(password_stdin)?;
            let changes = UserChanges {
                password: Some(password.clone()),
                ..UserChanges::default()
            };
            change_user(&core, &who, changes).await?;
            println!("password reset; all of the user's tokens are revoked");
            if generated {
                println!("new password (shown only now): {password}");
            }
        }
        AdminCommand::CreateWorker { name } => {
            let created = WorkerAccounts::new(&core.accounts)
                .create(&context, &name)
                .await?;
            println!("created worker {} ({})", name, created.account.id);
            println!("SONICGW_WORKER_CLIENT_ID={}", created.account.client_id);
            println!(
                "SONICGW_WORKER_CLIENT_SECRET={} (shown only now)",
                created.client_secret
            );
        }
        AdminCommand::DisableWorker { name } => {
            WorkerAccounts::new(&core.accounts)
                .set_disabled(&context, &name, true)
                .await?;
            println!("worker disabled: it is refused at its next call");
        }
        AdminCommand::EnableWorker { name } => {
            WorkerAccounts::new(&core.accounts)
                .set_disabled(&context, &name, false)
                .await?;
            println!("worker enabled");
        }
        AdminCommand::RotateWorkerSecret { name } => {
            let rotated = WorkerAccounts::new(&core.accounts)
                .rotate_secret(&context, &name)
                .await?;
            println!("new secret for worker {name}: its old tokens are refused from now on");
            println!("SONICGW_WORKER_CLIENT_ID={}", rotated.account.client_id);
            println!(
                "SONICGW_WORKER_CLIENT_SECRET={} (shown only now)",
                rotated.client_secret
            );
        }
        AdminCommand::ListWorkers => {
            for account in WorkerAccounts::new(&core.accounts).list().await? {
                let seen = account
                    .last_seen_at
                    .map_or_else(|| "never".to_owned(), |t| t.as_millis().to_string());
                println!(
                    "{}\t{}\t{}\tlast seen {}",
                    account.name,
                    account.client_id,
                    if account.disabled {
                        "disabled"
                    } else {
                        "enabled"
                    },
                    seen
                );
            }
        }
    }
    Ok(())
}
