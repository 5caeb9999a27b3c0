//! Getting the model: resumable download from a real HTTP server on
//! loopback with injected faults, streaming verification, the verified
//! fast path, preflight, cancellation.

use std::path::Path;
use std::time::Duration;

use bittybot_host::{Runtime, SetupError, SetupState, VerifiedBy};
use bittybot_tests::http::FileServer;
use bittybot_tests::{model_file, options, temp_dir};

/// The fixture: the project's tiny cohere2 model (5 MB, a real GGUF).
fn fixture() -> Vec<u8> {
    std::fs::read(model_file("tiny-aya-cohere2-f16.gguf")).unwrap()
}

fn sha256_hex(bytes: &[u8]) -> String {
    let mut h = bittybot_host::hashing::Sha256::new();
    h.update(bytes);
    h.finalize_hex()
}

fn spec(url: &str, body: &[u8], retries: u32) -> String {
    serde_json::json!({
        "url": url,
        "file_name": "model.gguf",
        "size": body.len(),
        "sha256": sha256_hex(body),
        "free_space_margin": 1024,
        "retries": retries,
        "retry_base_ms": 20,
    })
    .to_string()
}

fn runtime(dir: &Path) -> Runtime {
    Runtime::start(options(dir, None)).unwrap()
}

fn run(rt: &mut Runtime, spec: &str) -> SetupState {
    let mut last_done = 0;
    rt.run_setup(Some(spec), true, false, |s| {
        if let SetupState::Downloading(p) | SetupState::Verifying(p) = s {
            assert!(p.done >= last_done, "progress went back: {} < {last_done}", p.done);
            last_done = p.done;
        }
    })
    .unwrap()
}

