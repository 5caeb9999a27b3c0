//! The importance matrix and the quality measurement: the matrix of the
//! tiny synthetic model equals one computed from its weights in numpy, it
//! loads in the quantizer, a model against itself is identical, bad input
//! is a clear error, and on the demo model an importance matrix from the
//! calibration texts lowers the KL divergence on the held-out texts.

use std::path::{Path, PathBuf};

use bittybot_host::gguf::{Array, Gguf, Value};
use bittybot_host::hashing::hash_file;
use bittybot_tests::{demo_model, model_file, temp_dir, workspace};
use bittybot_tools::eval::EvalError;
use bittybot_tools::imatrix::{self, ImatrixRequest};
use bittybot_tools::quality::{self, QualityReport, QualityRequest};
use bittybot_tools::quantize::{self, QuantType, QuantizeRequest};

fn text(split: &str, lang: &str) -> PathBuf {
    workspace().join("tools/data/text").join(split).join(format!("{lang}.txt"))
}

/// The first `chars` characters of an evaluation text, written into `dir`
/// (a model against itself is identical on any text; short ones keep the
/// three passes over it quick).
fn excerpt(dir: &Path, lang: &str, chars: usize) -> PathBuf {
    let full = std::fs::read_to_string(text("evaluation", lang)).unwrap();
    let path = dir.join(format!("{lang}.txt"));
    std::fs::write(&path, full.chars().take(chars).collect::<String>()).unwrap();
    path
}

fn tiny() -> PathBuf {
    model_file("tiny-aya-cohere2-f16.gguf")
}

fn imatrix_req(
    model: PathBuf,
    texts: Vec<PathBuf>,
    out: PathBuf,
    n_ctx: u32,
    chunks: usize,
) -> ImatrixRequest {
    ImatrixRequest { model, texts, output: out, n_ctx, threads: 2, max_chunks: Some(chunks) }
}

fn quality_req(
    reference: PathBuf,
    model: PathBuf,
    texts: Vec<PathBuf>,
    base: PathBuf,
    n_ctx: u32,
) -> QualityRequest {
    QualityRequest { reference, model, texts, base, n_ctx, threads: 2 }
}

/// The F32 data of a tensor of a GGUF file.
fn f32s(path: &Path, g: &Gguf, name: &str) -> Vec<f32> {
    let t = g.tensor(name).unwrap_or_else(|| panic!("no {name}"));
    let bytes = std::fs::read(path).unwrap();
    bytes[t.offset as usize..(t.offset + t.size) as usize]
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
}

#[test]
fn the_imatrix_of_the_tiny_model_equals_the_activations_summed_from_its_weights() {
    let dir = temp_dir();
    let out = dir.path().join("tiny.imatrix.gguf");
    let req = imatrix_req(tiny(), vec![text("calibration", "en")], out.clone(), 64, 3);
    let report = imatrix::imatrix(&req, |_, _| {}).unwrap();
    assert_eq!((report.chunks, report.tokens), (3, 192));
    let g = Gguf::open(&out).unwrap();
    assert_eq!(g.get("imatrix.datasets"), Some(&Value::Array(Array::Str(vec!["en.txt".into()]))));
    assert_eq!(g.uint("imatrix.chunk_count"), Some(3));
    assert_eq!(g.uint("imatrix.chunk_size"), Some(64));
    // Every matrix of every layer has an entry, counting every token.
    let model = Gguf::open(&tiny()).unwrap();
    let weights: Vec<&str> = model
        .tensors
        .iter()
        .filter(|t| t.name.starts_with("blk.") && t.dims.len() == 2 && t.dims[1] > 1)
        .map(|t| t.name.as_str())
        .collect();
    assert_eq!(report.entries, weights.len(), "{weights:?}");
    for w in &weights {
        assert_eq!(f32s(&out, &g, &format!("{w}.counts")), vec![192.0], "{w}");
    }

    // The reference: layer 0's input is LayerNorm(token embedding) × attn_norm,
    // summed over the same tokens (BOS in place of each chunk's first), in numpy.
    bittybot_host::llama::backend();
    let m = bittybot_host::llama::ffi::Model::load(tiny().to_str().unwrap(), true).unwrap().unwrap();
    let vocab = m.vocab();
    let mut tokens =
        vocab.tokenize(&std::fs::read_to_string(text("calibration", "en")).unwrap(), false).unwrap();
    if vocab.add_bos() {
        tokens.insert(0, vocab.bos().unwrap());
    }
    let mut used: Vec<i32> = tokens[..192].to_vec();
    for c in 0..3 {
        used[c * 64] = vocab.bos().unwrap();
    }
    let script = r#"
import json, sys
import numpy as np
from gguf import GGUFReader
r = GGUFReader(sys.argv[1])
t = {x.name: x for x in r.tensors}
emb = np.asarray(t["token_embd.weight"].data, dtype=np.float32)
w = np.asarray(t["blk.0.attn_norm.weight"].data, dtype=np.float32)
tokens = json.load(sys.stdin)
x = emb[tokens]
x = (x - x.mean(axis=1, keepdims=True)) / np.sqrt(x.var(axis=1, keepdims=True) + 1e-5) * w
print(json.dumps((x.astype(np.float64) ** 2).sum(axis=0).tolist()))
"#;
    use std::io::Write;
    let mut child = std::process::Command::new(workspace().join(".cache/venv/bin/python"))
        .args(["-c", script])
        .arg(tiny())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("the venv's python (scripts/setup.sh creates it)");
    child.stdin.take().unwrap().write_all(serde_json::to_string(&used).unwrap().as_bytes()).unwrap();
    let out_py = child.wait_with_output().unwrap();
    assert!(out_py.status.success());
    let expected: Vec<f64> = serde_json::from_slice(&out_py.stdout).unwrap();
    for w in ["blk.0.attn_q.weight", "blk.0.attn_k.weight", "blk.0.ffn_up.weight", "blk.0.ffn_gate.weight"] {
        let got = f32s(&out, &g, &format!("{w}.in_sum2"));
        assert_eq!(got.len(), expected.len(), "{w}");
        for (j, (a, b)) in got.iter().zip(&expected).enumerate() {
            let tol = 2e-3 * b.abs().max(1e-3);
            assert!((f64::from(*a) - b).abs() <= tol, "{w} column {j}: {a} vs numpy {b}");
        }
    }

    // The quantizer takes it and records it in the manifest.
    let q = dir.path().join("tiny-q3.gguf");
    let mut qr = QuantizeRequest::new(tiny(), &q, QuantType::parse("Q3_K_S").unwrap());
    qr.imatrix = Some(out.clone());
    qr.threads = Some(2);
    let done = quantize::quantize(&qr, |_| {}).unwrap();
    assert_eq!(done.manifest.imatrix_sha256, Some(hash_file(&out, |_, _| true).unwrap()));
    assert_eq!(done.manifest.calibration, vec!["en.txt".to_string()]);
}

