//! The guest's view of the inference engine: a small trait over the host's
//! token-level imports, so the session logic is plain Rust that runs (and is
//! unit-tested) natively as well as inside the component.

/// A token id.
pub type Token = i32;

/// What can go wrong in the engine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EngineError {
    /// No model is loaded.
    NoModel,
    /// The sequence is full.
    ContextFull {
        /// Tokens already in the sequence.
        used: u32,
        /// Tokens the call wanted to add.
        requested: u32,
        /// Capacity of the sequence.
        capacity: u32,
    },
    /// The app cancelled.
    Cancelled,
    /// Anything else, with llama.cpp's words.
    Failed(String),
}

impl std::fmt::Display for EngineError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            EngineError::NoModel => f.write_str("no model is loaded"),
            EngineError::ContextFull { used, requested, capacity } => {
                write!(f, "context full: {used} tokens used + {requested} requested > {capacity}")
            }
            EngineError::Cancelled => f.write_str("cancelled"),
            EngineError::Failed(s) => f.write_str(s),
        }
    }
}

/// Sampler settings (greedy when the temperature is 0).
#[derive(Debug, Clone, PartialEq)]
pub struct SamplerConfig {
    /// Softmax temperature; 0 = greedy.
    pub temperature: f32,
    /// Top-k (0 = off).
    pub top_k: i32,
    /// Top-p (1 = off).
    pub top_p: f32,
    /// Min-p (0 = off).
    pub min_p: f32,
    /// Repetition penalty (1 = off).
    pub repeat_penalty: f32,
    /// Tokens the penalty looks back over.
    pub repeat_last_n: i32,
    /// Seed (`u32::MAX` lets llama.cpp pick one).
    pub seed: u32,
    /// Logit biases.
    pub logit_bias: Vec<(Token, f32)>,
}

impl SamplerConfig {
    /// Always the most likely token.
    pub fn greedy() -> Self {
        SamplerConfig {
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            repeat_penalty: 1.0,
            repeat_last_n: 0,
            seed: u32::MAX,
            logit_bias: Vec::new(),
        }
    }
}

/// A sampler chain on the host.
pub trait Sampler {
    /// Pick (and record) the next token from the last decoded logits.
    fn sample(&mut self) -> Result<Token, EngineError>;
}

/// The host's inference mechanism, as the session logic needs it.
pub trait Engine {
    /// The sampler type.
    type Sampler: Sampler;

    /// Tokenize text; `parse_special` turns control-token text into control tokens.
    fn tokenize(&self, text: &str, parse_special: bool) -> Result<Vec<Token>, EngineError>;
    /// The bytes a token shows as (control tokens show nothing).
    fn token_bytes(&self, token: Token) -> Vec<u8>;
    /// The id of the token spelled exactly `text`.
    fn token_id(&self, text: &str) -> Option<Token>;
    /// Whether the vocabulary marks the token as end-of-generation.
    fn is_eog(&self, token: Token) -> bool;
    /// Evaluate tokens at the end of a sequence.
    fn decode(&self, seq: u32, tokens: &[Token]) -> Result<(), EngineError>;
    /// Positions used in a sequence.
    fn kv_len(&self, seq: u32) -> u32;
    /// Empty a sequence.
    fn kv_clear(&self, seq: u32);
    /// Remove positions [p0, p1) (to the end when `p1` is none).
    fn kv_remove(&self, seq: u32, p0: u32, p1: Option<u32>) -> bool;
    /// Move positions [p0, p1) by `delta`.
    fn kv_shift(&self, seq: u32, p0: u32, p1: Option<u32>, delta: i32);
    /// A new sampler chain.
    fn sampler(&self, config: &SamplerConfig) -> Self::Sampler;
    /// Whether the app asked to cancel.
    fn cancel_requested(&self) -> bool;
    /// Fraction of the model file's pages in memory, when known.
    fn residency(&self) -> Option<f32>;
    /// Put a saved state of a prompt prefix into `seq` (from memory, else
    /// disk); true when `seq` now holds exactly `tokens`, else it is empty.
    fn prefix_restore(&self, seq: u32, key: &str, tokens: &[Token]) -> bool;
    /// Keep the state of `seq`, which holds exactly `tokens`, for later.
    fn prefix_store(&self, seq: u32, key: &str, tokens: &[Token]);
    /// Start bringing the model's pages back in the background (unless a
    /// warmup already runs) and return at once.
    fn warm_up_background(&self);
}
