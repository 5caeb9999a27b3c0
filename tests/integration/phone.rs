//! Phone conditions (`bittybot_tools::phone`): the throttled FUSE mount is
//! at least as slow as its profile, is gone after a failing case or a
//! panic, and the residency cases finish through it; the memory balloon
//! ends with its guard, with a failing bench and with its killed parent;
//! Ctrl-C undoes both, and what SIGKILL leaves the next run cleans up.
//!
//! Real FUSE mounts (needs /dev/fuse and root or fusermount3; the tests
//! skip with a message only when /dev/fuse is absent). The tests of this
//! module run one at a time (they count this process's mounts and children).

use std::io::{BufRead, Read};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bittybot_tests::{demo_model, temp_dir};
use bittybot_tools::bench::{self, BenchConfig, Conditions};
use bittybot_tools::phone::balloon::{self, Balloon};
use bittybot_tools::phone::storage::{self, Mount, Profile};

static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// Whether to skip a test that needs FUSE: only when it is absent *and* the
/// run says so (`BITTYBOT_NO_FUSE=1`); otherwise a missing /dev/fuse fails
/// the test, so a machine without it cannot pass these tests by skipping them.
fn no_fuse() -> bool {
    if storage::fuse_available() {
        return false;
    }
    assert!(
        std::env::var_os("BITTYBOT_NO_FUSE").is_some(),
        "/dev/fuse is absent (or not usable by this user): the phone-condition tests need FUSE; \
         set BITTYBOT_NO_FUSE=1 to skip them knowingly"
    );
    eprintln!("SKIPPED (BITTYBOT_NO_FUSE=1): /dev/fuse is absent on this machine");
    true
}

/// This process's throttled mounts (named `bittybot-phone-<pid>-<n>`).
fn my_mounts() -> Vec<PathBuf> {
    let prefix = format!("bittybot-phone-{}-", std::process::id());
    storage::fuse_mounts()
        .into_iter()
        .filter(|m| m.file_name().is_some_and(|n| n.to_string_lossy().starts_with(&prefix)))
        .collect()
}

/// Children of this process that are forks of it (balloons), alive.
fn my_balloons() -> Vec<i32> {
    let me = std::process::id() as i32;
    let exe = std::fs::read_link("/proc/self/exe").ok();
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else { continue };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { continue };
        let Some((_, rest)) = stat.rsplit_once(')') else { continue };
        let f: Vec<&str> = rest.split_whitespace().collect();
        let ppid: i32 = f.get(1).and_then(|p| p.parse().ok()).unwrap_or(0);
        if ppid == me && std::fs::read_link(format!("/proc/{pid}/exe")).ok() == exe && balloon::alive(pid) {
            out.push(pid);
        }
    }
    out
}

fn data_file(dir: &Path, name: &str, bytes: usize) -> PathBuf {
    let path = dir.join(name);
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let data: Vec<u8> = (0..bytes)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    std::fs::write(&path, data).unwrap();
    path
}

fn read_all(path: &Path) -> (Vec<u8>, Duration) {
    let t = Instant::now();
    let mut f = std::fs::File::open(path).unwrap();
    let mut v = Vec::new();
    f.read_to_end(&mut v).unwrap();
    (v, t.elapsed())
}

#[test]
fn a_read_through_the_mount_takes_at_least_the_profiles_time() {
    let _s = serial();
    if no_fuse() {
        return;
    }
    let dir = temp_dir();
    let bytes = 12 << 20;
    let backing = data_file(dir.path(), "weights.bin", bytes);
    // One request at a time: latency per request and transfer add up.
    let p = Profile {
        name: "test-qd1".into(),
        mbps: 80.0,
        latency_ms: 1.0,
        max_request: 128 << 10,
        queue_depth: 1,
    };
    let m = Mount::new(&backing, p.clone(), None).unwrap();
    let (data, took) = read_all(&m.path_of(&backing));
    assert_eq!(data, std::fs::read(&backing).unwrap(), "the mount must serve the file's bytes");
    let floor = p.min_time(bytes as u64);
    eprintln!("qd1: {bytes} bytes in {took:?} (profile's least {floor:?}); {:?}", m.report());
    assert!(took >= floor, "read {bytes} bytes in {took:?}, faster than the profile allows ({floor:?})");
    let r = m.report();
    assert!(r.requests >= (bytes as u64).div_ceil(p.max_request as u64), "{r:?}");
    m.unmount().unwrap();

    // Several in flight: the latencies overlap, the transfer does not.
    let p = Profile {
        name: "test-qd4".into(),
        mbps: 60.0,
        latency_ms: 2.0,
        max_request: 512 << 10,
        queue_depth: 4,
    };
    let m = Mount::new(&backing, p.clone(), None).unwrap();
    let (data, took) = read_all(&m.path_of(&backing));
    assert_eq!(data.len(), bytes);
    let floor = p.min_time(bytes as u64);
    eprintln!("qd4: {bytes} bytes in {took:?} (profile's least {floor:?})");
    assert!(took >= floor, "read {bytes} bytes in {took:?}, faster than the transfer allows ({floor:?})");
    drop(m);
    assert!(my_mounts().is_empty(), "left mounted: {:?}", my_mounts());
}

