//! Getting the model onto the device: the state machine the host drives one
//! `step` at a time and the app shows.
//!
//! checking → ready (the verified record matches: no hashing)
//!          → verifying → ready | failed(verification-failed)      (a file without record)
//!          → preflight → downloading… → verifying → ready | failed   (no file yet)
//!
//! The guest decides (free space, retries with backoff, what counts as
//! verified, which files are stale); the host moves and hashes the bytes.
//! Transient failures (no connection, a dropped connection, 5xx, 429) are
//! retried with exponential backoff; the `.part` survives everything but a
//! hash mismatch, so the next attempt — or the next app start — resumes.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::settings::{self, Settings, VerifiedRecord};
use crate::spec::ModelSpec;

/// How long one `step` may wait on a background job.
pub const STEP_MS: u32 = 250;

/// Why setup failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SetupError {
    /// No connection (after the retries).
    NoNetwork(String),
    /// 404/410.
    NotFound(u16),
    /// Another HTTP error.
    Http(u16),
    /// Not enough free space.
    InsufficientStorage {
        /// Needed.
        needed: u64,
        /// Available.
        available: u64,
    },
    /// Wrong size or hash; the file was deleted.
    VerificationFailed(String),
    /// The app cancelled.
    Cancelled,
    /// File operation failed.
    Io(String),
    /// The spec override is invalid.
    InvalidSpec(String),
    /// Not on disk and downloading was not allowed.
    NotDownloaded,
}

/// Progress as shown.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Progress {
    /// Bytes done (monotonic within a setup).
    pub done: u64,
    /// Bytes in all.
    pub total: u64,
    /// Recent speed.
    pub bytes_per_s: f64,
    /// Seconds left.
    pub eta_s: Option<f64>,
    /// Attempt number.
    pub attempt: u32,
}

/// How the file was verified.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VerifiedBy {
    /// The record matched.
    Record,
    /// Hashed on disk.
    Hashing,
    /// Hashed while downloading.
    Download,
}

/// A verified model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ready {
    /// File name in the models folder.
    pub file_name: String,
    /// Size.
    pub size: u64,
    /// How it was verified.
    pub verified_by: VerifiedBy,
    /// Bytes downloaded in this setup.
    pub downloaded: u64,
    /// Stale files removed.
    pub removed: Vec<String>,
}

/// The states.
#[derive(Debug, Clone, PartialEq)]
pub enum State {
    /// Looking at the disk.
    Checking,
    /// Checking free space.
    Preflight,
    /// Downloading.
    Downloading(Progress),
    /// Hashing.
    Verifying(Progress),
    /// Done.
    Ready(Ready),
    /// Failed.
    Failed(SetupError),
}

/// Errors of a transfer, as the host reports them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DownloadError {
    /// Cannot connect.
    NoNetwork(String),
    /// 404/410.
    NotFound(u16),
    /// Other status.
    Http(u16),
    /// Connection broke mid-body.
    Interrupted(String),
    /// Server size differs.
    SizeMismatch {
        /// Server's.
        server: u64,
        /// Expected.
        expected: u64,
    },
    /// Disk full.
    DiskFull,
    /// Local I/O.
    Io(String),
    /// Cancelled.
    Cancelled,
}

/// A transfer's answer to `wait`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TransferPoll {
    /// Bytes in the `.part`, the total if known.
    Running {
        /// Done.
        done: u64,
        /// Total.
        total: Option<u64>,
    },
    /// Complete: size and SHA-256.
    Finished {
        /// Size.
        bytes: u64,
        /// Hash.
        sha256: String,
    },
}

/// A hash job's answer to `wait`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HashPoll {
    /// Bytes done and total.
    Running(u64, u64),
    /// The SHA-256.
    Done(String),
}

/// A background transfer.
pub trait Transfer {
    /// Wait up to `ms`.
    fn wait(&self, ms: u32) -> Result<TransferPoll, DownloadError>;
    /// Stop.
    fn cancel(&self);
}

