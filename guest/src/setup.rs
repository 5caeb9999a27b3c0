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
use std::time::{Duration, Instant};

use crate::errors;
use crate::host::{
    DownloadError, FileError, HashState, Job, Jobs, ModelSource, Platform, Root, Storage, TransferRequest,
    TransferState,
};
use crate::settings::{self, Settings, VerifiedRecord};
use crate::spec::ModelSpec;
use crate::wit::app::{ModelReady, SetupError, SetupProgress, SetupState, Storage as Space, VerifiedBy};
use crate::wit::types::FileRef;

/// How long one `step` may wait on a background job.
pub const STEP_MS: u32 = 250;

/// What setup needs from the host.
pub trait SetupHost: Storage + Platform + Jobs {}

impl<T: Storage + Platform + Jobs> SetupHost for T {}

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
pub struct Setup<H: Jobs> {
    spec: Result<ModelSpec, String>,
    allow_download: bool,
    force_verify: bool,
    phase: Phase<H::Transfer, H::Hasher>,
    max_done: u64,
    meter: SpeedMeter,
    attempt: u32,
    downloaded_from: u64,
    last: Option<SetupState>,
}

fn is_transient(e: &DownloadError) -> bool {
    match e {
        DownloadError::NoNetwork(_) | DownloadError::Interrupted(_) => true,
        DownloadError::HttpError(s) => *s == 429 || (500..=599).contains(s),
        _ => false,
    }
}

/// Whether a file of `size` bytes hashing to `sha256` is the spec's model;
/// else what differs.
pub fn check_digest(spec: &ModelSpec, size: u64, sha256: &str) -> Result<(), String> {
    if size == spec.size && sha256 == spec.sha256 {
        return Ok(());
    }
    Err(format!(
        "the file has {size} bytes and SHA-256 {sha256}; {} has {} bytes and SHA-256 {}",
        spec.file_name, spec.size, spec.sha256
    ))
}

fn io(e: FileError) -> SetupError {
    SetupError::Io(errors::file(&e))
}

