//! The model rules: what llama.cpp's loader would abort on, checked on the
//! metadata [`Gguf::read`] has already bounded.

use std::collections::HashMap;

use super::{Array, Gguf, GgufError, ModelShape, Value};

impl Gguf {
    /// Check what llama.cpp's loader would otherwise abort on, and that the
    /// model is one of `architectures`.
    pub fn validate_model(&self, architectures: &[&str]) -> Result<(), GgufError> {
        let unsupported = |s: String| Err(GgufError::Unsupported(s));
        let Some(arch) = self.architecture() else {
            return unsupported("no general.architecture (string)".into());
        };
        if !architectures.contains(&arch) {
            return unsupported(format!(
                "architecture `{arch}` (this host runs {})",
                architectures.join(", ")
            ));
        }
        let s = self.shape()?;
        if s.n_embd == 0 || s.n_ctx_train == 0 {
            return unsupported("an embedding width or training context of 0".into());
        }
        let heads = per_layer(self, &format!("{arch}.attention.head_count"), s.n_layer)?;
        let heads = heads.ok_or_else(|| GgufError::Unsupported(format!("no {arch}.attention.head_count")))?;
        let kv = per_layer(self, &format!("{arch}.attention.head_count_kv"), s.n_layer)?
            .unwrap_or_else(|| heads.clone());
        for (l, (&h, &k)) in heads.iter().zip(&kv).enumerate() {
            if h == 0 || k == 0 || h % k != 0 {
                return unsupported(format!("layer {l} has {h} heads and {k} key-value heads"));
            }
        }
        for (k, want) in TYPED_KEYS {
            if let Some(v) = self.get(&k.replace("{arch}", arch)) {
                if v.type_name() != *want {
                    return unsupported(format!(
                        "{} is {}, llama.cpp needs {want}",
                        k.replace("{arch}", arch),
                        v.type_name()
                    ));
                }
            }
        }
        self.validate_numbers(arch, &s)?;
        for k in ["expert_count", "expert_used_count", "nextn_predict_layers"] {
            if self.uint(&format!("{arch}.{k}")).is_some_and(|n| n != 0) {
                return unsupported(format!(
                    "{arch}.{k} (mixture-of-experts and multi-token heads are not run here)"
                ));
            }
        }
        if let Some(t) = self.str(&format!("{arch}.rope.scaling.type")) {
            if !["none", "linear", "yarn", "longrope"].contains(&t) {
                return unsupported(format!("RoPE scaling `{t}`"));
            }
        }
        self.validate_vocab(&s)
    }

    /// Values of the right type that ggml still asserts on (or loops on)
    /// in the first decode: the RoPE dimension count must be even, at least
    /// 2 and at most the head size (0 made ggml's RoPE loop never end; an
    /// odd count fails `n_dims % 2 == 0`); a norm epsilon must be a finite
    /// number ≥ 0 (`eps >= 0.0f`); the other float parameters finite, and
    /// the RoPE base and head sizes positive.
    fn validate_numbers(&self, arch: &str, s: &ModelShape) -> Result<(), GgufError> {
        let unsupported = |s: String| Err(GgufError::Unsupported(s));
        let key = |k: &str| format!("{arch}.{k}");
        for k in ["attention.key_length", "attention.value_length"] {
            if self.uint(&key(k)) == Some(0) {
                return unsupported(format!("{} is 0", key(k)));
            }
        }
        if s.head_dim == 0 {
            return unsupported("a head size of 0".into());
        }
        let n_rot = self.uint(&key("rope.dimension_count")).unwrap_or(u64::from(s.head_dim));
        if n_rot < 2 || n_rot % 2 != 0 || n_rot > u64::from(s.head_dim) {
            return unsupported(format!(
                "RoPE over {n_rot} dimensions (an even number from 2 to the head size {})",
                s.head_dim
            ));
        }
        let float = |k: &str| match self.get(&key(k)) {
            Some(Value::F32(v)) => Some(*v),
            _ => None,
        };
        for k in ["attention.layer_norm_epsilon", "attention.layer_norm_rms_epsilon"] {
            if let Some(e) = float(k) {
                if !e.is_finite() || e < 0.0 {
                    return unsupported(format!("{} is {e} (a finite number ≥ 0)", key(k)));
                }
            }
        }
        if let Some(b) = float("rope.freq_base") {
            if !b.is_finite() || b <= 0.0 {
                return unsupported(format!("{} is {b} (a finite number > 0)", key("rope.freq_base")));
            }
        }
        for k in [
            "rope.scaling.factor",
            "rope.freq_scale",
            "logit_scale",
            "attn_logit_softcapping",
            "final_logit_softcapping",
        ] {
            if let Some(v) = float(k) {
                if !v.is_finite() {
                    return unsupported(format!("{} is {v} (a finite number)", key(k)));
                }
            }
        }
        Ok(())
    }

