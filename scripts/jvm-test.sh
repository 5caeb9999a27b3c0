#!/usr/bin/env bash
# The Android host's Java API on a desktop JVM: builds the JNI library with
# its test entry point (the `jvm-test` feature; the same feature set as
# scripts/test.sh's build, so nothing is compiled twice), compiles the Java API
# (android-host/java) and the test (android-host/java-test) with javac into
# target/jvm, and runs the test on the real library, the built-in guest and
# the demo model. Needs a JDK (javac, java): Debian's default-jdk-headless
# is installed when missing. Prints each check and "N passed, M failed".
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL="$PWD/.cache/models/SmolLM2-135M-Instruct.Q4_1.gguf"
[ -f "$MODEL" ] || scripts/setup.sh

if ! command -v javac >/dev/null 2>&1; then
  echo "jvm-test: installing a JDK (default-jdk-headless)" >&2
  as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
  as_root apt-get update -qq
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq default-jdk-headless >/dev/null
fi

cargo build --release --workspace --all-targets --features bittybot-android/jvm-test

OUT=target/jvm
rm -rf "$OUT"
mkdir -p "$OUT"
javac -Xlint:all -Werror -d "$OUT" android-host/java/ai/bittybot/*.java android-host/java-test/ai/bittybot/*.java
# wasmtime installs SIGSEGV/SIGILL/SIGFPE handlers (for wasm traps) that chain
# to the JVM's. HotSpot wants such libraries run with its signal-chaining
# library preloaded (-Xcheck:jni warns "handler modified" otherwise); on
# Android, ART's libsigchain does the same for every app.
JAVA_HOME=${JAVA_HOME:-$(dirname "$(dirname "$(readlink -f "$(command -v java)")")")}
JSIG="$JAVA_HOME/lib/libjsig.so"
[ -f "$JSIG" ] || JSIG=
LD_PRELOAD="$JSIG${LD_PRELOAD:+:$LD_PRELOAD}" \
  java -Xcheck:jni -Djava.library.path=target/release -cp "$OUT" ai.bittybot.BittyBotTest "$MODEL"
