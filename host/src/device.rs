//! Device probing: CPU topology from sysfs and memory from `/proc/meminfo`.
//!
//! Works the same on Android and Linux (both have sysfs), degrades to what
//! is readable: a missing file becomes `None`, never an error. The root is a
//! parameter so tests can point it at fixture trees.

use std::path::{Path, PathBuf};

pub use crate::bindings::platform::{CpuCore, CpuTopology, MemoryInfo as Memory};

/// Where the CPU directory lives on a real system.
pub const SYSFS_CPU: &str = "/sys/devices/system/cpu";

fn read_u32(path: &Path) -> Option<u32> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// Parse a sysfs CPU list such as `0-3,6,8-9`.
pub fn parse_cpu_list(s: &str) -> Vec<u32> {
    let mut out = Vec::new();
    for part in s.trim().split(',').filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => {
                if let (Ok(a), Ok(b)) = (a.trim().parse::<u32>(), b.trim().parse::<u32>()) {
                    if b >= a && b - a < 4096 {
                        out.extend(a..=b);
                    }
                }
            }
            None => out.extend(part.trim().parse::<u32>().ok()),
        }
    }
    out
}

/// Read the topology under `root` (normally [`SYSFS_CPU`]).
pub fn cpu_topology_at(root: &Path) -> CpuTopology {
    let online_list = std::fs::read_to_string(root.join("online")).ok().map(|s| parse_cpu_list(&s));
    let mut ids: Vec<u32> = std::fs::read_dir(root)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter_map(|e| {
                    let name = e.file_name();
                    let n = name.to_str()?.strip_prefix("cpu")?;
                    n.parse::<u32>().ok()
                })
                .collect()
        })
        .unwrap_or_default();
    ids.sort_unstable();
    let cores: Vec<CpuCore> = ids
        .iter()
        .map(|&id| {
            let dir: PathBuf = root.join(format!("cpu{id}"));
            // cpu0 often has no `online` file (it cannot go offline).
            let online = match &online_list {
                Some(list) => list.contains(&id),
                None => read_u32(&dir.join("online")).is_none_or(|v| v == 1),
            };
            CpuCore {
                id,
                online,
                max_freq_khz: read_u32(&dir.join("cpufreq/cpuinfo_max_freq")),
                capacity: read_u32(&dir.join("cpu_capacity")),
                cluster: read_u32(&dir.join("topology/cluster_id"))
                    .or_else(|| read_u32(&dir.join("topology/physical_package_id"))),
            }
        })
        .collect();
    let online = match &online_list {
        Some(list) if !list.is_empty() => list.len() as u32,
        _ if !cores.is_empty() => cores.iter().filter(|c| c.online).count() as u32,
        _ => std::thread::available_parallelism().map(|n| n.get() as u32).unwrap_or(1),
    };
    CpuTopology { cores, online }
}

/// The topology of this machine.
pub fn cpu_topology() -> CpuTopology {
    cpu_topology_at(Path::new(SYSFS_CPU))
}

/// Parse `/proc/meminfo` text.
pub fn parse_meminfo(text: &str) -> Memory {
    let field = |name: &str| -> Option<u64> {
        text.lines().find_map(|l| {
            let rest = l.strip_prefix(name)?.strip_prefix(':')?;
            let kb: u64 = rest.trim().trim_end_matches("kB").trim().parse().ok()?;
            Some(kb * 1024)
        })
    };
    let total = field("MemTotal").unwrap_or(0);
    let available =
        field("MemAvailable").or_else(|| Some(field("MemFree")? + field("Cached").unwrap_or(0))).unwrap_or(0);
    Memory { total, available }
}

/// Memory of this machine.
pub fn memory() -> Memory {
    std::fs::read_to_string("/proc/meminfo")
        .map(|t| parse_meminfo(&t))
        .unwrap_or(Memory { total: 0, available: 0 })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_lists_parse() {
        assert_eq!(parse_cpu_list("0-3,6,8-9\n"), vec![0, 1, 2, 3, 6, 8, 9]);
        assert_eq!(parse_cpu_list(""), Vec::<u32>::new());
        assert_eq!(parse_cpu_list("5"), vec![5]);
    }

    #[test]
    fn meminfo_parses() {
        let m = parse_meminfo("MemTotal:       5632000 kB\nMemFree:  100 kB\nMemAvailable:   2100000 kB\n");
        assert_eq!(m.total, 5_632_000 * 1024);
        assert_eq!(m.available, 2_100_000 * 1024);
        let old = parse_meminfo("MemTotal: 10 kB\nMemFree: 2 kB\nCached: 3 kB\n");
        assert_eq!(old.available, 5 * 1024);
    }

    #[test]
    fn this_machine_has_online_cpus() {
        let t = cpu_topology();
        assert!(t.online >= 1);
        assert!(memory().total > 0);
    }
}
