//! The deploy files (deploy/: Kubernetes manifests, compose.yaml) pass scripts/validate-deploy.sh,
//! and the script refuses deliberately broken copies of them, each for the reason it was broken.
//! Nothing here runs a container or a cluster: the files are validated, not deployed.

use std::path::{Path, PathBuf};
use std::process::Command;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Runs the validation script on `deploy`; its success and everything it printed.
fn validate(deploy: &Path) -> (bool, String) {
    let output = Command::new(repo().join("scripts/validate-deploy.sh"))
        .arg(deploy)
        .output()
        .expect("scripts/validate-deploy.sh runs");
    let printed = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), printed)
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

#[test]
fn the_deploy_files_validate() {
    let (ok, printed) = validate(&repo().join("deploy"));
    assert!(ok, "{printed}");
    assert!(printed.contains("deploy files valid"), "{printed}");
}

#[test]
fn validation_refuses_broken_deploy_files() {
    // (file, text, replaced by, what the script must say)
    let cases = [
        (
            "k8s/31-api.yaml",
            "containerPort: 8080",
            "containerPort: \"8080\"",
            "is not of type 'integer'",
        ),
        (
            "k8s/31-api.yaml",
            "readinessProbe:",
            "readinesProbe:",
            "'readinesProbe' was unexpected",
        ),
        (
            "k8s/30-issuer.yaml",
            "kind: PodDisruptionBudget",
            "kind: PodDisruptionBudgett",
            "Couldn't find schema for kind PodDisruptionBudgett",
        ),
        (
            "k8s/30-issuer.yaml",
            "path: /readyz",
            "path: /ready",
            "readiness probe is not on /readyz",
        ),
        (
            "k8s/40-worker.yaml",
            "nvidia.com/gpu: 1\n",
            "\n",
            "no container requests nvidia.com/gpu: 1",
        ),
        (
            "k8s/31-api.yaml",
            "name: sonicgw-secrets",
            "name: sonicgw-secret",
            "unknown Secret sonicgw-secret",
        ),
        (
            "k8s/10-config.yaml",
            "SONICGW_REDIS_URL",
            "SONICGW_REDIS_ULR",
            "SONICGW_REDIS_ULR is not a configuration key",
        ),
        (
            "compose.yaml",
            "SONICGW_SHUTDOWN_GRACE_S",
            "SONICGW_SHUTDOWN_GRACE",
            "SONICGW_SHUTDOWN_GRACE is not a configuration key",
        ),
        (
            "compose.yaml",
            "      s3-init:\n        condition",
            "      s3-inti:\n        condition",
            "depends on unknown service s3-inti",
        ),
        (
            "compose.yaml",
            "      test: [\"CMD\", \"redis-cli\", \"ping\"]\n",
            "      disable: true\n",
            "waits for redis to be healthy, which has no health check",
        ),
        (
            "compose.yaml",
            "services:\n",
            "services:\n\t",
            "cannot parse",
        ),
    ];
    for (file, text, broken, expected) in cases {
        let dir = tempfile::tempdir().unwrap();
        copy_dir(&repo().join("deploy"), dir.path());
        let path = dir.path().join(file);
        let original = std::fs::read_to_string(&path).unwrap();
        assert!(
            original.contains(text),
            "{file} no longer contains {text:?}"
        );
        std::fs::write(&path, original.replacen(text, broken, 1)).unwrap();
        let (ok, printed) = validate(dir.path());
        assert!(!ok, "{file} with {broken:?} passed:\n{printed}");
        assert!(
            printed.contains(expected),
            "{file} with {broken:?}: expected {expected:?} in:\n{printed}"
        );
    }
}
