//! The CLI's commands over the HTTP API: `login`, `logout`, `generate`, `videos ...`, `users ...` and
//! `audit export`. They need no configuration file and no database: only the sign-in `login` stored.
//! Exit status: 0 done, 1 the server refused or the job failed (the error's code is printed), 2 a
//! local problem with the command's input, 130 interrupted (a job being waited for keeps running).

use std::io::{BufRead as _, IsTerminal as _, Write as _};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Args, Subcommand};
use reqwest::Method;
use serde_json::{json, Value};

use super::api::{self, ApiFailure, Session};
use super::credentials::{self, Credentials};
use super::generate::{self, GenerateRequest, LocalRefusal};

/// Options every client command takes.
#[derive(Args, Clone)]
pub struct ClientOptions {
    /// Print machine-readable JSON instead of text.
    #[arg(long, global = true)]
    pub json: bool,
    /// Where the sign-in is kept (default: the user's configuration directory).
    #[arg(long, global = true, env = "SONICGW_CREDENTIALS")]
    pub credentials: Option<PathBuf>,
}

#[derive(Args)]
pub struct LoginArgs {
    /// The gateway's base URL, e.g. https://gateway.example.
    #[arg(long, env = "SONICGW_SERVER")]
    pub server: String,
    #[arg(long)]
    pub username: Option<String>,
    /// The tenant, when the username exists in several.
    #[arg(long)]
    pub tenant: Option<String>,
    /// Read the password from the first line of stdin instead of prompting.
    #[arg(long)]
    pub password_stdin: bool,
    /// Accept any TLS certificate (for a test server only; every command warns).
    #[arg(long)]
    pub insecure: bool,
}

#[derive(Args)]
pub struct GenerateArgs {
    /// The face photo (JPEG, PNG or WebP).
    #[arg(long)]
    pub image: PathBuf,
    /// The speech recording (WAV, MP3, FLAC, OGG/Opus, WebM, M4A).
    #[arg(long)]
    pub audio: PathBuf,
    /// Short side of the video in px (a multiple of 64; the plan may limit it).
    #[arg(long)]
    pub min_resolution: Option<u32>,
    #[arg(long)]
    pub expand_ratio: Option<f64>,
    #[arg(long)]
    pub inference_steps: Option<u32>,
    #[arg(long)]
    pub dynamic_scale: Option<f64>,
    #[arg(long)]
    pub motion_scale: Option<f64>,
    #[arg(long)]
    pub seed: Option<u32>,
    /// Shift the audio by this many seconds (turns lip-sync correction on).
    #[arg(long, allow_hyphen_values = true)]
    pub lip_sync_offset: Option<f64>,
    #[arg(long)]
    pub engine: Option<String>,
    #[arg(long)]
    pub callback_url: Option<String>,
    /// The visible AI label's language: zh, en or both (the server's default: both).
    #[arg(long)]
    pub label_language: Option<String>,
    /// Wait for the video (implied by -o).
    #[arg(long)]
    pub wait: bool,
    /// Where to write the MP4 (default with --wait: <job id>.mp4).
    #[arg(short = 'o', long = "output")]
    pub output: Option<PathBuf>,
    /// Reuse a key to make sure a retried submission never makes a second job (default: a new one).
    #[arg(long)]
    pub idempotency_key: Option<String>,
}

