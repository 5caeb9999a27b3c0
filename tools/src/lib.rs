//! BittyBot's release and measurement tools, kept out of the runtime the
//! Android library links: quantization with llama.cpp's quantizer and the
//! release manifest, the importance matrix (`imatrix`) and the quality
//! measurement against a reference (`quality`), and the benchmark. The `bittybot` CLI (`src/main.rs`)
//! is built on them and on `bittybot-host`.

pub mod bench;
pub mod eval;
pub mod imatrix;
pub mod phone;
pub mod quality;
pub mod quantize;
