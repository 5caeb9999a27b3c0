//! Guest swapping and the sandbox: new behaviour without a host rebuild,
//! incompatible and tampered guests refused, hostile guests contained.

use std::time::Duration;

use bittybot_host::guest::{generate_key, sign};
use bittybot_host::{
    GuestError, GuestPolicy, GuestSource, Runtime, RuntimeError, SessionKind, SessionOptions, SetupState,
    VerifiedBy,
};
use bittybot_tests::http::FileServer;
use bittybot_tests::{demo_model, load_provided, model_file, options, temp_dir};

fn shout_guest() -> GuestSource {
    GuestSource::from_file(env!("BITTYBOT_SHOUT_GUEST").as_ref()).unwrap()
}

fn hostile_guest() -> GuestSource {
    GuestSource::from_file(env!("BITTYBOT_HOSTILE_GUEST").as_ref()).unwrap()
}

fn load(rt: &mut Runtime) {
    load_provided(rt, 1024);
}

fn translate(rt: &mut Runtime, text: &str) -> String {
    let tr = rt.open_session(SessionKind::Translation).unwrap();
    rt.set_languages(&tr, Some("English"), "French").unwrap();
    let mut o = SessionOptions::unchanged();
    o.max_tokens = Some(24);
    rt.configure(&tr, &o).unwrap();
    let (chunks, _) = rt.chat(&tr, text).unwrap();
    rt.close_session(tr).unwrap();
    chunks.concat()
}

fn chat_works(rt: &mut Runtime) {
    let chat = rt.open_session(SessionKind::Chat).unwrap();
    let mut o = SessionOptions::unchanged();
    o.max_tokens = Some(8);
    rt.configure(&chat, &o).unwrap();
    let (_, stats) = rt.chat(&chat, "Hello!").unwrap();
    assert!(stats.generated_tokens > 0);
    rt.close_session(chat).unwrap();
}

#[test]
fn a_swapped_guest_changes_behaviour_without_a_host_rebuild_and_keeps_state() {
    let dir = temp_dir();
    let mut rt = Runtime::start(options(dir.path(), Some(demo_model()))).unwrap();
    load(&mut rt);
    // Something in state/: a verified model record.
    let body = std::fs::read(model_file("tiny-aya-cohere2-f16.gguf")).unwrap();
    let server = FileServer::start(body.clone());
    let mut h = bittybot_host::hashing::Sha256::new();
    h.update(&body);
    let spec = serde_json::json!({"url": server.url(), "file_name": "m.gguf", "size": body.len(),
        "sha256": h.finalize_hex(), "free_space_margin": 0})
    .to_string();
    assert!(matches!(rt.run_setup(Some(&spec), true, false, |_| {}).unwrap(), SetupState::Ready(_)));

    let before = translate(&mut rt, "Good morning, my friend.");
    let builtin_cache = rt.start_report().component.cache_file.clone();
    let report = rt.swap_guest(shout_guest()).unwrap();
    assert_ne!(report.component.cache_file, builtin_cache, "the compiled cache is keyed by the guest");
    let after = translate(&mut rt, "Good morning, my friend.");
    assert!(before.chars().any(char::is_lowercase), "{before:?}");
    assert_eq!(after, before.to_uppercase(), "the new guest's post-processing, same model output");
    // settings.json written by the old guest is read by the new one.
    match rt.run_setup(Some(&spec), false, false, |_| {}).unwrap() {
        SetupState::Ready(r) => assert_eq!(r.verified_by, VerifiedBy::SavedRecord),
        other => panic!("{other:?}"),
    }
    // And back.
    rt.swap_guest(GuestSource::builtin()).unwrap();
    assert_eq!(translate(&mut rt, "Good morning, my friend."), before);
}

/// The built-in guest, relabelled as built for `bittybot:core@2.0.0`
/// (same-length rewrite of every version string in the component).
fn major_two_guest() -> GuestSource {
    let bytes = GuestSource::builtin().bytes().to_vec();
    let host = format!("@{}", bittybot_host::guest::WIT_VERSION);
    let (from, to) = (b"bittybot:core/", host.as_bytes());
    let mut out = bytes.clone();
    let mut n = 0;
    let mut i = 0;
    while let Some(p) = out[i..].windows(from.len()).position(|w| w == from) {
        let start = i + p;
        if let Some(q) = out[start..].windows(to.len()).take(40).position(|w| w == to) {
            out[start + q..start + q + to.len()].copy_from_slice(b"@2.0.0");
            n += 1;
        }
        i = start + from.len();
    }
    assert!(n > 0, "no versioned names found");
    GuestSource::from_bytes(out, "major-2".into())
}

