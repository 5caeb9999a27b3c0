//! The host's imports against a hostile guest (`tests/guests/hostile`): no
//! escape from the data directory, no crash, no request to a place the app
//! did not allow, resources bounded by named limits, time bounded per call,
//! and error texts that name the guest's files, not the host's paths. After
//! each attack the host is still alive: a second, good call succeeds.

use std::path::Path;
use std::time::{Duration, Instant};

use bittybot_host::hashing::hash_file;
use bittybot_host::{GuestSource, NetworkPolicy, Runtime, RuntimeOptions};
use bittybot_tests::http::FileServer;
use bittybot_tests::{demo_model, options, temp_dir};

fn hostile() -> GuestSource {
    GuestSource::from_file(env!("BITTYBOT_HOSTILE_GUEST").as_ref()).unwrap()
}

/// A data directory holding a copy of the demo model as `models/demo.gguf`.
fn data_dir() -> tempfile::TempDir {
    let dir = temp_dir();
    std::fs::create_dir_all(dir.path().join("models")).unwrap();
    std::fs::copy(demo_model(), dir.path().join("models/demo.gguf")).unwrap();
    dir
}

fn runtime(dir: &Path, change: impl FnOnce(&mut RuntimeOptions)) -> Runtime {
    let mut o = options(dir, Some(demo_model()));
    o.guest = hostile();
    change(&mut o);
    Runtime::start(o).unwrap()
}

fn attack(rt: &mut Runtime, cmd: &str) -> String {
    let report = rt
        .render_prompt(&[bittybot_host::Message { role: "user".into(), content: cmd.into() }], false)
        .unwrap_or_else(|e| panic!("{cmd}: {e}"))
        .text;
    eprintln!("--- {cmd}\n{report}");
    report
}

/// The line of a report about `what`.
fn outcome<'a>(report: &'a str, what: &str) -> &'a str {
    report
        .lines()
        .find(|l| l.starts_with(&format!("{what}:")))
        .unwrap_or_else(|| panic!("no `{what}` in:\n{report}"))
}

/// The host still serves a good call: the guest loads the model through it.
fn alive(rt: &mut Runtime) {
    let r = attack(rt, "load demo.gguf");
    assert!(r.starts_with("load: ok 49152"), "{r}");
}

fn no_host_paths(report: &str, dirs: &[&Path]) {
    for d in dirs {
        let d = d.display().to_string();
        assert!(!report.contains(&d), "a host path ({d}) reached the guest:\n{report}");
    }
}

