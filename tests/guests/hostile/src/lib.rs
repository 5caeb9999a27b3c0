//! A hostile guest for the sandbox tests. It implements the real
//! `bittybot:core` world, but `render-prompt` misbehaves on request: the
//! first message's content names the attack.
//!
//! - `read-files`: try /etc/passwd, a path outside the preopens, `..` from a
//!   preopen, and the environment; report what it managed to read.
//! - `grow-memory`: allocate without bound.
//! - `loop`: spin forever.
//! - `panic`: panic.
//!
//! Everything else answers `not-ready`: this guest is only for the tests.

wit_bindgen::generate!({ path: "../../../wit", world: "bittybot" });

use exports::bittybot::core::app as api;

struct Hostile;

fn attempt(what: &str, r: std::io::Result<String>) -> String {
    match r {
        Ok(text) => format!("{what}: READ {} bytes\n", text.len()),
        Err(e) => format!("{what}: refused ({e})\n"),
    }
}

fn read_files() -> String {
    let mut report = String::new();
    report += &attempt("/etc/passwd", std::fs::read_to_string("/etc/passwd"));
    report += &attempt("/proc/self/environ", std::fs::read_to_string("/proc/self/environ"));
    report += &attempt("/models/../../etc/passwd", std::fs::read_to_string("/models/../../etc/passwd"));
    report += &attempt("/state/../cache", std::fs::read_dir("/state/..").map(|d| format!("{} entries", d.count())));
    report += &attempt("write /tmp/pwned", std::fs::write("/tmp/pwned-by-guest", b"x").map(|_| String::new()));
    report += &format!("env vars: {}\n", std::env::vars().count());
    report += &attempt("tcp 1.1.1.1:80", std::net::TcpStream::connect("1.1.1.1:80").map(|_| String::new()));
    report
}

impl api::Guest for Hostile {
    type Session = Nothing;
    type Generation = Nothing;
    type ModelSetup = Nothing;

    fn load_model(_: api::LoadOptions) -> Result<api::LoadReport, api::AppError> {
        Err(api::AppError::NotReady)
    }

    fn render_prompt(messages: Vec<api::Message>, _: bool) -> Result<api::RenderedPrompt, api::AppError> {
        let attack = messages.first().map(|m| m.content.as_str()).unwrap_or_default();
        match attack {
            "read-files" => Ok(api::RenderedPrompt { text: read_files(), tokens: Vec::new() }),
            "grow-memory" => {
                let mut hoard: Vec<Vec<u8>> = Vec::new();
                loop {
                    hoard.push(vec![1u8; 1 << 20]);
                    std::hint::black_box(&hoard);
                }
            }
            "loop" => {
                let mut n: u64 = 0;
                loop {
                    n = std::hint::black_box(n.wrapping_add(1));
                }
            }
            "panic" => panic!("the hostile guest panics on purpose"),
            other => Err(api::AppError::InvalidArgument(format!("unknown attack {other:?}"))),
        }
    }

    fn resolve_spec(_: Option<String>) -> Result<api::ModelSpec, api::SetupError> {
        Err(api::SetupError::NotDownloaded)
    }

    fn save_tuned_threads(_: u32, _: u32) -> Result<(), api::AppError> {
        Err(api::AppError::NotReady)
    }
}

/// Resources this guest never really provides.
pub struct Nothing;

impl api::GuestSession for Nothing {
    fn open(_: api::SessionKind) -> Result<api::Session, api::AppError> {
        Err(api::AppError::NotReady)
    }
    fn configure(&self, _: api::SessionOptions) -> Result<(), api::AppError> {
        Err(api::AppError::NotReady)
    }
    fn set_languages(&self, _: Option<String>, _: String) -> Result<(), api::AppError> {
        Err(api::AppError::NotReady)
    }
    fn send(&self, _: String) -> Result<api::Generation, api::AppError> {
        Err(api::AppError::NotReady)
    }
    fn reset(&self) {}
    fn history(&self) -> Vec<api::Message> {
        Vec::new()
    }
    fn kv_tokens(&self) -> u32 {
        0
    }
    fn kv_token_ids(&self) -> Vec<i32> {
        Vec::new()
    }
    fn prepare(&self) -> bool {
        false
    }
}

impl api::GuestGeneration for Nothing {
    fn next(&self) -> Result<Option<String>, api::AppError> {
        Ok(None)
    }
    fn stats(&self) -> Option<api::GenerationStats> {
        None
    }
}

impl api::GuestModelSetup for Nothing {
    fn new(_: Option<String>, _: bool, _: bool) -> Self {
        Nothing
    }
    fn step(&self) -> api::SetupState {
        api::SetupState::Failed(api::SetupError::NotDownloaded)
    }
}

export!(Hostile);
