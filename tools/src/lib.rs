//! BittyBot's release and measurement tools, kept out of the runtime the
//! Android library links: quantization with llama.cpp's quantizer and the
//! release manifest, and the benchmark. The `bittybot` CLI (`src/main.rs`)
//! is built on them and on `bittybot-host`.

pub mod bench;
pub mod quantize;
