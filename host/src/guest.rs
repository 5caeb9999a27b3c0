//! Loading the guest component: from the copy built into the host or from a
//! file chosen at run time, compiled once and cached on disk.
//!
//! The cache file is named by the SHA-256 of the `.wasm` and the engine's
//! compatibility hash, so a different guest or a different host build never
//! runs stale machine code. Each file carries a CRC-32 of its own payload:
//! `Component::deserialize` trusts its input, so a damaged file must be
//! caught before it gets there. A bad entry is deleted and rebuilt. CRC-32
//! (crc32fast, already in wasmtime's tree) rather than SHA-256: the cache
//! lives in the app's private folder, so the threat is damage, not forgery,
//! and hashing the 3 MB entry with SHA-256 took ~17 ms of a ~28 ms start
//! here against a 10 ms budget.

use std::hash::{Hash, Hasher};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use sha2::{Digest, Sha256};
use wasmtime::Engine;
use wasmtime::component::Component;

/// The guest built together with this host.
pub const BUILTIN_GUEST: &[u8] = include_bytes!(env!("BITTYBOT_GUEST_WASM"));
/// SHA-256 of [`BUILTIN_GUEST`], computed at build time.
pub const BUILTIN_GUEST_SHA256: &str = env!("BITTYBOT_GUEST_SHA256");
/// Where the build put the guest `.wasm` (tests use it as a file).
pub const BUILTIN_GUEST_PATH: &str = env!("BITTYBOT_GUEST_WASM");

const CACHE_MAGIC: &[u8; 8] = b"BBCWASM2";

/// The WIT package this host implements.
pub const WIT_PACKAGE: &str = "bittybot:core";
/// Its version (from `wit/world.wit`).
pub const WIT_VERSION: &str = env!("BITTYBOT_WIT_VERSION");

/// Errors of loading a guest.
#[derive(Debug, thiserror::Error)]
pub enum GuestError {
    /// The file could not be read.
    #[error("cannot read guest {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The bytes are not a valid component.
    #[error("guest {label} is not a valid WebAssembly component: {reason}")]
    Invalid {
        /// Which guest.
        label: String,
        /// wasmtime's words.
        reason: String,
    },
    /// The component was built for another version of the WIT contract.
    #[error("guest {label} is incompatible: {reason}")]
    Incompatible {
        /// Which guest.
        label: String,
        /// What does not match.
        reason: String,
    },
    /// The guest failed the integrity policy (pinned hash or signature).
    #[error("guest {label} refused: {reason}")]
    Rejected {
        /// Which guest.
        label: String,
        /// What failed.
        reason: String,
    },
    /// Instantiation failed.
    #[error("cannot start guest {label}: {reason}")]
    Instantiate {
        /// Which guest.
        label: String,
        /// wasmtime's words.
        reason: String,
    },
}

/// A guest component's bytes and identity.
#[derive(Clone)]
pub struct GuestSource {
    bytes: Arc<[u8]>,
    sha256: String,
    label: String,
    /// A detached Ed25519 signature (from `FILE.wasm.sig`), if one was found.
    signature: Option<Vec<u8>>,
}

impl std::fmt::Debug for GuestSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GuestSource").field("label", &self.label).field("sha256", &self.sha256).finish()
    }
}

impl GuestSource {
    /// The guest built into this host.
    pub fn builtin() -> Self {
        GuestSource {
            bytes: Arc::from(BUILTIN_GUEST),
            sha256: BUILTIN_GUEST_SHA256.to_owned(),
            label: "built-in".to_owned(),
            signature: None,
        }
    }

    /// A guest `.wasm` file, with its detached signature `FILE.sig` when present.
    pub fn from_file(path: &Path) -> Result<Self, GuestError> {
        let bytes = std::fs::read(path).map_err(|source| GuestError::Read { path: path.into(), source })?;
        let mut guest = Self::from_bytes(bytes, path.display().to_string());
        let sig_path = signature_path(path);
        if let Ok(text) = std::fs::read_to_string(&sig_path) {
            guest.signature = Some(unhex(text.trim()).unwrap_or_default());
        }
        Ok(guest)
    }