#[test]
fn the_mount_is_gone_after_a_failing_case_and_after_a_panic() {
    let _s = serial();
    if no_fuse() {
        return;
    }
    let dir = temp_dir();
    // A bench whose model is not a GGUF file: the load fails inside the guarded run.
    let bad = data_file(dir.path(), "broken.gguf", 1 << 20);
    let cfg = config(dir.path(), bad, 1, 0);
    let cond = Conditions { storage: Some(fast_profile()), available_mb: None, stall_timeout: None };
    let err = bench::run_under(&cfg, &cond, |m| eprintln!("bench: {m}")).unwrap_err();
    eprintln!("the failing case: {err}");
    assert!(my_mounts().is_empty(), "left mounted after a failing bench: {:?}", my_mounts());

    // A panic in the guarded scope, with the served file open and mapped.
    let backing = data_file(dir.path(), "weights.bin", 4 << 20);
    let mountpoint = std::sync::Arc::new(Mutex::new(PathBuf::new()));
    let mp = mountpoint.clone();
    let b = backing.clone();
    let outcome = std::panic::catch_unwind(move || {
        let m = Mount::new(&b, fast_profile(), None).unwrap();
        *mp.lock().unwrap() = m.mountpoint().to_owned();
        let f = std::fs::File::open(m.path_of(&b)).unwrap();
        let mut head = [0u8; 4096];
        std::os::unix::fs::FileExt::read_exact_at(&f, &mut head, 0).unwrap();
        panic!("a case failed");
    });
    assert!(outcome.is_err());
    let mp = mountpoint.lock().unwrap().clone();
    assert!(!storage::is_mounted(&mp), "{} is still mounted after the panic", mp.display());
    assert!(!mp.exists(), "the mount point directory {} was left behind", mp.display());

    // Dropped while a file on it is still open elsewhere: detached at once.
    let m = Mount::new(&backing, fast_profile(), None).unwrap();
    let mp = m.mountpoint().to_owned();
    let open = std::fs::File::open(m.path_of(&backing)).unwrap();
    drop(m);
    assert!(!storage::is_mounted(&mp), "{} is still mounted while a file was open", mp.display());
    drop(open);
    assert!(my_mounts().is_empty(), "left mounted: {:?}", my_mounts());
}

#[test]
fn the_balloon_ends_with_its_guard_and_with_a_failing_bench() {
    let _s = serial();
    let before = balloon::mem_available_mb().unwrap();
    // Leave all but ~128 MB: a small, quick balloon.
    let target = before.saturating_sub(128).max(balloon::MIN_AVAILABLE_MB);
    let b = Balloon::leave_available(target).unwrap();
    let pid = b.pid();
    eprintln!("balloon {pid}: {:?}", b.report());
    assert!(balloon::alive(pid));
    assert!(b.held_bytes() > 0 || before < balloon::MIN_AVAILABLE_MB + 160, "{:?}", b.report());
    drop(b);
    assert!(!balloon::alive(pid), "the balloon {pid} outlived its guard");

    // Refused: too little left for the bench.
    let e = Balloon::leave_available(100).unwrap_err();
    assert!(e.to_string().contains("too little"), "{e}");

    // A bench that fails with a balloon up.
    let dir = temp_dir();
    let bad = data_file(dir.path(), "broken.gguf", 1 << 20);
    let cfg = config(dir.path(), bad, 1, 0);
    let target = balloon::mem_available_mb().unwrap().saturating_sub(128).max(balloon::MIN_AVAILABLE_MB);
    let cond = Conditions { storage: None, available_mb: Some(target), stall_timeout: None };
    assert!(bench::run_under(&cfg, &cond, |m| eprintln!("bench: {m}")).is_err());
    assert!(my_balloons().is_empty(), "balloons left after a failing bench: {:?}", my_balloons());
}

