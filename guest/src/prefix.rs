//! The prefix cache: the KV state of a session's system turn, kept so the
//! first turn of a fresh session (or after a restart) does not evaluate it.
//!
//! Two tiers: a few snapshots in host memory, and files in `state/` named
//! by the cache key, each recorded in settings.json with its SHA-256 (the
//! host checks it before llama.cpp reads the file). The key covers what the
//! state depends on besides the tokens: the model file, the llama.cpp build
//! and the KV type (`ModelProfile::cache_id`). The oldest entries go first.

use std::hash::{Hash, Hasher};

use crate::host::{Engine, Storage, Token};
use crate::settings::{self, PrefixFile, Settings};

/// Saved prompt prefixes kept on disk (one file each, oldest removed first).
pub const MAX_FILES: usize = 4;
/// Prompt prefixes kept in memory.
pub const MAX_SNAPSHOTS: usize = 2;

/// The cache key of a prompt prefix: what the state depends on, and the tokens.
pub fn key(cache_id: &str, tokens: &[Token]) -> String {
    // SipHash with fixed keys: the same on every run of this guest.
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (cache_id, tokens).hash(&mut h);
    format!("{:016x}", h.finish())
}

/// The file a key's state is saved in.
pub fn file_name(key: &str) -> String {
    format!("prefix-{key}.kv")
}

struct Entry<S> {
    key: String,
    tokens: Vec<Token>,
    snapshot: S,
}

/// Prompt-prefix states in memory (most recent last), with the files behind them.
pub struct PrefixCache<S> {
    entries: Vec<Entry<S>>,
}

impl<S> Default for PrefixCache<S> {
    fn default() -> Self {
        PrefixCache { entries: Vec::new() }
    }
}

impl<S> PrefixCache<S> {
    /// Forget the snapshots (their model is gone).
    pub fn clear(&mut self) {
        self.entries.clear();
    }

    /// Put the saved state of `tokens` into `seq`: from memory, else from its
    /// file. True when `seq` now holds exactly `tokens`; else `seq` is empty
    /// (a damaged or stale file is deleted, to be rebuilt on this turn).
    pub fn restore<H: Engine<Snapshot = S> + Storage>(
        &mut self,
        host: &H,
        seq: u32,
        key: &str,
        tokens: &[Token],
    ) -> bool {
        if let Some(e) = self.entries.iter().find(|e| e.key == key && e.tokens == tokens) {
            if host.restore(&e.snapshot, seq).is_ok() {
                return true;
            }
            host.kv_clear(seq);
        }
        let name = file_name(key);
        let recorded = Settings::load(host).prefix_files.into_iter().find(|f| f.name == name);
        let Some(recorded) = recorded else { return false };
        match host.state_load(seq, &name, Some(&recorded.sha256)) {
            Ok(saved) if saved == tokens => {
                self.remember(host, seq, key, tokens);
                true
            }
            _ => {
                host.kv_clear(seq);
                let _ = host.remove(crate::host::Root::State, &name);
                let _ = settings::update(host, |s| s.prefix_files.retain(|f| f.name != name));
                false
            }
        }
    }

    /// Keep the state of `seq`, which holds exactly `tokens`, in memory and on disk.
    pub fn store<H: Engine<Snapshot = S> + Storage>(
        &mut self,
        host: &H,
        seq: u32,
        key: &str,
        tokens: &[Token],
    ) {
        self.remember(host, seq, key, tokens);
        let name = file_name(key);
        let Ok(saved) = host.state_save(seq, &name, tokens) else { return };
        let mut stale = Vec::new();
        let _ = settings::update(host, |s| {
            s.prefix_files.retain(|f| f.name != name);
            s.prefix_files.push(PrefixFile { name: name.clone(), sha256: saved.sha256.clone() });
            while s.prefix_files.len() > MAX_FILES {
                stale.push(s.prefix_files.remove(0).name);
            }
        });
        for old in stale {
            let _ = host.remove(crate::host::Root::State, &old);
        }
    }

