//! A hostile guest for the sandbox tests. It implements the real
//! `bittybot:core` world, but `render-prompt` attacks the host on request:
//! the first message's content names the attack and its arguments, and the
//! reply's text is a report, one line per attempt (`what: outcome`).
//!
//! WASI: `read-files`, `grow-memory`, `loop`, `panic`, `sleep MS`.
//! Imports: `import-links`, `huge-penalty`, `crafted-gguf`, `truncate-model
//! NAME`, `exfiltrate URL`, `samplers`, `snapshots NAME`, `big-context NAME`,
//! `big-download URL`, `state-flood`, `tokenize-specials BYTES NAME`,
//! `stalled-transfer URL`, `load NAME`, `waits URL`, `download-then-load NAME URL`,
//! `threads-and-stale-logits NAME`.
//!
//! Everything else answers `not-ready`: this guest is only for the tests.

wit_bindgen::generate!({ path: "../../../wit", world: "bittybot" });

use bittybot::core::{download, files, inference as inf, storage, types};
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
    report += &attempt("write /state/x", std::fs::write("/state/x", b"x").map(|_| String::new()));
    report += &attempt("hard link /models/m.gguf -> /state/m", std::fs::hard_link("/models/m.gguf", "/state/m").map(|_| String::new()));
    report += &format!("env vars: {}\n", std::env::vars().count());
    report += &attempt("tcp 1.1.1.1:80", std::net::TcpStream::connect("1.1.1.1:80").map(|_| String::new()));
    report
}

fn file(root: types::Root, name: &str) -> types::FileRef {
    types::FileRef { root, name: name.to_owned() }
}

fn managed(name: &str) -> types::ModelSource {
    types::ModelSource::Managed(name.to_owned())
}

fn settings(n_ctx: u32) -> inf::LoadSettings {
    inf::LoadSettings { n_ctx, n_batch: 64, n_seq_max: 1, threads: 1, threads_batch: 1, use_mmap: true, kv_type: inf::KvType::F16 }
}

/// Always the most likely token; the attacks vary one field at a time from it.
fn greedy() -> inf::SamplerConfig {
    inf::SamplerConfig {
        temperature: 0.0,
        top_k: 0,
        top_p: 1.0,
        min_p: 0.0,
        repeat_penalty: 1.0,
        repeat_last_n: 0,
        seed: 0,
        logit_bias: Vec::new(),
    }
}

fn line<T: std::fmt::Debug, E: std::fmt::Debug>(what: &str, r: Result<T, E>) -> String {
    match r {
        Ok(v) => format!("{what}: ok {v:?}\n"),
        Err(e) => format!("{what}: error {e:?}\n"),
    }
}

fn wait_transfer(t: &download::Transfer) -> Result<download::TransferState, download::DownloadError> {
    for _ in 0..200 {
        match t.wait(100)? {
            download::TransferState::Running(_) => continue,
            done => return Ok(done),
        }
    }
    t.wait(0)
}

/// Every import that touches a file, on the names `link` (a symbolic link
/// the test put in each folder, pointing outside the data directory).
fn import_links() -> String {
    let mut r = String::new();
    for root in [types::Root::Models, types::Root::State] {
        let tag = if root == types::Root::Models { "models" } else { "state" };
        r += &line(&format!("storage.stat {tag}/link"), storage::stat(&file(root, "link")));
        r += &line(&format!("storage.read {tag}/link"), storage::read(&file(root, "link")).map(|b| b.len()));
        r += &line(&format!("storage.write {tag}/link"), storage::write(&file(root, "link"), b"overwritten by the guest"));
        r += &line(&format!("storage.rename {tag}/link"), storage::rename(root, "link", "moved"));
    }
    r += &line("inference.inspect models/link", inf::inspect(&managed("link")));
    r += &line("inference.load models/link", inf::load(&managed("link"), settings(64)).map(|i| i.file_name));
    r += &line("files.residency models/link", files::residency(&managed("link")));
    let h = files::Hasher::new(&managed("link"));
    r += &line("files.hasher models/link", (0..100).find_map(|_| match h.wait(100) {
        Ok(files::HashState::Running(_)) => None,
        other => Some(other),
    }).unwrap_or(Ok(files::HashState::Done("timeout".into()))));
    let w = files::Warmup::new(&managed("link"), files::WarmOrder::File);
    r += &line("files.warmup models/link", w.wait(1000).map(|_| ()));
    let t = download::Transfer::new(&download::Request {
        url: "https://github.com/sneptech/bittybot/releases/download/x/m.gguf".into(),
        dest: file(types::Root::Models, "link"),
        expected_size: 10,
    });
    r += &line("download into models/link", wait_transfer(&t).map(|_| ()));
    // A model in memory, so the state calls reach the file.
    let _ = inf::load(&managed("demo.gguf"), settings(64));
    r += &line("inference.state-save state/link", inf::state_save(0, &file(types::Root::State, "link"), &[]));
    r += &line("inference.state-load state/link", inf::state_load(0, &file(types::Root::State, "link"), None));
    r
}