#[test]
fn a_model_against_itself_is_identical_and_bad_input_is_a_clear_error() {
    let dir = temp_dir();
    let base = dir.path().join("demo.kld");
    let texts = vec![excerpt(dir.path(), "en", 1500), excerpt(dir.path(), "ru", 1000)];
    let req = quality_req(demo_model(), demo_model(), texts.clone(), base.clone(), 128);
    let r = quality::quality(&req, |_, _, _| {}).unwrap();
    assert!(!r.base_reused);
    assert_eq!(r.texts.len(), 2);
    for t in r.texts.iter().chain([&r.overall]) {
        assert!(t.tokens > 0);
        assert!(t.kld_mean.value.abs() < 1e-3, "{t:?}");
        assert_eq!(t.same_top_pct.value, 100.0, "{t:?}");
        assert!((t.ppl.value - t.ppl_reference.value).abs() / t.ppl.value < 1e-3, "{t:?}");
    }
    // The base file is llama.cpp's format, and a second run reuses it.
    assert_eq!(&std::fs::read(&base).unwrap()[..8], b"_logits_");
    assert!(quality::quality(&req, |_, _, _| {}).unwrap().base_reused);

    let err = |r: QualityRequest| quality::quality(&r, |_, _, _| {}).unwrap_err();
    let other = quality_req(demo_model(), tiny(), texts.clone(), dir.path().join("b2.kld"), 128);
    let e = err(other);
    assert!(matches!(&e, EvalError::Model { reason, .. } if reason.contains("vocabulary")), "{e}");
    let empty = dir.path().join("empty.txt");
    std::fs::write(&empty, "  \n").unwrap();
    let e = err(quality_req(demo_model(), demo_model(), vec![empty], dir.path().join("b3.kld"), 128));
    assert!(e.to_string().contains("empty"), "{e}");
    let short = dir.path().join("short.txt");
    std::fs::write(&short, "Only a few words.").unwrap();
    let e = err(quality_req(demo_model(), demo_model(), vec![short.clone()], dir.path().join("b4.kld"), 128));
    assert!(e.to_string().contains("fewer than one chunk"), "{e}");
    let e = imatrix::imatrix(
        &imatrix_req(demo_model(), vec![short], dir.path().join("x.gguf"), 128, 1),
        |_, _| {},
    )
    .unwrap_err();
    assert!(e.to_string().contains("fewer than one chunk"), "{e}");
}

fn requantize(input: &Path, out: &Path, imatrix: Option<PathBuf>) {
    let mut r = QuantizeRequest::new(input, out, QuantType::parse("Q3_K_S").unwrap());
    r.allow_requantize = true;
    r.imatrix = imatrix;
    r.threads = Some(2);
    quantize::quantize(&r, |_| {}).unwrap();
}

fn show(r: &QualityReport) -> String {
    r.texts
        .iter()
        .chain([&r.overall])
        .map(|t| format!("{} KLD {:.5} ± {:.5}", t.name, t.kld_mean.value, t.kld_mean.se))
        .collect::<Vec<_>>()
        .join("; ")
}

#[test]
fn on_the_demo_model_an_importance_matrix_lowers_the_kl_divergence_on_held_out_texts() {
    let dir = temp_dir();
    let langs = ["en", "es", "ru", "zh"];
    let calib: Vec<PathBuf> = langs.iter().map(|l| text("calibration", l)).collect();
    let eval: Vec<PathBuf> = langs.iter().map(|l| text("evaluation", l)).collect();
    let matrix = dir.path().join("demo.imatrix.gguf");
    imatrix::imatrix(&imatrix_req(demo_model(), calib, matrix.clone(), 256, 32), |_, _| {}).unwrap();
    let (plain, weighted) = (dir.path().join("plain.gguf"), dir.path().join("weighted.gguf"));
    requantize(&demo_model(), &plain, None);
    requantize(&demo_model(), &weighted, Some(matrix));
    let base = dir.path().join("demo.kld");
    let without =
        quality::quality(&quality_req(demo_model(), plain, eval.clone(), base.clone(), 256), |_, _, _| {})
            .unwrap();
    let with = quality::quality(&quality_req(demo_model(), weighted, eval, base, 256), |_, _, _| {}).unwrap();
    eprintln!("without: {}\nwith:    {}", show(&without), show(&with));
    assert!(
        with.overall.kld_mean.value < without.overall.kld_mean.value,
        "the importance matrix did not lower the mean KLD: without {}, with {}",
        show(&without),
        show(&with)
    );
}
