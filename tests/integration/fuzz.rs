//! Property tests (proptest) of the two places where guest-controlled bytes
//! and numbers meet llama.cpp: the GGUF pre-check in front of the loader,
//! and the sampler argument checks in front of the sampler constructors.
//! llama.cpp aborts the process on some bad input (GGML_ASSERT), so the
//! property is that the test process survives: every mangled file is an
//! error of our reader or validator, or a file llama.cpp loads (and decodes
//! a token with, or refuses to) or refuses by returning NULL; every
//! accepted sampler configuration builds.

use std::cell::Cell;
use std::io::Write;

use bittybot_host::bindings::inference::SamplerConfig;
use bittybot_host::gguf::Gguf;
use bittybot_host::limits::Limits;
use bittybot_host::llama::chain_links;
use bittybot_host::llama::ffi::{Batch, Chain, Context, ContextParams, KvStorage, Link, Model};
use bittybot_tests::{model_file, temp_dir};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};

/// A byte change: where (in the metadata) and the new value.
#[derive(Debug, Clone)]
struct Mutation {
    region: u8,
    at: u64,
    value: u8,
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let value = prop_oneof![Just(0u8), Just(0xff), Just(0x7f), Just(0x80), Just(1), any::<u8>()];
    (0u8..3, any::<u64>(), value).prop_map(|(region, at, value)| Mutation { region, at, value })
}

#[test]
fn a_mangled_gguf_header_is_an_error_or_a_clean_load_never_an_abort() {
    bittybot_host::llama::backend();
    let original = std::fs::read(model_file("tiny-aya-cohere2-f16.gguf")).unwrap();
    let meta = Gguf::read(&mut &original[..], original.len() as u64).unwrap().data_offset;
    // The header and the model's numeric keys come before the vocabulary.
    let vocab = original.windows(21).position(|w| w == b"tokenizer.ggml.tokens").unwrap() as u64;
    let archs: Vec<String> = Limits::default().architectures;
    let archs: Vec<&str> = archs.iter().map(String::as_str).collect();
    let dir = temp_dir();
    let path = dir.path().join("mangled.gguf");
    let (refused, llama_refused, loaded) = (Cell::new(0), Cell::new(0), Cell::new(0));
    let mut runner = TestRunner::new(Config { cases: 400, failure_persistence: None, ..Config::default() });
    let cut = prop_oneof![9 => Just(None), 1 => (0u64..meta).prop_map(Some)];
    let strategy = (proptest::collection::vec(mutation(), 1..4), cut);
    runner
        .run(&strategy, |(mutations, cut)| {
            let mut bytes = original.clone();
            for m in &mutations {
                // The header and the model's keys, the tensor infos at the
                // end of the metadata, or anywhere in the metadata.
                // Anywhere, a printable byte keeps the strings' UTF-8 valid,
                // so the change can get past the reader.
                let (lo, hi, value) = match m.region {
                    0 => (0, vocab, m.value),
                    1 => (meta.saturating_sub(8192), meta, m.value),
                    _ => (0, meta, b'a' + m.value % 26),
                };
                bytes[(lo + m.at % (hi - lo)) as usize] = value;
            }
            if let Some(cut) = cut {
                bytes.truncate(cut as usize);
            }
            let checked =
                Gguf::read(&mut &bytes[..], bytes.len() as u64).and_then(|g| g.validate_model(&archs));
            if let Err(e) = checked {
                refused.set(refused.get() + 1);
                if std::env::var_os("FUZZ_VERBOSE").is_some() {
                    eprintln!("refused: {e}");
                }
                return Ok(());
            }
            std::fs::File::create(&path).and_then(|mut f| f.write_all(&bytes)).unwrap();
            // What the pre-check let through reaches llama.cpp's loader: it
            // may refuse it (NULL), but it must not take the process down.
            match Model::load(path.to_str().unwrap(), true) {
                // ggml asserts on some model numbers only in a decode: one
                // token through a context (an error is fine, an abort is not).
                Ok(Some(model)) => {
                    let _ = decode_one(model);
                    loaded.set(loaded.get() + 1)
                }
                Ok(None) => llama_refused.set(llama_refused.get() + 1),
                Err(e) => return Err(TestCaseError::fail(format!("{mutations:?}: {e}"))),
            }
            Ok(())
        })
        .unwrap();
    let (refused, llama_refused, loaded) = (refused.get(), llama_refused.get(), loaded.get());
    eprintln!("refused by the pre-check {refused}, refused by llama.cpp {llama_refused}, loaded {loaded}");
    assert!(refused > 0, "no mutation was refused: the generator does not reach the header");
}

