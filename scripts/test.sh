#!/usr/bin/env bash
# Every test: guest unit tests (native), host unit tests, the integration
# tests on the real guest with real models, and the Android host's Java API
# on a real JVM. Installs what it needs first (scripts/setup.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo test --release --workspace
scripts/jvm-test.sh