/// Not a test on its own: the parent process of
/// `the_balloon_dies_with_its_killed_parent`.
#[test]
#[ignore = "helper process of the_balloon_dies_with_its_killed_parent"]
fn balloon_parent_helper() {
    if std::env::var_os("BITTYBOT_BALLOON_HELPER").is_none() {
        return;
    }
    let target = balloon::mem_available_mb().unwrap().saturating_sub(64).max(balloon::MIN_AVAILABLE_MB);
    let b = Balloon::leave_available(target).unwrap();
    println!("BALLOON_PID={}", b.pid());
    use std::io::Write;
    std::io::stdout().flush().unwrap();
    std::thread::sleep(Duration::from_secs(60));
}

#[test]
fn the_balloon_dies_with_its_killed_parent() {
    let _s = serial();
    let (mut helper, values) =
        start_helper("balloon_parent_helper", "BITTYBOT_BALLOON_HELPER", "1".as_ref(), &["BALLOON_PID"]);
    let pid: i32 = values[0].parse().unwrap();
    assert!(balloon::alive(pid), "the balloon {pid} is not running");
    kill_9(helper.id());
    wait_for_exit(&mut helper);
    assert!(wait_until(|| !balloon::alive(pid)), "the balloon {pid} outlived its killed parent");
}

/// Send `signal` (a name for kill(1): the tests crate has no libc dependency).
fn send(signal: &str, pid: u32) {
    let status =
        std::process::Command::new("kill").args([&format!("-{signal}"), &pid.to_string()]).status().unwrap();
    assert!(status.success());
}

/// SIGKILL.
fn kill_9(pid: u32) {
    send("KILL", pid);
}

/// Not a test on its own: the process that `an_interrupted_run_leaves_no_mount_no_directory_no_balloon`
/// interrupts. Mounts a file, puts up a balloon, prints both, waits.
#[test]
#[ignore = "helper process of an_interrupted_run_leaves_no_mount_no_directory_no_balloon"]
fn phone_conditions_helper() {
    let Some(backing) = std::env::var_os("BITTYBOT_PHONE_HELPER") else { return };
    let m = Mount::new(Path::new(&backing), fast_profile(), None).unwrap();
    let target = balloon::mem_available_mb().unwrap().saturating_sub(64).max(balloon::MIN_AVAILABLE_MB);
    let b = Balloon::leave_available(target).unwrap();
    // A file open, read and mapped on the mount, as a bench's model is.
    let f = std::fs::File::open(m.path_of(Path::new(&backing))).unwrap();
    let mut head = [0u8; 4096];
    std::os::unix::fs::FileExt::read_exact_at(&f, &mut head, 0).unwrap();
    // SAFETY: a read-only mapping of a file nothing writes.
    let map = unsafe { memmap2::Mmap::map(&f) }.unwrap();
    assert_eq!(map[..4096], head);
    println!("MOUNT={}", m.mountpoint().display());
    println!("BALLOON_PID={}", b.pid());
    use std::io::Write;
    std::io::stdout().flush().unwrap();
    std::thread::sleep(Duration::from_secs(60));
}

/// Run the ignored test `phone::<name>` of this binary as a helper process
/// (`env_key` set to `env_value`); returns it with the values it printed as
/// `KEY=value` for each of `keys`, in that order.
fn start_helper(
    name: &str,
    env_key: &str,
    env_value: &std::ffi::OsStr,
    keys: &[&str],
) -> (std::process::Child, Vec<String>) {
    let mut helper = std::process::Command::new(std::env::current_exe().unwrap())
        .args([&format!("phone::{name}"), "--exact", "--include-ignored", "--nocapture", "--test-threads=1"])
        .env(env_key, env_value)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Read its lines on a thread, so that a helper stuck before printing
    // fails the test instead of hanging it.
    let stdout = helper.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines() {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut values: Vec<Option<String>> = vec![None; keys.len()];
    while values.iter().any(Option::is_none) {
        let line = match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(line) => line.unwrap(),
            Err(e) => {
                let _ = helper.kill();
                panic!("the helper {name} printed no {keys:?} in 60 s ({e})");
            }
        };
        // The harness prints "test … ... " on the same line first.
        for (key, value) in keys.iter().zip(&mut values) {
            if let Some((_, v)) = line.split_once(&format!("{key}=")) {
                *value = Some(v.trim().to_owned());
            }
        }
    }
    (helper, values.into_iter().flatten().collect())
}

/// Start the phone-conditions helper on `backing`; returns it with the
/// mount point and balloon pid it printed.
fn start_phone_helper(backing: &Path) -> (std::process::Child, PathBuf, i32) {
    let (helper, values) = start_helper(
        "phone_conditions_helper",
        "BITTYBOT_PHONE_HELPER",
        backing.as_os_str(),
        &["MOUNT", "BALLOON_PID"],
    );
    (helper, PathBuf::from(&values[0]), values[1].parse().unwrap())
}

