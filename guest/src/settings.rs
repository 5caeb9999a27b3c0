//! `state/settings.json`: what the app remembers between starts — records of
//! verified model files (so a start does not hash 1.66 GB), tuned thread
//! counts per model, and the saved prompt-prefix states.
//!
//! Written through the host's `storage.write`, which replaces the file
//! atomically. A missing, corrupt or truncated file reads as empty
//! settings: never fatal, at worst a re-hash.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::host::{FileError, FileStat, Root, Storage};

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

impl VerifiedRecord {
    /// The record of a file as it is now, with the hash it was found to have.
    pub fn of(stat: FileStat, sha256: &str) -> Self {
        VerifiedRecord { size: stat.size, mtime_ns: u128::from(stat.modified_ns), sha256: sha256.to_owned() }
    }
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

/// The key tuned settings are stored under for a model file.
pub fn model_key(file_name: &str, size: u64) -> String {
    format!("{file_name}:{size}")
}

impl Settings {
    /// Read the settings; anything unreadable is empty.
    pub fn load(storage: &impl Storage) -> Settings {
        storage
            .read(Root::State, FILE_NAME)
            .ok()
            .and_then(|bytes| serde_json::from_slice(&bytes).ok())
            .unwrap_or_default()
    }

    /// Write the settings (atomically, by the host).
    pub fn save(&self, storage: &impl Storage) -> Result<(), FileError> {
        let text = serde_json::to_vec_pretty(self).map_err(|e| FileError::Io(e.to_string()))?;
        storage.write(Root::State, FILE_NAME, &text)
    }

    /// Whether a file (as it is now) matches its verified record for `sha256`.
    pub fn is_verified(&self, file_name: &str, now: Option<FileStat>, sha256: &str) -> bool {
        match (self.verified.get(file_name), now) {
            (Some(rec), Some(now)) => *rec == VerifiedRecord::of(now, sha256),
            _ => false,
        }
    }
}

/// Read, change and write the settings in one go.
pub fn update(storage: &impl Storage, change: impl FnOnce(&mut Settings)) -> Result<(), FileError> {
    let mut s = Settings::load(storage);
    change(&mut s);
    s.save(storage)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::MemStorage;

    #[test]
    fn round_trip() {
        let st = MemStorage::default();
        let mut s = Settings::default();
        s.tuned_threads.insert(model_key("m.gguf", 5), TunedThreads { decode: 2, batch: 4 });
        s.save(&st).unwrap();
        assert_eq!(Settings::load(&st), s);
    }

    #[test]
    fn corrupt_or_truncated_settings_read_as_empty() {
        let st = MemStorage::default();
        for bad in [&b"{\"verified\": {\"m.gguf\": {\"size\": 1"[..], b"\xff\xfe", b""] {
            st.write(Root::State, FILE_NAME, bad).unwrap();
            assert_eq!(Settings::load(&st), Settings::default());
        }
        assert_eq!(Settings::load(&MemStorage::default()), Settings::default());
    }

    #[test]
    fn verified_record_requires_same_size_mtime_and_hash() {
        let st = MemStorage::default();
        st.write(Root::Models, "m.gguf", b"model").unwrap();
        let now = st.stat(Root::Models, "m.gguf").unwrap();
        let mut s = Settings::default();
        s.verified.insert("m.gguf".into(), VerifiedRecord::of(now.unwrap(), "aa"));
        assert!(s.is_verified("m.gguf", now, "aa"));
        assert!(!s.is_verified("m.gguf", now, "bb"));
        st.write(Root::Models, "m.gguf", b"model!").unwrap();
        assert!(!s.is_verified("m.gguf", st.stat(Root::Models, "m.gguf").unwrap(), "aa"));
        assert!(!s.is_verified("m.gguf", None, "aa"));
    }

    #[test]
    fn earlier_settings_files_still_read() {
        // What the 0.1 guest wrote (WASI, pretty JSON, u128 mtime).
        let st = MemStorage::default();
        let old = br#"{"verified": {"m.gguf": {"size": 5, "mtime_ns": 1764000000123456789,
            "sha256": "aa"}}, "tuned_threads": {"m.gguf:5": {"decode": 2, "batch": 2}}}"#;
        st.write(Root::State, FILE_NAME, old).unwrap();
        let s = Settings::load(&st);
        assert_eq!(s.verified["m.gguf"].mtime_ns, 1_764_000_000_123_456_789);
        assert_eq!(s.tuned_threads["m.gguf:5"], TunedThreads { decode: 2, batch: 2 });
    }
}
