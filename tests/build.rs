//! Builds the test-only guests, so the tests always run current code:
//! the real guest with the `shout` feature (a second, visibly different
//! behaviour for the swap tests) and the hostile guest (`tests/guests/hostile`).
//! The normal guest is built by `host/build.rs` and embedded in the host.

#[path = "../host/build_support.rs"]
mod build_support;

use std::path::PathBuf;

fn main() {
    let manifest =
        PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let root = manifest.parent().expect("tests/ is inside the workspace").to_path_buf();
    build_support::rerun_if_changed(
        &root,
        &[
            "guest/src",
            "guest/templates",
            "guest/Cargo.toml",
            "wit",
            "tests/guests/hostile/src",
            "tests/guests/hostile/Cargo.toml",
        ],
    );

    let shout = build_support::build_guest(&root, &["--features", "shout"]);
    println!("cargo:rustc-env=BITTYBOT_SHOUT_GUEST={}", shout.display());

    let target_dir = root.join("target").join("guest-hostile");
    let mut cmd = build_support::cargo(&target_dir);
    cmd.current_dir(&root).args([
        "build",
        "--manifest-path",
        "tests/guests/hostile/Cargo.toml",
        "--target",
        "wasm32-wasip2",
        "--release",
    ]);
    build_support::run(cmd, "the hostile test guest");
    let hostile = target_dir.join("wasm32-wasip2/release/bittybot_hostile_guest.wasm");
    println!("cargo:rustc-env=BITTYBOT_HOSTILE_GUEST={}", hostile.display());
}