    fn validate_vocab(&self, s: &ModelShape) -> Result<(), GgufError> {
        let unsupported = |s: String| Err(GgufError::Unsupported(s));
        let model = self.str("tokenizer.ggml.model").unwrap_or_default();
        let (default_bos, default_add_bos) = match model {
            "llama" => (1, true),
            "gpt2" => (11, false),
            _ => {
                return unsupported(format!(
                    "tokenizer `{model}` (this host runs llama and gpt2 vocabularies)"
                ));
            }
        };
        let Some(Value::Array(Array::Str(tokens))) = self.get("tokenizer.ggml.tokens") else {
            return unsupported("no tokenizer.ggml.tokens (array of strings)".into());
        };
        if tokens.is_empty() {
            return unsupported("an empty vocabulary".into());
        }
        // llama.cpp names an empty token `[EMPTY_i]` and asserts that all
        // token strings are distinct.
        let mut seen: HashMap<std::borrow::Cow<'_, str>, usize> = HashMap::with_capacity(tokens.len());
        for (i, t) in tokens.iter().enumerate() {
            let t = if t.is_empty() {
                format!("[EMPTY_{i}]").into()
            } else {
                std::borrow::Cow::Borrowed(t.as_str())
            };
            if let Some(first) = seen.insert(t.clone(), i) {
                return unsupported(format!("tokens {first} and {i} are both `{t}`"));
            }
        }
        let n = tokens.len() as u64;
        for (k, elems) in
            [("tokenizer.ggml.scores", &["f32", "i32"][..]), ("tokenizer.ggml.token_type", &["i32"][..])]
        {
            match self.get(k) {
                None => {}
                Some(Value::Array(a)) if elems.contains(&a.type_name()) && a.len() as u64 >= n => {}
                Some(v) => {
                    return unsupported(format!(
                        "{k} is {} of {:?} elements, for {n} tokens",
                        v.type_name(),
                        self.array_len(k)
                    ));
                }
            }
        }
        if model == "gpt2" && !matches!(self.get("tokenizer.ggml.merges"), Some(Value::Array(Array::Str(_))))
        {
            return unsupported("a BPE vocabulary without tokenizer.ggml.merges".into());
        }
        for special in ["bos", "eos", "eot", "eom", "unknown", "seperator", "padding", "mask"] {
            let k = format!("tokenizer.ggml.{special}_token_id");
            match self.get(&k) {
                None | Some(Value::U32(_)) => {}
                Some(v) => return unsupported(format!("{k} is {}, not u32", v.type_name())),
            }
        }
        let add = |k: &str, default: bool| match self.get(k) {
            Some(Value::Bool(b)) => Ok(*b),
            None => Ok(default),
            Some(v) => Err(GgufError::Unsupported(format!("{k} is {}, not bool", v.type_name()))),
        };
        if add("tokenizer.ggml.add_bos_token", default_add_bos)? {
            let bos = self.uint("tokenizer.ggml.bos_token_id").unwrap_or(default_bos);
            if bos >= n {
                return unsupported(format!("the model adds BOS token {bos}, outside its {n} tokens"));
            }
        }
        if add("tokenizer.ggml.add_eos_token", false)? {
            match self.uint("tokenizer.ggml.eos_token_id") {
                Some(eos) if eos < n => {}
                eos => {
                    return unsupported(format!("the model adds EOS token {eos:?}, outside its {n} tokens"));
                }
            }
        }
        for name in ["token_embd.weight", "output.weight"] {
            if let Some(t) = self.tensor(name) {
                if t.dims.len() != 2 || t.dims[0] != u64::from(s.n_embd) || t.dims[1] != n {
                    return unsupported(format!("{name} is {:?}, not [{}, {n}]", t.dims, s.n_embd));
                }
            }
        }
        if self.tensor("token_embd.weight").is_none() {
            return unsupported("no token_embd.weight".into());
        }
        Ok(())
    }
}

/// Keys llama.cpp reads with an exact type (a mismatch is refused here with
/// a clear reason rather than by a generic load failure).
const TYPED_KEYS: &[(&str, &str)] = &[
    ("{arch}.attention.key_length", "u32"),
    ("{arch}.attention.value_length", "u32"),
    ("{arch}.rope.dimension_count", "u32"),
    ("{arch}.rope.freq_base", "f32"),
    ("{arch}.rope.scaling.type", "string"),
    ("{arch}.attention.layer_norm_rms_epsilon", "f32"),
    ("{arch}.attention.layer_norm_epsilon", "f32"),
    ("{arch}.attention.sliding_window", "u32"),
    ("{arch}.logit_scale", "f32"),
    ("tokenizer.ggml.model", "string"),
    ("tokenizer.ggml.pre", "string"),
    ("tokenizer.chat_template", "string"),
    ("general.file_type", "u32"),
    ("split.count", "u16"),
];

/// A per-layer key: a u32 for all layers, or an array of u32/i32 with one
/// per layer. `None` when absent.
pub(super) fn per_layer(g: &Gguf, key: &str, n_layer: u32) -> Result<Option<Vec<u32>>, GgufError> {
    let bad = |what: String| GgufError::Unsupported(format!("{key} {what}"));
    match g.get(key) {
        None => Ok(None),
        Some(Value::U32(v)) => Ok(Some(vec![*v; n_layer as usize])),
        Some(Value::Array(a @ (Array::U32(_) | Array::I32(_)))) => {
            let v = a.ints().unwrap_or_default();
            if v.len() != n_layer as usize {
                return Err(bad(format!("has {} entries for {n_layer} layers", v.len())));
            }
            v.into_iter()
                .map(|x| u32::try_from(x).map_err(|_| bad(format!("holds {x}"))))
                .collect::<Result<_, _>>()
                .map(Some)
        }
        Some(v) => Err(bad(format!("is {}, not u32", v.type_name()))),
    }
}