/// A GGUF file that is valid structure but has `head_count_kv` as an array
/// of strings (ggml's reader asserts on it), and a `block_count` of 0.
fn crafted_gguf() -> Vec<u8> {
    fn s(out: &mut Vec<u8>, v: &str) {
        out.extend((v.len() as u64).to_le_bytes());
        out.extend(v.as_bytes());
    }
    let mut out = Vec::new();
    out.extend(b"GGUF");
    out.extend(3u32.to_le_bytes());
    out.extend(0u64.to_le_bytes()); // tensors
    out.extend(4u64.to_le_bytes()); // keys
    s(&mut out, "general.architecture");
    out.extend(8u32.to_le_bytes());
    s(&mut out, "llama");
    s(&mut out, "llama.attention.head_count_kv");
    out.extend(9u32.to_le_bytes()); // array
    out.extend(8u32.to_le_bytes()); // of strings
    out.extend(2u64.to_le_bytes());
    s(&mut out, "four");
    s(&mut out, "eight");
    s(&mut out, "llama.block_count");
    out.extend(4u32.to_le_bytes());
    out.extend(0u32.to_le_bytes());
    s(&mut out, "tokenizer.ggml.tokens");
    out.extend(9u32.to_le_bytes());
    out.extend(8u32.to_le_bytes());
    out.extend(1u64.to_le_bytes());
    s(&mut out, "a");
    out
}

