//! The session logic on a fake engine (byte tokens, scripted replies, a KV
//! cache that keeps positions like llama.cpp's): what a user notices of
//! turns, the context edge, stops, cancellation, two sessions, the prefix cache.

use crate::app::App;
use crate::host::{Engine, ModelSource, Root};
use crate::session::Session;
use crate::testing::FakeHost;
use crate::wit::app::{
    AppError, GenerationStats, LoadOptions, MemoryOutlook, SessionKind, SessionOptions as Patch, StopReason,
};

fn load_options(n_ctx: u32) -> LoadOptions {
    LoadOptions {
        source: ModelSource::Managed("fake.gguf".into()),
        n_ctx: Some(n_ctx),
        n_batch: None,
        threads: None,
        threads_batch: None,
        use_mmap: None,
    }
}

fn load(host: &FakeHost, n_ctx: u32) -> App<FakeHost> {
    let mut app = App::default();
    app.load_model(host, &load_options(n_ctx)).unwrap();
    app
}

fn patch() -> Patch {
    Patch {
        max_tokens: None,
        temperature: None,
        top_k: None,
        top_p: None,
        min_p: None,
        repeat_penalty: None,
        seed: None,
        stop_strings: None,
        system_prompt: Some("Be brief.".into()),
        logit_bias: None,
        rewarm: None,
        prefix_cache: Some(false),
    }
}

fn open(app: &mut App<FakeHost>, host: &FakeHost, kind: SessionKind, p: Patch) -> Session {
    let mut s = app.open_session(host, kind).unwrap();
    let o = s.options().merged(&p, |t| host.token_id(t)).unwrap();
    s.set_options(o).unwrap();
    s
}

/// One turn: the chunks as the app receives them, and the figures.
fn turn(
    app: &mut App<FakeHost>,
    host: &FakeHost,
    s: &mut Session,
    text: &str,
) -> (Vec<String>, GenerationStats) {
    let mut env = app.env(host);
    let mut g = s.send(&mut env, text).unwrap();
    let mut chunks = Vec::new();
    while let Some(c) = g.next(s, &mut env).unwrap() {
        chunks.push(c);
    }
    (chunks, g.stats().cloned().unwrap())
}

/// The fake's KV holds exactly what the session believes, at positions 0..n.
fn consistent(host: &FakeHost, s: &Session) {
    assert_eq!(host.kv(s.seq()), s.kv_token_ids(), "KV and the session's mirror differ");
    assert!(host.kv_contiguous(s.seq()), "KV positions have gaps");
}

#[test]
fn a_second_turn_evaluates_only_the_new_turn() {
    let host = FakeHost::default();
    let mut app = load(&host, 1024);
    let mut chat = open(&mut app, &host, SessionKind::Chat, patch());
    host.script(&["Hi there.", "Blue."]);
    let (chunks, first) = turn(&mut app, &host, &mut chat, "Hello!");
    assert_eq!(chunks.concat(), "Hi there.");
    assert_eq!(first.stop, StopReason::EndOfGeneration);
    assert_eq!(first.kv_tokens, first.prompt_tokens + first.generated_tokens, "{first:?}");
    consistent(&host, &chat);
    host.take_decoded();
    let (chunks, second) = turn(&mut app, &host, &mut chat, "Colour?");
    assert_eq!(chunks.concat(), "Blue.");
    // New: the end of the last reply, the user turn and the generation prompt.
    let new = "<|im_end|>\n<|im_start|>user\nColour?<|im_end|>\n<|im_start|>assistant\n";
    assert_eq!(second.prompt_tokens as usize, host.tokenize(new, true).unwrap().len());
    assert_eq!(host.take_decoded(), (second.prompt_tokens + second.generated_tokens) as usize);
    consistent(&host, &chat);
    let history: Vec<String> = chat.history().into_iter().map(|(_, t)| t).collect();
    assert_eq!(history, ["Hello!", "Hi there.", "Colour?", "Blue."]);
}