/// A background hash.
pub trait Hasher {
    /// Wait up to `ms`.
    fn wait(&self, ms: u32) -> Result<HashPoll, String>;
    /// Stop.
    fn cancel(&self);
}

/// What setup needs from the host.
pub trait SetupIo {
    /// Transfer type.
    type Transfer: Transfer;
    /// Hasher type.
    type Hasher: Hasher;
    /// The models folder as the guest sees it.
    fn models_dir(&self) -> PathBuf;
    /// The state folder.
    fn state_dir(&self) -> PathBuf;
    /// Free bytes where models go.
    fn free_space(&self) -> Result<u64, String>;
    /// Start a transfer into `part_name` in the models folder.
    fn transfer(&self, url: &str, part_name: &str, expected_size: u64) -> Self::Transfer;
    /// Start hashing a file in the models folder.
    fn hasher(&self, file_name: &str) -> Self::Hasher;
    /// Whether the app asked to cancel.
    fn cancel_requested(&self) -> bool;
}

/// Download speed over the last few seconds.
#[derive(Debug, Default)]
struct SpeedMeter {
    samples: VecDeque<(Instant, u64)>,
}

impl SpeedMeter {
    const WINDOW: Duration = Duration::from_secs(5);

    fn add(&mut self, done: u64) -> f64 {
        let now = Instant::now();
        self.samples.push_back((now, done));
        while self.samples.len() > 2 && now.duration_since(self.samples[0].0) > Self::WINDOW {
            self.samples.pop_front();
        }
        match (self.samples.front(), self.samples.back()) {
            (Some(&(t0, d0)), Some(&(t1, d1))) if t1 > t0 && d1 >= d0 => {
                (d1 - d0) as f64 / t1.duration_since(t0).as_secs_f64()
            }
            _ => 0.0,
        }
    }

    fn reset(&mut self) {
        self.samples.clear();
    }
}

enum Phase<T, H> {
    Announce,
    Check,
    Verifying(H),
    Preflight,
    Downloading(T),
    Retrying {
        at: Instant,
    },
    /// All bytes are in; the hash computed while writing is compared next.
    Downloaded {
        bytes: u64,
        sha256: String,
    },
    Compare {
        bytes: u64,
        sha256: String,
    },
    Done,
}

/// One model setup.
pub struct Setup<IO: SetupIo> {
    io: IO,
    spec: Result<ModelSpec, String>,
    allow_download: bool,
    force_verify: bool,
    phase: Phase<IO::Transfer, IO::Hasher>,
    max_done: u64,
    meter: SpeedMeter,
    attempt: u32,
    downloaded_from: u64,
    last: Option<State>,
}

fn is_transient(e: &DownloadError) -> bool {
    match e {
        DownloadError::NoNetwork(_) | DownloadError::Interrupted(_) => true,
        DownloadError::Http(s) => *s == 429 || (500..=599).contains(s),
        _ => false,
    }
}

impl<IO: SetupIo> Setup<IO> {
    /// A setup for `spec` (an invalid override fails at the first step).
    pub fn new(io: IO, spec: Result<ModelSpec, String>, allow_download: bool, force_verify: bool) -> Self {
        Setup {
            io,
            spec,
            allow_download,
            force_verify,
            phase: Phase::Announce,
            max_done: 0,
            meter: SpeedMeter::default(),
            attempt: 0,
            downloaded_from: 0,
            last: None,
        }
    }

    fn models(&self, name: &str) -> PathBuf {
        self.io.models_dir().join(name)
    }

    /// Advance and report; `Ready`/`Failed` repeat once reached.
    pub fn step(&mut self) -> State {
        if let (Phase::Done, Some(last)) = (&self.phase, &self.last) {
            return last.clone();
        }
        let state = match self.advance() {
            Ok(s) => s,
            Err(e) => State::Failed(e),
        };
        if matches!(state, State::Ready(_) | State::Failed(_)) {
            self.phase = Phase::Done;
            self.last = Some(state.clone());
        }
        state
    }

