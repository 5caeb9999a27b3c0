//! The release pipeline on the project's tiny synthetic cohere2 model:
//! quantize with llama.cpp's quantizer → manifest → spec → the guest takes
//! the spec, downloads the file from a real HTTP server and verifies it,
//! and the quantized model generates. Bad input is a clear error and leaves
//! no file behind.

use std::path::{Path, PathBuf};

use bittybot_host::hashing::hash_file;
use bittybot_host::{LoadOptions, ModelSource, Runtime, SessionKind, SessionOptions, SetupState, VerifiedBy};
use bittybot_tests::http::FileServer;
use bittybot_tests::{model_file, options, runtime_with, temp_dir};
use bittybot_tools::quantize::{
    self, Phase, Progress, QuantType, QuantizeError, QuantizeRequest, Quantized, inspect, manifest_path,
};

fn tiny_f16() -> PathBuf {
    model_file("tiny-aya-cohere2-f16.gguf")
}

fn request(input: &Path, output: &Path, qtype: &str) -> QuantizeRequest {
    let mut r = QuantizeRequest::new(input, output, QuantType::parse(qtype).unwrap());
    r.threads = Some(2);
    r
}

fn run(r: &QuantizeRequest) -> Result<Quantized, QuantizeError> {
    quantize::quantize(r, |_| {})
}