#[test]
fn at_the_context_edge_old_turns_are_dropped_and_the_kv_shifted_not_recomputed() {
    let host = FakeHost::default();
    let mut app = load(&host, 256);
    let mut p = patch();
    p.max_tokens = Some(16);
    let mut chat = open(&mut app, &host, SessionKind::Chat, p);
    let mut dropped_at = None;
    for i in 0..12 {
        host.script(&["Fine, thanks."]);
        let (_, stats) = turn(&mut app, &host, &mut chat, &format!("Question number {i}?"));
        consistent(&host, &chat);
        assert!(stats.kv_tokens <= 256, "turn {i}: {stats:?}");
        if stats.dropped_turns > 0 && dropped_at.is_none() {
            dropped_at = Some(i);
            // The turns after the dropped one stayed in the KV: only the new turn was evaluated.
            assert!(stats.prompt_tokens < 60, "turn {i} re-evaluated the conversation: {stats:?}");
        }
    }
    assert!(dropped_at.is_some(), "the context never filled");
    let history = chat.history();
    assert!(history.len() < 24 && history[0].1 != "Question number 0?", "old turns are gone");
    assert_eq!(history.last().unwrap().1, "Fine, thanks.");
}

#[test]
fn a_message_larger_than_the_context_is_input_too_long() {
    let host = FakeHost::default();
    let mut app = load(&host, 128);
    let mut chat = open(&mut app, &host, SessionKind::Chat, patch());
    let err = chat.send(&mut app.env(&host), &"x".repeat(500)).err().unwrap();
    match err {
        AppError::InputTooLong(t) => assert!(t.tokens > 500 && t.limit == 128 - 16, "{t:?}"),
        other => panic!("{other:?}"),
    }
    assert!(chat.history().is_empty(), "the refused message is not kept");
}

#[test]
fn a_stop_string_split_across_tokens_ends_the_reply_and_never_shows() {
    let host = FakeHost::default();
    let mut app = load(&host, 1024);
    let mut p = patch();
    p.stop_strings = Some(vec!["\nUser:".into()]);
    let mut chat = open(&mut app, &host, SessionKind::Chat, p);
    host.script(&["Sure, 4.\nUser: and now?"]);
    let (chunks, stats) = turn(&mut app, &host, &mut chat, "2+2?");
    assert_eq!(chunks.concat(), "Sure, 4.");
    assert!(chunks.iter().all(|c| !c.contains('\n')), "{chunks:?}");
    assert_eq!(stats.stop, StopReason::StopString);
    // A near miss is released in order.
    host.script(&["a\nUse it"]);
    let (chunks, stats) = turn(&mut app, &host, &mut chat, "again");
    assert_eq!((chunks.concat().as_str(), stats.stop), ("a\nUse it", StopReason::EndOfGeneration));
}

#[test]
fn cancelling_mid_reply_stops_keeps_the_partial_reply_and_the_session_goes_on() {
    let host = FakeHost::default();
    let mut app = load(&host, 1024);
    let mut chat = open(&mut app, &host, SessionKind::Chat, patch());
    host.script(&["A long answer that goes on and on.", "Ok."]);
    host.shared.cancel_after_samples.set(Some(5));
    let (chunks, stats) = turn(&mut app, &host, &mut chat, "Tell me everything.");
    assert_eq!(stats.stop, StopReason::Cancelled);
    assert_eq!(chunks.concat(), "A lon", "one token per sample until the cancel");
    assert_eq!(chat.history().last().unwrap().1, "A lon");
    consistent(&host, &chat);
    host.shared.cancel.set(false);
    let (chunks, stats) = turn(&mut app, &host, &mut chat, "Short, please.");
    assert_eq!((chunks.concat().as_str(), stats.stop), ("Ok.", StopReason::EndOfGeneration));
    consistent(&host, &chat);
}

