//! What the guest knows about the loaded model that sessions need: its chat
//! format, the tokens that end a reply, BOS, and what its cached states
//! depend on.

use crate::host::{Engine, KvType, ModelInfo, Token};
use crate::template::{self, ChatFormat, TemplateError};

/// Control tokens that end a Tiny Aya reply besides EOS (llama.cpp marks only
/// EOS as end-of-generation for `cohere2`).
pub const TINY_AYA_END_TOKENS: &[&str] = &["<|END_RESPONSE|>", "<|END_OF_TURN_TOKEN|>"];

/// The loaded model, as sessions see it.
#[derive(Debug)]
pub struct ModelProfile {
    /// Context length of each sequence.
    pub n_ctx: u32,
    /// The chat format.
    pub format: ChatFormat,
    /// Tokens that end a reply (besides what the vocabulary marks as end-of-generation).
    pub stop_ids: Vec<Token>,
    /// BOS, if the tokenizer wants one at the start of a sequence.
    pub bos: Option<Token>,
    /// Identifies the load this profile belongs to.
    pub load_id: u64,
    /// What a saved KV state depends on besides the tokens: the model
    /// file, the llama.cpp build, the KV type.
    pub cache_id: String,
}

/// The short name of a KV type in cache keys.
pub fn kv_type_name(t: KvType) -> &'static str {
    match t {
        KvType::F16 => "f16",
        KvType::Q80 => "q8_0",
    }
}

impl ModelProfile {
    /// The profile of a freshly loaded model. `model_id` identifies the
    /// file's content (its verified SHA-256 when known).
    pub fn new<E: Engine>(
        engine: &E,
        info: &ModelInfo,
        model_id: &str,
        load_id: u64,
    ) -> Result<Self, TemplateError> {
        let special_text = |t: Option<Token>| {
            t.map(|t| String::from_utf8_lossy(&engine.token_bytes(t, true)).into_owned()).unwrap_or_default()
        };
        let format = ChatFormat::for_model(
            &info.architecture,
            info.chat_template.as_deref(),
            &special_text(info.bos),
            &special_text(info.eos),
        )?;
        let mut stop_ids: Vec<Token> = info.eos.into_iter().collect();
        if template::is_tiny_aya(&info.architecture) {
            stop_ids.extend(TINY_AYA_END_TOKENS.iter().filter_map(|t| engine.token_id(t)));
        }
        Ok(ModelProfile {
            n_ctx: info.settings.n_ctx,
            format,
            stop_ids,
            bos: if info.add_bos { info.bos } else { None },
            load_id,
            cache_id: format!("{model_id}|{}|kv:{}", info.llama_version, kv_type_name(info.settings.kv_type)),
        })
    }

    /// Whether a sampled token ends the reply.
    pub fn is_stop<E: Engine>(&self, engine: &E, t: Token) -> bool {
        self.stop_ids.contains(&t) || engine.is_eog(t)
    }
}
