#!/usr/bin/env bash
# The main job on the demo model: a short chat with SmolLM2-135M-Instruct,
# streamed through the guest. Installs what it needs first (scripts/setup.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo build --release -p bittybot-tools
./target/release/bittybot chat -m .cache/models/SmolLM2-135M-Instruct.Q4_1.gguf \
  -p "${1:-Hello! In two sentences, what can you help me with?}"