#[test]
fn chat_and_translation_keep_their_own_history_and_kv() {
    let host = FakeHost::default();
    let mut app = load(&host, 1024);
    let mut chat = open(&mut app, &host, SessionKind::Chat, patch());
    let mut p = patch();
    p.system_prompt = None;
    let mut tr = open(&mut app, &host, SessionKind::Translation, p);
    assert_ne!(chat.seq(), tr.seq());
    assert!(
        matches!(tr.send(&mut app.env(&host), "Hi").err(), Some(AppError::InvalidArgument(_))),
        "no pair yet"
    );
    tr.set_languages(Some("en"), "fr").unwrap();
    host.script(&["Hello!", " \"Bonjour\"\n", "Again."]);
    turn(&mut app, &host, &mut chat, "Hi");
    let chat_kv = chat.kv_token_ids().to_vec();
    let (chunks, _) = turn(&mut app, &host, &mut tr, "Good morning");
    assert_eq!(chunks.concat(), "Bonjour", "quotes and whitespace around a translation are dropped");
    assert_eq!(host.kv(chat.seq()), chat_kv, "a translation must not touch the chat KV");
    assert!(host.text(tr.kv_token_ids()).contains("Translate from English to French:\n\nGood morning"));
    turn(&mut app, &host, &mut chat, "More");
    consistent(&host, &chat);
    consistent(&host, &tr);
    assert_eq!(chat.history().len(), 4);
    assert_eq!(tr.history().iter().map(|(_, t)| t.as_str()).collect::<Vec<_>>(), ["Good morning", "Bonjour"]);
    // Another pair starts afresh; the same pair keeps the conversation.
    tr.set_languages(Some("English"), "French").unwrap();
    assert_eq!(tr.history().len(), 2);
    tr.set_languages(None, "German").unwrap();
    assert!(tr.history().is_empty());
}

#[test]
fn the_system_turn_comes_from_the_prefix_cache_and_a_changed_one_misses() {
    let host = FakeHost::default();
    let mut app = load(&host, 1024);
    let mut p = patch();
    p.prefix_cache = Some(true);
    let mut chat = open(&mut app, &host, SessionKind::Chat, p.clone());
    host.script(&["One.", "Two.", "Three.", "Four."]);
    let (_, first) = turn(&mut app, &host, &mut chat, "Hi");
    assert!(!first.prefix_cached);
    assert_eq!(host.states_saved.get(), 1, "the system turn's state is saved");
    let full = first.prompt_tokens;
    let first_text = chat.history()[1].1.clone();

    // After a reset (memory), and after a restart of the guest (disk).
    chat.reset(&host);
    let (_, hit) = turn(&mut app, &host, &mut chat, "Hi");
    assert!(hit.prefix_cached);
    let system = "<|im_start|>system\nBe brief.<|im_end|>\n";
    assert_eq!(hit.prompt_tokens, full - host.tokenize(system, true).unwrap().len() as u32);
    assert_eq!(hit.kv_tokens, first.kv_tokens, "the same KV as evaluating it");
    consistent(&host, &chat);
    drop(chat);
    let mut restarted = load(&host, 1024);
    let mut chat = open(&mut restarted, &host, SessionKind::Chat, p.clone());
    let (_, disk) = turn(&mut restarted, &host, &mut chat, "Hi");
    assert!(disk.prefix_cached && host.states_loaded.get() == 1, "{disk:?}");
    assert_ne!(first_text, "", "replies are text");

    // Another system prompt: a miss, evaluated and saved under its own key.
    let mut other = p;
    other.system_prompt = Some("Be verbose.".into());
    let o = chat.options().merged(&other, |_| None).unwrap();
    chat.set_options(o).unwrap();
    chat.reset(&host);
    let (_, miss) = turn(&mut restarted, &host, &mut chat, "Hi");
    assert!(!miss.prefix_cached);
    assert_eq!(host.states_saved.get(), 2);
    let files = host.storage.names(Root::State).into_iter().filter(|n| n.starts_with("prefix-")).count();
    assert_eq!(files, 2);
}

#[test]
fn a_reply_on_an_unloaded_model_is_not_ready_and_a_busy_session_refuses() {
    let host = FakeHost::default();
    let mut app = load(&host, 1024);
    let mut chat = open(&mut app, &host, SessionKind::Chat, patch());
    host.script(&["Hello there."]);
    let mut g = chat.send(&mut app.env(&host), "Hi").unwrap();
    assert!(matches!(chat.send(&mut app.env(&host), "again").err(), Some(AppError::Busy)));
    app.load_model(&host, &load_options(1024)).unwrap();
    assert_eq!(g.next(&mut chat, &mut app.env(&host)), Err(AppError::NotReady));
    assert!(matches!(chat.send(&mut app.env(&host), "Hi").err(), Some(AppError::NotReady)));
    assert!(matches!(app.open_session(&host, SessionKind::Chat), Ok(_)));
}

