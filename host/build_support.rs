//! Shared by the build scripts of `host/` and `tests/`: building guest
//! components for `wasm32-wasip2` with a nested cargo.
//!
//! The nested cargo uses its own target directory so it never waits on the
//! outer build's lock, and a scrubbed environment so the outer build's flags
//! (e.g. `-C target-cpu=native`) do not leak into wasm.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Ask cargo to rerun the build script when any file under these paths
/// changes (each file named, not just the folders).
pub fn rerun_if_changed(root: &Path, paths: &[&str]) {
    fn walk(p: &Path) {
        println!("cargo:rerun-if-changed={}", p.display());
        if let Ok(entries) = std::fs::read_dir(p) {
            for e in entries.flatten() {
                walk(&e.path());
            }
        }
    }
    for p in paths {
        walk(&root.join(p));
    }
}

/// Build the guest with extra cargo arguments (e.g. features); returns the `.wasm`.
pub fn build_guest(root: &Path, extra: &[&str]) -> PathBuf {
    let target_dir = root.join("target").join(if extra.is_empty() {
        "guest".to_owned()
    } else {
        format!("guest-{}", extra.join("-").replace(['-', ' '], ""))
    });
    let mut cmd = cargo(&target_dir);
    cmd.current_dir(root)
        .args(["rustc", "-p", "bittybot-guest", "--target", "wasm32-wasip2", "--profile", "guest"])
        .args(["--crate-type", "cdylib"])
        .args(extra);
    run(cmd, "the guest component");
    target_dir.join("wasm32-wasip2/guest/bittybot_guest.wasm")
}

/// A cargo command with its own target dir and an environment scrubbed of
/// the outer build's settings (flags, target, features).
pub fn cargo(target_dir: &Path) -> Command {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.env("CARGO_TARGET_DIR", target_dir);
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
    cmd
}

/// Run a nested cargo build; a failure stops the outer build with a hint.
pub fn run(mut cmd: Command, what: &str) {
    let status = cmd.status().expect("run cargo");
    if !status.success() {
        panic!(
            "building {what} failed ({status}); is the target installed? \
             `rustup target add wasm32-wasip2` (scripts/setup.sh does it)"
        );
    }
}
