//! `sonicgw verify FILE`: a video's labels and C2PA manifest, checked on this machine (no server,
//! no configuration, no network), printed for people or as the JSON the API returns.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use super::credentials::inspect::CredentialsState;
use super::verify::{verify_blocking, ProvenanceReport};

/// How long the C2PA reader may take on one file.
const BUDGET: Duration = Duration::from_secs(120);

/// The arguments of `sonicgw verify`.
#[derive(clap::Args)]
pub struct VerifyArgs {
    /// The MP4 to check.
    pub file: PathBuf,
    /// Print the report as JSON (the body `POST /v1/provenance/verify` answers).
    #[arg(long)]
    pub json: bool,
    /// Root certificates (PEM) whose signers count as trusted, e.g. the C2PA trust list.
    #[arg(long, value_name = "PEM")]
    pub trust_anchors: Option<PathBuf>,
}

/// Exit status: 0 when the file carries a manifest that validates (trusted or not), 1 when it has
/// none or it fails validation, 2 when the file cannot be read or is not an MP4.
pub fn run(args: VerifyArgs) -> ExitCode {
    let anchors = match &args.trust_anchors {
        Some(path) => match std::fs::read_to_string(path) {
            Ok(text) => Some(text),
            Err(err) => {
                eprintln!("sonicgw verify: reading {}: {err}", path.display());
                return ExitCode::from(2);
            }
        },
        None => None,
    };
    let report = match verify_blocking(&args.file, anchors.as_deref(), BUDGET) {
        Ok(report) => report,
        Err(err) => {
            eprintln!(
                "sonicgw verify: {}: {err} ({})",
                args.file.display(),
                err.code()
            );
            return ExitCode::from(2);
        }
    };
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).expect("the report serialises")
        );
    } else {
        print!("{}", describe(&report));
    }
    match report.c2pa.state {
        CredentialsState::Valid | CredentialsState::Trusted => ExitCode::SUCCESS,
        CredentialsState::Absent | CredentialsState::Invalid => ExitCode::from(1),
    }
}

/// The report as lines for people.
pub fn describe(report: &ProvenanceReport) -> String {
    let mut out = String::new();
    let mut line = |text: String| {
        out.push_str(&text);
        out.push('\n');
    };
    match &report.aigc {
        Some(aigc) => line(format!("AIGC metadata: {aigc}")),
        None => line("AIGC metadata: none".to_owned()),
    }
    line(format!(
        "visible AI label: {}",
        match report.visible_label_claimed {
            Some(true) => "claimed by the manifest",
            Some(false) => "not drawn, says the manifest",
            None => "no claim",
        }
    ));
    let c2pa = &report.c2pa;
    line(format!(
        "C2PA manifest: {}",
        match c2pa.state {
            CredentialsState::Absent => "none (no Content Credentials in this file)",
            CredentialsState::Invalid => "INVALID",
            CredentialsState::Valid => "valid, signer not trusted",
            CredentialsState::Trusted => "valid and trusted",
        }
    ));
    for failure in &c2pa.failures {
        line(format!(
            "  check failed: {}{}",
            failure.code,
            failure
                .explanation
                .as_deref()
                .map(|e| format!(" ({e})"))
                .unwrap_or_default()
        ));
    }
    if let Some(signature) = &c2pa.signature {
        line(format!(
            "  signed by: {} (issuer {}), {}",
            signature["common_name"].as_str().unwrap_or("?"),
            signature["issuer"].as_str().unwrap_or("?"),
            signature["alg"].as_str().unwrap_or("?"),
        ));
    }
    if let Some(created) = &c2pa.created {
        line(format!(
            "  created: {} by {} {}",
            created["digitalSourceType"].as_str().unwrap_or("?"),
            created["softwareAgent"]["name"].as_str().unwrap_or("?"),
            created["softwareAgent"]["version"].as_str().unwrap_or(""),
        ));
    }
    if let Some(job) = &c2pa.job {
        line(format!(
            "  job {} by producer {}, engine {} ({})",
            job["job_id"].as_str().unwrap_or("?"),
            job["producer"].as_str().unwrap_or("?"),
            job["engine"].as_str().unwrap_or("?"),
            job["model"].as_str().unwrap_or("?"),
        ));
        for input in ["photo", "recording"] {
            line(format!(
                "  {input}: sha256 {}",
                job["inputs"][input]["sha256"].as_str().unwrap_or("?")
            ));
        }
    }
    out
}