#[test]
fn a_reply_from_before_a_reload_does_not_judge_the_new_model() {
    let host = FakeHost::default();
    let mut app = load(&host, 1024);
    let mut chat = open(&mut app, &host, SessionKind::Chat, patch());
    host.script(&["Hello there, friend."]);
    let mut g = chat.send(&mut app.env(&host), "Hi").unwrap();
    assert!(g.next(&mut chat, &mut app.env(&host)).unwrap().is_some(), "a token was generated");
    app.load_model(&host, &load_options(1024)).unwrap();
    host.residency.set(0.2); // the new load's pages still coming in
    assert_eq!(g.next(&mut chat, &mut app.env(&host)), Err(AppError::NotReady));
    // Nothing judged the new model: evicted at send, it is re-warmed.
    let warmups = host.warmups.get();
    let mut chat = open(&mut app, &host, SessionKind::Chat, patch());
    host.script(&["a", "b"]);
    let (_, s) = turn(&mut app, &host, &mut chat, "Hi");
    assert_eq!((s.residency, host.warmups.get(), s.outlook), (0.2, warmups + 1, MemoryOutlook::Resident));
}

#[test]
fn evicted_pages_are_rewarmed_alongside_the_prompt_unless_turned_off() {
    let host = FakeHost::default();
    let mut app = load(&host, 1024);
    let warmups = host.warmups.get();
    let mut p = patch();
    p.rewarm = Some(false);
    let mut chat = open(&mut app, &host, SessionKind::Chat, p.clone());
    host.script(&["a", "b"]);
    host.residency.set(0.2);
    // Without a pass the decode faults the pages back in itself.
    host.after_reply_residency.set(Some(1.0));
    let (_, s) = turn(&mut app, &host, &mut chat, "Hi");
    assert_eq!((s.residency, host.warmups.get()), (0.2, warmups));
    p.rewarm = Some(true);
    let o = chat.options().merged(&p, |_| None).unwrap();
    chat.set_options(o).unwrap();
    host.residency.set(0.2); // evicted again while idle
    let (_, s) = turn(&mut app, &host, &mut chat, "Hi");
    assert_eq!((s.residency, host.warmups.get()), (0.2, warmups + 1));
}

#[test]
fn a_reply_tells_the_app_when_the_model_cannot_stay_resident() {
    let host = FakeHost::default();
    let mut app = load(&host, 1024);
    let mut chat = open(&mut app, &host, SessionKind::Chat, patch());
    host.script(&["a", "b"]);
    let (_, s) = turn(&mut app, &host, &mut chat, "Hi");
    assert_eq!(s.outlook, MemoryOutlook::Resident);
    // Evicted, and memory now holds only 60 % of the file: the re-warm at
    // send cannot make the model resident, and this reply says so.
    host.residency.set(0.2);
    host.warm_reach.set(0.6);
    host.script(&["a", "b"]);
    let (_, s) = turn(&mut app, &host, &mut chat, "Hi");
    assert_eq!((s.residency, s.outlook), (0.2, MemoryOutlook::Paging));
    // Found resident at the next send and still resident when the reply
    // ends: the pressure has passed.
    host.residency.set(1.0);
    host.script(&["a", "b"]);
    let (_, s) = turn(&mut app, &host, &mut chat, "Hi");
    assert_eq!(s.outlook, MemoryOutlook::Resident);
    // Resident at send, paged out by the end of the reply (nothing here
    // lowers it but the test; on a device, the other apps' memory).
    host.script(&["a", "b"]);
    host.after_reply_residency.set(Some(0.5));
    let (_, s) = turn(&mut app, &host, &mut chat, "Hi");
    assert_eq!((s.residency, s.outlook), (1.0, MemoryOutlook::Paging));
    // Loading again (say, with a smaller context) measures afresh.
    host.warm_reach.set(1.0);
    let mut app = load(&host, 512);
    let mut chat = open(&mut app, &host, SessionKind::Chat, patch());
    host.script(&["a", "b"]);
    let (_, s) = turn(&mut app, &host, &mut chat, "Hi");
    assert_eq!(s.outlook, MemoryOutlook::Resident);
}
