//! The compiled guest is cached on disk and survives damage.

use bittybot_host::{CacheOutcome, Runtime, RuntimeOptions};
use bittybot_tests::temp_dir;

fn start(data: &std::path::Path, cache: &std::path::Path) -> Runtime {
    let mut o = RuntimeOptions::new(data);
    o.cache_dir = Some(cache.to_path_buf());
    Runtime::start(o).expect("start")
}

#[test]
fn second_start_uses_the_serialized_component() {
    let dir = temp_dir();
    let cache = dir.path().join("cache");
    let first = start(dir.path(), &cache);
    assert_eq!(first.start_report().component.outcome, CacheOutcome::Compiled);
    drop(first);
    let second = start(dir.path(), &cache);
    let r = second.start_report();
    assert_eq!(r.component.outcome, CacheOutcome::Hit);
    assert!(r.component.cache_file.is_file());
}

#[test]
fn corrupted_cache_file_is_replaced_not_fatal() {
    let dir = temp_dir();
    let cache = dir.path().join("cache");
    let file = start(dir.path(), &cache).start_report().component.cache_file.clone();
    // Flip a byte in the middle of the machine code.
    let mut bytes = std::fs::read(&file).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&file, &bytes).unwrap();
    let rt = start(dir.path(), &cache);
    match &rt.start_report().component.outcome {
        CacheOutcome::Replaced(why) => assert!(why.contains("damaged"), "{why}"),
        other => panic!("expected a replaced entry, got {other:?}"),
    }
    drop(rt);
    // The rebuilt entry is good again.
    assert_eq!(start(dir.path(), &cache).start_report().component.outcome, CacheOutcome::Hit);
    // A truncated entry too.
    std::fs::write(&file, b"BBCW").unwrap();
    assert!(matches!(start(dir.path(), &cache).start_report().component.outcome, CacheOutcome::Replaced(_)));
}
