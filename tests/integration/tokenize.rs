//! The host's linear special-token split gives exactly llama.cpp's tokens,
//! on real vocabularies (SmolLM2's BPE with ChatML tokens, the tiny
//! cohere2 model's Tiny Aya control tokens), for text full of special-token
//! strings, near misses, whitespace and multilingual words.

use std::sync::Arc;

use bittybot_host::llama::ffi::Model;
use bittybot_host::llama::tokenize::Specials;
use bittybot_tests::{demo_model, model_file};

/// A small deterministic generator (no dependency needed for this).
struct Lcg(u64);

impl Lcg {
    fn next(&mut self, n: usize) -> usize {
        self.0 = self.0.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
        ((self.0 >> 33) as usize) % n
    }
}

fn compare(model: &std::path::Path, specials_text: &[&str]) {
    bittybot_host::llama::backend();
    let model = Arc::new(Model::load(model.to_str().unwrap(), true).unwrap().unwrap());
    let vocab = model.vocab();
    let specials = Specials::of(&vocab);
    let words = [
        "Hello",
        " world",
        " ",
        "  ",
        "\n",
        "\n\n",
        "é",
        " 日本語",
        "<",
        ">",
        "|",
        "<|",
        "|>",
        "_TOKEN",
        " Привет",
        "🙂",
        "ok.",
        "\t",
        "Translate to French:",
    ];
    let mut rng = Lcg(20261202);
    let mut checked = 0;
    for case in 0..400 {
        let mut text = String::new();
        for _ in 0..rng.next(30) {
            if rng.next(3) == 0 {
                text.push_str(specials_text[rng.next(specials_text.len())]);
            } else {
                text.push_str(words[rng.next(words.len())]);
            }
        }
        for parse_special in [true, false] {
            let ours = specials.tokenize(&vocab, &text, parse_special).unwrap();
            let theirs = vocab.tokenize(&text, parse_special).unwrap();
            assert_eq!(ours, theirs, "case {case}, parse_special {parse_special}: {text:?}");
            checked += 1;
        }
    }
    assert_eq!(checked, 800);
}

#[test]
fn the_linear_split_matches_llama_cpp_on_smollm2() {
    compare(
        &demo_model(),
        &["<|im_start|>", "<|im_end|>", "<|endoftext|>", "<repo_name>", "<|im_start|>user\n"],
    );
}

#[test]
fn the_linear_split_matches_llama_cpp_on_tiny_aya_tokens() {
    compare(
        &model_file("tiny-aya-cohere2-f16.gguf"),
        &[
            "<BOS_TOKEN>",
            "<|START_OF_TURN_TOKEN|>",
            "<|END_OF_TURN_TOKEN|>",
            "<|SYSTEM_TOKEN|>",
            "<|USER_TOKEN|>",
            "<|CHATBOT_TOKEN|>",
            "<|START_RESPONSE|>",
            "<|END_RESPONSE|>",
            "<EOS_TOKEN>",
        ],
    );
}