    fn remember<H: Engine<Snapshot = S>>(&mut self, host: &H, seq: u32, key: &str, tokens: &[Token]) {
        let Ok(snapshot) = host.snapshot(seq) else { return };
        self.entries.retain(|e| e.key != key);
        self.entries.push(Entry { key: key.to_owned(), tokens: tokens.to_vec(), snapshot });
        while self.entries.len() > MAX_SNAPSHOTS {
            self.entries.remove(0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::Root;
    use crate::testing::{FakeHost, FakeSnapshot};

    fn prefix(host: &FakeHost, seq: u32, tokens: &[Token]) {
        host.kv_clear(seq);
        host.decode(seq, tokens).unwrap();
    }

    #[test]
    fn keys_depend_on_model_build_and_tokens() {
        let a = key("m|llama 1|kv:f16", &[1, 2, 3]);
        assert_eq!(a, key("m|llama 1|kv:f16", &[1, 2, 3]), "stable across calls");
        assert_ne!(a, key("m|llama 2|kv:f16", &[1, 2, 3]));
        assert_ne!(a, key("m|llama 1|kv:q8_0", &[1, 2, 3]));
        assert_ne!(a, key("m|llama 1|kv:f16", &[1, 2, 4]));
    }

    #[test]
    fn memory_then_disk_then_miss() {
        let host = FakeHost::default();
        let mut cache = PrefixCache::<FakeSnapshot>::default();
        let tokens = [11, 12, 13];
        prefix(&host, 0, &tokens);
        cache.store(&host, 0, "k", &tokens);
        assert_eq!(host.states_saved.get(), 1);
        // From memory.
        host.kv_clear(1);
        assert!(cache.restore(&host, 1, "k", &tokens));
        assert_eq!(host.kv(1), tokens);
        assert_eq!(host.states_loaded.get(), 0);
        // After a restart: from disk.
        let mut fresh = PrefixCache::<FakeSnapshot>::default();
        host.kv_clear(1);
        assert!(fresh.restore(&host, 1, "k", &tokens));
        assert_eq!((host.kv(1), host.states_loaded.get()), (tokens.to_vec(), 1));
        // Other tokens under the same key: a miss, and the sequence is empty.
        let mut fresh = PrefixCache::<FakeSnapshot>::default();
        assert!(!fresh.restore(&host, 1, "k", &[11, 12]));
        assert!(host.kv(1).is_empty());
    }

    #[test]
    fn a_damaged_file_is_deleted_and_forgotten() {
        let host = FakeHost::default();
        let mut cache = PrefixCache::<FakeSnapshot>::default();
        prefix(&host, 0, &[5, 6]);
        cache.store(&host, 0, "k", &[5, 6]);
        let name = file_name("k");
        let mut bytes = host.storage.get(Root::State, &name).unwrap();
        bytes[1] ^= 1;
        host.storage.write(Root::State, &name, &bytes).unwrap();
        let mut fresh = PrefixCache::<FakeSnapshot>::default();
        assert!(!fresh.restore(&host, 1, "k", &[5, 6]));
        assert!(host.storage.get(Root::State, &name).is_none());
        assert!(Settings::load(&host).prefix_files.is_empty());
    }

    #[test]
    fn at_most_four_files_and_two_snapshots() {
        let host = FakeHost::default();
        let mut cache = PrefixCache::<FakeSnapshot>::default();
        for i in 0..6 {
            prefix(&host, 0, &[i]);
            cache.store(&host, 0, &format!("k{i}"), &[i]);
        }
        let files: Vec<String> =
            host.storage.names(Root::State).into_iter().filter(|n| n.starts_with("prefix-")).collect();
        assert_eq!(files, (2..6).map(|i| file_name(&format!("k{i}"))).collect::<Vec<_>>());
        assert_eq!(cache.entries.len(), MAX_SNAPSHOTS);
    }
}
