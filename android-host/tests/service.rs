//! `bittybot_host::Service`, the layer the JNI library is built on, on the
//! real guest and the demo model: start-up that never blocks, streaming,
//! cancellation, closing, errors with kinds.
//!
//! Run: `cargo test --release -p bittybot-android` (after `scripts/setup.sh`).

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use bittybot_host::{
    ErrorKind, GenerationStats, ReplyListener, Service, ServiceError, ServiceOptions, ServiceState,
    SessionKind, SessionOptions, StopReason,
};

const WAIT: Duration = Duration::from_secs(120);

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("android-host/ is in the workspace").to_path_buf()
}

fn demo_model() -> PathBuf {
    let path = workspace().join(".cache/models/SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(path.is_file(), "{} is missing: run scripts/setup.sh", path.display());
    path
}

fn options(dir: &Path) -> ServiceOptions {
    let mut o = ServiceOptions::new(dir);
    o.runtime.cache_dir = Some(workspace().join("target/test-guest-cache"));
    o.load.threads = Some(2);
    o.load.threads_batch = Some(2);
    // The tests' model servers are on loopback: the app's opt-in.
    o.runtime.network.allow("http://127.0.0.1:");
    o.runtime.network.allow_http = true;
    o.runtime.network.allow_private = true;
    o
}

/// What a listener saw, sent over a channel.
#[derive(Debug)]
enum Event {
    State(String),
    Chunk(String),
    Done(GenerationStats),
    Error(ServiceError),
}

fn state_name(s: &ServiceState) -> String {
    match s {
        ServiceState::Checking => "checking".into(),
        ServiceState::Downloading { .. } => "downloading".into(),
        ServiceState::Verifying { .. } => "verifying".into(),
        ServiceState::Loading => "loading".into(),
        ServiceState::Ready(_) => "ready".into(),
        ServiceState::Error(e) => format!("error:{}", e.kind),
    }
}

struct Reply(mpsc::Sender<Event>);

impl ReplyListener for Reply {
    fn on_chunk(&mut self, text: &str) -> Result<(), String> {
        let _ = self.0.send(Event::Chunk(text.to_owned()));
        Ok(())
    }
    fn on_done(&mut self, stats: &GenerationStats) {
        let _ = self.0.send(Event::Done(*stats));
    }
    fn on_error(&mut self, error: &ServiceError) {
        let _ = self.0.send(Event::Error(error.clone()));
    }
}

/// Start a service; returns it, the start() latency and the state events.
fn start(dir: &Path, model: Option<PathBuf>) -> (Service, Duration, mpsc::Receiver<Event>) {
    let (tx, rx) = mpsc::channel();
    let t = Instant::now();
    let service = Service::start(options(dir), model, move |s: &ServiceState| {
        let _ = tx.send(Event::State(state_name(s)));
    })
    .expect("start the service");
    (service, t.elapsed(), rx)
}

fn final_state(rx: &mpsc::Receiver<Event>) -> Vec<String> {
    let mut seen = Vec::new();
    loop {
        match rx.recv_timeout(WAIT).expect("a state") {
            Event::State(s) => {
                let last = s == "ready" || s.starts_with("error:");
                seen.push(s);
                if last {
                    return seen;
                }
            }
            other => panic!("unexpected {other:?}"),
        }
    }
}

/// Send a turn and collect it: (chunks, the final event).
fn turn(service: &Service, kind: SessionKind, text: &str) -> (Vec<String>, Event) {
    let (tx, rx) = mpsc::channel();
    service.send(kind, text, Reply(tx)).expect("send");
    collect(&rx)
}

fn collect(rx: &mpsc::Receiver<Event>) -> (Vec<String>, Event) {
    let mut chunks = Vec::new();
    loop {
        match rx.recv_timeout(WAIT).expect("a reply event") {
            Event::Chunk(c) => chunks.push(c),
            end => return (chunks, end),
        }
    }
}

fn greedy(max_tokens: u32) -> SessionOptions {
    let mut o = SessionOptions::unchanged();
    o.temperature = Some(0.0);
    o.max_tokens = Some(max_tokens);
    o
}

#[test]
fn start_returns_at_once_then_turns_stream() {
    let dir = tempfile::tempdir().unwrap();
    let (service, latency, states) = start(dir.path(), Some(demo_model()));
    assert!(latency < Duration::from_millis(50), "start took {latency:?}");
    assert_eq!(final_state(&states), ["checking", "loading", "ready"]);

    service.configure(SessionKind::Chat, greedy(48)).unwrap();
    let (chunks, end) =
        turn(&service, SessionKind::Chat, "What is the capital of France? Answer in one sentence.");
    let Event::Done(stats) = end else { panic!("{end:?}") };
    assert!(chunks.len() > 1, "{chunks:?}");
    assert!(chunks.concat().contains("Paris"), "{chunks:?}");
    assert!(stats.generated_tokens > 0, "{stats:?}");

    service.set_languages(None, "French").unwrap();
    service.configure(SessionKind::Translation, greedy(24)).unwrap();
    let (chunks, end) = turn(&service, SessionKind::Translation, "Good morning");
    assert!(matches!(end, Event::Done(_)), "{end:?}");
    assert!(!chunks.concat().trim().is_empty());
}

#[test]
fn cancel_ends_the_reply_and_drops_queued_turns() {
    let dir = tempfile::tempdir().unwrap();
    let (service, _, states) = start(dir.path(), Some(demo_model()));
    final_state(&states);
    service.configure(SessionKind::Chat, greedy(300)).unwrap();

    let (tx1, rx1) = mpsc::channel();
    let (tx2, rx2) = mpsc::channel();
    service.send(SessionKind::Chat, "Write a long story about a dragon.", Reply(tx1)).unwrap();
    service.send(SessionKind::Chat, "And another one.", Reply(tx2)).unwrap();
    assert!(matches!(rx1.recv_timeout(WAIT).unwrap(), Event::Chunk(_)));
    service.cancel();
    let (_, end) = collect(&rx1);
    let Event::Done(stats) = end else { panic!("{end:?}") };
    assert_eq!(stats.stop, StopReason::Cancelled);
    assert!(stats.generated_tokens < 300, "{stats:?}");
    let (_, end) = collect(&rx2);
    assert!(matches!(&end, Event::Error(e) if e.kind == ErrorKind::Cancelled), "{end:?}");

    // A turn sent after the cancel runs normally.
    service.configure(SessionKind::Chat, greedy(16)).unwrap();
    let (_, end) = turn(&service, SessionKind::Chat, "Name one colour.");
    assert!(matches!(&end, Event::Done(s) if s.stop != StopReason::Cancelled), "{end:?}");
}

#[test]
fn close_ends_queued_turns_and_refuses_new_ones() {
    let dir = tempfile::tempdir().unwrap();
    let (service, _, states) = start(dir.path(), Some(demo_model()));
    final_state(&states);
    service.configure(SessionKind::Chat, greedy(300)).unwrap();
    let (tx1, rx1) = mpsc::channel();
    let (tx2, rx2) = mpsc::channel();
    service.send(SessionKind::Chat, "Write a long story about a cat.", Reply(tx1)).unwrap();
    service.send(SessionKind::Chat, "Another.", Reply(tx2)).unwrap();
    assert!(matches!(rx1.recv_timeout(WAIT).unwrap(), Event::Chunk(_)));
    let t = Instant::now();
    service.close();
    assert!(t.elapsed() < Duration::from_secs(10), "close took {:?}", t.elapsed());
    let (_, end) = collect(&rx1);
    assert!(matches!(&end, Event::Done(s) if s.stop == StopReason::Cancelled), "{end:?}");
    let (_, end) = collect(&rx2);
    assert!(matches!(&end, Event::Error(e) if e.kind == ErrorKind::Closed), "{end:?}");
    let (tx3, _rx3) = mpsc::channel();
    let err = service.send(SessionKind::Chat, "hi", Reply(tx3)).unwrap_err();
    assert_eq!(err.kind, ErrorKind::Closed);
    service.close(); // idempotent
}

#[test]
fn a_missing_model_is_load_failed_and_turns_are_not_ready() {
    let dir = tempfile::tempdir().unwrap();
    let (service, _, states) = start(dir.path(), Some(dir.path().join("missing.gguf")));
    assert_eq!(final_state(&states), ["checking", "loading", "error:load-failed"]);
    let (_, end) = turn(&service, SessionKind::Chat, "hi");
    assert!(matches!(&end, Event::Error(e) if e.kind == ErrorKind::NotReady), "{end:?}");
}

#[test]
fn an_unreachable_model_server_and_a_bad_guest_are_reported_as_states() {
    let dir = tempfile::tempdir().unwrap();
    // No model file: the service downloads the spec's model; nothing listens there.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut o = options(dir.path());
    o.spec_json = Some(format!(
        r#"{{"url":"http://127.0.0.1:{port}/m.gguf","file_name":"m.gguf","size":10,"retries":0,
            "sha256":"0000000000000000000000000000000000000000000000000000000000000000"}}"#
    ));
    let (tx, rx) = mpsc::channel();
    let _service = Service::start(o, None, move |s: &ServiceState| {
        let _ = tx.send(Event::State(state_name(s)));
    })
    .unwrap();
    let states = final_state(&rx);
    assert_eq!(states.first().map(String::as_str), Some("checking"));
    assert_eq!(states.last().map(String::as_str), Some("error:no-network"), "{states:?}");

    let bad = dir.path().join("bad.wasm");
    std::fs::write(&bad, b"\0asm not a component").unwrap();
    let mut o = options(dir.path());
    o.guest_file = Some(bad);
    let (tx, rx) = mpsc::channel();
    let _service = Service::start(o, Some(demo_model()), move |s: &ServiceState| {
        let _ = tx.send(Event::State(state_name(s)));
    })
    .unwrap();
    assert_eq!(final_state(&rx), ["checking", "error:guest"]);
}
