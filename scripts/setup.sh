#!/usr/bin/env bash
# Installs what a fresh machine lacks for running and testing sonicgw: ffmpeg (MP4 encoding) from
# Debian's packages.
set -euo pipefail
if ! command -v ffmpeg >/dev/null || ! command -v ffprobe >/dev/null; then
  echo "installing ffmpeg" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq ffmpeg >/dev/null
fi
