//! A real S3-compatible server for the storage tests: moto's server mode (PyPI), installed by
//! `scripts/setup.sh` into `<target>/s3-venv` and started once per test process on port 0 by
//! `scripts/s3-test-server.py`. Each test gets a bucket of its own. When the server cannot start the
//! tests that need it fail, naming the cause: they are never skipped.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;

/// The running server: its endpoint, and the child whose standard input, held open here until the
/// test process exits, keeps it alive.
struct Server {
    endpoint: String,
    _child: Child,
}

static SERVER: OnceLock<Server> = OnceLock::new();

/// The venv's Python: `SONICGW_TEST_S3_PYTHON`, else `<target dir>/s3-venv/bin/python`.
fn python() -> PathBuf {
    if let Ok(path) = std::env::var("SONICGW_TEST_S3_PYTHON") {
        return PathBuf::from(path);
    }
    // The test binary is <target>/<profile>/deps/it-<hash>.
    let exe = std::env::current_exe().expect("test binary path");
    let target = exe
        .ancestors()
        .nth(3)
        .expect("the test binary lives under a target directory");
    target.join("s3-venv/bin/python")
}

fn start() -> Server {
    let python = python();
    assert!(
        python.exists(),
        "the S3 test server is not installed ({} is missing): run scripts/setup.sh with the same \
         CARGO_TARGET_DIR, or point SONICGW_TEST_S3_PYTHON at a Python with moto[server]",
        python.display()
    );
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts/s3-test-server.py");
    let mut child = Command::new(&python)
        .arg(&script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap_or_else(|e| panic!("starting the S3 test server with {}: {e}", python.display()));
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("piped stdout"))
        .read_line(&mut line)
        .expect("reading the S3 test server's address");
    let address = line
        .trim()
        .strip_prefix("listening ")
        .unwrap_or_else(|| panic!("the S3 test server did not start (it printed {line:?})"));
    Server {
        endpoint: format!("http://{address}"),
        _child: child,
    }
}

/// A fresh, empty bucket on the shared test server.
pub struct Bucket {
    pub name: String,
    pub endpoint: String,
}

impl Bucket {
    pub async fn create() -> Self {
        let endpoint = SERVER.get_or_init(start).endpoint.clone();
        let name = format!("t-{}", uuid::Uuid::new_v4().simple());
        let response = reqwest::Client::new()
            .put(format!("{endpoint}/{name}"))
            .send()
            .await
            .expect("S3 test server reachable");
        assert!(
            response.status().is_success(),
            "creating bucket {name}: {}",
            response.status()
        );
        Self { name, endpoint }
    }

    /// `storage_url` for this bucket under `prefix`.
    pub fn url(&self, prefix: &str) -> String {
        format!("s3://{}/{prefix}", self.name)
    }

    /// `storage_options` that reach the test server (moto accepts any credentials).
    pub fn options(&self) -> BTreeMap<String, String> {
        [
            ("endpoint", self.endpoint.as_str()),
            ("access_key_id", "sonicgw-test"),
            ("secret_access_key", "sonicgw-test-secret"),
            ("region", "us-east-1"),
            ("allow_http", "true"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
    }

    /// Every key in the bucket, sorted.
    pub async fn keys(&self) -> Vec<String> {
        let body = reqwest::Client::new()
            .get(format!("{}/{}?list-type=2", self.endpoint, self.name))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let mut keys: Vec<String> = body
            .split("<Key>")
            .skip(1)
            .filter_map(|part| part.split_once("</Key>").map(|(key, _)| key.to_owned()))
            .collect();
        keys.sort();
        keys
    }
}
