//! `bittybot`: the command line over the BittyBot runtime.
//!
//! Build and run: `cargo run --release -p bittybot-host -- chat -m MODEL.gguf -p "Hello"`
//! (`scripts/demo.sh` fetches the demo model and does exactly that).

mod cli;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let args = cli::Cli::parse();
    match cli::run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bittybot: {e:#}");
            ExitCode::FAILURE
        }
    }
}