impl<H: SetupHost> Setup<H> {
    /// A setup for `spec` (an invalid override fails at the first step).
    pub fn new(spec: Result<ModelSpec, String>, allow_download: bool, force_verify: bool) -> Self {
        Setup {
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

    /// Advance and report; `Ready`/`Failed` repeat once reached.
    pub fn step(&mut self, host: &H) -> SetupState {
        if let (Phase::Done, Some(last)) = (&self.phase, &self.last) {
            return last.clone();
        }
        let state = self.advance(host).unwrap_or_else(SetupState::Failed);
        if matches!(state, SetupState::Ready(_) | SetupState::Failed(_)) {
            self.phase = Phase::Done;
            self.last = Some(state.clone());
        }
        state
    }

    fn spec(&self) -> Result<ModelSpec, SetupError> {
        self.spec.clone().map_err(SetupError::InvalidSpec)
    }

    fn progress(&mut self, done: u64, total: u64) -> SetupProgress {
        // Shown progress never goes back, even when a server makes us start over.
        self.max_done = self.max_done.max(done);
        let bytes_per_s = self.meter.add(done);
        let left = total.saturating_sub(self.max_done);
        let eta_s = (bytes_per_s > 0.0).then(|| left as f64 / bytes_per_s);
        SetupProgress { done: self.max_done, total, bytes_per_s, eta_s, attempt: self.attempt.max(1) }
    }

    fn advance(&mut self, host: &H) -> Result<SetupState, SetupError> {
        let spec = self.spec()?;
        match std::mem::replace(&mut self.phase, Phase::Done) {
            Phase::Announce => {
                self.phase = Phase::Check;
                Ok(SetupState::Checking)
            }
            Phase::Check => self.check(host, &spec),
            Phase::Verifying(hasher) => {
                if host.cancel_requested() {
                    hasher.cancel();
                    return Err(SetupError::Cancelled);
                }
                match hasher.wait(STEP_MS) {
                    Ok(HashState::Running(p)) => {
                        self.phase = Phase::Verifying(hasher);
                        Ok(SetupState::Verifying(self.progress(p.done, p.total)))
                    }
                    Ok(HashState::Done(sha)) => {
                        self.accept(host, &spec, &sha, spec.size, VerifiedBy::Hashing)
                    }
                    Err(FileError::Cancelled) => Err(SetupError::Cancelled),
                    Err(e) => Err(io(e)),
                }
            }
            Phase::Preflight => self.preflight(host, &spec),
            Phase::Downloading(transfer) => self.download(host, &spec, transfer),
            Phase::Retrying { at } => {
                if host.cancel_requested() {
                    return Err(SetupError::Cancelled);
                }
                let now = Instant::now();
                if now < at {
                    std::thread::sleep((at - now).min(Duration::from_millis(STEP_MS as u64)));
                    self.phase = Phase::Retrying { at };
                    let done = self.max_done;
                    return Ok(SetupState::Downloading(self.progress(done, spec.size)));
                }
                self.start_transfer(host, &spec)
            }
            Phase::Downloaded { bytes, sha256 } => {
                let p = self.progress(bytes, spec.size);
                self.phase = Phase::Compare { bytes, sha256 };
                Ok(SetupState::Verifying(p))
            }
            Phase::Compare { bytes, sha256 } => {
                self.accept(host, &spec, &sha256, bytes, VerifiedBy::Download)
            }
            Phase::Done => Err(SetupError::Io("setup already finished".into())),
        }
    }

    fn check(&mut self, host: &H, spec: &ModelSpec) -> Result<SetupState, SetupError> {
        match host.stat(Root::Models, &spec.file_name).map_err(io)? {
            Some(stat) => {
                if stat.size != spec.size {
                    self.reject(host, spec)?;
                    return Err(SetupError::VerificationFailed(format!(
                        "{} has {} bytes, expected {}; it was deleted",
                        spec.file_name, stat.size, spec.size
                    )));
                }
                let settings = Settings::load(host);
                if !self.force_verify && settings.is_verified(&spec.file_name, Some(stat), &spec.sha256) {
                    return self.ready(host, spec, VerifiedBy::SavedRecord);
                }
                let hasher = host.hasher(&ModelSource::Managed(spec.file_name.clone()));
                self.phase = Phase::Verifying(hasher);
                Ok(SetupState::Verifying(self.progress(0, spec.size)))
            }
            None => {
                if !self.allow_download {
                    return Err(SetupError::NotDownloaded);
                }
                self.phase = Phase::Preflight;
                Ok(SetupState::Preflight)
            }
        }
    }

    fn part_size(host: &H, spec: &ModelSpec) -> u64 {
        host.stat(Root::Models, &spec.part_name()).ok().flatten().map_or(0, |s| s.size)
    }

    fn preflight(&mut self, host: &H, spec: &ModelSpec) -> Result<SetupState, SetupError> {
        let existing = Self::part_size(host, spec);
        let needed = spec.free_space_needed().saturating_sub(existing.min(spec.size));
        let available = host.free_space(Root::Models).map_err(SetupError::Io)?;
        if available < needed {
            return Err(SetupError::InsufficientStorage(Space { needed, available }));
        }
        self.downloaded_from = existing.min(spec.size);
        self.max_done = self.downloaded_from;
        self.start_transfer(host, spec)
    }

    fn start_transfer(&mut self, host: &H, spec: &ModelSpec) -> Result<SetupState, SetupError> {
        self.attempt += 1;
        self.meter.reset();
        let transfer = host.transfer(&TransferRequest {
            url: spec.url.clone(),
            dest: FileRef { root: Root::Models, name: spec.part_name() },
            expected_size: spec.size,
        });
        self.phase = Phase::Downloading(transfer);
        let done = self.max_done;
        Ok(SetupState::Downloading(self.progress(done, spec.size)))
    }

    fn download(
        &mut self,
        host: &H,
        spec: &ModelSpec,
        transfer: H::Transfer,
    ) -> Result<SetupState, SetupError> {
        if host.cancel_requested() {
            transfer.cancel();
            // Let it finish writing and syncing what it has.
            let _ = transfer.wait(10_000);
            return Err(SetupError::Cancelled);
        }
        match transfer.wait(STEP_MS) {
            Ok(TransferState::Running(p)) => {
                self.phase = Phase::Downloading(transfer);
                Ok(SetupState::Downloading(self.progress(p.done, p.total.unwrap_or(spec.size))))
            }
            Ok(TransferState::Finished(f)) => {
                // The bar reaches 100 % before "verifying" shows, however the polls fell.
                let p = self.progress(f.bytes, spec.size);
                self.phase = Phase::Downloaded { bytes: f.bytes, sha256: f.sha256 };
                Ok(SetupState::Downloading(p))
            }
            Err(e) if is_transient(&e) && self.attempt <= spec.retries => {
                let delay = spec.retry_base_ms as u64 * (1u64 << (self.attempt - 1).min(10));
                self.phase = Phase::Retrying { at: Instant::now() + Duration::from_millis(delay) };
                let done = self.max_done;
                Ok(SetupState::Downloading(self.progress(done, spec.size)))
            }
            Err(e) => Err(self.download_error(host, spec, e)),
        }
    }

    fn download_error(&mut self, host: &H, spec: &ModelSpec, e: DownloadError) -> SetupError {
        let after = self.attempt;
        // An empty `.part` (the server refused before any byte) holds
        // nothing to resume: leave no trace of the attempt.
        if host.stat(Root::Models, &spec.part_name()).ok().flatten().is_some_and(|s| s.size == 0) {
            let _ = host.remove(Root::Models, &spec.part_name());
        }
        match e {
            DownloadError::NotAllowed(m) => SetupError::NotAllowed(m),
            DownloadError::NoNetwork(m) => SetupError::NoNetwork(format!("{m} (after {after} attempts)")),
            DownloadError::Interrupted(m) => {
                SetupError::NoNetwork(format!("connection lost: {m} (after {after} attempts)"))
            }
            DownloadError::NotFound(s) => SetupError::NotFound(s),
            DownloadError::HttpError(s) => SetupError::HttpError(s),
            e @ DownloadError::SizeMismatch(_) => {
                let _ = host.remove(Root::Models, &spec.part_name());
                SetupError::VerificationFailed(errors::download(&e))
            }
            DownloadError::DiskFull | DownloadError::TooLarge(_) => {
                let have = Self::part_size(host, spec);
                SetupError::InsufficientStorage(Space {
                    needed: spec.size.saturating_sub(have),
                    available: host.free_space(Root::Models).unwrap_or(0),
                })
            }
            DownloadError::Io(m) => SetupError::Io(m),
            DownloadError::Cancelled => SetupError::Cancelled,
        }
    }

    /// Compare a computed hash with the spec; keep or delete the file.
    fn accept(
        &mut self,
        host: &H,
        spec: &ModelSpec,
        sha: &str,
        bytes: u64,
        by: VerifiedBy,
    ) -> Result<SetupState, SetupError> {
        let verdict = check_digest(spec, bytes, sha);
        if by == VerifiedBy::Download {
            if let Err(why) = verdict {
                let _ = host.remove(Root::Models, &spec.part_name());
                self.forget(host, spec);
                return Err(SetupError::VerificationFailed(format!("download: {why}; it was deleted")));
            }
            host.rename(Root::Models, &spec.part_name(), &spec.file_name).map_err(io)?;
        } else if let Err(why) = verdict {
            self.reject(host, spec)?;
            return Err(SetupError::VerificationFailed(format!("{why}; it was deleted")));
        }
        self.ready(host, spec, by)
    }

    fn reject(&mut self, host: &H, spec: &ModelSpec) -> Result<(), SetupError> {
        host.remove(Root::Models, &spec.file_name).map_err(io)?;
        self.forget(host, spec);
        Ok(())
    }

    fn forget(&self, host: &H, spec: &ModelSpec) {
        let _ = settings::update(host, |s| {
            s.verified.remove(&spec.file_name);
        });
    }

    fn ready(&mut self, host: &H, spec: &ModelSpec, by: VerifiedBy) -> Result<SetupState, SetupError> {
        if by != VerifiedBy::SavedRecord {
            // A record that cannot be written only costs a re-hash next time.
            if let Ok(Some(stat)) = host.stat(Root::Models, &spec.file_name) {
                let rec = VerifiedRecord::of(stat, &spec.sha256);
                let _ = settings::update(host, |s| {
                    s.verified.insert(spec.file_name.clone(), rec);
                });
            }
        }
        let removed = remove_stale(host, &spec.file_name);
        let downloaded = if by == VerifiedBy::Download { spec.size - self.downloaded_from } else { 0 };
        Ok(SetupState::Ready(ModelReady {
            file_name: spec.file_name.clone(),
            size: spec.size,
            verified_by: by,
            downloaded,
            removed,
        }))
    }
}

/// Remove model files (`*.gguf`, `*.part`) other than `keep`.
fn remove_stale(host: &impl Storage, keep: &str) -> Vec<String> {
    let names = host.list(Root::Models).unwrap_or_default();
    let stale = names.into_iter().filter(|n| n != keep && (n.ends_with(".gguf") || n.ends_with(".part")));
    stale.filter(|n| host.remove(Root::Models, n).unwrap_or(false)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{FakeHost, digest};

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

    fn host(transfers: Vec<Result<Vec<u8>, DownloadError>>, free: u64) -> FakeHost {
        let h = FakeHost::default();
        h.transfers.borrow_mut().extend(transfers);
        h.free.set(free);
        h
    }

    fn run(host: &FakeHost, spec: Result<ModelSpec, String>, download: bool) -> Vec<SetupState> {
        let mut setup = Setup::<FakeHost>::new(spec, download, false);
        let mut states = Vec::new();
        for _ in 0..100 {
            let s = setup.step(host);
            let end = matches!(s, SetupState::Ready(_) | SetupState::Failed(_));
            states.push(s);
            if end {
                return states;
            }
        }
        panic!("setup did not end: {states:?}");
    }

    fn last(states: &[SetupState]) -> &SetupState {
        states.last().unwrap()
    }

    #[test]
    fn download_then_record_fast_path() {
        let h = host(vec![Ok(MODEL.to_vec())], 1 << 30);
        h.storage.write(Root::Models, "old-model.gguf", b"old").unwrap();
        let states = run(&h, Ok(spec()), true);
        assert!(matches!(states[0], SetupState::Checking));
        assert!(matches!(states[1], SetupState::Preflight));
        // The download bar reaches the full size before "verifying" shows.
        let first_verifying = states.iter().position(|s| matches!(s, SetupState::Verifying(_))).unwrap();
        match &states[first_verifying - 1] {
            SetupState::Downloading(p) => {
                assert_eq!((p.done, p.total), (MODEL.len() as u64, MODEL.len() as u64))
            }
            other => panic!("before verifying: {other:?}"),
        }
        match last(&states) {
            SetupState::Ready(r) => {
                assert_eq!(r.verified_by, VerifiedBy::Download);
                assert_eq!(r.removed, vec!["old-model.gguf".to_string()]);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(h.storage.get(Root::Models, "m.gguf").unwrap(), MODEL);
        assert!(h.storage.get(Root::Models, "m.gguf.part").is_none());
        assert_eq!(h.hashes.get(), 0, "hashed while downloading, not after");

        // A second setup on the same folders: the record matches, no hashing.
        let states = run(&h, Ok(spec()), true);
        assert!(matches!(
            last(&states),
            SetupState::Ready(ModelReady { verified_by: VerifiedBy::SavedRecord, .. })
        ));
        assert_eq!(h.hashes.get(), 0);
    }

    #[test]
    fn hash_mismatch_deletes_and_forgets() {
        let h = host(vec![Ok(b"GGUF pretend modeX".to_vec())], 1 << 30);
        assert!(matches!(
            last(&run(&h, Ok(spec()), true)),
            SetupState::Failed(SetupError::VerificationFailed(_))
        ));
        assert!(h.storage.names(Root::Models).is_empty());
    }

    #[test]
    fn not_enough_space_writes_nothing() {
        let h = host(vec![], 5);
        let needed = spec().free_space_needed();
        assert_eq!(
            last(&run(&h, Ok(spec()), true)),
            &SetupState::Failed(SetupError::InsufficientStorage(Space { needed, available: 5 }))
        );
        assert_eq!(h.storage.writes.get(), 0);
    }

    #[test]
    fn transient_errors_are_retried_then_reported() {
        let flaky = vec![Err(DownloadError::Interrupted("reset".into())), Ok(MODEL.to_vec())];
        assert!(matches!(last(&run(&host(flaky, 1 << 30), Ok(spec()), true)), SetupState::Ready(_)));

        let down = (0..4).map(|_| Err(DownloadError::NoNetwork("refused".into()))).collect();
        match last(&run(&host(down, 1 << 30), Ok(spec()), true)) {
            SetupState::Failed(SetupError::NoNetwork(m)) => assert!(m.contains("after 4 attempts"), "{m}"),
            other => panic!("{other:?}"),
        }
        let h = host(vec![Err(DownloadError::NotFound(404))], 1 << 30);
        assert_eq!(last(&run(&h, Ok(spec()), true)), &SetupState::Failed(SetupError::NotFound(404)));
        let h = host(vec![Err(DownloadError::NotAllowed("loopback".into()))], 1 << 30);
        assert_eq!(
            last(&run(&h, Ok(spec()), true)),
            &SetupState::Failed(SetupError::NotAllowed("loopback".into())),
            "a refused URL is not retried"
        );
    }

    #[test]
    fn a_wrong_file_on_disk_is_hashed_and_deleted_a_touched_one_rehashed() {
        let h = host(vec![], 1 << 30);
        h.storage.write(Root::Models, "m.gguf", MODEL).unwrap();
        assert!(matches!(
            last(&run(&h, Ok(spec()), false)),
            SetupState::Ready(ModelReady { verified_by: VerifiedBy::Hashing, .. })
        ));
        assert_eq!(h.hashes.get(), 1);
        // Same size, other content: the mtime changed, so it is hashed again and rejected.
        h.storage.write(Root::Models, "m.gguf", b"GGUF pretend modeZ").unwrap();
        assert!(matches!(
            last(&run(&h, Ok(spec()), false)),
            SetupState::Failed(SetupError::VerificationFailed(_))
        ));
        assert!(h.storage.get(Root::Models, "m.gguf").is_none());
    }

    #[test]
    fn invalid_spec_and_no_download_allowed() {
        let h = host(vec![], 1 << 30);
        assert!(matches!(
            last(&run(&h, Err("model spec: bad".into()), true)),
            SetupState::Failed(SetupError::InvalidSpec(_))
        ));
        assert_eq!(last(&run(&h, Ok(spec()), false)), &SetupState::Failed(SetupError::NotDownloaded));
    }

    #[test]
    fn digests_are_checked_by_size_and_hash() {
        let s = spec();
        assert!(check_digest(&s, s.size, &s.sha256).is_ok());
        let err = check_digest(&s, s.size + 1, &s.sha256).unwrap_err();
        assert!(err.contains(&format!("{} bytes", s.size + 1)), "{err}");
        assert!(check_digest(&s, s.size, &"0".repeat(64)).is_err());
    }
}
