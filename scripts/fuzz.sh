#!/usr/bin/env bash
# Coverage-guided fuzzing (libFuzzer) of the parsers that read hostile input, fuzz/fuzz_targets:
# access tokens (`token`, and `token_claims` past the signature), the photo and recording probes
# (`image_probe`, `audio_probe`), the MP4 box walkers (`mp4_boxes`), the upload's multipart fields and
# parameters (`upload_fields`). Each runs for FUZZ_SECONDS (default 30) from the committed seeds in
# fuzz/corpus/ plus what earlier runs here found (<target>/fuzz/corpus/). A panic that escapes, an
# input slower than 10 s or one needing more than 2 GiB fails the run, and the input is kept in
# <target>/fuzz/artifacts/<name>/; replay one with
# `<target>/fuzz/x86_64-unknown-linux-gnu/release/<name> <file>`.
#
# The build: cargo-fuzz (installed from crates.io, pinned) with libfuzzer-sys. cargo-fuzz passes nightly
# rustc flags; this machine has one stable toolchain, and RUSTC_BOOTSTRAP=1 makes stable rustc accept
# them. No sanitizer (-s none): the code is safe Rust and what is hunted is panics, overflows (debug
# assertions and overflow checks are on), hangs and memory blow-ups, at about twice ASan's speed. The
# instrumented build cannot share the normal build's artifacts (every crate is compiled with the
# coverage flags), so it has its own target directory, <target>/fuzz, which later runs reuse: the
# first build is a cold release build of the whole dependency graph.
#
# Usage: scripts/fuzz.sh [target ...]   (default: every target)
set -euo pipefail
cd "$(dirname "$0")/.."

seconds="${FUZZ_SECONDS:-30}"
target="$(realpath -m "${CARGO_TARGET_DIR:-target}")"
if (($#)); then
  targets=("$@")
else
  targets=(token token_claims image_probe audio_probe mp4_boxes upload_fields)
fi

cargo_fuzz_version=0.13.2
if ! cargo fuzz --version 2>/dev/null | grep -q " $cargo_fuzz_version\$"; then
  echo "installing cargo-fuzz $cargo_fuzz_version" >&2
  cargo install --locked --version "$cargo_fuzz_version" cargo-fuzz
fi
export RUSTC_BOOTSTRAP=1
# Every target in one build; then each binary runs directly.
cargo fuzz build --fuzz-dir fuzz --target-dir "$target/fuzz" --sanitizer none
bin="$target/fuzz/x86_64-unknown-linux-gnu/release"

failed=()
for name in "${targets[@]}"; do
  work="$target/fuzz/corpus/$name"
  artifacts="$target/fuzz/artifacts/$name"
  log="$target/fuzz/logs/$name.log"
  mkdir -p "$work" "$artifacts" "$(dirname "$log")"
  echo "fuzzing $name for ${seconds}s" >&2
  if "$bin/$name" "$work" "fuzz/corpus/$name" -max_total_time="$seconds" -timeout=10 \
    -rss_limit_mb=2048 -seed=1 -artifact_prefix="$artifacts/" -print_final_stats=1 >"$log" 2>&1; then
    runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || echo '?')
    caught=$(grep -c 'panicked at' "$log" || true)
    note=""
    ((caught == 0)) || note=" ($caught decoder panics caught by media::guard)"
    echo "  $name: $runs inputs, no failure$note" >&2
  else
    echo "  $name FAILED; its log: $log; the input: $artifacts/$(ls -t "$artifacts" | head -1)" >&2
    grep -E 'panicked at|ERROR: libFuzzer|SUMMARY' "$log" | head -5 >&2 || true
    failed+=("$name")
  fi
done
if ((${#failed[@]})); then
  echo "fuzzing found failures in: ${failed[*]}" >&2
  exit 1
fi
echo "fuzzing: ${#targets[@]} targets, ${seconds}s each, no failure" >&2