    /// Guest bytes from anywhere.
    pub fn from_bytes(bytes: Vec<u8>, label: String) -> Self {
        let sha256 = hex(&Sha256::digest(&bytes));
        GuestSource { bytes: Arc::from(bytes), sha256, label, signature: None }
    }

    /// Attach a detached signature.
    pub fn with_signature(mut self, signature: Vec<u8>) -> Self {
        self.signature = Some(signature);
        self
    }

    /// SHA-256 of the `.wasm`, lowercase hex.
    pub fn sha256(&self) -> &str {
        &self.sha256
    }

    /// Where it came from, for messages.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// The raw bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }
}

/// Where the detached signature of a guest file lives: `FILE.sig`.
pub fn signature_path(guest: &Path) -> PathBuf {
    let mut name = guest.as_os_str().to_owned();
    name.push(".sig");
    PathBuf::from(name)
}

/// Bytes from hex (either case); `None` when it is not hex.
pub fn unhex(s: &str) -> Option<Vec<u8>> {
    if s.len() % 2 != 0 {
        return None;
    }
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok()).collect()
}

/// What a guest must satisfy before it is compiled.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GuestPolicy {
    /// The guest's SHA-256 must be this (lowercase hex).
    pub sha256: Option<String>,
    /// The guest must carry a valid Ed25519 signature by this key.
    pub public_key: Option<[u8; 32]>,
}

impl GuestPolicy {
    /// Check a guest against the policy.
    pub fn check(&self, guest: &GuestSource) -> Result<(), GuestError> {
        let reject = |reason: String| GuestError::Rejected { label: guest.label().to_owned(), reason };
        if let Some(pinned) = &self.sha256 {
            if !pinned.eq_ignore_ascii_case(guest.sha256()) {
                return Err(reject(format!("its SHA-256 is {}, the pinned one is {pinned}", guest.sha256())));
            }
        }
        if let Some(key) = &self.public_key {
            let Some(sig) = &guest.signature else {
                return Err(reject("a signature is required and none was found (FILE.wasm.sig)".into()));
            };
            verify_signature(key, guest.bytes(), sig).map_err(reject)?;
        }
        Ok(())
    }
}

/// A new Ed25519 key: (private seed, public key).
pub fn generate_key() -> Result<([u8; 32], [u8; 32]), String> {
    use ring::rand::SecureRandom;
    let mut seed = [0u8; 32];
    ring::rand::SystemRandom::new().fill(&mut seed).map_err(|_| "no system randomness".to_owned())?;
    let pair = ring::signature::Ed25519KeyPair::from_seed_unchecked(&seed).map_err(|e| e.to_string())?;
    let mut public = [0u8; 32];
    public.copy_from_slice(ring::signature::KeyPair::public_key(&pair).as_ref());
    Ok((seed, public))
}

/// Sign bytes with a private seed.
pub fn sign(seed: &[u8; 32], bytes: &[u8]) -> Result<Vec<u8>, String> {
    let pair = ring::signature::Ed25519KeyPair::from_seed_unchecked(seed).map_err(|e| e.to_string())?;
    Ok(pair.sign(bytes).as_ref().to_vec())
}

/// Check a detached signature.
pub fn verify_signature(public: &[u8; 32], bytes: &[u8], signature: &[u8]) -> Result<(), String> {
    ring::signature::UnparsedPublicKey::new(&ring::signature::ED25519, public)
        .verify(bytes, signature)
        .map_err(|_| "the signature does not match the configured public key".to_owned())
}

