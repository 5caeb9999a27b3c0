//! Chatting with the demo model through the guest.

use bittybot_host::{SessionKind, SessionOptions, StopReason};
use bittybot_tests::{demo_model, runtime_with, temp_dir};

fn greedy(max_tokens: u32) -> SessionOptions {
    let mut o = SessionOptions::unchanged();
    o.temperature = Some(0.0);
    o.max_tokens = Some(max_tokens);
    o
}

#[test]
fn one_shot_reply_streams_and_ends_on_end_of_generation() {
    let dir = temp_dir();
    let mut rt = runtime_with(dir.path(), demo_model(), 1024);
    let chat = rt.open_session(SessionKind::Chat).unwrap();
    rt.configure(&chat, &greedy(200)).unwrap();
    let (chunks, stats) = rt.chat(&chat, "What is the capital of France? Answer in one sentence.").unwrap();
    let text: String = chunks.concat();
    assert!(chunks.len() > 1, "expected a streamed reply, got {chunks:?}");
    assert!(text.contains("Paris"), "unexpected reply: {text:?}");
    assert_eq!(stats.stop, StopReason::EndOfGeneration);
    assert!(stats.generated_tokens > 0 && stats.generated_tokens < 200, "{stats:?}");
    assert!(stats.ttft_ms > 0.0 && stats.decode_tokens_per_s > 0.0, "{stats:?}");
    // The KV holds the prompt and every reply token (the end token is never evaluated).
    assert_eq!(stats.kv_tokens, stats.prompt_tokens + stats.generated_tokens, "{stats:?}");
    // Control tokens never reach the text.
    assert!(!text.contains("<|im_end|>") && !text.contains("<|im_start|>"), "{text:?}");
}

#[test]
fn second_turn_evaluates_only_the_new_turn() {
    let dir = temp_dir();
    let mut rt = runtime_with(dir.path(), demo_model(), 1024);
    let chat = rt.open_session(SessionKind::Chat).unwrap();
    rt.configure(&chat, &greedy(48)).unwrap();
    let (_, first) = rt.chat(&chat, "Name one planet of the solar system.").unwrap();
    let kv_after_first = rt.kv_tokens(&chat).unwrap();
    assert_eq!(kv_after_first, first.kv_tokens);
    let (_, second) = rt.chat(&chat, "And another one?").unwrap();
    assert!(second.prompt_tokens < second.kv_tokens, "{second:?}");
    // Only the new turn (with the template's closing of the previous reply)
    // was evaluated: the KV grew by exactly that and the reply.
    let decoded_reply = second.generated_tokens - u32::from(second.stop == StopReason::MaxTokens);
    assert_eq!(second.prompt_tokens, second.kv_tokens - kv_after_first - decoded_reply, "{second:?}");
    assert!(second.prompt_tokens < 24, "turn 2 evaluated {} tokens", second.prompt_tokens);
    let history = rt.history(&chat).unwrap();
    assert_eq!(history.len(), 4);
    assert_eq!(history[2].content, "And another one?");
}
