//! Builds the guest component for `wasm32-wasip2` (so the host always embeds
//! the current guest), compiles the exception-catching C++ shim around
//! llama.cpp's C API (`src/llama/shim.cpp`, against llama-cpp-sys-2's
//! headers), and records the llama.cpp version from Cargo.lock.
//! (The guest build: `build_support.rs`, shared with `tests/build.rs`.)

#[path = "build_support.rs"]
mod build_support;

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

fn main() {
    let manifest =
        PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let root = manifest.parent().expect("host/ is inside the workspace").to_path_buf();
    build_support::rerun_if_changed(
        &root,
        &["guest/src", "guest/templates", "guest/Cargo.toml", "wit", "Cargo.lock"],
    );

    shim();
    let wasm = build_support::build_guest(&root, &[]);
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let embedded = out.join("bittybot_guest.wasm");
    std::fs::copy(&wasm, &embedded).expect("copy the guest into OUT_DIR");
    let bytes = std::fs::read(&embedded).expect("read the guest");
    let sum: String = Sha256::digest(&bytes).iter().map(|b| format!("{b:02x}")).collect();
    println!("cargo:rustc-env=BITTYBOT_GUEST_WASM={}", embedded.display());
    println!("cargo:rustc-env=BITTYBOT_GUEST_SHA256={sum}");
    println!("cargo:rustc-env=BITTYBOT_LLAMA_CPP_VERSION={}", llama_version(&root));
    println!("cargo:rustc-env=BITTYBOT_WIT_VERSION={}", wit_version(&root));
}

/// The C++ shim, against the headers llama-cpp-sys-2 installed (`DEP_LLAMA_ROOT/include`).
fn shim() {
    println!("cargo:rerun-if-changed=src/llama/shim.cpp");
    let root = std::env::var_os("DEP_LLAMA_ROOT")
        .expect("llama-cpp-sys-2 exports its build root (links = \"llama\")");
    cc::Build::new()
        .cpp(true)
        .std("c++17")
        .file("src/llama/shim.cpp")
        .include(PathBuf::from(root).join("include"))
        .warnings(true)
        .compile("bittybot_llama_shim");
}

/// The version of `package bittybot:core@X;` in wit/world.wit.
fn wit_version(root: &Path) -> String {
    let world = std::fs::read_to_string(root.join("wit/world.wit")).expect("read wit/world.wit");
    world
        .lines()
        .find_map(|l| l.trim().strip_prefix("package bittybot:core@")?.strip_suffix(';').map(str::to_owned))
        .expect("wit/world.wit declares `package bittybot:core@X.Y.Z;`")
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