/// Whether a guest's `bittybot:core` version can run on this host: the same
/// major version (for 0.x, the same minor), and not newer than the host.
pub fn version_compatible(host: &str, guest: &str) -> bool {
    let parse = |v: &str| -> Option<(u64, u64, u64)> {
        let core = v.split(['-', '+']).next()?;
        let mut it = core.split('.').map(|p| p.parse::<u64>().ok());
        Some((it.next()??, it.next()??, it.next()??))
    };
    match (parse(host), parse(guest)) {
        (Some(h), Some(g)) => {
            let same_line = if h.0 == 0 { g.0 == 0 && g.1 == h.1 } else { g.0 == h.0 };
            same_line && g <= h
        }
        _ => false,
    }
}

/// Refuse a component built for another `bittybot:core` version, or one
/// that does not export the app interface, naming both versions.
pub fn check_compatible(engine: &Engine, component: &Component, label: &str) -> Result<(), GuestError> {
    let ty = component.component_type();
    let prefix = format!("{WIT_PACKAGE}/");
    let imports = ty.imports(engine).map(|(n, _)| n.to_owned());
    let exports: Vec<String> = ty.exports(engine).map(|(n, _)| n.to_owned()).collect();
    let incompatible = |reason: String| GuestError::Incompatible { label: label.to_owned(), reason };
    for name in imports.chain(exports.iter().cloned()) {
        let Some(rest) = name.strip_prefix(&prefix) else { continue };
        let version = rest.split_once('@').map(|(_, v)| v).unwrap_or("(none)");
        if !version_compatible(WIT_VERSION, version) {
            return Err(incompatible(format!(
                "it was built for {WIT_PACKAGE}@{version} (`{name}`); this host implements {WIT_PACKAGE}@{WIT_VERSION}"
            )));
        }
    }
    if !exports.iter().any(|n| n.starts_with(&format!("{prefix}app@"))) {
        return Err(incompatible(format!(
            "it does not export {WIT_PACKAGE}/app (this host implements {WIT_PACKAGE}@{WIT_VERSION})"
        )));
    }
    Ok(())
}

/// Lowercase hex of bytes.
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// How the compiled component was obtained.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CacheOutcome {
    /// Read from the cache.
    Hit,
    /// Compiled and stored (no entry yet).
    Compiled,
    /// The entry was unusable (the text says why); compiled and replaced.
    Replaced(String),
    /// Compiled; the cache could not be written (the text says why).
    Uncached(String),
}

/// Figures of a component load.
#[derive(Debug, Clone)]
pub struct ComponentReport {
    /// Hit, compiled, replaced…
    pub outcome: CacheOutcome,
    /// Time to get a `Component` (deserialize or compile), ms.
    pub component_ms: f64,
    /// The cache file.
    pub cache_file: PathBuf,
}

/// The on-disk cache of compiled guests.
#[derive(Debug, Clone)]
pub struct ComponentCache {
    dir: PathBuf,
}

fn engine_hash(engine: &Engine) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    engine.precompile_compatibility_hash().hash(&mut h);
    h.finish()
}

impl ComponentCache {
    /// A cache in `dir` (created on first write).
    pub fn new(dir: PathBuf) -> Self {
        ComponentCache { dir }
    }

    /// The cache file for a guest on an engine.
    pub fn file_for(&self, engine: &Engine, guest: &GuestSource) -> PathBuf {
        self.dir.join(format!("{}-{:016x}.cwasm", &guest.sha256()[..32], engine_hash(engine)))
    }

