//! `state/settings.json`: what the app remembers between starts — records of
//! verified model files (so a start does not hash 1.66 GB) and tuned thread
//! counts per model.
//!
//! Written atomically (temporary file, fsync, rename). A missing, corrupt or
//! truncated file reads as empty settings: never fatal, at worst a re-hash.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

use serde::{Deserialize, Serialize};

/// File name inside the state folder.
pub const FILE_NAME: &str = "settings.json";

/// A file that was hashed and found good.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerifiedRecord {
    /// Size at verification.
    pub size: u64,
    /// Modification time at verification, ns since the epoch.
    pub mtime_ns: u128,
    /// Its SHA-256.
    pub sha256: String,
}

/// Thread counts measured best by `bittybot tune`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TunedThreads {
    /// Generation threads.
    pub decode: u32,
    /// Prompt threads.
    pub batch: u32,
}

/// Everything in settings.json.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Settings {
    /// Verified model files, by file name.
    #[serde(default)]
    pub verified: BTreeMap<String, VerifiedRecord>,
    /// Tuned threads, by model key (file name and size).
    #[serde(default)]
    pub tuned_threads: BTreeMap<String, TunedThreads>,
    /// Saved prompt-prefix states, oldest first.
    #[serde(default)]
    pub prefix_files: Vec<PrefixFile>,
}

/// A saved prompt-prefix KV state in the state folder.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PrefixFile {
    /// File name.
    pub name: String,
    /// Its SHA-256, checked before loading.
    pub sha256: String,
}

/// Size and modification time of a file, as a verified record keeps them.
pub fn file_identity(path: &Path) -> std::io::Result<(u64, u128)> {
    let meta = std::fs::metadata(path)?;
    let mtime = meta.modified()?.duration_since(UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    Ok((meta.len(), mtime))
}

/// The key tuned settings are stored under for a model file.
pub fn model_key(file_name: &str, size: u64) -> String {
    format!("{file_name}:{size}")
}

impl Settings {
    /// Read settings from a state folder; anything unreadable is empty.
    pub fn load(state_dir: &Path) -> Settings {
        std::fs::read(state_dir.join(FILE_NAME))
            .ok()
            .and_then(|bytes| serde_json::from_slice(&bytes).ok())
            .unwrap_or_default()
    }

    /// Write settings atomically.
    pub fn save(&self, state_dir: &Path) -> std::io::Result<()> {
        let tmp: PathBuf = state_dir.join(format!("{FILE_NAME}.tmp"));
        let text = serde_json::to_vec_pretty(self).map_err(std::io::Error::other)?;
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&text)?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, state_dir.join(FILE_NAME))
    }

    /// Whether the file matches its verified record for `sha256`.
    pub fn is_verified(&self, file_name: &str, path: &Path, sha256: &str) -> bool {
        let Some(rec) = self.verified.get(file_name) else { return false };
        match file_identity(path) {
            Ok((size, mtime)) => rec.size == size && rec.mtime_ns == mtime && rec.sha256 == sha256,
            Err(_) => false,
        }
    }
}

/// Read, change and write settings in one go.
pub fn update(state_dir: &Path, change: impl FnOnce(&mut Settings)) -> std::io::Result<()> {
    let mut s = Settings::load(state_dir);
    change(&mut s);
    s.save(state_dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp() -> PathBuf {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let d = std::env::temp_dir().join(format!("bittybot-settings-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn round_trip_and_atomic_write() {
        let dir = temp();
        let mut s = Settings::default();
        s.tuned_threads.insert(model_key("m.gguf", 5), TunedThreads { decode: 2, batch: 4 });
        s.save(&dir).unwrap();
        assert_eq!(Settings::load(&dir), s);
        assert!(!dir.join("settings.json.tmp").exists());
    }

    #[test]
    fn corrupt_or_truncated_settings_read_as_empty() {
        let dir = temp();
        for bad in [&b"{\"verified\": {\"m.gguf\": {\"size\": 1"[..], b"\xff\xfe", b""] {
            std::fs::write(dir.join(FILE_NAME), bad).unwrap();
            assert_eq!(Settings::load(&dir), Settings::default());
        }
        assert_eq!(Settings::load(&dir.join("missing")), Settings::default());
    }

    #[test]
    fn verified_record_requires_same_size_mtime_and_hash() {
        let dir = temp();
        let f = dir.join("m.gguf");
        std::fs::write(&f, b"model").unwrap();
        let (size, mtime_ns) = file_identity(&f).unwrap();
        let mut s = Settings::default();
        s.verified.insert("m.gguf".into(), VerifiedRecord { size, mtime_ns, sha256: "aa".into() });
        assert!(s.is_verified("m.gguf", &f, "aa"));
        assert!(!s.is_verified("m.gguf", &f, "bb"));
        std::fs::write(&f, b"model!").unwrap();
        assert!(!s.is_verified("m.gguf", &f, "aa"));
    }
}
