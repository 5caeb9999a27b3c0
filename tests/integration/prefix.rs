//! The system turn's KV state, saved and restored across sessions and
//! process restarts, never changing what the model says.

use std::path::{Path, PathBuf};

use bittybot_host::{Runtime, SessionKind, SessionOptions};
use bittybot_tests::{demo_model, model_file, runtime_with, temp_dir};

fn runtime(dir: &Path, model: PathBuf) -> Runtime {
    runtime_with(dir, model, 1024)
}

/// One greedy turn in a fresh session: (text, prompt tokens evaluated, prefix cached).
fn turn(
    rt: &mut Runtime,
    kind: SessionKind,
    cache: bool,
    system: Option<&str>,
    text: &str,
) -> (String, u32, bool) {
    let s = rt.open_session(kind).unwrap();
    if kind == SessionKind::Translation {
        rt.set_languages(&s, Some("English"), "German").unwrap();
    }
    let mut o = SessionOptions::unchanged();
    o.temperature = Some(0.0);
    o.max_tokens = Some(24);
    o.prefix_cache = Some(cache);
    o.system_prompt = system.map(str::to_owned);
    rt.configure(&s, &o).unwrap();
    let (chunks, stats) = rt.chat(&s, text).unwrap();
    rt.close_session(s).unwrap();
    (chunks.concat(), stats.prompt_tokens, stats.prefix_cached)
}

fn prefix_files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir.join("state"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with("prefix-"))
        .collect();
    v.sort();
    v
}

fn same_output_with_and_without_the_cache(model: PathBuf) {
    for kind in [SessionKind::Chat, SessionKind::Translation] {
        let dir = temp_dir();
        let text = "Where do penguins live?";
        let (reference, full, _) = turn(&mut runtime(dir.path(), model.clone()), kind, false, None, text);
        // First run with the cache: evaluates and saves the system turn.
        let (first, first_tokens, first_cached) =
            turn(&mut runtime(dir.path(), model.clone()), kind, true, None, text);
        assert!(!first_cached);
        assert_eq!(first_tokens, full);
        assert_eq!(first, reference, "{kind:?}: saving the prefix changed the output");
        assert_eq!(prefix_files(dir.path()).len(), 1);
        // A new process: the saved state replaces the system turn.
        let mut rt = runtime(dir.path(), model.clone());
        let (second, evaluated, cached) = turn(&mut rt, kind, true, None, text);
        assert!(cached, "{kind:?}: the second start must use the saved prefix");
        assert!(evaluated < full / 2, "{kind:?}: evaluated {evaluated} of {full} tokens");
        assert_eq!(second, reference, "{kind:?}: the restored prefix changed the output");
        // A new session in the same process restores from memory, same output.
        let (third, _, cached) = turn(&mut rt, kind, true, None, text);
        assert!(cached);
        assert_eq!(third, reference);
    }
}

#[test]
fn outputs_are_identical_with_and_without_the_prefix_cache_on_the_demo_model() {
    same_output_with_and_without_the_cache(demo_model());
}

#[test]
fn outputs_are_identical_with_and_without_the_prefix_cache_on_tiny_cohere2() {
    same_output_with_and_without_the_cache(model_file("tiny-aya-cohere2-f16.gguf"));
}

#[test]
fn a_changed_system_prompt_or_model_misses_and_a_damaged_file_is_rebuilt() {
    let dir = temp_dir();
    let text = "Hello";
    turn(&mut runtime(dir.path(), demo_model()), SessionKind::Chat, true, None, text);
    // Another system prompt: another key.
    let (_, _, cached) =
        turn(&mut runtime(dir.path(), demo_model()), SessionKind::Chat, true, Some("Be terse."), text);
    assert!(!cached);
    // Another model on the same folders.
    let (_, _, cached) = turn(
        &mut runtime(dir.path(), model_file("tiny-aya-cohere2-f16.gguf")),
        SessionKind::Chat,
        true,
        None,
        text,
    );
    assert!(!cached);
    // Still a hit for the original pair.
    let (reference, _, cached) =
        turn(&mut runtime(dir.path(), demo_model()), SessionKind::Chat, true, None, text);
    assert!(cached);

    // Damage every saved file: each is detected, ignored and rebuilt.
    for f in prefix_files(dir.path()) {
        let mut bytes = std::fs::read(&f).unwrap();
        let mid = bytes.len() / 2;
        bytes[mid] ^= 0x40;
        std::fs::write(&f, &bytes).unwrap();
    }
    let (text_after, _, cached) =
        turn(&mut runtime(dir.path(), demo_model()), SessionKind::Chat, true, None, text);
    assert!(!cached, "a damaged prefix must not be used");
    assert_eq!(text_after, reference);
    let (_, _, cached) = turn(&mut runtime(dir.path(), demo_model()), SessionKind::Chat, true, None, text);
    assert!(cached, "and it was rebuilt");
    // Truncated too.
    for f in prefix_files(dir.path()) {
        let len = std::fs::metadata(&f).unwrap().len();
        std::fs::OpenOptions::new().write(true).open(&f).unwrap().set_len(len / 3).unwrap();
    }
    let (text_after, _, cached) =
        turn(&mut runtime(dir.path(), demo_model()), SessionKind::Chat, true, None, text);
    assert!(!cached);
    assert_eq!(text_after, reference);
    assert!(prefix_files(dir.path()).len() <= 4, "bounded disk use");
}