    /// Get the compiled component: from the cache when valid, else compile
    /// (and store). A bad entry is deleted and rebuilt, never fatal.
    pub fn load(
        &self,
        engine: &Engine,
        guest: &GuestSource,
    ) -> Result<(Component, ComponentReport), GuestError> {
        let start = Instant::now();
        let file = self.file_for(engine, guest);
        let mut replaced = None;
        match std::fs::read(&file) {
            Ok(bytes) => match deserialize_checked(engine, &bytes) {
                Ok(component) => {
                    return Ok((
                        component,
                        ComponentReport {
                            outcome: CacheOutcome::Hit,
                            component_ms: ms_since(start),
                            cache_file: file,
                        },
                    ));
                }
                Err(why) => {
                    let _ = std::fs::remove_file(&file);
                    replaced = Some(why);
                }
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => replaced = Some(format!("unreadable cache entry: {e}")),
        }
        let component = Component::new(engine, guest.bytes())
            .map_err(|e| GuestError::Invalid { label: guest.label().to_owned(), reason: format!("{e:#}") })?;
        let outcome = match self.store(&file, &component) {
            Ok(()) => match replaced {
                Some(why) => CacheOutcome::Replaced(why),
                None => CacheOutcome::Compiled,
            },
            Err(e) => CacheOutcome::Uncached(e.to_string()),
        };
        Ok((component, ComponentReport { outcome, component_ms: ms_since(start), cache_file: file }))
    }

    fn store(&self, file: &Path, component: &Component) -> std::io::Result<()> {
        let payload = component.serialize().map_err(std::io::Error::other)?;
        std::fs::create_dir_all(&self.dir)?;
        // Unique per writer: several runtimes (threads or processes) may race here.
        static WRITES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = WRITES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let tmp = file.with_extension(format!("tmp{}-{n}", std::process::id()));
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(CACHE_MAGIC)?;
        f.write_all(&crc32fast::hash(&payload).to_le_bytes())?;
        f.write_all(&payload)?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, file)
    }
}

fn deserialize_checked(engine: &Engine, bytes: &[u8]) -> Result<Component, String> {
    let header = CACHE_MAGIC.len() + 4;
    if bytes.len() < header || &bytes[..CACHE_MAGIC.len()] != CACHE_MAGIC {
        return Err("cache entry has no valid header".into());
    }
    let (sum, payload) = bytes[CACHE_MAGIC.len()..].split_at(4);
    if crc32fast::hash(payload).to_le_bytes() != sum {
        return Err("cache entry is damaged (checksum mismatch)".into());
    }
    // SAFETY: the payload is byte-for-byte what `Component::serialize` of this
    // engine configuration wrote (the checksum above proves it is undamaged,
    // the file name ties it to this engine's compatibility hash), in the
    // app's private cache folder.
    unsafe { Component::deserialize(engine, payload) }.map_err(|e| format!("cache entry rejected: {e}"))
}

fn ms_since(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions() {
        assert!(version_compatible("0.1.0", "0.1.0"));
        assert!(version_compatible("0.1.3", "0.1.0"));
        assert!(!version_compatible("0.1.0", "0.1.3"), "a newer guest may need imports we lack");
        assert!(!version_compatible("0.1.0", "0.2.0"));
        assert!(!version_compatible("0.1.0", "2.0.0"));
        assert!(version_compatible("1.4.0", "1.2.9"));
        assert!(!version_compatible("1.4.0", "2.0.0"));
        assert!(!version_compatible("0.1.0", "banana"));
    }

    #[test]
    fn signatures_and_pins() {
        let (seed, public) = generate_key().unwrap();
        let guest = GuestSource::from_bytes(b"\0asm pretend".to_vec(), "g".into());
        let sig = sign(&seed, guest.bytes()).unwrap();
        let signed = guest.clone().with_signature(sig.clone());
        let policy = GuestPolicy { sha256: None, public_key: Some(public) };
        policy.check(&signed).unwrap();
        assert!(matches!(policy.check(&guest), Err(GuestError::Rejected { .. })), "unsigned");
        let tampered = GuestSource::from_bytes(b"\0asm pretenD".to_vec(), "g".into()).with_signature(sig);
        assert!(matches!(policy.check(&tampered), Err(GuestError::Rejected { .. })));
        let pin = GuestPolicy { sha256: Some(guest.sha256().to_uppercase()), public_key: None };
        pin.check(&guest).unwrap();
        assert!(pin.check(&tampered).is_err());
        assert_eq!(unhex("0aFf"), Some(vec![10, 255]));
        assert_eq!(unhex("0g"), None);
    }
}
