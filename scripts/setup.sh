#!/usr/bin/env bash
# Installs what a fresh machine lacks for running and testing sonicgw from Debian's packages: ffmpeg
# (MP4 encoding), and Python's venv for validating the deploy files.
set -euo pipefail
if ! command -v ffmpeg >/dev/null || ! command -v ffprobe >/dev/null; then
  echo "installing ffmpeg" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq ffmpeg >/dev/null
fi
# scripts/validate-deploy.sh keeps its tools in a Python venv.
if ! python3 -c 'import ensurepip, venv' >/dev/null 2>&1; then
  echo "installing python3-venv" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
fi