/// The tiny model with the 4-byte value of `key` (a u32 or f32 key) replaced.
fn with_value(original: &[u8], key: &str, value: [u8; 4]) -> Vec<u8> {
    let mut needle = (key.len() as u64).to_le_bytes().to_vec();
    needle.extend(key.as_bytes());
    let at = original.windows(needle.len()).position(|w| w == needle).unwrap_or_else(|| panic!("no {key}"));
    // The key, its 4-byte type, then the value.
    let v = at + needle.len() + 4;
    let mut bytes = original.to_vec();
    bytes[v..v + 4].copy_from_slice(&value);
    bytes
}

#[test]
fn numbers_ggml_asserts_or_loops_on_are_refused_before_llama_sees_them() {
    let original = std::fs::read(model_file("tiny-aya-cohere2-f16.gguf")).unwrap();
    let archs: Vec<String> = Limits::default().architectures;
    let archs: Vec<&str> = archs.iter().map(String::as_str).collect();
    let check =
        |bytes: &[u8]| Gguf::read(&mut &bytes[..], bytes.len() as u64).and_then(|g| g.validate_model(&archs));
    check(&original).unwrap();
    // Found by an independent hostile guest: rope dimensions 1 and odd
    // (GGML_ASSERT n_dims % 2 == 0), 0 (ggml's RoPE loop never ends), a
    // negative or NaN norm epsilon (GGML_ASSERT eps >= 0), and 2^32-1
    // layers (16.9 GB allocated for the per-layer lists before the check).
    let cases: Vec<(&str, [u8; 4], &str)> = vec![
        ("cohere2.rope.dimension_count", 0u32.to_le_bytes(), "RoPE over 0 dimensions"),
        ("cohere2.rope.dimension_count", 1u32.to_le_bytes(), "RoPE over 1 dimensions"),
        ("cohere2.rope.dimension_count", 63u32.to_le_bytes(), "RoPE over 63 dimensions"),
        ("cohere2.rope.dimension_count", 66u32.to_le_bytes(), "RoPE over 66 dimensions"),
        ("cohere2.attention.layer_norm_epsilon", (-1.0f32).to_le_bytes(), "layer_norm_epsilon is -1"),
        ("cohere2.attention.layer_norm_epsilon", f32::NAN.to_le_bytes(), "layer_norm_epsilon is NaN"),
        ("cohere2.rope.freq_base", 0.0f32.to_le_bytes(), "freq_base is 0"),
        ("cohere2.logit_scale", f32::INFINITY.to_le_bytes(), "logit_scale is inf"),
        ("cohere2.block_count", u32::MAX.to_le_bytes(), "4294967295 layers"),
    ];
    for (key, value, want) in cases {
        let peak_before = peak_rss_kib();
        let err = check(&with_value(&original, key, value)).expect_err(key).to_string();
        assert!(err.contains(want), "{key}: {err}");
        assert!(peak_rss_kib() < peak_before + 64 * 1024, "{key}: the check itself allocated");
    }
    // Partial RoPE (an even count below the head size) is a real model
    // shape: accepted, and it loads and decodes.
    let partial = with_value(&original, "cohere2.rope.dimension_count", 32u32.to_le_bytes());
    check(&partial).unwrap();
    let dir = temp_dir();
    let path = dir.path().join("partial.gguf");
    std::fs::write(&path, &partial).unwrap();
    bittybot_host::llama::backend();
    let model = Model::load(path.to_str().unwrap(), true).unwrap().expect("llama.cpp loads it");
    decode_one(model).unwrap();
}

