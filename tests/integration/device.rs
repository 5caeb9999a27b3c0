//! Device fit on real parts: thread counts from CPU topology trees laid out
//! like sysfs, tuned threads stored and used, the context chosen from free
//! memory, page warmup and eviction of the real model file.

use std::path::Path;

use bittybot_host::device::cpu_topology_at;
use bittybot_host::{LoadOptions, MemoryOutlook, Runtime, SessionKind, SessionOptions};
use bittybot_tests::{demo_model, options, temp_dir};

/// Write a sysfs-like CPU tree: (max kHz, capacity) per CPU; `None` leaves the file out.
fn sysfs(root: &Path, cpus: &[(Option<u32>, Option<u32>)], online: &str) {
    std::fs::create_dir_all(root).unwrap();
    std::fs::write(root.join("online"), format!("{online}\n")).unwrap();
    for (i, (freq, cap)) in cpus.iter().enumerate() {
        let d = root.join(format!("cpu{i}"));
        std::fs::create_dir_all(d.join("cpufreq")).unwrap();
        std::fs::create_dir_all(d.join("topology")).unwrap();
        if let Some(f) = freq {
            std::fs::write(d.join("cpufreq/cpuinfo_max_freq"), format!("{f}\n")).unwrap();
        }
        if let Some(c) = cap {
            std::fs::write(d.join("cpu_capacity"), format!("{c}\n")).unwrap();
        }
        std::fs::write(
            d.join("topology/cluster_id"),
            if freq.unwrap_or(0) > 2_100_000 { "1\n" } else { "0\n" },
        )
        .unwrap();
    }
    // Other entries sysfs has next to the CPUs.
    std::fs::create_dir_all(root.join("cpufreq")).unwrap();
    std::fs::write(root.join("possible"), format!("{online}\n")).unwrap();
}

fn exynos_1280(root: &Path) {
    // CPUs 0-5: Cortex-A55 @ 2.0 GHz; 6-7: Cortex-A78 @ 2.4 GHz.
    let mut cpus = vec![(Some(2_002_000), Some(410)); 6];
    cpus.extend([(Some(2_400_000), Some(1024)); 2]);
    sysfs(root, &cpus, "0-7");
}

fn threads_on(tree: &Path) -> (u32, u32, String) {
    let dir = temp_dir();
    let mut o = options(dir.path(), Some(demo_model()));
    o.sysfs_cpu = Some(tree.to_path_buf());
    let mut rt = Runtime::start(o).unwrap();
    let mut load = LoadOptions::provided();
    load.n_ctx = Some(512);
    let r = rt.load_model(&load).unwrap();
    (r.info.settings.threads, r.info.settings.threads_batch, r.threads_source)
}

#[test]
fn threads_follow_the_cpu_topology() {
    let dir = temp_dir();
    let exynos = dir.path().join("exynos");
    exynos_1280(&exynos);
    let t = cpu_topology_at(&exynos);
    assert_eq!((t.online, t.cores.len()), (8, 8));
    assert_eq!(t.cores[7].capacity, Some(1024));
    assert_eq!(threads_on(&exynos), (2, 2, "topology".into()), "2 × A78, not 8");

    let uniform = dir.path().join("uniform");
    sysfs(&uniform, &[(Some(2_500_000), None); 8], "0-7");
    assert_eq!(threads_on(&uniform).0, 8);

    // No frequency or capacity files at all (some emulators, some kernels).
    let bare = dir.path().join("bare");
    sysfs(&bare, &[(None, None); 4], "0-3");
    assert_eq!(threads_on(&bare).0, 4);

    // An offline big core.
    let offline = dir.path().join("offline");
    exynos_1280(&offline);
    std::fs::write(offline.join("online"), "0-6\n").unwrap();
    assert_eq!(threads_on(&offline).0, 1);

    // This machine: the real sysfs.
    let real = cpu_topology_at(Path::new(bittybot_host::device::SYSFS_CPU));
    assert!(real.online >= 1);
    let mine = threads_on(Path::new(bittybot_host::device::SYSFS_CPU));
    assert!(mine.0 >= 1 && mine.0 <= real.online, "{mine:?} on {real:?}");
}

#[test]
fn tuned_threads_are_stored_and_used_by_the_next_load() {
    let dir = temp_dir();
    let mut rt = Runtime::start(options(dir.path(), Some(demo_model()))).unwrap();
    let mut load = LoadOptions::provided();
    load.n_ctx = Some(512);
    assert_eq!(rt.load_model(&load).unwrap().threads_source, "topology");
    rt.save_tuned_threads(1, 2).unwrap();
    drop(rt);
    let mut rt = Runtime::start(options(dir.path(), Some(demo_model()))).unwrap();
    let r = rt.load_model(&load).unwrap();
    assert_eq!(
        (r.info.settings.threads, r.info.settings.threads_batch, r.threads_source.as_str()),
        (1, 2, "tuned")
    );
    // An explicit count still wins.
    load.threads = Some(2);
    let r = rt.load_model(&load).unwrap();
    assert_eq!((r.info.settings.threads, r.threads_source.as_str()), (2, "explicit"));
}

#[test]
fn the_context_is_chosen_from_free_memory() {
    let dir = temp_dir();
    let mut rt = Runtime::start(options(dir.path(), Some(demo_model()))).unwrap();
    let r = rt.load_model(&LoadOptions::provided()).unwrap();
    // SmolLM2 is small and this machine has gigabytes free: the largest choice.
    assert_eq!(r.info.settings.n_ctx, 4096, "{:?}", r.notes);
    assert!(r.notes.iter().any(|n| n.contains("context 4096 per session")), "{:?}", r.notes);
}

#[test]
fn warmup_brings_an_evicted_model_back_and_a_turn_reports_it() {
    let dir = temp_dir();
    let mut rt = Runtime::start(options(dir.path(), Some(demo_model()))).unwrap();
    let mut load = LoadOptions::provided();
    load.n_ctx = Some(512);
    rt.load_model(&load).unwrap();
    let chat = rt.open_session(SessionKind::Chat).unwrap();
    let mut o = SessionOptions::unchanged();
    o.max_tokens = Some(4);
    rt.configure(&chat, &o).unwrap();
    rt.chat(&chat, "Hi").unwrap();
    let after = rt.evict_model().unwrap();
    if after > 0.5 {
        eprintln!("skipped: this kernel does not evict the pages (residency {after:.2} after MADV_PAGEOUT)");
        return;
    }
    // The guest sees the low residency and re-warms alongside the prompt.
    let (_, stats) = rt.chat(&chat, "Hello again").unwrap();
    assert!(stats.residency < 0.5, "{stats:?}");
    assert!(stats.warmup_ms > 0.0, "{stats:?}");
    assert!(rt.model_residency().unwrap() >= 0.99);

    // `prepare` re-warms in the background and is cheap when all is resident.
    rt.evict_model().unwrap();
    assert!(rt.prepare(&chat).unwrap(), "an evicted model must start a warmup");
    let t = std::time::Instant::now();
    while rt.model_residency().unwrap() < 0.99 {
        assert!(t.elapsed().as_secs() < 60, "the background warmup did not finish");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let (_, stats) = rt.chat(&chat, "And again").unwrap();
    assert!(stats.residency >= 0.99 && stats.warmup_ms == 0.0, "{stats:?}");
    // The passes made the model resident again: the app is not told otherwise.
    assert_eq!(stats.outlook, MemoryOutlook::Resident, "{stats:?}");
    let t = std::time::Instant::now();
    assert!(!rt.prepare(&chat).unwrap(), "nothing to do when resident");
    assert!(t.elapsed().as_millis() < 100);
}