    fn spec(&self) -> Result<ModelSpec, SetupError> {
        self.spec.clone().map_err(SetupError::InvalidSpec)
    }

    fn progress(&mut self, done: u64, total: u64) -> Progress {
        // Shown progress never goes back, even when a server makes us start over.
        self.max_done = self.max_done.max(done);
        let bytes_per_s = self.meter.add(done);
        let left = total.saturating_sub(self.max_done);
        let eta_s = (bytes_per_s > 0.0).then(|| left as f64 / bytes_per_s);
        Progress { done: self.max_done, total, bytes_per_s, eta_s, attempt: self.attempt.max(1) }
    }

    fn advance(&mut self) -> Result<State, SetupError> {
        let spec = self.spec()?;
        match std::mem::replace(&mut self.phase, Phase::Done) {
            Phase::Announce => {
                self.phase = Phase::Check;
                Ok(State::Checking)
            }
            Phase::Check => self.check(&spec),
            Phase::Verifying(hasher) => {
                if self.io.cancel_requested() {
                    hasher.cancel();
                    return Err(SetupError::Cancelled);
                }
                match hasher.wait(STEP_MS) {
                    Ok(HashPoll::Running(done, total)) => {
                        self.phase = Phase::Verifying(hasher);
                        Ok(State::Verifying(self.progress(done, total)))
                    }
                    Ok(HashPoll::Done(sha)) => self.accept(&spec, &sha, spec.size, VerifiedBy::Hashing),
                    Err(e) if e == "cancelled" => Err(SetupError::Cancelled),
                    Err(e) => Err(SetupError::Io(e)),
                }
            }
            Phase::Preflight => self.preflight(&spec),
            Phase::Downloading(transfer) => self.download(&spec, transfer),
            Phase::Retrying { at } => {
                if self.io.cancel_requested() {
                    return Err(SetupError::Cancelled);
                }
                let now = Instant::now();
                if now < at {
                    std::thread::sleep((at - now).min(Duration::from_millis(STEP_MS as u64)));
                    self.phase = Phase::Retrying { at };
                    let done = self.max_done;
                    return Ok(State::Downloading(self.progress(done, spec.size)));
                }
                self.start_transfer(&spec)
            }
            Phase::Downloaded { bytes, sha256 } => {
                let p = self.progress(bytes, spec.size);
                self.phase = Phase::Compare { bytes, sha256 };
                Ok(State::Verifying(p))
            }
            Phase::Compare { bytes, sha256 } => self.accept(&spec, &sha256, bytes, VerifiedBy::Download),
            Phase::Done => Err(SetupError::Io("setup already finished".into())),
        }
    }

    fn check(&mut self, spec: &ModelSpec) -> Result<State, SetupError> {
        let path = self.models(&spec.file_name);
        match std::fs::metadata(&path) {
            Ok(meta) => {
                if meta.len() != spec.size {
                    self.reject(spec)?;
                    return Err(SetupError::VerificationFailed(format!(
                        "{} has {} bytes, expected {}; it was deleted",
                        spec.file_name,
                        meta.len(),
                        spec.size
                    )));
                }
                let settings = Settings::load(&self.io.state_dir());
                if !self.force_verify && settings.is_verified(&spec.file_name, &path, &spec.sha256) {
                    return self.ready(spec, VerifiedBy::Record);
                }
                let hasher = self.io.hasher(&spec.file_name);
                self.phase = Phase::Verifying(hasher);
                Ok(State::Verifying(self.progress(0, spec.size)))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if !self.allow_download {
                    return Err(SetupError::NotDownloaded);
                }
                self.phase = Phase::Preflight;
                Ok(State::Preflight)
            }
            Err(e) => Err(SetupError::Io(format!("{}: {e}", spec.file_name))),
        }
    }