#[derive(Subcommand)]
pub enum VideosCommand {
    /// Your videos, newest first.
    List {
        /// queued, running, succeeded, failed or cancelled.
        #[arg(long)]
        status: Option<String>,
        #[arg(long, default_value_t = 20)]
        limit: u32,
    },
    /// One video job.
    Get { id: String },
    /// Cancel a queued or running job.
    Cancel { id: String },
    /// Delete a job and its files.
    Delete { id: String },
    /// Download a finished video.
    Download {
        id: String,
        #[arg(short = 'o', long = "output")]
        output: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
pub enum UsersCommand {
    /// The users of your tenant (platform admins: every tenant's).
    List,
    /// Create a user; the password is read from stdin, or generated and printed once.
    Create {
        username: String,
        #[arg(long, default_value = "user")]
        role: String,
        #[arg(long)]
        plan: Option<String>,
        #[arg(long)]
        password_stdin: bool,
    },
    /// Disable a user (revokes all their tokens).
    Disable {
        username: String,
    },
    Enable {
        username: String,
    },
    /// Set a user's role: user or admin.
    SetRole {
        username: String,
        role: String,
    },
    /// Give a user a new password (stdin, or generated and printed once); revokes their tokens.
    ResetPassword {
        username: String,
        #[arg(long)]
        password_stdin: bool,
    },
}

#[derive(Args)]
pub struct AuditExportArgs {
    /// e.g. auth.login, user.update.
    #[arg(long)]
    pub action: Option<String>,
    /// success, failure or denied.
    #[arg(long)]
    pub outcome: Option<String>,
    /// RFC 3339 lower bound.
    #[arg(long)]
    pub since: Option<String>,
    /// RFC 3339 upper bound.
    #[arg(long)]
    pub until: Option<String>,
    /// CSV file to write (default: stdout).
    #[arg(short = 'o', long = "output")]
    pub output: Option<PathBuf>,
}

/// A client command.
pub enum ClientCommand {
    Login(LoginArgs),
    Logout,
    Generate(GenerateArgs),
    Videos(VideosCommand),
    Users(UsersCommand),
    AuditExport(AuditExportArgs),
}

/// Runs a client command to its exit status, printing errors as `error: <code>: <detail>`.
pub async fn run(command: ClientCommand, options: ClientOptions) -> ExitCode {
    let waiting_for = WaitingFor::default();
    // Ctrl-C or SIGTERM ends the command by dropping it, so its temporary files (a download in
    // progress) are removed rather than left behind.
    let stop: std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>> =
        match crate::app::shutdown_signal() {
            Ok(signal) => Box::pin(signal),
            Err(_) => Box::pin(async {
                let _ = tokio::signal::ctrl_c().await;
            }),
        };
    let outcome = tokio::select! {
        outcome = dispatch(command, &options, &waiting_for) => outcome,
        () = stop => Err(match waiting_for.lock().unwrap_or_else(|e| e.into_inner()).clone() {
            Some(id) => StoppedWaiting(id).into(),
            None => anyhow::Error::new(Interrupted),
        }),
    };
    match outcome {
        Ok(code) => code,
        Err(err) => report(&err, options.json),
    }
}

/// The job `generate` is waiting for, if any: Ctrl-C then says it keeps running.
type WaitingFor = std::sync::Mutex<Option<String>>;

/// Ctrl-C or SIGTERM.
#[derive(Debug, thiserror::Error)]
#[error("interrupted")]
struct Interrupted;

/// Ctrl-C while waiting for a job: the job is not cancelled.
#[derive(Debug, thiserror::Error)]
#[error("stopped waiting; job {0} keeps running (`sonicgw videos get {0}`)")]
struct StoppedWaiting(String);

/// A job that ended without a video.
#[derive(Debug, thiserror::Error)]
#[error("{code}: {message}")]
struct JobFailed {
    id: String,
    status: String,
    code: String,
    message: String,
}

fn report(err: &anyhow::Error, as_json: bool) -> ExitCode {
    let (code, detail, status, fields): (String, String, u8, Vec<(String, String)>) =
        if let Some(failure) = err.downcast_ref::<ApiFailure>() {
            (
                failure.code.clone(),
                failure.detail.clone(),
                1,
                failure.fields.clone(),
            )
        } else if let Some(refusal) = err.downcast_ref::<LocalRefusal>() {
            (
                refusal.code.to_owned(),
                refusal.detail.clone(),
                2,
                vec![(refusal.field.to_owned(), refusal.detail.clone())],
            )
        } else if let Some(failed) = err.downcast_ref::<JobFailed>() {
            (failed.code.clone(), failed.message.clone(), 1, Vec::new())
        } else if let Some(stopped) = err.downcast_ref::<StoppedWaiting>() {
            (
                "interrupted".to_owned(),
                stopped.to_string(),
                130,
                Vec::new(),
            )
        } else if err.downcast_ref::<Interrupted>().is_some() {
            (
                "interrupted".to_owned(),
                "interrupted".to_owned(),
                130,
                Vec::new(),
            )
        } else {
            ("error".to_owned(), format!("{err:#}"), 1, Vec::new())
        };
    if as_json {
        let mut body = json!({ "error": { "code": code, "detail": detail } });
        if let Some(failed) = err.downcast_ref::<JobFailed>() {
            body["id"] = json!(failed.id);
            body["status"] = json!(failed.status);
        }
        if !fields.is_empty() {
            body["error"]["fields"] = fields
                .iter()
                .map(|(field, message)| json!({ "field": field, "message": message }))
                .collect();
        }
        println!("{body}");
    } else {
        match fields.as_slice() {
            // Not an API refusal (a file missing, the server unreachable): no code to show.
            [] if code == "error" => eprintln!("error: {detail}"),
            [(field, message)] if message == &detail && !field.is_empty() => {
                eprintln!("error: {code}: {field}: {detail}");
            }
            _ => {
                eprintln!("error: {code}: {detail}");
                for (field, message) in fields.iter().filter(|(f, _)| !f.is_empty()) {
                    eprintln!("  {field}: {message}");
                }
            }
        }
    }
    ExitCode::from(status)
}

fn credentials_path(options: &ClientOptions) -> anyhow::Result<PathBuf> {
    match &options.credentials {
        Some(path) => Ok(path.clone()),
        None => credentials::default_path(),
    }
}

async fn dispatch(
    command: ClientCommand,
    options: &ClientOptions,
    waiting_for: &WaitingFor,
) -> anyhow::Result<ExitCode> {
    let path = credentials_path(options)?;
    match command {
        ClientCommand::Login(args) => login(args, &path, options).await,
        ClientCommand::Logout => {
            match credentials::load(&path)? {
                None => println!("not signed in"),
                Some(stored) => {
                    Session::open(path)?.logout().await?;
                    if !options.json {
                        println!("signed out of {} (the sign-in is revoked)", stored.server);
                    }
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        ClientCommand::Generate(args) => {
            generate_video(args, Session::open(path)?, options, waiting_for).await
        }
        ClientCommand::Videos(command) => videos(command, &Session::open(path)?, options).await,
        ClientCommand::Users(command) => users(command, &Session::open(path)?, options).await,
        ClientCommand::AuditExport(args) => audit_export(args, &Session::open(path)?).await,
    }
}

fn read_line(prompt: &str) -> anyhow::Result<String> {
    eprint!("{prompt}");
    std::io::stderr().flush()?;
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line)?;
    Ok(line.trim_end_matches(['\r', '\n']).to_owned())
}

/// Whether `url` names this machine (plain HTTP is then fine: nothing crosses a network).
fn is_loopback(url: &url::Url) -> bool {
    match url.host() {
        Some(url::Host::Domain(name)) => name.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    }
}

async fn login(
    args: LoginArgs,
    path: &std::path::Path,
    options: &ClientOptions,
) -> anyhow::Result<ExitCode> {
    let (server, parsed) = server_url(&args.server)?;
    if parsed.scheme() == "http" && !is_loopback(&parsed) {
        eprintln!(
            "warning: {server} is plain HTTP: your password and tokens cross the network unencrypted; use https://"
        );
    }
    let username = match args.username {
        Some(username) => username,
        None => read_line("Username: ")?,
    };
    let password = zeroize::Zeroizing::new(if args.password_stdin {
        read_line("")?
    } else {
        rpassword::prompt_password("Password: ").context("reading the password")?
    });
    let http = api::http_client(args.insecure)?;
    let (access_token, access_expires_at, refresh_token) =
        api::password_login(&http, &server, &username, &password, args.tenant.as_deref()).await?;
    let stored = Credentials {
        server: server.clone(),
        username: username.clone(),
        tenant: args.tenant,
        insecure: args.insecure,
        access_token,
        access_expires_at,
        refresh_token,
    };
    credentials::save(path, &stored)?;
    if options.json {
        println!(
            "{}",
            json!({ "server": server, "username": username, "credentials": path })
        );
    } else {
        println!("signed in to {server} as {username}");
    }
    Ok(ExitCode::SUCCESS)
}

/// The server's base URL as given to `login`, checked: http(s), and nothing in it that would be stored
/// in the credentials file or sent with every request without the user meaning to (a user name and
/// password, a query, a fragment).
fn server_url(given: &str) -> anyhow::Result<(String, url::Url)> {
    let server = given.trim().trim_end_matches('/').to_owned();
    let parsed = url::Url::parse(&server).with_context(|| format!("{server:?} is not a URL"))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        anyhow::bail!("the server URL must start with https:// (or http:// for a local server)");
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        anyhow::bail!(
            "the server URL must not hold a user name or password; give them with --username and at the prompt"
        );
    }
    if parsed.query().is_some() || parsed.fragment().is_some() {
        anyhow::bail!("the server URL must not have a query (?...) or fragment (#...)");
    }
    Ok((server, parsed))
}

fn generate_fields(args: &GenerateArgs) -> Vec<(&'static str, String)> {
    let mut fields = Vec::new();
    let mut add = |name: &'static str, value: Option<String>| {
        if let Some(value) = value {
            fields.push((name, value));
        }
    };
    add("min_resolution", args.min_resolution.map(|v| v.to_string()));
    add("expand_ratio", args.expand_ratio.map(|v| v.to_string()));
    add(
        "inference_steps",
        args.inference_steps.map(|v| v.to_string()),
    );
    add("dynamic_scale", args.dynamic_scale.map(|v| v.to_string()));
    add("motion_scale", args.motion_scale.map(|v| v.to_string()));
    add("seed", args.seed.map(|v| v.to_string()));
    if let Some(offset) = args.lip_sync_offset {
        add("enable_lip_sync_correction", Some("true".to_owned()));
        add("lip_sync_offset", Some(offset.to_string()));
    }
    add("engine", args.engine.clone());
    add("callback_url", args.callback_url.clone());
    add("label_language", args.label_language.clone());
    fields
}

async fn generate_video(
    args: GenerateArgs,
    session: Session,
    options: &ClientOptions,
    waiting_for: &WaitingFor,
) -> anyhow::Result<ExitCode> {
    generate::check_files(&args.image, &args.audio)?;
    let request = GenerateRequest {
        image: args.image.clone(),
        audio: args.audio.clone(),
        fields: generate_fields(&args),
        idempotency_key: args.idempotency_key.clone(),
    };
    let created = generate::submit(&session, &request).await?;
    // The id names files and URLs here: only a real job id from the server is used (a hostile
    // server's "../x" must not pick where the video is written).
    let id = created["id"]
        .as_str()
        .and_then(|id| id.parse::<crate::domain::JobId>().ok())
        .context("the server's answer has no valid job id")?
        .to_string();
    if !(args.wait || args.output.is_some()) {
        if options.json {
            println!("{created}");
        } else {
            println!(
                "job {id} {} ({})",
                created["status"].as_str().unwrap_or("queued"),
                generate::describe(&created)
            );
            println!("follow it with `sonicgw videos get {id}`");
        }
        return Ok(ExitCode::SUCCESS);
    }
    if !options.json {
        eprintln!("job {id} submitted");
    }
    let bar = progress_bar(options.json);
    *waiting_for.lock().unwrap_or_else(|e| e.into_inner()) = Some(id.clone());
    let view = generate::follow(&session, &id, |view| {
        let percent = (view["progress"].as_f64().unwrap_or(0.0) * 100.0).clamp(0.0, 100.0);
        bar.set_position(percent as u64);
        bar.set_message(generate::describe(view));
    })
    .await?;
    if view["status"] != "succeeded" {
        bar.abandon();
        return Err(JobFailed {
            id,
            status: view["status"].as_str().unwrap_or("failed").to_owned(),
            code: view["error"]["code"]
                .as_str()
                .unwrap_or("cancelled")
                .to_owned(),
            message: view["error"]["message"]
                .as_str()
                .unwrap_or("the job ended without a video")
                .to_owned(),
        }
        .into());
    }
    bar.set_position(100);
    bar.finish_with_message("done");
    let out = args
        .output
        .unwrap_or_else(|| PathBuf::from(format!("{id}.mp4")));
    let bytes = generate::download(&session, &id, &out).await?;
    if options.json {
        println!(
            "{}",
            json!({ "id": id, "status": "succeeded", "output": out, "bytes": bytes, "job": view })
        );
    } else {
        println!("video written to {} ({bytes} bytes)", out.display());
    }
    Ok(ExitCode::SUCCESS)
}

fn progress_bar(hidden: bool) -> indicatif::ProgressBar {
    if hidden || !std::io::stderr().is_terminal() {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(100);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:30.cyan/blue} {pos:>3}% {msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar.enable_steady_tick(std::time::Duration::from_millis(200));
    bar
}

fn print_job_line(view: &Value) {
    println!(
        "{}  {:<9}  {:>5.1}s  {}x{}  {}",
        view["id"].as_str().unwrap_or("?"),
        view["status"].as_str().unwrap_or("?"),
        view["params"]["duration"].as_f64().unwrap_or(0.0),
        view["output"]["width"].as_u64().unwrap_or(0),
        view["output"]["height"].as_u64().unwrap_or(0),
        view["created_at"].as_str().unwrap_or(""),
    );
}

async fn videos(
    command: VideosCommand,
    session: &Session,
    options: &ClientOptions,
) -> anyhow::Result<ExitCode> {
    match command {
        VideosCommand::List { status, limit } => {
            let mut query = vec![("limit", limit.to_string())];
            if let Some(status) = status {
                query.push(("status", status));
            }
            let query = serde_urlencoded::to_string(&query)?;
            let page = session
                .json(Method::GET, &format!("/v1/videos?{query}"), None)
                .await?;
            if options.json {
                println!("{page}");
            } else {
                for view in page["items"].as_array().into_iter().flatten() {
                    print_job_line(view);
                }
            }
        }
        VideosCommand::Get { id } => {
            let view = session
                .json(
                    Method::GET,
                    &format!("/v1/videos/{}", path_segment(&id)),
                    None,
                )
                .await?;
            if options.json {
                println!("{view}");
            } else {
                print_job_line(&view);
                println!("  {}", generate::describe(&view));
                if let Some(error) = view.get("error") {
                    println!(
                        "  error: {}: {}",
                        error["code"].as_str().unwrap_or(""),
                        error["message"].as_str().unwrap_or("")
                    );
                }
                if let Some(result) = view.get("result") {
                    println!(
                        "  link (until {}): {}",
                        result["expires_at"].as_str().unwrap_or(""),
                        result["url"].as_str().unwrap_or("")
                    );
                }
            }
        }
        VideosCommand::Cancel { id } => {
            let view = session
                .json(
                    Method::POST,
                    &format!("/v1/videos/{}/cancel", path_segment(&id)),
                    None,
                )
                .await?;
            if options.json {
                println!("{view}");
            } else {
                println!(
                    "job {id} {}",
                    view["status"].as_str().unwrap_or("cancelled")
                );
            }
        }
        VideosCommand::Delete { id } => {
            session
                .json(
                    Method::DELETE,
                    &format!("/v1/videos/{}", path_segment(&id)),
                    None,
                )
                .await?;
            if options.json {
                println!("{}", json!({ "id": id, "deleted": true }));
            } else {
                println!("job {id} deleted");
            }
        }
        VideosCommand::Download { id, output } => {
            let out = output.unwrap_or_else(|| PathBuf::from(format!("{id}.mp4")));
            let bytes = generate::download(session, &path_segment(&id), &out).await?;
            if options.json {
                println!("{}", json!({ "id": id, "output": out, "bytes": bytes }));
            } else {
                println!("video written to {} ({bytes} bytes)", out.display());
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// An id as one URL path segment: whatever it holds, it cannot reach another route.
fn path_segment(id: &str) -> String {
    url::form_urlencoded::byte_serialize(id.as_bytes()).collect()
}

async fn user_id(session: &Session, username: &str) -> anyhow::Result<String> {
    let list = session.json(Method::GET, "/v1/users", None).await?;
    let matches: Vec<&Value> = list["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|u| u["username"] == username)
        .collect();
    match matches.as_slice() {
        [one] => Ok(one["id"].as_str().unwrap_or_default().to_owned()),
        [] => Err(ApiFailure {
            status: 404,
            code: "not_found".into(),
            detail: format!("no user named {username} that you can manage"),
            fields: Vec::new(),
        }
        .into()),
        _ => anyhow::bail!("{username} exists in several tenants; use the API with the user's id"),
    }
}

fn password_from(stdin: bool) -> anyhow::Result<(zeroize::Zeroizing<String>, bool)> {
    if stdin {
        let password = read_line("")?;
        anyhow::ensure!(!password.is_empty(), "no password on stdin");
        Ok((zeroize::Zeroizing::new(password), false))
    } else {
        Ok((
            zeroize::Zeroizing::new(crate::app::generate_password()),
            true,
        ))
    }
}

async fn users(
    command: UsersCommand,
    session: &Session,
    options: &ClientOptions,
) -> anyhow::Result<ExitCode> {
    let print = |value: &Value| {
        if options.json {
            println!("{value}");
        } else {
            println!(
                "{}  {:<24}  {:<14}  {}",
                value["id"].as_str().unwrap_or("?"),
                value["username"].as_str().unwrap_or("?"),
                value["role"].as_str().unwrap_or("?"),
                if value["disabled"] == true {
                    "disabled"
                } else {
                    "enabled"
                }
            );
        }
    };
    match command {
        UsersCommand::List => {
            let list = session.json(Method::GET, "/v1/users", None).await?;
            if options.json {
                println!("{list}");
            } else {
                list["items"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .for_each(print);
            }
        }
        UsersCommand::Create {
            username,
            role,
            plan,
            password_stdin,
        } => {
            let (password, generated) = password_from(password_stdin)?;
            let mut body =
                json!({ "username": username, "password": password.as_str(), "role": role });
            if let Some(plan) = plan {
                body["plan"] = json!(plan);
            }
            let user = session.json(Method::POST, "/v1/users", Some(&body)).await?;
            print(&user);
            if generated && !options.json {
                println!("password (shown only now): {}", password.as_str());
            }
        }
        UsersCommand::Disable { username } => {
            let id = user_id(session, &username).await?;
            let user = session
                .json(
                    Method::PATCH,
                    &format!("/v1/users/{id}"),
                    Some(&json!({ "disabled": true })),
                )
                .await?;
            print(&user);
        }
        UsersCommand::Enable { username } => {
            let id = user_id(session, &username).await?;
            let user = session
                .json(
                    Method::PATCH,
                    &format!("/v1/users/{id}"),
                    Some(&json!({ "disabled": false })),
                )
                .await?;
            print(&user);
        }
        UsersCommand::SetRole { username, role } => {
            let id = user_id(session, &username).await?;
            let user = session
                .json(
                    Method::PATCH,
                    &format!("/v1/users/{id}"),
                    Some(&json!({ "role": role })),
                )
                .await?;
            print(&user);
        }
        UsersCommand::ResetPassword {
            username,
            password_stdin,
        } => {
            let id = user_id(session, &username).await?;
            let (password, generated) = password_from(password_stdin)?;
            let user = session
                .json(
                    Method::PATCH,
                    &format!("/v1/users/{id}"),
                    Some(&json!({ "password": password.as_str() })),
                )
                .await?;
            print(&user);
            if generated && !options.json {
                println!("new password (shown only now): {}", password.as_str());
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn audit_export(args: AuditExportArgs, session: &Session) -> anyhow::Result<ExitCode> {
    let mut out: Box<dyn std::io::Write> = match &args.output {
        Some(path) => Box::new(std::io::BufWriter::new(
            std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?,
        )),
        None => Box::new(std::io::stdout().lock()),
    };
    /// 10 000 pages of 1 000 records: far past any real log, so only a broken server reaches it.
    const MAX_AUDIT_PAGES: u32 = 10_000;
    let mut cursor: Option<String> = None;
    let mut first = true;
    let mut pages = 0u32;
    loop {
        let mut query = vec![("format", "csv".to_owned()), ("limit", "1000".to_owned())];
        for (name, value) in [
            ("action", &args.action),
            ("outcome", &args.outcome),
            ("since", &args.since),
            ("until", &args.until),
        ] {
            if let Some(value) = value {
                query.push((name, value.clone()));
            }
        }
        if let Some(cursor) = &cursor {
            query.push(("cursor", cursor.clone()));
        }
        let url = session.url(&format!(
            "/v1/audit?{}",
            serde_urlencoded::to_string(&query)?
        ));
        let response = session.send(|http| http.get(&url)).await?;
        let next = response
            .headers()
            .get("x-next-cursor")
            .and_then(|v| v.to_str().ok())
            .filter(|v| !v.is_empty())
            .map(str::to_owned);
        // Capped like every answer, and cleaned of terminal control characters like them: a CSV field
        // holds user agents and reasons, and the file may be shown with `cat`.
        let body = super::terminal::clean_text(&String::from_utf8_lossy(
            &api::read_capped(response).await?,
        ));
        // Every page starts with the header row: keep only the first.
        let body = if first {
            body.as_str()
        } else {
            body.split_once('\n').map_or("", |(_, rest)| rest)
        };
        out.write_all(body.as_bytes())?;
        first = false;
        pages += 1;
        match next {
            // A cursor that does not move would loop for ever.
            Some(next) if cursor.as_deref() != Some(next.as_str()) && pages < MAX_AUDIT_PAGES => {
                cursor = Some(next)
            }
            Some(_) => anyhow::bail!(
                "the server keeps offering more pages ({pages} read); narrow the export with --since/--until"
            ),
            None => break,
        }
    }
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::server_url;

    #[test]
    fn a_server_url_is_http_without_credentials_query_or_fragment() {
        let (server, _) = server_url(" https://gw.example.com/ ").unwrap();
        assert_eq!(server, "https://gw.example.com");
        assert_eq!(
            server_url("http://127.0.0.1:8080").unwrap().0,
            "http://127.0.0.1:8080"
        );
        for refused in [
            "https://alice:secret@gw.example.com",
            "https://alice@gw.example.com",
            "https://gw.example.com/?token=x",
            "https://gw.example.com/#x",
            "ftp://gw.example.com",
            "gw.example.com",
        ] {
            let err = server_url(refused).unwrap_err().to_string();
            assert!(!err.contains("secret"), "{err}");
        }
    }
}
