//! Bad input gets a clear error, never a panic or an abort.

use std::io::Write;

use bittybot_host::{AppError, LoadOptions, Runtime};
use bittybot_tests::{demo_model, options, temp_dir};

fn load_error(model: std::path::PathBuf) -> String {
    let dir = temp_dir();
    let mut rt = Runtime::start(options(dir.path(), Some(model))).unwrap();
    let err = rt.load_model(&LoadOptions::provided()).unwrap_err();
    match err.app() {
        Some(AppError::LoadFailed(m)) => m.clone(),
        other => panic!("expected load-failed, got {other:?} ({err})"),
    }
}

#[test]
fn missing_model_file_is_a_clear_error() {
    let msg = load_error("/nonexistent/model.gguf".into());
    assert!(msg.contains("no such file") && msg.contains("/nonexistent/model.gguf"), "{msg}");
}

#[test]
fn non_gguf_file_is_a_clear_error() {
    let dir = temp_dir();
    let path = dir.path().join("notes.gguf");
    std::fs::write(&path, b"this is a text file, not a model\n").unwrap();
    let msg = load_error(path);
    assert!(msg.contains("not a GGUF file"), "{msg}");
}

#[test]
fn truncated_model_is_a_clear_error_and_the_runtime_stays_usable() {
    let dir = temp_dir();
    let path = dir.path().join("truncated.gguf");
    let full = std::fs::read(demo_model()).unwrap();
    std::fs::File::create(&path).unwrap().write_all(&full[..full.len() / 3]).unwrap();
    let mut rt = Runtime::start(options(dir.path(), Some(path))).unwrap();
    let err = rt.load_model(&LoadOptions::provided()).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err.app(), Some(AppError::LoadFailed(_))), "{msg}");
    assert!(msg.contains("truncated.gguf"), "{msg}");
    // The same runtime still answers.
    assert!(
        rt.open_session(bittybot_host::SessionKind::Chat).unwrap_err().app() == Some(&AppError::NotReady)
    );
}

#[test]
fn sending_before_loading_is_not_ready() {
    let dir = temp_dir();
    let mut rt = Runtime::start(options(dir.path(), None)).unwrap();
    let err = rt.open_session(bittybot_host::SessionKind::Chat).unwrap_err();
    assert_eq!(err.app(), Some(&AppError::NotReady));
}