#[test]
fn links_into_the_folders_are_never_followed_and_the_guest_cannot_make_one() {
    let dir = data_dir();
    let outside = temp_dir();
    let secret = outside.path().join("model.gguf");
    std::fs::copy(demo_model(), &secret).unwrap();
    let secret_state = outside.path().join("state-file");
    std::fs::write(&secret_state, b"do not touch").unwrap();
    let before =
        (hash_file(&secret, |_, _| true).unwrap(), std::fs::metadata(&secret).unwrap().modified().unwrap());
    std::fs::create_dir_all(dir.path().join("state")).unwrap();
    std::os::unix::fs::symlink(&secret, dir.path().join("models/link")).unwrap();
    std::os::unix::fs::symlink(&secret_state, dir.path().join("state/link")).unwrap();
    let mut rt = runtime(dir.path(), |_| {});

    let report = attack(&mut rt, "read-files");
    assert!(!report.contains("READ"), "the guest read something through WASI:\n{report}");
    assert!(outcome(&report, "hard link /models/m.gguf -> /state/m").contains("refused"));
    assert!(report.contains("env vars: 0"), "{report}");

    let report = attack(&mut rt, "import-links");
    for l in report.lines() {
        assert!(l.contains(": error ") && l.contains("is a symbolic link"), "an import followed a link: {l}");
    }
    assert_eq!(report.lines().count(), 16, "{report}");
    no_host_paths(&report, &[dir.path(), outside.path()]);
    let after =
        (hash_file(&secret, |_, _| true).unwrap(), std::fs::metadata(&secret).unwrap().modified().unwrap());
    assert_eq!(before, after, "the file outside was changed");
    assert_eq!(std::fs::read(&secret_state).unwrap(), b"do not touch");
    let mut names: Vec<_> =
        std::fs::read_dir(outside.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    names.sort();
    assert_eq!(names, ["model.gguf", "state-file"], "nothing new outside");
    alive(&mut rt);
}

#[test]
fn hostile_numbers_and_a_crafted_gguf_get_errors_not_a_crash() {
    let dir = data_dir();
    let mut rt = runtime(dir.path(), |_| {});
    alive(&mut rt);
    let report = attack(&mut rt, "huge-penalty");
    for what in [
        "penalty window 268435456",
        "top-k 10^9",
        "bias on token -5",
        "decode into sequence 999",
        "decode token 10^9",
    ] {
        assert!(
            outcome(&report, what).contains(": error InferenceError::InvalidArgument"),
            "{what}:\n{report}"
        );
    }
    assert!(outcome(&report, "token-bytes 2^31-1").ends_with("ok 0"));
    assert!(outcome(&report, "kv-remove 4e9").ends_with("ok false"));
    alive(&mut rt);

    let report = attack(&mut rt, "crafted-gguf");
    assert!(outcome(&report, "write models/evil.gguf").contains("ok"));
    for what in ["inspect evil.gguf", "load evil.gguf"] {
        let l = outcome(&report, what);
        assert!(l.contains("error InferenceError::LoadFailed") && l.contains("models/evil.gguf"), "{l}");
    }
    no_host_paths(&report, &[dir.path()]);
    alive(&mut rt);
}

#[test]
fn the_loaded_model_file_is_never_truncated_or_replaced() {
    let dir = data_dir();
    let server = FileServer::start(b"short".to_vec());
    let mut rt = runtime(dir.path(), |_| {});
    let model = dir.path().join("models/demo.gguf");
    let before = hash_file(&model, |_, _| true).unwrap();
    let report = attack(&mut rt, &format!("truncate-model demo.gguf {}", server.url()));
    for what in ["storage.write over the model", "storage.rename onto the model", "download onto the model"] {
        let l = outcome(&report, what);
        assert!(l.contains("error") && l.contains("in use by the loaded model"), "{l}");
    }
    assert!(outcome(&report, "decode after").contains("ok"), "{report}");
    assert_eq!(hash_file(&model, |_, _| true).unwrap(), before, "the mapped model changed");
    assert!(server.requests().is_empty(), "the download was refused before any request");
    alive(&mut rt);
}

#[test]
fn more_threads_than_cpus_and_logits_of_removed_tokens_are_refused() {
    let dir = data_dir();
    let mut rt = runtime(dir.path(), |_| {});
    let report = attack(&mut rt, "threads-and-stale-logits demo.gguf");
    let l = outcome(&report, "load with 64 threads");
    assert!(l.contains("error InferenceError::LoadFailed") && l.contains("this device's CPUs"), "{l}");
    assert!(outcome(&report, "load").contains("ok 49152"), "{report}");
    assert!(outcome(&report, "sample after decode").contains(": ok "), "{report}");
    for what in ["sample after kv-remove", "sample after kv-clear"] {
        let l = outcome(&report, what);
        assert!(
            l.contains("error InferenceError::InvalidArgument") && l.contains("nothing to sample from"),
            "{l}"
        );
    }
    alive(&mut rt);
}

#[test]
fn a_file_a_download_is_writing_is_not_mapped() {
    let dir = data_dir();
    std::fs::copy(demo_model(), dir.path().join("models/victim.gguf")).unwrap();
    // The server holds its answer, so the transfer is still running when
    // the guest asks to load the file it writes.
    let server = FileServer::start(b"x".to_vec());
    server.set(|f| f.stall = Some(Duration::from_secs(3)));
    let mut rt = runtime(dir.path(), |_| {});
    let report = attack(&mut rt, &format!("download-then-load victim.gguf {}", server.url()));
    let l = outcome(&report, "load while the download runs");
    assert!(
        l.contains("error InferenceError::LoadFailed") && l.contains("being written by a download"),
        "{l}"
    );
    assert!(outcome(&report, "decode after").contains("error InferenceError::NoModel"), "{report}");
    no_host_paths(&report, &[dir.path()]);
    alive(&mut rt);
}

#[test]
fn downloads_go_only_where_the_app_allows() {
    let dir = data_dir();
    let logger = FileServer::start(b"x".repeat(100));
    // The default policy: the release location over HTTPS, nothing on loopback.
    let mut rt = runtime(dir.path(), |o| o.network = NetworkPolicy::default());
    let report = attack(&mut rt, &format!("exfiltrate {}/leak", logger.base));
    assert!(outcome(&report, "transfer").contains("error DownloadError::NotAllowed"), "{report}");
    let report =
        attack(&mut rt, "big-download https://github.com/sneptech/bittybot/releases/download/v1/huge.gguf");
    assert!(outcome(&report, "transfer of 10 GB").contains("error DownloadError::TooLarge"), "{report}");
    alive(&mut rt);
    // An app that allows one loopback server: a redirect from it to another is refused.
    let allowed = FileServer::start(b"y".repeat(100));
    allowed.set(|f| f.redirect_to = Some(format!("{}/leak", logger.base)));
    let mut rt = runtime(dir.path(), |o| {
        o.network = NetworkPolicy::default();
        o.network.allow_http = true;
        o.network.allow_private = true;
        o.network.allow(&format!("{}/", allowed.base));
    });
    let report = attack(&mut rt, &format!("exfiltrate {}/away", allowed.base));
    let l = outcome(&report, "transfer");
    assert!(l.contains("error DownloadError::NotAllowed") && l.contains("redirect"), "{l}");
    assert_eq!(allowed.requests().len(), 1, "the allowed server was asked once");
    assert!(logger.requests().is_empty(), "the other server never saw a request: {:?}", logger.requests());
    alive(&mut rt);
}

#[test]
fn host_resources_are_bounded_by_named_limits() {
    let dir = data_dir();
    let mut rt = runtime(dir.path(), |o| o.limits.state_quota = 32 << 20);
    alive(&mut rt);
    let limits = rt.limits().clone();
    let report = attack(&mut rt, "samplers");
    let l = outcome(&report, "samplers opened");
    assert!(
        l.contains(&format!("samplers opened: {};", limits.samplers)) && l.contains("LimitExceeded"),
        "{l}"
    );
    assert!(rt.host_memory_held() <= limits.host_memory);

    let report = attack(&mut rt, "snapshots demo.gguf");
    let l = outcome(&report, "snapshots taken");
    assert!(l.contains("LimitExceeded"), "{l}");
    let taken: usize = l.split_whitespace().nth(2).unwrap().trim_end_matches(';').parse().unwrap();
    assert!(taken <= limits.snapshots, "{l}");

    let report = attack(&mut rt, "big-context demo.gguf");
    let l = outcome(&report, "load with n-ctx 65536");
    assert!(l.contains("error InferenceError::LoadFailed") && l.contains("context_tokens"), "{l}");

    let report = attack(&mut rt, "state-flood");
    let l = outcome(&report, "MiB written");
    assert!(l.contains("QuotaExceeded"), "{l}");
    let used: u64 = std::fs::read_dir(dir.path().join("state"))
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .sum();
    assert!(used <= 32 << 20, "state/ holds {used} bytes, more than its quota");
    alive(&mut rt);
}

#[test]
fn time_in_one_call_is_bounded_and_host_work_is_not_charged() {
    let dir = data_dir();
    // Loading the model takes longer than 50 ms of host time: not the guest's.
    let mut rt = runtime(dir.path(), |o| o.limits.call_time = Duration::from_millis(50));
    alive(&mut rt);
    rt.set_call_time(Duration::from_secs(1));
    let stalled = FileServer::start(Vec::new());
    stalled.set(|f| f.stall = Some(Duration::from_secs(60)));
    for cmd in ["sleep 20000".to_owned(), format!("waits {}", stalled.url())] {
        let t = Instant::now();
        let err = rt
            .render_prompt(&[bittybot_host::Message { role: "user".into(), content: cmd.clone() }], false)
            .unwrap_err()
            .to_string();
        assert!(err.contains("call_time"), "{cmd}: {err}");
        assert!(t.elapsed() < Duration::from_secs(5), "{cmd} blocked the host for {:?}", t.elapsed());
        rt.restart().unwrap();
    }
    rt.set_call_time(Duration::from_secs(30));
    let report = attack(&mut rt, "tokenize-specials 2097152 demo.gguf");
    assert!(
        report.contains("Err(InferenceError::LimitExceeded") && report.contains("tokenize_bytes"),
        "{report}"
    );
    let report = attack(&mut rt, "tokenize-specials 1048576 demo.gguf");
    let l = outcome(&report, "tokenize 1048572 bytes");
    assert!(l.contains("Ok(87381)"), "one control token each: {l}");
    let ms: u64 = l.split(" in ").nth(1).unwrap().trim_end_matches(" ms").parse().unwrap();
    assert!(ms < 5000, "1 MiB of special tokens took {ms} ms (llama.cpp's own split took 10 s)");

    let server = FileServer::start(Vec::new());
    server.set(|f| f.stall = Some(Duration::from_secs(60)));
    let report = attack(&mut rt, &format!("stalled-transfer {}", server.url()));
    let ms: u64 = report.split_whitespace().nth(4).unwrap().parse().unwrap();
    assert!(ms < 2000, "cancelling a stalled transfer blocked for {ms} ms:\n{report}");
    alive(&mut rt);
}