fn attack(cmd: &str) -> String {
    let mut args = cmd.split_whitespace();
    let name = args.next().unwrap_or_default();
    let arg = args.next().unwrap_or_default().to_owned();
    let arg2 = args.next().unwrap_or_default().to_owned();
    match name {
        "read-files" => read_files(),
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
        "sleep" => {
            let ms: u64 = arg.parse().unwrap_or(20_000);
            let t = std::time::Instant::now();
            std::thread::sleep(std::time::Duration::from_millis(ms));
            format!("slept {} ms\n", t.elapsed().as_millis())
        }
        "import-links" => import_links(),
        "load" => line("load", inf::load(&managed(&arg), settings(256)).map(|i| i.n_vocab)),
        "huge-penalty" => {
            let config = inf::SamplerConfig { repeat_penalty: 1.3, repeat_last_n: 268_435_456, ..greedy() };
            let big = line("penalty window 268435456", inf::Sampler::open(&config).map(|_| ()));
            let top_k = line("top-k 10^9", inf::Sampler::open(&inf::SamplerConfig { repeat_last_n: 0, top_k: 1_000_000_000, ..config.clone() }).map(|_| ()));
            let bias = line("bias on token -5", inf::Sampler::open(&inf::SamplerConfig { repeat_last_n: 0, logit_bias: vec![(-5, 1.0)], ..config.clone() }).map(|_| ()));
            let bytes = line("token-bytes 2^31-1", Ok::<_, ()>(inf::token_bytes(i32::MAX, true).len()));
            let seq = line("decode into sequence 999", inf::decode(999, &[1]));
            let tok = line("decode token 10^9", inf::decode(0, &[1_000_000_000]));
            let rm = line("kv-remove 4e9", Ok::<_, ()>(inf::kv_remove(0, u32::MAX, Some(u32::MAX))));
            big + &top_k + &bias + &bytes + &seq + &tok + &rm
        }
        "threads-and-stale-logits" => {
            let mut many = settings(256);
            many.threads = 64;
            let mut r = line("load with 64 threads", inf::load(&managed(&arg), many).map(|i| i.n_vocab));
            r += &line("load", inf::load(&managed(&arg), settings(256)).map(|i| i.n_vocab));
            let sampler = inf::Sampler::open(&greedy());
            let Ok(sampler) = sampler else { return r + "sampler: refused\n" };
            let tokens = inf::tokenize("Hello there", false).unwrap_or_default();
            r += &line("decode", inf::decode(0, &tokens));
            r += &line("sample after decode", sampler.sample());
            r += &line("decode again", inf::decode(0, &tokens[..1]));
            inf::kv_remove(0, 0, None);
            r += &line("sample after kv-remove", sampler.sample());
            r += &line("decode once more", inf::decode(0, &tokens));
            inf::kv_clear(0);
            r += &line("sample after kv-clear", sampler.sample());
            r
        }
        "crafted-gguf" => {
            let w = line("write models/evil.gguf", storage::write(&file(types::Root::Models, "evil.gguf"), &crafted_gguf()));
            w + &line("inspect evil.gguf", inf::inspect(&managed("evil.gguf")).map(|s| s.n_layer))
                + &line("load evil.gguf", inf::load(&managed("evil.gguf"), settings(64)).map(|i| i.n_vocab))
        }
        "truncate-model" => {
            let mut r = line("load", inf::load(&managed(&arg), settings(256)).map(|i| i.n_vocab));
            r += &line("storage.write over the model", storage::write(&file(types::Root::Models, &arg), b""));
            r += &line("storage.write twin", storage::write(&file(types::Root::Models, "twin.gguf"), b"x"));
            r += &line("storage.rename onto the model", storage::rename(types::Root::Models, "twin.gguf", &arg));
            let t = download::Transfer::new(&download::Request {
                url: arg2.clone(),
                dest: file(types::Root::Models, &arg),
                expected_size: 5,
            });
            r += &line("download onto the model", wait_transfer(&t).map(|_| ()));
            let tokens = inf::tokenize("Hello there", false).unwrap_or_default();
            r += &line("decode after", inf::decode(0, &tokens));
            r
        }
        "exfiltrate" => {
            let t = download::Transfer::new(&download::Request {
                url: format!("{arg}?d=68656c6c6f"),
                dest: file(types::Root::Models, "leak.part"),
                expected_size: 100,
            });
            line("transfer", wait_transfer(&t).map(|_| ()))
        }
        "samplers" => {
            let config = inf::SamplerConfig {
                temperature: 0.5,
                top_k: 40,
                top_p: 0.9,
                min_p: 0.0,
                repeat_penalty: 1.1,
                repeat_last_n: 256,
                seed: 1,
                logit_bias: (0..2000).map(|t| (t, 0.5)).collect(),
            };
            let mut held = Vec::new();
            let last = loop {
                match inf::Sampler::open(&config) {
                    Ok(s) => held.push(s),
                    Err(e) => break e,
                }
                if held.len() > 10_000 {
                    break inf::InferenceError::InvalidArgument("no limit".into());
                }
            };
            format!("samplers opened: {}; then {last:?}\n", held.len())
        }
        "snapshots" => {
            let mut r = line("load", inf::load(&managed(&arg), settings(256)).map(|i| i.n_vocab));
            let tokens = inf::tokenize(&"lorem ipsum ".repeat(15), false).unwrap_or_default();
            r += &line("decode", inf::decode(0, &tokens));
            let mut held = Vec::new();
            let last = loop {
                match inf::KvSnapshot::take(0) {
                    Ok(s) => held.push(s),
                    Err(e) => break e,
                }
                if held.len() > 10_000 {
                    break inf::InferenceError::InvalidArgument("no limit".into());
                }
            };
            r + &format!("snapshots taken: {}; then {last:?}\n", held.len())
        }
        "big-context" => {
            let s = inf::LoadSettings { n_ctx: 65_536, n_seq_max: 1, ..settings(64) };
            line("load with n-ctx 65536", inf::load(&managed(&arg), s).map(|i| i.settings.n_ctx))
        }
        "big-download" => {
            let t = download::Transfer::new(&download::Request {
                url: arg,
                dest: file(types::Root::Models, "huge.part"),
                expected_size: 10_000_000_000,
            });
            line("transfer of 10 GB", wait_transfer(&t).map(|_| ()))
        }
        "state-flood" => {
            let chunk = vec![7u8; 1 << 20];
            let mut written = 0u64;
            let last = loop {
                match storage::write(&file(types::Root::State, &format!("flood-{written}")), &chunk) {
                    Ok(()) => written += 1,
                    Err(e) => break e,
                }
                if written > 10_000 {
                    break types::FileError::Io("no limit".into());
                }
            };
            format!("MiB written: {written}; then {last:?}\n")
        }
        "tokenize-specials" => {
            let mut r = line("load", inf::load(&managed(&arg2), settings(256)).map(|i| i.n_vocab));
            let bytes: usize = arg.parse().unwrap_or(1 << 20);
            let special = "<|im_start|>";
            let text = special.repeat(bytes / special.len());
            let t = std::time::Instant::now();
            let n = inf::tokenize(&text, true).map(|t| t.len());
            r += &format!("tokenize {} bytes: {:?} in {} ms\n", text.len(), n, t.elapsed().as_millis());
            r
        }
        "download-then-load" => {
            // A transfer that will truncate NAME (the file is longer than the
            // size it claims) and, while it runs, a load that would map it:
            // a truncation under a mapping is SIGBUS on the next decode.
            let _ = inf::unload();
            let t = download::Transfer::new(&download::Request {
                url: arg2.clone(),
                dest: file(types::Root::Models, &arg),
                expected_size: 1,
            });
            let mut r = line("load while the download runs", inf::load(&managed(&arg), settings(256)).map(|i| i.n_vocab));
            let tokens = inf::tokenize("Hello there", false).unwrap_or_default();
            r += &line("decode after", inf::decode(0, &tokens));
            t.cancel();
            r += &line("the transfer", wait_transfer(&t).map(|_| ()));
            r
        }
        "stalled-transfer" => {
            let t = download::Transfer::new(&download::Request {
                url: arg,
                dest: file(types::Root::Models, "stalled.part"),
                expected_size: 1_000_000,
            });
            let _ = t.wait(300);
            t.cancel();
            let started = std::time::Instant::now();
            drop(t);
            format!("cancel and drop took {} ms\n", started.elapsed().as_millis())
        }
        "waits" => {
            // A guest waiting for ever, 10 s at a time, on a transfer from
            // a server that never answers.
            let t = download::Transfer::new(&download::Request {
                url: arg,
                dest: file(types::Root::Models, "never.gguf"),
                expected_size: 100,
            });
            let started = std::time::Instant::now();
            for _ in 0..1000 {
                let _ = t.wait(10_000);
            }
            format!("waited {} ms\n", started.elapsed().as_millis())
        }
        other => format!("unknown attack {other:?}\n"),
    }
}

impl api::Guest for Hostile {
    type Session = Nothing;
    type Generation = Nothing;
    type ModelSetup = Nothing;

    fn load_model(_: api::LoadOptions) -> Result<api::LoadReport, api::AppError> {
        Err(api::AppError::NotReady)
    }

    fn render_prompt(messages: Vec<api::Message>, _: bool) -> Result<api::RenderedPrompt, api::AppError> {
        let cmd = messages.first().map(|m| m.content.as_str()).unwrap_or_default();
        Ok(api::RenderedPrompt { text: attack(cmd), tokens: Vec::new() })
    }

    fn resolve_spec(_: Option<String>) -> Result<api::ModelSpec, api::SetupError> {
        Err(api::SetupError::NotDownloaded)
    }

    fn verify_digest(_: Option<String>, _: u64, _: String) -> Result<api::ModelSpec, api::SetupError> {
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
