#!/usr/bin/env bash
# Every test: guest unit tests (native), host and tools unit tests, the
# integration tests on the real guest with real models, and the Android
# host's Java API on a real JVM. Installs what it needs first
# (scripts/setup.sh). Prints the time of each phase at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
# One feature set for everything (the JVM test's entry point included), so
# llama.cpp and wasmtime are compiled once.
FEATURES=(--release --workspace --features bittybot-android/jvm-test)
times=()
step() { # step NAME COMMAND...
  local name=$1 t0=$SECONDS
  shift
  "$@"
  times+=("$(printf '%-22s %5d s' "$name" $((SECONDS - t0)))")
}
step setup scripts/setup.sh
step build cargo build "${FEATURES[@]}" --all-targets
# One test at a time: each integration test runs llama.cpp on all cores, and
# ggml's worker threads spin while they wait for each other, so two tests side
# by side on this 2-core machine ran 20-30x slower, not 2x (measured here:
# chat::second_turn_evaluates_only_the_new_turn 42 s beside another test,
# 1.3 s alone; the whole integration suite 3373 s in CI run side by side).
step "rust tests" env RUST_TEST_THREADS=1 cargo test "${FEATURES[@]}"
step "jvm test" scripts/jvm-test.sh
printf '\ntest.sh phases:\n'
printf '  %s\n' "${times[@]}"