    fn preflight(&mut self, spec: &ModelSpec) -> Result<State, SetupError> {
        let existing = std::fs::metadata(self.models(&spec.part_name())).map(|m| m.len()).unwrap_or(0);
        let needed = spec.free_space_needed().saturating_sub(existing.min(spec.size));
        let available = self.io.free_space().map_err(SetupError::Io)?;
        if available < needed {
            return Err(SetupError::InsufficientStorage { needed, available });
        }
        self.downloaded_from = existing.min(spec.size);
        self.max_done = self.downloaded_from;
        self.start_transfer(spec)
    }

    fn start_transfer(&mut self, spec: &ModelSpec) -> Result<State, SetupError> {
        self.attempt += 1;
        self.meter.reset();
        let transfer = self.io.transfer(&spec.url, &spec.part_name(), spec.size);
        self.phase = Phase::Downloading(transfer);
        let done = self.max_done;
        Ok(State::Downloading(self.progress(done, spec.size)))
    }

    fn download(&mut self, spec: &ModelSpec, transfer: IO::Transfer) -> Result<State, SetupError> {
        if self.io.cancel_requested() {
            transfer.cancel();
            // Let it finish writing and syncing what it has.
            let _ = transfer.wait(10_000);
            return Err(SetupError::Cancelled);
        }
        match transfer.wait(STEP_MS) {
            Ok(TransferPoll::Running { done, total }) => {
                self.phase = Phase::Downloading(transfer);
                Ok(State::Downloading(self.progress(done, total.unwrap_or(spec.size))))
            }
            Ok(TransferPoll::Finished { bytes, sha256 }) => {
                // The bar reaches 100 % before "verifying" shows, however the polls fell.
                let p = self.progress(bytes, spec.size);
                self.phase = Phase::Downloaded { bytes, sha256 };
                Ok(State::Downloading(p))
            }
            Err(e) if is_transient(&e) && self.attempt <= spec.retries => {
                let delay = spec.retry_base_ms as u64 * (1u64 << (self.attempt - 1).min(10));
                self.phase = Phase::Retrying { at: Instant::now() + Duration::from_millis(delay) };
                let done = self.max_done;
                Ok(State::Downloading(self.progress(done, spec.size)))
            }
            Err(e) => Err(self.download_error(spec, e)),
        }
    }

    fn download_error(&mut self, spec: &ModelSpec, e: DownloadError) -> SetupError {
        match e {
            DownloadError::NoNetwork(m) => {
                SetupError::NoNetwork(format!("{m} (after {} attempts)", self.attempt))
            }
            DownloadError::Interrupted(m) => {
                SetupError::NoNetwork(format!("connection lost: {m} (after {} attempts)", self.attempt))
            }
            DownloadError::NotFound(s) => SetupError::NotFound(s),
            DownloadError::Http(s) => SetupError::Http(s),
            DownloadError::SizeMismatch { server, expected } => {
                let _ = std::fs::remove_file(self.models(&spec.part_name()));
                SetupError::VerificationFailed(format!(
                    "the server's file has {server} bytes, expected {expected}"
                ))
            }
            DownloadError::DiskFull => {
                let have = std::fs::metadata(self.models(&spec.part_name())).map(|m| m.len()).unwrap_or(0);
                SetupError::InsufficientStorage {
                    needed: spec.size.saturating_sub(have),
                    available: self.io.free_space().unwrap_or(0),
                }
            }
            DownloadError::Io(m) => SetupError::Io(m),
            DownloadError::Cancelled => SetupError::Cancelled,
        }
    }

