//! Builds the guest component for `wasm32-wasip2` (so the host always embeds
//! the current guest) and records the llama.cpp version from Cargo.lock.
//!
//! The nested cargo uses its own target directory (`target/guest`) so it
//! never waits on the outer build's lock, and a scrubbed environment so the
//! outer build's flags (e.g. `-C target-cpu=native`) do not leak into wasm.

use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256};

fn main() {
    let manifest =
        PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let root = manifest.parent().expect("host/ is inside the workspace").to_path_buf();
    for p in ["guest/src", "guest/templates", "guest/Cargo.toml", "wit", "Cargo.lock"] {
        println!("cargo:rerun-if-changed={}", root.join(p).display());
    }

    let wasm = build_guest(&root, &[]);
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let embedded = out.join("bittybot_guest.wasm");
    std::fs::copy(&wasm, &embedded).expect("copy the guest into OUT_DIR");
    let bytes = std::fs::read(&embedded).expect("read the guest");
    let sum: String = Sha256::digest(&bytes).iter().map(|b| format!("{b:02x}")).collect();
    println!("cargo:rustc-env=BITTYBOT_GUEST_WASM={}", embedded.display());
    println!("cargo:rustc-env=BITTYBOT_GUEST_SHA256={sum}");
    println!("cargo:rustc-env=BITTYBOT_LLAMA_CPP_VERSION={}", llama_version(&root));
}

/// Build the guest with extra cargo arguments (e.g. features); returns the `.wasm`.
fn build_guest(root: &Path, extra: &[&str]) -> PathBuf {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let target_dir = root.join("target").join("guest");
    let mut cmd = Command::new(cargo);
    cmd.current_dir(root)
        .args(["rustc", "-p", "bittybot-guest", "--target", "wasm32-wasip2", "--profile", "guest"])
        .args(["--crate-type", "cdylib"])
        .args(extra)
        .env("CARGO_TARGET_DIR", &target_dir);
    for (key, _) in std::env::vars_os() {
        let Some(key) = key.to_str() else { continue };
        let scrub = key.starts_with("CARGO_FEATURE_")
            || key.starts_with("CARGO_CFG_")
            || key.starts_with("CARGO_PKG_")
            || key.starts_with("CARGO_MANIFEST_")
            || key.starts_with("CARGO_TARGET_")
            || key.starts_with("CARGO_BUILD_")
            || key.starts_with("DEP_")
            || matches!(
                key,
                "RUSTFLAGS"
                    | "CARGO_ENCODED_RUSTFLAGS"
                    | "TARGET"
                    | "HOST"
                    | "OUT_DIR"
                    | "OPT_LEVEL"
                    | "PROFILE"
                    | "DEBUG"
                    | "NUM_JOBS"
                    | "RUSTC_WRAPPER"
                    | "RUSTC_WORKSPACE_WRAPPER"
                    | "CARGO_PRIMARY_PACKAGE"
                    | "CARGO_CRATE_NAME"
            );
        if scrub && key != "CARGO_TARGET_DIR" {
            cmd.env_remove(key);
        }
    }
    let status = cmd.status().expect("run cargo to build the guest");
    if !status.success() {
        panic!(
            "building the guest component failed ({status}); is the target installed? \
             `rustup target add wasm32-wasip2` (scripts/setup.sh does it)"
        );
    }
    target_dir.join("wasm32-wasip2/guest/bittybot_guest.wasm")
}

fn llama_version(root: &Path) -> String {
    let lock = std::fs::read_to_string(root.join("Cargo.lock")).unwrap_or_default();
    let mut lines = lock.lines();
    while let Some(line) = lines.next() {
        if line.trim() == "name = \"llama-cpp-sys-2\"" {
            if let Some(v) = lines.next().and_then(|l| l.trim().strip_prefix("version = ")) {
                return format!("llama-cpp-sys-2 {}", v.trim_matches('"'));
            }
        }
    }
    "llama-cpp-sys-2 (unknown)".into()
}