/// Peak resident memory of this process (VmHWM), KiB.
fn peak_rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// A context on `model` and one decoded token: where ggml's asserts on
/// model numbers fire (the loader alone does not reach them).
fn decode_one(model: Model) -> Result<(), String> {
    let params = ContextParams {
        n_ctx: 64,
        n_batch: 16,
        n_ubatch: 16,
        n_seq_max: 1,
        threads: 1,
        threads_batch: 1,
        kv: KvStorage::F16,
        embeddings: false,
    };
    let mut ctx = Context::new(std::sync::Arc::new(model), &params, None, None)?;
    let mut batch = Batch::default();
    batch.add(1, 0, 0, true);
    match ctx.decode(&mut batch)? {
        0 => Ok(()),
        code => Err(format!("decode returned {code}")),
    }
}

/// Mostly a value from `usual`, sometimes anything (NaN, infinities, extremes).
fn float(usual: std::ops::Range<f32>) -> impl Strategy<Value = f32> {
    let odd = prop_oneof![
        Just(f32::NAN),
        Just(f32::INFINITY),
        Just(f32::NEG_INFINITY),
        Just(-1.0f32),
        Just(f32::MAX),
        Just(0.0f32),
        any::<f32>(),
    ];
    prop_oneof![6 => usual, 1 => odd]
}

fn int(usual: std::ops::Range<i32>) -> impl Strategy<Value = i32> {
    prop_oneof![6 => usual, 1 => prop_oneof![Just(-1i32), Just(i32::MAX), Just(i32::MIN), any::<i32>()]]
}

const N_VOCAB: i32 = 49_152;
const N_CTX: u32 = 2048;

fn sampler_config() -> impl Strategy<Value = SamplerConfig> {
    let window = prop_oneof![6 => 0u32..N_CTX + 64, 1 => prop_oneof![Just(u32::MAX), any::<u32>()]];
    let bias = proptest::collection::vec((int(0..N_VOCAB + 4), float(-10.0..10.0)), 0..4);
    let temperature = prop_oneof![1 => Just(0.0f32), 4 => float(0.0..2.0)];
    let top_p = prop_oneof![1 => Just(1.0f32), 4 => float(0.01..1.0)];
    let penalty = prop_oneof![1 => Just(1.0f32), 4 => float(0.5..2.0)];
    (temperature, int(0..N_VOCAB + 8), top_p, float(0.0..1.0), penalty, window, any::<u32>(), bias).prop_map(
        |(temperature, top_k, top_p, min_p, repeat_penalty, repeat_last_n, seed, logit_bias)| SamplerConfig {
            temperature,
            top_k,
            top_p,
            min_p,
            repeat_penalty,
            repeat_last_n,
            seed,
            logit_bias,
        },
    )
}

#[test]
fn every_sampler_configuration_is_refused_or_builds_within_its_bounds() {
    let (refused, built) = (Cell::new(0), Cell::new(0));
    let mut runner = TestRunner::new(Config { cases: 2000, failure_persistence: None, ..Config::default() });
    runner
        .run(&sampler_config(), |c| {
            let Ok((links, bytes)) = chain_links(&c, N_VOCAB, N_CTX) else {
                refused.set(refused.get() + 1);
                return Ok(());
            };
            prop_assert!(c.temperature.is_finite() && c.temperature >= 0.0);
            prop_assert!((0..=N_VOCAB).contains(&c.top_k));
            prop_assert!(c.repeat_last_n <= N_CTX);
            prop_assert!(c.logit_bias.iter().all(|(t, b)| (0..N_VOCAB).contains(t) && !b.is_nan()));
            // The host's accounting covers the penalty window it allows.
            prop_assert!(bytes >= c.repeat_last_n as u64);
            for l in &links {
                if let Link::Penalties { last_n, .. } = l {
                    prop_assert!(*last_n >= 0 && *last_n as u32 <= N_CTX);
                }
            }
            // llama.cpp builds what the checks let through.
            Chain::new(N_VOCAB, &links).map_err(|e| TestCaseError::fail(format!("{c:?}: {e}")))?;
            built.set(built.get() + 1);
            Ok(())
        })
        .unwrap();
    let (refused, built) = (refused.get(), built.get());
    eprintln!("refused {refused}, built {built}");
    assert!(
        refused > 0 && built > 0,
        "the generator should reach both sides: refused {refused}, built {built}"
    );
}
