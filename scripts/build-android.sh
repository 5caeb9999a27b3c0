#!/usr/bin/env bash
# Builds the Android JNI library libbittybot_android.so for arm64-v8a with
# cargo-ndk: API level 23+, ggml's CPU kernels for the phone's cores
# (GGML_CPU_ARM_ARCH=armv8.2-a+dotprod+fp16: Exynos 1280 = Cortex-A78 + A55),
# llama.cpp linked against the NDK's static libc++ (nothing else to ship).
#
#   ANDROID_NDK_HOME=/path/to/ndk scripts/build-android.sh [OUT_DIR]
#
# OUT_DIR defaults to target/android/jniLibs; the library lands in
# OUT_DIR/arm64-v8a/ (point the app's jniLibs there, or copy it). The Java
# API it implements is in android-host/java/ai/bittybot/ (add it to the app's
# sources). Environment: ANDROID_NDK_HOME (or ANDROID_NDK / ANDROID_NDK_ROOT),
# ANDROID_API (default 23), GGML_CPU_ARM_ARCH (default the phone's).
#
# NOT RUNNABLE on the development machines of this project: no NDK can be
# installed there (it is not on the package registries they reach). The ARM
# code path is exercised there with scripts/aarch64-smoke.sh instead.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-target/android/jniLibs}
API=${ANDROID_API:-23}
export GGML_CPU_ARM_ARCH=${GGML_CPU_ARM_ARCH:-armv8.2-a+dotprod+fp16}

die() { printf 'build-android: %s\n' "$*" >&2; exit 1; }

NDK=${ANDROID_NDK_HOME:-${ANDROID_NDK:-${ANDROID_NDK_ROOT:-}}}
if [ -z "$NDK" ] || [ ! -f "$NDK/build/cmake/android.toolchain.cmake" ]; then
  die "no Android NDK found. Install one (Android Studio's SDK Manager, or
  https://developer.android.com/ndk/downloads; r26 or newer) and set ANDROID_NDK_HOME
  to its root (the folder with build/cmake/android.toolchain.cmake).
  Current value: '${NDK:-unset}'."
fi
[ "$API" -ge 23 ] 2>/dev/null || die "ANDROID_API must be 23 or newer (got '$API')"

# Every consumer of the NDK location: cargo-ndk reads ANDROID_NDK_HOME,
# llama-cpp-sys-2's build.rs reads ANDROID_NDK and ANDROID_API_LEVEL (its
# own default API level is 28, so set it explicitly).
export ANDROID_NDK_HOME=$NDK ANDROID_NDK=$NDK ANDROID_API_LEVEL=$API

command -v cargo-ndk >/dev/null 2>&1 || cargo install --locked cargo-ndk
rustup target list --installed | grep -qx aarch64-linux-android || rustup target add aarch64-linux-android

# Release without debug info, stripped: the desktop release profile keeps
# line tables (about 190 MB of .so); an APK wants the bare code.
export CARGO_PROFILE_RELEASE_DEBUG=false CARGO_PROFILE_RELEASE_STRIP=symbols
# 16 KB page alignment, required for apps targeting Android 15+ on 16 KB devices.
export CARGO_TARGET_AARCH64_LINUX_ANDROID_RUSTFLAGS="${CARGO_TARGET_AARCH64_LINUX_ANDROID_RUSTFLAGS:-} -C link-arg=-Wl,-z,max-page-size=16384"

# `android-static-stdcxx` (a feature of bittybot-android) turns on
# bittybot-host's feature of that name, i.e. llama-cpp-sys-2's `static-stdcxx`:
# ANDROID_STL=c++_static and linking c++_static + c++abi (the host's own C++
# shim around llama.cpp's C API links against the same). No test hooks, no
# `jvm-test` entry point: this is the shipping build.
cargo ndk --target arm64-v8a --platform "$API" --output-dir "$OUT" \
  build --release -p bittybot-android --features bittybot-android/android-static-stdcxx

so="$OUT/arm64-v8a/libbittybot_android.so"
[ -f "$so" ] || die "cargo-ndk finished but $so is missing"
printf 'build-android: %s (%s bytes), GGML_CPU_ARM_ARCH=%s, API %s\n' "$so" "$(stat -c %s "$so")" \
  "$GGML_CPU_ARM_ARCH" "$API" >&2