    /// Compare a computed hash with the spec; keep or delete the file.
    fn accept(
        &mut self,
        spec: &ModelSpec,
        sha: &str,
        bytes: u64,
        by: VerifiedBy,
    ) -> Result<State, SetupError> {
        let good = sha == spec.sha256 && bytes == spec.size;
        let path = self.models(&spec.file_name);
        if by == VerifiedBy::Download {
            let part = self.models(&spec.part_name());
            if !good {
                let _ = std::fs::remove_file(&part);
                self.forget(spec);
                return Err(SetupError::VerificationFailed(format!(
                    "downloaded file has SHA-256 {sha} ({bytes} bytes), expected {} ({} bytes); it was deleted",
                    spec.sha256, spec.size
                )));
            }
            std::fs::rename(&part, &path)
                .map_err(|e| SetupError::Io(format!("rename {}: {e}", spec.file_name)))?;
        } else if !good {
            self.reject(spec)?;
            return Err(SetupError::VerificationFailed(format!(
                "{} has SHA-256 {sha}, expected {}; it was deleted",
                spec.file_name, spec.sha256
            )));
        }
        self.ready(spec, by)
    }

    fn reject(&mut self, spec: &ModelSpec) -> Result<(), SetupError> {
        std::fs::remove_file(self.models(&spec.file_name))
            .map_err(|e| SetupError::Io(format!("cannot delete {}: {e}", spec.file_name)))?;
        self.forget(spec);
        Ok(())
    }

    fn forget(&self, spec: &ModelSpec) {
        let state = self.io.state_dir();
        let _ = settings::update(&state, |s| {
            s.verified.remove(&spec.file_name);
        });
    }

    fn ready(&mut self, spec: &ModelSpec, by: VerifiedBy) -> Result<State, SetupError> {
        let path = self.models(&spec.file_name);
        if by != VerifiedBy::Record {
            // A record that cannot be written only costs a re-hash next time.
            if let Ok((size, mtime_ns)) = settings::file_identity(&path) {
                let rec = VerifiedRecord { size, mtime_ns, sha256: spec.sha256.clone() };
                let _ = settings::update(&self.io.state_dir(), |s| {
                    s.verified.insert(spec.file_name.clone(), rec);
                });
            }
        }
        let removed = remove_stale(&self.io.models_dir(), &spec.file_name);
        let downloaded = if by == VerifiedBy::Download { spec.size - self.downloaded_from } else { 0 };
        Ok(State::Ready(Ready {
            file_name: spec.file_name.clone(),
            size: spec.size,
            verified_by: by,
            downloaded,
            removed,
        }))
    }
}