fn files(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

fn sha(path: &Path) -> String {
    hash_file(path, |_, _| true).unwrap()
}

/// Greedy reply of a few tokens from a model file.
fn generates(model: PathBuf) -> u32 {
    let dir = temp_dir();
    let mut rt = runtime_with(dir.path(), model, 512);
    let chat = rt.open_session(SessionKind::Chat).unwrap();
    let mut o = SessionOptions::unchanged();
    o.temperature = Some(0.0);
    o.max_tokens = Some(8);
    rt.configure(&chat, &o).unwrap();
    let (_, stats) = rt.chat(&chat, "Hello there").unwrap();
    stats.generated_tokens
}

#[test]
fn tiny_f16_to_q3_k_s_loads_generates_and_matches_its_manifest() {
    let dir = temp_dir();
    let out = dir.path().join("tiny-q3_k_s.gguf");
    let mut req = request(&tiny_f16(), &out, "q3_k_s");
    req.url_base = Some("https://example.org/releases/v1/".into());
    let mut seen: Vec<Progress> = Vec::new();
    let done = quantize::quantize(&req, |p| seen.push(p.clone())).unwrap();

    // The manifest describes the file on disk, and is on disk next to it.
    let m = &done.manifest;
    assert_eq!(files(dir.path()), vec!["tiny-q3_k_s.gguf", "tiny-q3_k_s.gguf.manifest.json"]);
    assert_eq!(done.manifest_path, manifest_path(&out));
    let on_disk = quantize::read_manifest(&done.manifest_path).unwrap();
    assert_eq!(&on_disk, m);
    assert_eq!(m.file_name, "tiny-q3_k_s.gguf");
    assert_eq!(m.size, std::fs::metadata(&out).unwrap().len());
    assert_eq!(m.sha256, sha(&out));
    assert_eq!(m.quantization, "Q3_K_S");
    assert_eq!(m.source_file_name, "tiny-aya-cohere2-f16.gguf");
    assert_eq!(m.source_sha256, sha(&tiny_f16()));
    assert_eq!(m.source_size, std::fs::metadata(tiny_f16()).unwrap().len());
    assert_eq!(m.llama_cpp_version, bittybot_host::llama::LLAMA_CPP_VERSION);
    assert_eq!(m.url.as_deref(), Some("https://example.org/releases/v1/tiny-q3_k_s.gguf"));
    assert_eq!(m.imatrix_sha256, None);

    // It really is Q3_K_S: the big matrices are q3_K, and smaller than F16.
    let info = inspect(&out).unwrap();
    assert_eq!(info.architecture.as_deref(), Some("cohere2"));
    let q3 = info.tensors.iter().filter(|t| t.type_name == "q3_K").count();
    assert!(q3 >= 4 * 7, "{:?}", info.tensors);
    assert!(m.size * 3 < m.source_size, "{} vs {}", m.size, m.source_size);

    // Progress: each phase in order, quantizing tensor by tensor up to the total.
    let phases: Vec<Phase> = seen.iter().map(|p| p.phase).collect();
    let first_q = phases.iter().position(|p| *p == Phase::Quantizing).unwrap();
    let first_h = phases.iter().position(|p| *p == Phase::HashingOutput).unwrap();
    assert!(phases[..first_q].iter().all(|p| *p == Phase::HashingInput));
    assert!(phases[first_q..first_h].iter().all(|p| *p == Phase::Quantizing));
    let quantizing: Vec<&Progress> = seen.iter().filter(|p| p.phase == Phase::Quantizing).collect();
    assert!(quantizing.windows(2).all(|w| w[0].done <= w[1].done), "progress went back");
    let steps: Vec<_> = quantizing.iter().filter_map(|p| p.tensor.as_ref()).collect();
    assert_eq!(steps.len(), info.tensors.len());
    assert_eq!(steps.last().map(|t| (t.index, t.count)), Some((34, 34)));
    let last = quantizing.last().unwrap();
    assert_eq!(last.done, last.total);
    let input = inspect(&tiny_f16()).unwrap();
    assert_eq!(last.total, input.tensors.iter().map(|t| t.size).sum::<u64>(), "the input's tensor bytes");

    // And it runs.
    assert!(generates(out) > 0, "the quantized model generated nothing");
}

#[test]
fn the_same_input_gives_the_same_bytes_at_any_thread_count() {
    let dir = temp_dir();
    let mut shas = Vec::new();
    for (name, threads) in [("a.gguf", 2), ("b.gguf", 2), ("c.gguf", 1), ("d.gguf", 4)] {
        let mut req = request(&tiny_f16(), &dir.path().join(name), "Q3_K_S");
        req.threads = Some(threads);
        let done = run(&req).unwrap();
        assert_eq!(done.threads, threads);
        shas.push((threads, done.manifest.sha256));
    }
    assert!(shas.iter().all(|(_, s)| *s == shas[0].1), "{shas:?}");
}

#[test]
fn bad_input_is_a_clear_error_and_leaves_no_file() {
    let dir = temp_dir();
    let src = std::fs::read(tiny_f16()).unwrap();
    let bad = dir.path().join("bad");
    std::fs::create_dir(&bad).unwrap();
    std::fs::write(bad.join("text.gguf"), b"hello, not a model").unwrap();
    std::fs::write(bad.join("empty.gguf"), b"").unwrap();
    std::fs::write(bad.join("truncated.gguf"), &src[..src.len() / 2]).unwrap();
    std::fs::write(bad.join("header-only.gguf"), &src[..64]).unwrap();
    let mut other_arch = src.clone();
    let at = other_arch.windows(7).position(|w| w == b"cohere2").unwrap();
    other_arch[at..at + 7].copy_from_slice(b"cohere9");
    std::fs::write(bad.join("unknown-arch.gguf"), &other_arch).unwrap();
    let mut nan = src.clone();
    let n = nan.len();
    nan[n - 200_000..n - 100_000].fill(0xff); // f16 NaNs inside the last tensors
    std::fs::write(bad.join("nan.gguf"), &nan).unwrap();
    std::fs::create_dir(bad.join("folder.gguf")).unwrap();

    let out_dir = dir.path().join("out");
    std::fs::create_dir(&out_dir).unwrap();
    let out = out_dir.join("q.gguf");
    let input_error = |name: &str, needle: &str| {
        let err = run(&request(&bad.join(name), &out, "Q3_K_S")).unwrap_err();
        assert!(matches!(err, QuantizeError::Input { .. }), "{name}: {err:?}");
        assert!(err.to_string().contains(needle), "{name}: {err}");
    };
    input_error("missing.gguf", "no such file");
    input_error("folder.gguf", "not a regular file");
    input_error("empty.gguf", "too short to be GGUF");
    input_error("text.gguf", "not a GGUF file");
    input_error("header-only.gguf", "not a valid GGUF file");
    input_error("truncated.gguf", "truncated");
    // Files only llama.cpp itself can judge fail inside it, as errors.
    for (name, needle) in [("unknown-arch.gguf", "unknown model architecture"), ("nan.gguf", "invalid data")]
    {
        let err = run(&request(&bad.join(name), &out, "Q3_K_S")).unwrap_err();
        assert!(matches!(err, QuantizeError::Quantizer { .. }), "{name}: {err:?}");
        assert!(err.to_string().contains(needle), "{name}: {err}");
    }

    let err = run(&request(&tiny_f16(), &dir.path().join("no/such/folder/q.gguf"), "Q3_K_S")).unwrap_err();
    assert!(
        matches!(err, QuantizeError::Output { .. }) && err.to_string().contains("does not exist"),
        "{err}"
    );
    let copy = out_dir.join("same.gguf");
    std::fs::write(&copy, &src).unwrap();
    let err = run(&request(&copy, &copy, "Q3_K_S")).unwrap_err();
    assert!(err.to_string().contains("is the input file"), "{err}");
    assert_eq!(std::fs::read(&copy).unwrap(), src, "the input is untouched");
    std::fs::remove_file(&copy).unwrap();

    let err = QuantType::parse("Q3_K_XL").unwrap_err();
    assert!(matches!(err, QuantizeError::UnknownType { .. }));
    assert!(err.to_string().contains("valid types: ") && err.to_string().contains("Q4_K_M"), "{err}");

    let mut req = request(&tiny_f16(), &out, "Q4_0");
    req.url_base = Some("ftp://example.org".into());
    assert!(matches!(run(&req), Err(QuantizeError::Url(_))));

    // A type that needs an importance matrix, without one.
    let err = run(&request(&tiny_f16(), &out, "IQ2_XXS")).unwrap_err();
    assert!(matches!(err, QuantizeError::NeedsImatrix { .. }), "{err:?}");

    assert!(files(&out_dir).is_empty(), "left behind: {:?}", files(&out_dir));
}

#[test]
fn requantizing_needs_permission_and_a_failure_midway_leaves_nothing() {
    let dir = temp_dir();
    let q3 = dir.path().join("q3.gguf");
    run(&request(&tiny_f16(), &q3, "Q3_K_S")).unwrap();
    let out_dir = dir.path().join("out");
    std::fs::create_dir(&out_dir).unwrap();
    let out = out_dir.join("q4.gguf");
    // llama.cpp has already written the first tensors when it refuses.
    let err = run(&request(&q3, &out, "Q4_0")).unwrap_err();
    assert!(matches!(err, QuantizeError::AlreadyQuantized { .. }), "{err:?}");
    assert!(err.to_string().contains("requantizing from type q3_K is disabled"), "{err}");
    assert!(files(&out_dir).is_empty(), "left behind: {:?}", files(&out_dir));

    let mut req = request(&q3, &out, "Q4_0");
    req.allow_requantize = true;
    let done = run(&req).unwrap();
    assert_eq!(done.manifest.source_sha256, sha(&q3));
    assert!(generates(out) > 0);
}

/// The importance values of column `i` in the test imatrices.
fn importance(i: i64) -> f32 {
    1.0 + (i % 7) as f32
}

/// The same imatrix in llama-imatrix's GGUF format, written by the Python
/// `gguf` package: `NAME.in_sum2` (sums of squares) and `NAME.counts`.
fn gguf_imatrix(path: &Path, matrices: &[(String, i64)], calls: i32) {
    let script = r#"
import json, sys
import gguf, numpy as np
path, calls = sys.argv[1], int(sys.argv[2])
w = gguf.GGUFWriter(path, "imatrix")
w.kv_data[0].pop("general.architecture", None)
w.add_array("imatrix.datasets", ["wiki.txt"])
w.add_uint32("imatrix.chunk_count", 10)
w.add_uint32("imatrix.chunk_size", 512)
for name, ne0 in json.load(sys.stdin):
    sums = np.array([(1 + i % 7) * calls for i in range(ne0)], dtype=np.float32).reshape(1, ne0)
    w.add_tensor(name + ".in_sum2", sums)
    w.add_tensor(name + ".counts", np.full((1, 1), calls, dtype=np.float32))
w.write_header_to_file(); w.write_kv_data_to_file(); w.write_tensors_to_file(); w.close()
"#;
    use std::io::Write;
    let mut child = std::process::Command::new(bittybot_tests::workspace().join(".cache/venv/bin/python"))
        .args(["-c", script])
        .arg(path)
        .arg(calls.to_string())
        .stdin(std::process::Stdio::piped())
        .spawn()
        .expect("run the venv's python (scripts/setup.sh creates it)");
    child.stdin.take().unwrap().write_all(serde_json::to_string(matrices).unwrap().as_bytes()).unwrap();
    assert!(child.wait().unwrap().success(), "writing the GGUF imatrix failed");
}

#[test]
fn an_importance_matrix_in_either_format_is_used() {
    let dir = temp_dir();
    // An entry for every matrix; sums of `calls` calls, so the means are `importance`.
    let info = inspect(&tiny_f16()).unwrap();
    let matrices: Vec<(String, i64)> =
        info.tensors.iter().filter(|t| t.dims[1] > 1).map(|t| (t.name.clone(), t.dims[0])).collect();
    let calls = 2i32;
    // Legacy imatrix.dat: count, then per entry name, ncall, nval, sums;
    // then the chunk count and the dataset name.
    let mut dat = Vec::new();
    dat.extend((matrices.len() as i32).to_le_bytes());
    for (name, ne0) in &matrices {
        dat.extend((name.len() as i32).to_le_bytes());
        dat.extend(name.as_bytes());
        dat.extend(calls.to_le_bytes());
        dat.extend((*ne0 as i32).to_le_bytes());
        for i in 0..*ne0 {
            dat.extend((importance(i) * calls as f32).to_le_bytes());
        }
    }
    dat.extend(10i32.to_le_bytes());
    dat.extend(8i32.to_le_bytes());
    dat.extend(b"wiki.txt");
    // Same file name in two folders: llama.cpp records the name in the output.
    for sub in ["legacy", "gguf"] {
        std::fs::create_dir(dir.path().join(sub)).unwrap();
    }
    let legacy = dir.path().join("legacy/imatrix");
    std::fs::write(&legacy, &dat).unwrap();
    let gguf = dir.path().join("gguf/imatrix");
    gguf_imatrix(&gguf, &matrices, calls);

    let mut outputs = Vec::new();
    for imatrix in [&legacy, &gguf] {
        let out = imatrix.with_file_name("iq2.gguf");
        let mut req = request(&tiny_f16(), &out, "IQ2_XXS");
        req.imatrix = Some(imatrix.clone());
        let done = run(&req).unwrap();
        assert_eq!(done.manifest.imatrix_sha256, Some(sha(imatrix)));
        let info = inspect(&out).unwrap();
        assert!(info.tensors.iter().any(|t| t.type_name == "iq2_xxs"), "{:?}", info.tensors);
        outputs.push(done.manifest.sha256);
    }
    assert_eq!(outputs[0], outputs[1], "both formats give the same importance and so the same bytes");

    // A broken one is refused before any work.
    let out_dir = dir.path().join("out");
    std::fs::create_dir(&out_dir).unwrap();
    std::fs::write(&legacy, &dat[..dat.len() / 2]).unwrap();
    let mut req = request(&tiny_f16(), &out_dir.join("iq2.gguf"), "IQ2_XXS");
    req.imatrix = Some(legacy);
    let err = run(&req).unwrap_err();
    assert!(matches!(err, QuantizeError::Imatrix { .. }), "{err:?}");
    assert!(files(&out_dir).is_empty());
}

#[test]
fn manifest_to_spec_is_accepted_by_the_guest_downloaded_and_verified() {
    let dir = temp_dir();
    let release = dir.path().join("release");
    std::fs::create_dir(&release).unwrap();
    let out = release.join("tiny-aya-q3_k_s.gguf");
    let done = run(&request(&tiny_f16(), &out, "Q3_K_S")).unwrap();
    let manifest = quantize::read_manifest(&done.manifest_path).unwrap();
    assert!(manifest.spec_json(None).is_err(), "no URL: neither given nor in the manifest");

    // The file is served at the server's path; the spec says where.
    let bytes = std::fs::read(&out).unwrap();
    let server = FileServer::start(bytes.clone());
    let json = manifest.spec_json(Some(&server.url())).unwrap();
    let value: serde_json::Value = serde_json::from_str(&json).unwrap();
    let keys: Vec<&str> = value.as_object().unwrap().keys().map(String::as_str).collect();
    assert_eq!(keys, ["file_name", "sha256", "size", "url"], "only typed facts, nothing derived");

    let data = temp_dir();
    let mut rt = Runtime::start(options(data.path(), None)).unwrap();
    let spec = rt.resolve_spec(Some(&json)).unwrap();
    assert_eq!(spec.file_name, "tiny-aya-q3_k_s.gguf");
    assert_eq!((spec.size, spec.sha256.as_str()), (manifest.size, manifest.sha256.as_str()));
    assert_eq!(spec.display_size, "1.26 MB");
    assert!(spec.free_space_needed > spec.size, "the margin is derived by the guest");

    let ready = match rt.run_setup(Some(&json), true, false, |_| {}).unwrap() {
        SetupState::Ready(r) => r,
        other => panic!("{other:?}"),
    };
    assert_eq!(ready.verified_by, VerifiedBy::Download);
    let fetched = data.path().join("models").join(&ready.file_name);
    assert_eq!(sha(&fetched), manifest.sha256);

    // `verify`: hashing the file again against the spec passes.
    match rt.run_setup(Some(&json), false, true, |_| {}).unwrap() {
        SetupState::Ready(r) => assert_eq!(r.verified_by, VerifiedBy::Hashing),
        other => panic!("{other:?}"),
    }

    // And the app loads and runs it as its managed model.
    let mut load = LoadOptions::provided();
    load.source = ModelSource::Managed(ready.file_name.clone());
    load.n_ctx = Some(512);
    load.threads = Some(2);
    rt.load_model(&load).unwrap();
    let chat = rt.open_session(SessionKind::Chat).unwrap();
    let mut o = SessionOptions::unchanged();
    o.temperature = Some(0.0);
    o.max_tokens = Some(4);
    rt.configure(&chat, &o).unwrap();
    let (_, stats) = rt.chat(&chat, "Hi").unwrap();
    assert!(stats.generated_tokens > 0);
}