#[test]
fn an_incompatible_guest_is_refused_naming_both_versions_and_the_old_one_keeps_running() {
    let dir = temp_dir();
    let mut rt = Runtime::start(options(dir.path(), Some(demo_model()))).unwrap();
    load(&mut rt);
    let err = rt.swap_guest(major_two_guest()).unwrap_err();
    match &err {
        RuntimeError::Guest(GuestError::Incompatible { reason, .. }) => {
            assert!(
                reason.contains("bittybot:core@2.0.0")
                    && reason.contains(&format!("bittybot:core@{}", bittybot_host::guest::WIT_VERSION)),
                "{reason}"
            );
        }
        other => panic!("expected incompatible, got {other:?}"),
    }
    chat_works(&mut rt);
    // A fresh start with it is refused the same way.
    let mut o = options(dir.path(), None);
    o.guest = major_two_guest();
    assert!(matches!(Runtime::start(o), Err(RuntimeError::Guest(GuestError::Incompatible { .. }))));
}

#[test]
fn tampered_guests_are_refused_by_hash_pin_and_by_signature() {
    let dir = temp_dir();
    let builtin = GuestSource::builtin();
    // Pinned hash.
    let mut o = options(dir.path(), Some(demo_model()));
    o.policy = GuestPolicy { sha256: Some(builtin.sha256().to_owned()), public_key: None };
    let mut rt = Runtime::start(o).unwrap();
    load(&mut rt);
    match rt.swap_guest(shout_guest()).unwrap_err() {
        RuntimeError::Guest(GuestError::Rejected { reason, .. }) => {
            assert!(reason.contains("pinned"), "{reason}")
        }
        other => panic!("{other:?}"),
    }
    chat_works(&mut rt);

    // Signature: the shout guest signed properly is accepted; its bytes with
    // one byte changed, carrying the same signature, are not.
    let (seed, public) = generate_key().unwrap();
    let mut o = options(dir.path(), Some(demo_model()));
    o.policy = GuestPolicy { sha256: None, public_key: Some(public) };
    o.guest = builtin.clone().with_signature(sign(&seed, builtin.bytes()).unwrap());
    let mut rt = Runtime::start(o).unwrap();
    load(&mut rt);
    let good = shout_guest();
    let sig = sign(&seed, good.bytes()).unwrap();
    let mut bytes = good.bytes().to_vec();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    let tampered = GuestSource::from_bytes(bytes, "tampered".into()).with_signature(sig.clone());
    assert!(matches!(rt.swap_guest(tampered), Err(RuntimeError::Guest(GuestError::Rejected { .. }))));
    let unsigned = shout_guest();
    assert!(matches!(rt.swap_guest(unsigned), Err(RuntimeError::Guest(GuestError::Rejected { .. }))));
    chat_works(&mut rt);
    rt.swap_guest(good.with_signature(sig)).unwrap();
    chat_works(&mut rt);
}

fn attack(rt: &mut Runtime, what: &str) -> Result<String, RuntimeError> {
    rt.render_prompt(&[bittybot_host::Message { role: "user".into(), content: what.into() }], false)
        .map(|r| r.text)
}

#[test]
fn hostile_guests_are_contained_and_the_host_then_serves_a_normal_guest() {
    let dir = temp_dir();
    let mut o = options(dir.path(), Some(demo_model()));
    o.guest = hostile_guest();
    o.limits.call_time = Duration::from_millis(500);
    let mut rt = Runtime::start(o).unwrap();

    let report = attack(&mut rt, "read-files").unwrap();
    assert!(!report.contains("READ"), "the guest read something outside its folders:\n{report}");
    assert!(report.contains("env vars: 0"), "{report}");
    assert!(!std::path::Path::new("/tmp/pwned-by-guest").exists());

    let err = attack(&mut rt, "grow-memory").unwrap_err().to_string();
    assert!(err.contains("memory limit of 64 MiB"), "{err}");
    let again = attack(&mut rt, "read-files").unwrap_err().to_string();
    assert!(again.contains("must be restarted"), "{again}");
    rt.restart().unwrap();

    let started = std::time::Instant::now();
    let err = attack(&mut rt, "loop").unwrap_err().to_string();
    assert!(err.contains("CPU time") && err.contains("budget 500 ms"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(10));
    rt.restart().unwrap();

    let err = attack(&mut rt, "panic").unwrap_err().to_string();
    assert!(err.contains("panicked"), "{err}");

    // The same host now serves the normal guest (with the usual budget).
    rt.set_call_time(Duration::from_secs(5));
    rt.swap_guest(GuestSource::builtin()).unwrap();
    load(&mut rt);
    chat_works(&mut rt);
}