/// Remove model files (`*.gguf`, `*.part`) other than `keep`.
fn remove_stale(dir: &Path, keep: &str) -> Vec<String> {
    let mut removed = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let stale = name != keep && (name.ends_with(".gguf") || name.ends_with(".part"));
            if stale && std::fs::remove_file(e.path()).is_ok() {
                removed.push(name);
            }
        }
    }
    removed.sort();
    removed
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;
    use std::rc::Rc;

    /// A scripted host: transfers write the scripted bytes into the `.part`
    /// and answer the scripted results; hashing uses a toy digest.
    struct FakeIo {
        dir: PathBuf,
        free: u64,
        results: Rc<RefCell<VecDeque<Result<Vec<u8>, DownloadError>>>>,
        hashes: Rc<RefCell<u32>>,
    }

    fn digest(bytes: &[u8]) -> String {
        // Not SHA-256: the state machine only compares strings.
        let mut h = 0u64;
        for b in bytes {
            h = h.wrapping_mul(31).wrapping_add(*b as u64);
        }
        format!("{h:064x}")
    }

    struct FakeTransfer(Result<TransferPoll, DownloadError>);
    impl Transfer for FakeTransfer {
        fn wait(&self, _: u32) -> Result<TransferPoll, DownloadError> {
            self.0.clone()
        }
        fn cancel(&self) {}
    }
    struct FakeHasher(String);
    impl Hasher for FakeHasher {
        fn wait(&self, _: u32) -> Result<HashPoll, String> {
            Ok(HashPoll::Done(self.0.clone()))
        }
        fn cancel(&self) {}
    }

    impl SetupIo for FakeIo {
        type Transfer = FakeTransfer;
        type Hasher = FakeHasher;
        fn models_dir(&self) -> PathBuf {
            self.dir.join("models")
        }
        fn state_dir(&self) -> PathBuf {
            self.dir.join("state")
        }
        fn free_space(&self) -> Result<u64, String> {
            Ok(self.free)
        }
        fn transfer(&self, _: &str, part: &str, _: u64) -> FakeTransfer {
            let next = self.results.borrow_mut().pop_front().expect("a scripted transfer");
            FakeTransfer(next.map(|bytes| {
                std::fs::write(self.models_dir().join(part), &bytes).unwrap();
                TransferPoll::Finished { bytes: bytes.len() as u64, sha256: digest(&bytes) }
            }))
        }
        fn hasher(&self, name: &str) -> FakeHasher {
            *self.hashes.borrow_mut() += 1;
            FakeHasher(digest(&std::fs::read(self.models_dir().join(name)).unwrap()))
        }
        fn cancel_requested(&self) -> bool {
            false
        }
    }

    const MODEL: &[u8] = b"GGUF pretend model";

    fn spec() -> ModelSpec {
        let mut s = ModelSpec::tiny_aya_q3_k_s();
        s.file_name = "m.gguf".into();
        s.size = MODEL.len() as u64;
        s.sha256 = digest(MODEL);
        s.free_space_margin = 10;
        s.retry_base_ms = 1;
        s
    }

    fn io(results: Vec<Result<Vec<u8>, DownloadError>>, free: u64) -> (FakeIo, Rc<RefCell<u32>>) {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("bittybot-setup-{}-{n}", std::process::id()));
        std::fs::create_dir_all(dir.join("models")).unwrap();
        std::fs::create_dir_all(dir.join("state")).unwrap();
        let hashes = Rc::new(RefCell::new(0));
        (FakeIo { dir, free, results: Rc::new(RefCell::new(results.into())), hashes: hashes.clone() }, hashes)
    }

    fn run(setup: &mut Setup<FakeIo>) -> Vec<State> {
        let mut states = Vec::new();
        for _ in 0..100 {
            let s = setup.step();
            let end = matches!(s, State::Ready(_) | State::Failed(_));
            states.push(s);
            if end {
                return states;
            }
        }
        panic!("setup did not end: {states:?}");
    }

    #[test]
    fn download_then_record_fast_path() {
        let (fake, hashes) = io(vec![Ok(MODEL.to_vec())], 1 << 30);
        let models = fake.models_dir();
        std::fs::write(models.join("old-model.gguf"), b"old").unwrap();
        let mut s = Setup::new(fake, Ok(spec()), true, false);
        let states = run(&mut s);
        assert!(matches!(states[0], State::Checking));
        assert!(matches!(states[1], State::Preflight));
        // The download bar reaches the full size before "verifying" shows.
        let first_verifying = states.iter().position(|s| matches!(s, State::Verifying(_))).unwrap();
        match &states[first_verifying - 1] {
            State::Downloading(p) => assert_eq!((p.done, p.total), (MODEL.len() as u64, MODEL.len() as u64)),
            other => panic!("before verifying: {other:?}"),
        }
        match states.last().unwrap() {
            State::Ready(r) => {
                assert_eq!(r.verified_by, VerifiedBy::Download);
                assert_eq!(r.removed, vec!["old-model.gguf".to_string()]);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(std::fs::read(models.join("m.gguf")).unwrap(), MODEL);
        assert!(!models.join("m.gguf.part").exists());
        assert_eq!(*hashes.borrow(), 0, "hashed while downloading, not after");

        // Second setup on the same folders: the record matches, no hashing.
        let (mut fake2, hashes2) = io(vec![], 1 << 30);
        fake2.dir = models.parent().unwrap().to_path_buf();
        let mut s2 = Setup::new(fake2, Ok(spec()), true, false);
        assert!(matches!(
            run(&mut s2).last(),
            Some(State::Ready(Ready { verified_by: VerifiedBy::Record, .. }))
        ));
        assert_eq!(*hashes2.borrow(), 0);
    }

    #[test]
    fn hash_mismatch_deletes_and_forgets() {
        let (fake, _) = io(vec![Ok(b"GGUF pretend modeX".to_vec())], 1 << 30);
        let models = fake.models_dir();
        let mut s = Setup::new(fake, Ok(spec()), true, false);
        assert!(matches!(run(&mut s).last(), Some(State::Failed(SetupError::VerificationFailed(_)))));
        assert!(!models.join("m.gguf").exists() && !models.join("m.gguf.part").exists());
    }

    #[test]
    fn not_enough_space_writes_nothing() {
        let (fake, _) = io(vec![], 5);
        let models = fake.models_dir();
        let mut s = Setup::new(fake, Ok(spec()), true, false);
        let needed = spec().free_space_needed();
        assert_eq!(
            run(&mut s).last(),
            Some(&State::Failed(SetupError::InsufficientStorage { needed, available: 5 }))
        );
        assert_eq!(std::fs::read_dir(models).unwrap().count(), 0);
    }

    #[test]
    fn transient_errors_are_retried_then_reported() {
        let flaky = vec![Err(DownloadError::Interrupted("reset".into())), Ok(MODEL.to_vec())];
        let (fake, _) = io(flaky, 1 << 30);
        let mut s = Setup::new(fake, Ok(spec()), true, false);
        assert!(matches!(run(&mut s).last(), Some(State::Ready(_))));

        let down = (0..4).map(|_| Err(DownloadError::NoNetwork("refused".into()))).collect();
        let (fake, _) = io(down, 1 << 30);
        let mut s = Setup::new(fake, Ok(spec()), true, false);
        match run(&mut s).last() {
            Some(State::Failed(SetupError::NoNetwork(m))) => assert!(m.contains("after 4 attempts"), "{m}"),
            other => panic!("{other:?}"),
        }
        let (fake, _) = io(vec![Err(DownloadError::NotFound(404))], 1 << 30);
        let mut s = Setup::new(fake, Ok(spec()), true, false);
        assert_eq!(run(&mut s).last(), Some(&State::Failed(SetupError::NotFound(404))));
    }

    #[test]
    fn a_wrong_file_on_disk_is_hashed_and_deleted_a_touched_one_rehashed() {
        let (fake, hashes) = io(vec![], 1 << 30);
        let models = fake.models_dir();
        std::fs::write(models.join("m.gguf"), MODEL).unwrap();
        let dir = fake.dir.clone();
        let mut s = Setup::new(fake, Ok(spec()), false, false);
        assert!(matches!(
            run(&mut s).last(),
            Some(State::Ready(Ready { verified_by: VerifiedBy::Hashing, .. }))
        ));
        assert_eq!(*hashes.borrow(), 1);
        // Same size, other content: the mtime changed, so it is hashed again and rejected.
        std::thread::sleep(Duration::from_millis(20));
        std::fs::write(models.join("m.gguf"), b"GGUF pretend modeZ").unwrap();
        let (mut fake2, _) = io(vec![], 1 << 30);
        fake2.dir = dir;
        let mut s2 = Setup::new(fake2, Ok(spec()), false, false);
        assert!(matches!(run(&mut s2).last(), Some(State::Failed(SetupError::VerificationFailed(_)))));
        assert!(!models.join("m.gguf").exists());
    }

    #[test]
    fn invalid_spec_and_no_download_allowed() {
        let (fake, _) = io(vec![], 1 << 30);
        let mut s = Setup::new(fake, Err("model spec: bad".into()), true, false);
        assert!(matches!(s.step(), State::Failed(SetupError::InvalidSpec(_))));
        let (fake, _) = io(vec![], 1 << 30);
        let mut s = Setup::new(fake, Ok(spec()), false, false);
        assert_eq!(run(&mut s).last(), Some(&State::Failed(SetupError::NotDownloaded)));
    }
}
