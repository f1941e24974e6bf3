#!/usr/bin/env bash
# Installs what a fresh machine lacks for running and testing sonicgw: ffmpeg (MP4 encoding) from
# Debian's packages, and the S3-compatible server the storage tests start (moto's server mode, from
# PyPI, in a virtualenv under the cargo target directory). Idempotent; fast when all is present.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v ffmpeg >/dev/null || ! command -v ffprobe >/dev/null; then
  echo "installing ffmpeg" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq ffmpeg >/dev/null
fi

# The version is pinned so that every machine tests against the same server.
moto_version=5.2.5
venv="${CARGO_TARGET_DIR:-target}/s3-venv"
if ! "$venv/bin/python" -c "import moto, sys; sys.exit(moto.__version__ != '$moto_version')" 2>/dev/null; then
  echo "installing moto $moto_version (the tests' S3 server) into $venv" >&2
  if ! python3 -c 'import venv, ensurepip' 2>/dev/null; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
  fi
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check "moto[server]==$moto_version"
fi
