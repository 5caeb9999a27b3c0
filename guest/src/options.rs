//! Generation settings of a session: the defaults of each kind, and how
//! the app's partial settings (`session-options`, every field optional)
//! are merged into them and checked.

use crate::host::{SamplerConfig, Token};
use crate::wit::app::{AppError, SessionKind, SessionOptions as Patch};

/// Generation settings of a session.
#[derive(Debug, Clone, PartialEq)]
pub struct SessionOptions {
    /// Maximum new tokens per reply.
    pub max_tokens: u32,
    /// Sampler settings.
    pub sampler: SamplerConfig,
    /// Strings that end a reply.
    pub stop_strings: Vec<String>,
    /// Replaces the kind's built-in system prompt.
    pub system_prompt: Option<String>,
    /// Re-warm evicted model pages at send, alongside the prompt.
    pub rewarm: bool,
    /// Reuse saved KV states of the system turn.
    pub prefix_cache: bool,
}

/// Always the most likely token.
pub fn greedy() -> SamplerConfig {
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

impl SessionOptions {
    /// Defaults of a session kind: 512 tokens and light sampling for chat,
    /// 128 tokens and greedy decoding for translation.
    pub fn defaults(kind: SessionKind) -> Self {
        let (max_tokens, sampler) = match kind {
            SessionKind::Chat => (
                512,
                SamplerConfig {
                    temperature: 0.7,
                    top_k: 40,
                    top_p: 0.95,
                    min_p: 0.05,
                    repeat_penalty: 1.1,
                    repeat_last_n: 64,
                    seed: u32::MAX,
                    logit_bias: Vec::new(),
                },
            ),
            SessionKind::Translation => (128, greedy()),
        };
        SessionOptions {
            max_tokens,
            sampler,
            stop_strings: Vec::new(),
            system_prompt: None,
            rewarm: true,
            prefix_cache: true,
        }
    }

    /// These settings with the app's changes applied. Logit biases name
    /// tokens by their text; `token_id` finds them in the loaded model.
    pub fn merged(&self, p: &Patch, token_id: impl Fn(&str) -> Option<Token>) -> Result<Self, AppError> {
        let mut o = self.clone();
        let s = &mut o.sampler;
        set(&mut o.max_tokens, p.max_tokens);
        set(&mut s.temperature, p.temperature);
        set(&mut s.top_k, p.top_k);
        set(&mut s.top_p, p.top_p);
        set(&mut s.min_p, p.min_p);
        set(&mut s.repeat_penalty, p.repeat_penalty);
        set(&mut s.seed, p.seed);
        set(&mut o.stop_strings, p.stop_strings.clone());
        set(&mut o.rewarm, p.rewarm);
        set(&mut o.prefix_cache, p.prefix_cache);
        if let Some(prompt) = &p.system_prompt {
            o.system_prompt = Some(prompt.clone());
        }
        if let Some(biases) = &p.logit_bias {
            o.sampler.logit_bias = biases
                .iter()
                .map(|(text, bias)| {
                    let id = token_id(text).ok_or_else(|| {
                        AppError::InvalidArgument(format!("`{text}` is not a single token of this model"))
                    })?;
                    Ok((id, *bias))
                })
                .collect::<Result<_, AppError>>()?;
        }
        o.check()?;
        Ok(o)
    }

    /// Refuse settings that cannot work (the host checks the rest).
    pub fn check(&self) -> Result<(), AppError> {
        let bad = |m: &str| Err(AppError::InvalidArgument(m.to_owned()));
        if self.max_tokens == 0 {
            return bad("max-tokens must be at least 1");
        }
        let s = &self.sampler;
        if !s.temperature.is_finite() || s.temperature < 0.0 {
            return bad("temperature must be a finite number ≥ 0");
        }
        if s.top_k < 0 {
            return bad("top-k must be ≥ 0");
        }
        Ok(())
    }
}

fn set<T>(field: &mut T, value: Option<T>) {
    if let Some(v) = value {
        *field = v;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn patch() -> Patch {
        // Every field unset (the WIT record has no `Default`).
        let (max_tokens, temperature, top_k, top_p, min_p, repeat_penalty) = Default::default();
        let (seed, stop_strings, system_prompt, logit_bias, rewarm, prefix_cache) = Default::default();
        Patch {
            max_tokens,
            temperature,
            top_k,
            top_p,
            min_p,
            repeat_penalty,
            seed,
            stop_strings,
            system_prompt,
            logit_bias,
            rewarm,
            prefix_cache,
        }
    }

    #[test]
    fn unset_fields_keep_their_values() {
        let chat = SessionOptions::defaults(SessionKind::Chat);
        assert_eq!(chat.merged(&patch(), |_| None).unwrap(), chat);
        let mut p = patch();
        p.temperature = Some(0.0);
        p.max_tokens = Some(8);
        let o = chat.merged(&p, |_| None).unwrap();
        assert_eq!((o.sampler.temperature, o.max_tokens, o.sampler.top_k), (0.0, 8, 40));
    }

    #[test]
    fn logit_biases_name_single_tokens() {
        let mut p = patch();
        p.logit_bias = Some(vec![("<|END|>".into(), -5.0)]);
        let o = SessionOptions::defaults(SessionKind::Chat)
            .merged(&p, |t| (t == "<|END|>").then_some(7))
            .unwrap();
        assert_eq!(o.sampler.logit_bias, vec![(7, -5.0)]);
        let err = SessionOptions::defaults(SessionKind::Chat).merged(&p, |_| None).unwrap_err();
        assert!(matches!(err, AppError::InvalidArgument(m) if m.contains("not a single token")));
    }

    #[test]
    fn impossible_settings_are_refused() {
        for (f, _) in [(0u32, "max"), (1, "temp")] {
            let mut p = patch();
            if f == 0 {
                p.max_tokens = Some(0);
            } else {
                p.temperature = Some(f32::NAN);
            }
            assert!(SessionOptions::defaults(SessionKind::Translation).merged(&p, |_| None).is_err());
        }
    }
}