/// The helper's exit status; fails the test (rather than hanging it) when
/// the helper does not end, e.g. stuck closing a file on its own mount.
fn wait_for_exit(helper: &mut std::process::Child) -> std::process::ExitStatus {
    let t = Instant::now();
    loop {
        if let Some(status) = helper.try_wait().unwrap() {
            return status;
        }
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "the signalled helper {} did not end in 20 s (stuck closing a file on its own mount?)",
            helper.id()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn wait_until(what: impl Fn() -> bool) -> bool {
    let t = Instant::now();
    while !what() && t.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(50));
    }
    what()
}

#[test]
fn an_interrupted_run_leaves_no_mount_no_directory_no_balloon() {
    let _s = serial();
    if no_fuse() {
        return;
    }
    let dir = temp_dir();
    let backing = data_file(dir.path(), "weights.bin", 1 << 20);

    // Ctrl-C (SIGINT): the handler detaches the mount, removes its
    // directory and kills the balloon before the process ends.
    let (mut helper, mount, balloon_pid) = start_phone_helper(&backing);
    assert!(storage::is_mounted(&mount), "the helper's mount {} is not there", mount.display());
    assert!(balloon::alive(balloon_pid));
    send("INT", helper.id());
    let status = wait_for_exit(&mut helper);
    assert!(!status.success(), "the interrupted helper exited with {status}");
    assert!(!storage::is_mounted(&mount), "{} is still mounted after Ctrl-C", mount.display());
    assert!(!mount.exists(), "the mount point directory {} was left after Ctrl-C", mount.display());
    assert!(wait_until(|| !balloon::alive(balloon_pid)), "the balloon {balloon_pid} outlived Ctrl-C");

    // SIGKILL can undo nothing: the dead mount stays until the next run's
    // clean-up, which unmounts it and removes the directory.
    let (mut helper, mount, balloon_pid) = start_phone_helper(&backing);
    kill_9(helper.id());
    wait_for_exit(&mut helper);
    assert!(wait_until(|| !balloon::alive(balloon_pid)), "the balloon {balloon_pid} outlived SIGKILL");
    storage::clean_stale(None);
    assert!(!storage::is_mounted(&mount), "{} is still mounted after the clean-up", mount.display());
    assert!(!mount.exists(), "the clean-up left the directory {}", mount.display());
}

fn fast_profile() -> Profile {
    Profile {
        name: "test-fast".into(),
        mbps: 400.0,
        latency_ms: 0.05,
        max_request: 512 << 10,
        queue_depth: 4,
    }
}

fn config(dir: &Path, model: PathBuf, reps: usize, evict_reps: usize) -> BenchConfig {
    BenchConfig {
        model,
        data_dir: dir.join("data"),
        guest: bittybot_host::GuestSource::builtin(),
        threads: Some(2),
        threads_batch: Some(2),
        n_ctx: Some(512),
        n_batch: 256,
        reps,
        prompt: "Name three colours.".into(),
        system: "You are a helpful assistant.".into(),
        max_tokens: 8,
        evict_reps,
        think: Duration::from_millis(300),
        prefix_reps: 0,
        invalidator: None,
    }
}

#[test]
fn the_residency_cases_finish_on_a_model_served_through_the_throttled_mount() {
    let _s = serial();
    if no_fuse() {
        return;
    }
    let dir = temp_dir();
    let model = demo_model();
    let cfg = config(dir.path(), model.clone(), 1, 1);
    let cond = Conditions { storage: Some(fast_profile()), available_mb: None, stall_timeout: None };
    let t = Instant::now();
    let report = bench::run_under(&cfg, &cond, |m| eprintln!("bench: {m}")).unwrap();
    eprintln!("{}", bench::table(&report));
    eprintln!("took {:?}", t.elapsed());
    let res = report.residency.as_ref().expect("the residency cases ran");
    assert_eq!(res.cases.len(), 4);
    for c in &res.cases {
        assert!(c.ttft_ms.median > 0.0 && c.decode_tps.median > 0.0, "{c:?}");
    }
    assert!(res.after_evict < 0.05, "eviction through the mount left {} resident", res.after_evict);
    let s = report.conditions.storage.as_ref().expect("served through the mount");
    let size = std::fs::metadata(&model).unwrap().len();
    // Loaded, then read again after the evictions: more than the file.
    assert!(s.bytes > size, "the mount served {} bytes of a {size}-byte model", s.bytes);
    assert_eq!(report.model, model.display().to_string());
    assert!(my_mounts().is_empty(), "left mounted: {:?}", my_mounts());
}