fn models(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir.join("models"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

fn ready(state: &SetupState) -> &bittybot_host::ModelReady {
    match state {
        SetupState::Ready(r) => r,
        other => panic!("expected ready, got {other:?}"),
    }
}

#[test]
fn cut_mid_body_resumes_with_range_and_gives_the_same_bytes() {
    let body = fixture();
    let server = FileServer::start(body.clone());
    let cut = 1_500_000u64;
    server.set(|f| {
        f.cut_after = Some(cut);
        f.cuts = 1;
    });
    let dir = temp_dir();
    let mut rt = runtime(dir.path());
    let state = run(&mut rt, &spec(&server.url(), &body, 3));
    let r = ready(&state);
    assert_eq!(r.verified_by, VerifiedBy::Download);
    assert_eq!(std::fs::read(dir.path().join("models/model.gguf")).unwrap(), body);
    let reqs = server.requests();
    assert_eq!(reqs.len(), 2, "{reqs:?}");
    assert_eq!(reqs[0].range, None);
    assert_eq!(reqs[1].range.as_deref(), Some(format!("bytes={cut}-").as_str()));
    assert_eq!(models(dir.path()), vec!["model.gguf"], "no stray files");
}

#[test]
fn a_process_restart_between_cut_and_resume_resumes() {
    let body = fixture();
    let server = FileServer::start(body.clone());
    let cut = 2_000_000u64;
    server.set(|f| {
        f.cut_after = Some(cut);
        f.cuts = 1;
    });
    let dir = temp_dir();
    let spec = spec(&server.url(), &body, 0);
    {
        let mut rt = runtime(dir.path());
        match run(&mut rt, &spec) {
            SetupState::Failed(SetupError::NoNetwork(m)) => assert!(m.contains("connection lost"), "{m}"),
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(std::fs::metadata(dir.path().join("models/model.gguf.part")).unwrap().len(), cut);
    let mut rt = runtime(dir.path());
    let state = run(&mut rt, &spec);
    assert_eq!(ready(&state).downloaded, body.len() as u64 - cut);
    assert_eq!(std::fs::read(dir.path().join("models/model.gguf")).unwrap(), body);
    assert_eq!(server.requests()[1].range.as_deref(), Some(format!("bytes={cut}-").as_str()));
}

#[test]
fn a_server_that_ignores_range_still_gives_the_right_file() {
    let body = fixture();
    let server = FileServer::start(body.clone());
    server.set(|f| {
        f.cut_after = Some(1_000_000);
        f.cuts = 1;
        f.ignore_range = true;
    });
    let dir = temp_dir();
    let mut rt = runtime(dir.path());
    let state = run(&mut rt, &spec(&server.url(), &body, 3));
    ready(&state);
    assert_eq!(std::fs::read(dir.path().join("models/model.gguf")).unwrap(), body);
    assert!(server.requests()[1].range.is_some(), "the client did ask for a range");
    assert_eq!(models(dir.path()), vec!["model.gguf"]);
}

#[test]
fn not_found_no_network_and_redirects() {
    let body = fixture();
    let server = FileServer::start(body.clone());
    let dir = temp_dir();
    let mut rt = runtime(dir.path());
    let missing = spec(&format!("{}/missing.gguf", server.base), &body, 3);
    assert_eq!(run(&mut rt, &missing), SetupState::Failed(SetupError::NotFound(404)));
    assert!(models(dir.path()).is_empty(), "no stray files after a 404");

    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let refused = spec(&format!("http://127.0.0.1:{port}/model.gguf"), &body, 2);
    match run(&mut rt, &refused) {
        SetupState::Failed(SetupError::NoNetwork(m)) => assert!(m.contains("after 3 attempts"), "{m}"),
        other => panic!("{other:?}"),
    }
    assert!(models(dir.path()).is_empty(), "no stray files after refused connections");

    let redirected = spec(&format!("{}/r1", server.base), &body, 0);
    ready(&run(&mut rt, &redirected));
    let paths: Vec<String> = server.requests().iter().map(|r| r.path.clone()).collect();
    assert!(paths.ends_with(&["/r1".into(), "/r2".into(), "/r3".into(), "/model.gguf".into()]), "{paths:?}");
    assert_eq!(std::fs::read(dir.path().join("models/model.gguf")).unwrap(), body);
}

#[test]
fn a_flipped_byte_fails_verification_and_leaves_nothing() {
    let body = fixture();
    let server = FileServer::start(body.clone());
    server.set(|f| f.flip_byte = Some(123_456));
    let dir = temp_dir();
    let mut rt = runtime(dir.path());
    match run(&mut rt, &spec(&server.url(), &body, 3)) {
        SetupState::Failed(SetupError::VerificationFailed(m)) => assert!(m.contains("deleted"), "{m}"),
        other => panic!("{other:?}"),
    }
    assert!(models(dir.path()).is_empty());
    let settings = std::fs::read_to_string(dir.path().join("state/settings.json")).unwrap_or_default();
    assert!(!settings.contains("model.gguf"), "no verified record may remain: {settings}");
    // The next setup downloads again and succeeds once the server is fixed.
    server.set(|f| f.flip_byte = None);
    ready(&run(&mut rt, &spec(&server.url(), &body, 3)));
}

#[test]
fn not_enough_space_is_reported_with_both_numbers_and_writes_nothing() {
    let body = fixture();
    let server = FileServer::start(body.clone());
    let dir = temp_dir();
    let mut rt = runtime(dir.path());
    rt.set_free_space_override(Some(1000));
    match run(&mut rt, &spec(&server.url(), &body, 3)) {
        SetupState::Failed(SetupError::InsufficientStorage(s)) => {
            assert_eq!(s.needed, body.len() as u64 + 1024);
            assert_eq!(s.available, 1000);
        }
        other => panic!("{other:?}"),
    }
    assert!(models(dir.path()).is_empty());
    assert!(server.requests().is_empty(), "nothing was requested");
}

#[test]
fn verified_fast_path_skips_hashing_until_the_file_changes() {
    let body = fixture();
    let server = FileServer::start(body.clone());
    let dir = temp_dir();
    let spec = spec(&server.url(), &body, 3);
    ready(&run(&mut runtime(dir.path()), &spec));

    let mut rt = runtime(dir.path());
    assert_eq!(ready(&run(&mut rt, &spec)).verified_by, VerifiedBy::SavedRecord);
    assert_eq!(rt.hashes_started(), 0, "the second start must not hash");

    // Touch the file: same bytes, new mtime → hashed again, still good.
    let file = std::fs::File::options().write(true).open(dir.path().join("models/model.gguf")).unwrap();
    file.set_modified(std::time::SystemTime::now() + Duration::from_secs(5)).unwrap();
    drop(file);
    let mut rt = runtime(dir.path());
    assert_eq!(ready(&run(&mut rt, &spec)).verified_by, VerifiedBy::Hashing);
    assert_eq!(rt.hashes_started(), 1);
    // And the record is fresh again.
    let mut rt = runtime(dir.path());
    assert_eq!(ready(&run(&mut rt, &spec)).verified_by, VerifiedBy::SavedRecord);
    assert_eq!(rt.hashes_started(), 0);
    assert_eq!(server.requests().len(), 1, "downloaded once");
}

#[test]
fn cancelling_mid_download_keeps_the_part_and_the_next_run_resumes() {
    let body = fixture();
    let server = FileServer::start(body.clone());
    server.set(|f| f.throttle = Some(Duration::from_millis(30)));
    let dir = temp_dir();
    let spec = spec(&server.url(), &body, 3);
    let mut rt = runtime(dir.path());
    let cancel = rt.cancel_handle();
    let setup = rt.begin_setup(Some(&spec), true, false).unwrap();
    let last = loop {
        let state = rt.setup_step(&setup).unwrap();
        if let SetupState::Downloading(p) = &state {
            if p.done > 200_000 {
                cancel.cancel();
            }
        }
        if matches!(state, SetupState::Ready(_) | SetupState::Failed(_)) {
            break state;
        }
    };
    assert_eq!(last, SetupState::Failed(SetupError::Cancelled));
    let part = std::fs::metadata(dir.path().join("models/model.gguf.part")).unwrap().len();
    assert!(part > 200_000 && part < body.len() as u64, "{part}");

    server.set(|f| f.throttle = None);
    let state = run(&mut rt, &spec);
    assert_eq!(ready(&state).downloaded, body.len() as u64 - part);
    assert_eq!(server.requests().last().unwrap().range.as_deref(), Some(format!("bytes={part}-").as_str()));
    assert_eq!(std::fs::read(dir.path().join("models/model.gguf")).unwrap(), body);
}

#[test]
fn stale_model_files_are_removed_once_the_current_one_is_verified() {
    let body = fixture();
    let server = FileServer::start(body.clone());
    let dir = temp_dir();
    std::fs::create_dir_all(dir.path().join("models")).unwrap();
    std::fs::write(dir.path().join("models/old-model.gguf"), b"old").unwrap();
    std::fs::write(dir.path().join("models/older.gguf.part"), b"part").unwrap();
    let mut rt = runtime(dir.path());
    let state = run(&mut rt, &spec(&server.url(), &body, 3));
    assert_eq!(ready(&state).removed, vec!["old-model.gguf", "older.gguf.part"]);
    assert_eq!(models(dir.path()), vec!["model.gguf"]);
}

#[test]
fn an_invalid_spec_is_a_clear_error() {
    let dir = temp_dir();
    let mut rt = runtime(dir.path());
    let err =
        rt.resolve_spec(Some(r#"{"url":"ftp://x","file_name":"a.gguf","size":1,"sha256":"x"}"#)).unwrap_err();
    assert!(err.to_string().contains("not an http(s) URL"), "{err}");
    let built_in = rt.resolve_spec(None).unwrap();
    assert_eq!(built_in.size, 1_660_984_928);
    assert_eq!(built_in.display_size, "1.66 GB");
}
