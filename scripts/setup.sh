#!/usr/bin/env bash
# Installs what a fresh machine lacks for running and testing sonicgw, from Debian's packages, only when
# missing (so a second run does nothing): ffmpeg (MP4 encoding), Python's venv for validating the deploy
# files, and for the web app's browser tests Chromium (driven by playwright-core, never a browser of its
# own), Node.js with npm, and CJK fonts for the Chinese screenshots; and the S3-compatible server the
# storage tests start (moto's server mode, from PyPI, in a virtualenv under the cargo target directory);
# the independent C2PA reader of the provenance tests (c2pa-python from PyPI, in another virtualenv there);
# fonts-wqy-microhei is the default `label_font` of the visible AI label.
set -euo pipefail
cd "$(dirname "$0")/.."
missing=()
command -v ffmpeg >/dev/null && command -v ffprobe >/dev/null || missing+=(ffmpeg)
command -v chromium >/dev/null || missing+=(chromium)
command -v node >/dev/null || missing+=(nodejs)
command -v npm >/dev/null || missing+=(npm)
fc-list 2>/dev/null | grep -qi "cjk" || missing+=(fonts-noto-cjk)
# The visible "AI生成" label's default `label_font` (1.6 MB).
[ -f /usr/share/fonts/truetype/wqy/wqy-microhei.ttc ] || missing+=(fonts-wqy-microhei)
if ((${#missing[@]})); then
  echo "installing ${missing[*]}" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
# scripts/validate-deploy.sh keeps its tools in a Python venv.
if ! python3 -c 'import ensurepip, venv' >/dev/null 2>&1; then
  echo "installing python3-venv" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
fi

# The version is pinned so that every machine tests against the same server.
moto_version=5.2.5
venv="${CARGO_TARGET_DIR:-target}/s3-venv"
if ! "$venv/bin/python" -c "import moto, sys; sys.exit(moto.__version__ != '$moto_version')" 2>/dev/null; then
  echo "installing moto $moto_version (the tests' S3 server) into $venv" >&2
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check "moto[server]==$moto_version"
fi

# The provenance tests read every signed video back with the Content Authenticity Initiative's own
# library (its wheel ships the native c2pa library): pinned like moto.
c2pa_version=0.38.1
c2pa_venv="${CARGO_TARGET_DIR:-target}/c2pa-venv"
if ! "$c2pa_venv/bin/python" -c "import importlib.metadata as m, sys; sys.exit(m.version('c2pa-python') != '$c2pa_version')" 2>/dev/null; then
  echo "installing c2pa-python $c2pa_version (the tests' independent C2PA reader) into $c2pa_venv" >&2
  python3 -m venv "$c2pa_venv"
  "$c2pa_venv/bin/pip" install -q --disable-pip-version-check "c2pa-python==$c2pa_version"
fi
