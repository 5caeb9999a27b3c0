//! The limits on what a guest can make the host do: each a named field the
//! embedding app can set, with a default that suits the phone, and a clear
//! error naming the limit when a guest reaches it. The guest is untrusted
//! (see the crate documentation): hitting a limit ends that call with an
//! error, never the host.

use std::time::Duration;

/// Every limit, in one place.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Limits {
    /// Linear memory the guest may grow to.
    pub guest_memory: usize,
    /// Time one call into the guest may take, not counting the host's own
    /// work for it (decoding, loading, hashing…) but counting the guest's
    /// code, its sleeps and its waits on background jobs.
    pub call_time: Duration,
    /// Wall-clock time one call into the guest may take in all, the host's
    /// work for it included: the guest cannot keep the host busy for it
    /// without end by asking again and again (each import's work is
    /// bounded by the limits below).
    pub call_wall_time: Duration,
    /// Longest a single `wait` on a background job may block (the guest's
    /// timeout is clamped to this and to what is left of `call_time`).
    pub wait: Duration,
    /// Host memory the guest's objects may hold in all: sampler chains
    /// (their penalty windows and biases) and KV snapshots.
    pub host_memory: u64,
    /// Sampler chains alive at once.
    pub samplers: usize,
    /// KV snapshots alive at once.
    pub snapshots: usize,
    /// Background jobs (hash, warmup, transfer) alive at once, of each kind.
    pub jobs: usize,
    /// Context tokens of a load in all (context per sequence × sequences).
    pub context_tokens: u32,
    /// Sequences of a context.
    pub sequences: u32,
    /// Threads per pool a load may ask for; 0: the CPUs of this device (its
    /// CPU topology's online count, at least what the process may use).
    /// ggml's workers spin while they wait, so more threads than CPUs only
    /// slow a decode down (64 on 2 cores: minutes for one decode).
    pub threads: u32,
    /// Bytes of text one `tokenize` call may take.
    pub tokenize_bytes: usize,
    /// Bytes one `storage.read` may return.
    pub read_bytes: u64,
    /// Bytes the guest's `models` folder may hold.
    pub models_quota: u64,
    /// Bytes the guest's `state` folder may hold.
    pub state_quota: u64,
    /// llama.cpp architectures a model may have (the ones tested with this host).
    pub architectures: Vec<String>,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            guest_memory: 64 << 20,
            call_time: Duration::from_secs(5),
            // A first turn evaluates up to a whole context (16,384 tokens at
            // most) in one call: minutes on a slow phone, not tens of them.
            call_wall_time: Duration::from_secs(600),
            wait: Duration::from_secs(1),
            host_memory: 512 << 20,
            samplers: 16,
            snapshots: 8,
            jobs: 8,
            context_tokens: 16_384,
            sequences: 8,
            threads: 0,
            tokenize_bytes: 1 << 20,
            read_bytes: 1 << 20,
            // The model (1.66 GB) twice, for an update next to the old one.
            models_quota: 4_000_000_000,
            state_quota: 512 << 20,
            architectures: ["cohere2", "llama", "gemma3"].map(String::from).to_vec(),
        }
    }
}
