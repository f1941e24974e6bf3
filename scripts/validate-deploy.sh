#!/usr/bin/env bash
# Validates the deploy files without a cluster or a container engine: the Kubernetes manifests
# against the API schemas (kubernetes-validate, strict) plus cross-reference checks, and
# compose.yaml's structure (scripts/validate_deploy.py says what is checked). The tools live in a
# venv under the cargo target directory: installed from PyPI on the first run, offline afterwards.
#
#   scripts/validate-deploy.sh [DEPLOY_DIR]     (default: deploy/)
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
deploy="${1:-$root/deploy}"

KUBERNETES_VALIDATE_VERSION=1.37.0
PYYAML_VERSION=6.0.3
target="${CARGO_TARGET_DIR:-$root/target}"
venv="$target/deploy-venv"
stamp="$venv/.installed-kv$KUBERNETES_VALIDATE_VERSION-pyyaml$PYYAML_VERSION"

mkdir -p "$target"
if [ ! -f "$stamp" ]; then
  # One installer at a time (tests may call this script concurrently).
  exec 9>"$target/deploy-venv.lock"
  flock 9
  if [ ! -f "$stamp" ]; then
    echo "installing kubernetes-validate $KUBERNETES_VALIDATE_VERSION into $venv" >&2
    python3 -m venv --clear "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check \
      "kubernetes-validate==$KUBERNETES_VALIDATE_VERSION" "pyyaml==$PYYAML_VERSION"
    touch "$stamp"
  fi
  exec 9>&-
fi

exec "$venv/bin/python" "$root/scripts/validate_deploy.py" \
  "$deploy" "$root/src/config.rs" "$venv/bin/kubernetes-validate"
