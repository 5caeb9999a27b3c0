//! Chat and translation sessions: history, prompt building, context fitting,
//! KV reuse, and the pull-based generation loop.
//!
//! Each session owns one KV sequence and mirrors its content as a token list,
//! so a turn evaluates only what is new. Every message's tokens are kept with
//! the message (replies as they were sampled), so the conversation re-renders
//! to exactly the tokens already in the KV. When the next turn and its reply
//! reserve would not fit, the oldest exchanges are dropped (the system turn is
//! kept) and the KV is shifted instead of re-evaluated.

use std::time::Instant;

use crate::context;
use crate::engine::{Engine, EngineError, Sampler, SamplerConfig, Token};
use crate::filter::{StopFilter, TranslationCleaner};
use crate::prompts;
use crate::template::{ChatFormat, Role, Segment, TemplateError};
use crate::utf8::Utf8Assembler;

/// Control tokens that end a Tiny Aya reply besides EOS (llama.cpp marks only
/// EOS as end-of-generation for `cohere2`).
pub const TINY_AYA_END_TOKENS: &[&str] = &["<|END_RESPONSE|>", "<|END_OF_TURN_TOKEN|>"];

/// Below this fraction of model pages in memory, a turn re-warms first.
pub const REWARM_BELOW: f32 = 0.9;

/// Smallest reply a turn must leave room for.
pub const MIN_REPLY_TOKENS: u32 = 16;

/// The two kinds of session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionKind {
    /// Free chat.
    Chat,
    /// Translation into a target language.
    Translation,
}

/// Errors a session reports to the app.
#[derive(Debug, Clone, PartialEq)]
pub enum SessionError {
    /// The session's model was unloaded or replaced.
    NotReady,
    /// A generation of this session is still running.
    Busy,
    /// A single message cannot fit in the context.
    InputTooLong {
        /// Prompt tokens the turn needs (system turn, template, message).
        tokens: u32,
        /// Most prompt tokens the context can take while leaving room for a reply.
        limit: u32,
    },
    /// The chat template failed.
    Template(TemplateError),
    /// Bad argument.
    InvalidArgument(String),
    /// The engine failed.
    Engine(EngineError),
}

impl From<EngineError> for SessionError {
    fn from(e: EngineError) -> Self {
        SessionError::Engine(e)
    }
}

impl From<TemplateError> for SessionError {
    fn from(e: TemplateError) -> Self {
        SessionError::Template(e)
    }
}

/// What the guest knows about the loaded model that sessions need.
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
    /// What a saved KV state depends on besides the tokens: the model file
    /// and the llama.cpp build.
    pub cache_id: String,
}

/// Facts about the loaded model, as the host reports them.
#[derive(Debug, Clone)]
pub struct ModelFacts {
    /// `general.architecture`.
    pub architecture: String,
    /// The GGUF chat template.
    pub chat_template: Option<String>,
    /// BOS id.
    pub bos: Option<Token>,
    /// EOS id.
    pub eos: Option<Token>,
    /// Whether sequences start with BOS.
    pub add_bos: bool,
    /// The text of BOS (templates print it as `bos_token`).
    pub bos_text: String,
    /// The text of EOS (`eos_token`).
    pub eos_text: String,
    /// Context length per sequence.
    pub n_ctx: u32,
    /// Model identity and llama.cpp version (keys saved KV states).
    pub cache_id: String,
}

impl ModelProfile {
    /// Build the profile of a freshly loaded model.
    pub fn new<E: Engine>(engine: &E, facts: &ModelFacts, load_id: u64) -> Result<Self, TemplateError> {
        let format = ChatFormat::for_model(
            &facts.architecture,
            facts.chat_template.as_deref(),
            &facts.bos_text,
            &facts.eos_text,
        )?;
        let mut stop_ids: Vec<Token> = facts.eos.into_iter().collect();
        if facts.architecture == "cohere2" {
            stop_ids.extend(TINY_AYA_END_TOKENS.iter().filter_map(|t| engine.token_id(t)));
        }
        Ok(ModelProfile {
            n_ctx: facts.n_ctx,
            format,
            stop_ids,
            bos: if facts.add_bos { facts.bos } else { None },
            load_id,
            cache_id: facts.cache_id.clone(),
        })
    }

    /// The cache key of a prompt prefix: model, llama.cpp build, KV type, tokens.
    pub fn prefix_key(&self, tokens: &[Token]) -> String {
        use std::hash::{Hash, Hasher};
        // SipHash with fixed keys: the same on every run of this guest.
        let mut h = std::collections::hash_map::DefaultHasher::new();
        (self.cache_id.as_str(), "kv:f16", tokens).hash(&mut h);
        format!("{:016x}", h.finish())
    }

    fn is_stop<E: Engine>(&self, engine: &E, t: Token) -> bool {
        self.stop_ids.contains(&t) || engine.is_eog(t)
    }
}

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
    /// Re-warm evicted model pages before the prompt.
    pub rewarm: bool,
    /// Reuse saved KV states of the system turn.
    pub prefix_cache: bool,
}

impl SessionOptions {
    /// Defaults of a session kind: 512 tokens and light sampling for chat,
    /// 128 tokens and greedy decoding for translation.
    pub fn defaults(kind: SessionKind) -> Self {
        match kind {
            SessionKind::Chat => SessionOptions {
                max_tokens: 512,
                sampler: SamplerConfig {
                    temperature: 0.7,
                    top_k: 40,
                    top_p: 0.95,
                    min_p: 0.05,
                    repeat_penalty: 1.1,
                    repeat_last_n: 64,
                    seed: u32::MAX,
                    logit_bias: Vec::new(),
                },
                stop_strings: Vec::new(),
                system_prompt: None,
                rewarm: true,
                prefix_cache: true,
            },
            SessionKind::Translation => SessionOptions {
                max_tokens: 128,
                sampler: SamplerConfig::greedy(),
                stop_strings: Vec::new(),
                system_prompt: None,
                rewarm: true,
                prefix_cache: true,
            },
        }
    }
}

/// One message with its tokens, once known.
#[derive(Debug, Clone)]
struct Turn {
    role: Role,
    /// What the template sees.
    content: String,
    /// What the app shows (the user's own words for translation requests).
    shown: String,
    /// The tokens of `content` as they are (or will be) in the KV.
    tokens: Option<Vec<Token>>,
}

impl Turn {
    fn new(role: Role, content: String, shown: String) -> Self {
        Turn { role, content, shown, tokens: None }
    }
}

/// A conversation bound to one KV sequence.
#[derive(Debug)]
pub struct Session {
    kind: SessionKind,
    seq: u32,
    profile: std::rc::Rc<ModelProfile>,
    options: SessionOptions,
    languages: Option<(Option<String>, String)>,
    system: Option<Turn>,
    history: Vec<Turn>,
    kv: Vec<Token>,
    busy: bool,
}

/// A prompt ready to evaluate.
struct Fitted {
    tokens: Vec<Token>,
    dropped: usize,
    reply_budget: u32,
}

impl Session {
    /// A new session on KV sequence `seq`.
    pub fn new(kind: SessionKind, seq: u32, profile: std::rc::Rc<ModelProfile>) -> Self {
        Session {
            kind,
            seq,
            profile,
            options: SessionOptions::defaults(kind),
            languages: None,
            system: None,
            history: Vec::new(),
            kv: Vec::new(),
            busy: false,
        }
    }

    /// The KV sequence this session uses.
    pub fn seq(&self) -> u32 {
        self.seq
    }

    /// The session kind.
    pub fn kind(&self) -> SessionKind {
        self.kind
    }

    /// Current settings.
    pub fn options(&self) -> &SessionOptions {
        &self.options
    }

    /// Replace the settings.
    pub fn set_options(&mut self, options: SessionOptions) -> Result<(), SessionError> {
        if options.max_tokens == 0 {
            return Err(SessionError::InvalidArgument("max-tokens must be at least 1".into()));
        }
        self.options = options;
        Ok(())
    }

    /// The model this session was opened on.
    pub fn profile(&self) -> &ModelProfile {
        &self.profile
    }

    /// Tokens in the session's KV sequence.
    pub fn kv_tokens(&self) -> usize {
        self.kv.len()
    }

    /// The tokens in the KV sequence, in order.
    pub fn kv_token_ids(&self) -> &[Token] {
        &self.kv
    }

    /// The conversation as the app shows it: (role, text).
    pub fn history(&self) -> Vec<(Role, String)> {
        self.history.iter().map(|t| (t.role, t.shown.clone())).collect()
    }

    /// Set the translation language pair; a different pair starts a fresh conversation.
    pub fn set_languages(&mut self, source: Option<&str>, target: &str) -> Result<(), SessionError> {
        if self.kind != SessionKind::Translation {
            return Err(SessionError::InvalidArgument("languages apply to translation sessions only".into()));
        }
        if target.trim().is_empty() {
            return Err(SessionError::InvalidArgument("the target language is empty".into()));
        }
        let pair = (
            source.filter(|s| !s.trim().is_empty()).map(prompts::language_name),
            prompts::language_name(target),
        );
        if self.languages.as_ref() != Some(&pair) {
            self.languages = Some(pair);
            // The KV keeps its content: the next prompt reuses the common prefix.
            self.history.clear();
        }
        Ok(())
    }

    /// Forget the conversation and empty the KV sequence.
    pub fn reset<E: Engine>(&mut self, engine: &E) {
        self.history.clear();
        self.kv.clear();
        engine.kv_clear(self.seq);
    }

    fn system_prompt(&self) -> Option<String> {
        if let Some(p) = &self.options.system_prompt {
            return Some(p.clone());
        }
        match (self.kind, &self.languages) {
            (SessionKind::Chat, _) => Some(prompts::CHAT_SYSTEM_PROMPT.to_owned()),
            (SessionKind::Translation, Some((src, tgt))) => {
                Some(prompts::translation_system_prompt(src.as_deref(), tgt))
            }
            (SessionKind::Translation, None) => None,
        }
    }

    /// Start a reply to `text`. The prompt is fitted and the KV prepared here;
    /// evaluation happens in the generation's first `next`.
    pub fn send<E: Engine>(
        &mut self,
        engine: &E,
        text: &str,
    ) -> Result<Generation<E::Sampler>, SessionError> {
        if self.busy {
            return Err(SessionError::Busy);
        }
        let started = Instant::now();
        let user = match self.kind {
            SessionKind::Chat => Turn::new(Role::User, text.to_owned(), text.to_owned()),
            SessionKind::Translation => {
                let (src, tgt) = self
                    .languages
                    .clone()
                    .ok_or_else(|| SessionError::InvalidArgument("set the target language first".into()))?;
                let request = prompts::translation_request(src.as_deref(), &tgt, text);
                Turn::new(Role::User, request, text.to_owned())
            }
        };
        // The system turn: keep its tokens while its text is unchanged.
        let system_text = self.system_prompt();
        if self.system.as_ref().map(|s| &s.content) != system_text.as_ref() {
            self.system = system_text.map(|t| Turn::new(Role::System, t.clone(), t));
        }

        // The guest's mirror must match the real KV position; if it does not,
        // start the sequence over rather than trust either.
        if engine.kv_len(self.seq) as usize != self.kv.len() {
            engine.kv_clear(self.seq);
            self.kv.clear();
        }

        let fitted = self.fit(engine, user)?;
        // An empty sequence starts with the system turn: restore its saved
        // state instead of evaluating it, or evaluate it and save it.
        let mut prefix_cached = false;
        let mut store_prefix = None;
        if self.options.prefix_cache && self.kv.is_empty() {
            if let Some(prefix) = self.system_prefix(engine)? {
                if prefix.len() < fitted.tokens.len() && fitted.tokens.starts_with(&prefix) {
                    let key = self.profile.prefix_key(&prefix);
                    if engine.prefix_restore(self.seq, &key, &prefix) {
                        self.kv = prefix;
                        prefix_cached = true;
                    } else {
                        store_prefix = Some((key, prefix.len()));
                    }
                }
            }
        }
        let plan = context::plan(&self.kv, &fitted.tokens, fitted.dropped > 0);
        self.apply_plan(engine, &plan);
        let mut to_decode = fitted.tokens[plan.reused..].to_vec();
        if to_decode.is_empty() {
            // Everything is cached, but the logits of the last token are needed.
            let last = self.kv.len() - 1;
            engine.kv_remove(self.seq, last as u32, None);
            self.kv.truncate(last);
            to_decode.push(fitted.tokens[last]);
        }

        let sampler = engine.sampler(&self.options.sampler);
        self.busy = true;
        Ok(Generation {
            to_decode,
            pending: None,
            sampler,
            reply_ids: Vec::new(),
            shown: String::new(),
            budget: fitted.reply_budget,
            utf8: Utf8Assembler::new(),
            stops: StopFilter::new(&self.options.stop_strings),
            cleaner: (self.kind == SessionKind::Translation).then(TranslationCleaner::new),
            started,
            prompt_start: None,
            prompt_done: None,
            first_token: None,
            last_token: None,
            first_visible: None,
            prompt_tokens: 0,
            dropped: fitted.dropped as u32,
            rewarm: self.options.rewarm,
            prefix_cached,
            store_prefix,
            residency: 1.0,
            warmup_ms: 0.0,
            stats: None,
            load_id: self.profile.load_id,
        })
    }

    /// Drop the oldest exchanges until the prompt plus a reply reserve fits.
    fn fit<E: Engine>(&mut self, engine: &E, user: Turn) -> Result<Fitted, SessionError> {
        let n_ctx = self.profile.n_ctx;
        // Room kept for the reply when deciding what to drop; the reply may
        // still use all the room left (up to max-tokens).
        let reserve = self.options.max_tokens.min(n_ctx / 4).max(MIN_REPLY_TOKENS);
        self.history.push(user);
        let fitted = self.fit_history(engine, reserve);
        if fitted.is_err() {
            self.history.pop();
        }
        fitted
    }

    fn fit_history<E: Engine>(&mut self, engine: &E, reserve: u32) -> Result<Fitted, SessionError> {
        let n_ctx = self.profile.n_ctx;
        let mut dropped = 0;
        loop {
            let tokens = self.prompt_tokens(engine, dropped)?;
            let len = tokens.len() as u32;
            if len + reserve <= n_ctx {
                return Ok(self.finish_fit(tokens, dropped));
            }
            // Drop the oldest whole exchange (up to the next user turn), never the new turn.
            let last = self.history.len() - 1;
            if dropped < last {
                dropped += 1;
                while dropped < last && self.history[dropped].role != Role::User {
                    dropped += 1;
                }
                continue;
            }
            if len + MIN_REPLY_TOKENS <= n_ctx {
                return Ok(self.finish_fit(tokens, dropped));
            }
            return Err(SessionError::InputTooLong { tokens: len, limit: n_ctx - MIN_REPLY_TOKENS });
        }
    }

    fn finish_fit(&mut self, tokens: Vec<Token>, dropped: usize) -> Fitted {
        self.history.drain(..dropped);
        let room = self.profile.n_ctx - tokens.len() as u32;
        Fitted { reply_budget: self.options.max_tokens.min(room), tokens, dropped }
    }

    /// Tokens of system + history[skip..] + generation prompt.
    fn prompt_tokens<E: Engine>(&mut self, engine: &E, skip: usize) -> Result<Vec<Token>, SessionError> {
        let mut turns: Vec<&mut Turn> = Vec::new();
        if let Some(s) = self.system.as_mut() {
            turns.push(s);
        }
        turns.extend(self.history[skip..].iter_mut());
        let refs: Vec<(Role, &str)> = turns.iter().map(|t| (t.role, t.content.as_str())).collect();
        let segments = self.profile.format.render_segments(&refs, true)?;
        segment_tokens(engine, &segments, self.profile.bos, |i| {
            let turn = &mut turns[i];
            if turn.tokens.is_none() {
                turn.tokens = Some(engine.tokenize(&turn.content, false)?);
            }
            Ok(turn.tokens.clone().unwrap_or_default())
        })
    }

    /// Tokens of the system turn alone, as it opens the prompt.
    fn system_prefix<E: Engine>(&mut self, engine: &E) -> Result<Option<Vec<Token>>, SessionError> {
        let Some(system) = self.system.as_mut() else { return Ok(None) };
        let segments =
            self.profile.format.render_segments(&[(Role::System, system.content.as_str())], false)?;
        let tokens = segment_tokens(engine, &segments, self.profile.bos, |_| {
            if system.tokens.is_none() {
                system.tokens = Some(engine.tokenize(&system.content, false)?);
            }
            Ok(system.tokens.clone().unwrap_or_default())
        })?;
        Ok((!tokens.is_empty()).then_some(tokens))
    }

    fn apply_plan<E: Engine>(&mut self, engine: &E, plan: &context::KvPlan) {
        let keep = plan.keep_prefix;
        match plan.shift_from {
            Some(from) => {
                let delta = (from - keep) as i32;
                engine.kv_remove(self.seq, keep as u32, Some(from as u32));
                engine.kv_shift(self.seq, from as u32, None, -delta);
                self.kv.drain(keep..from);
            }
            None if keep < self.kv.len() => {
                engine.kv_remove(self.seq, keep as u32, None);
                self.kv.truncate(keep);
            }
            None => {}
        }
    }

    /// After a failed decode of `attempted`, believe the real KV position.
    fn resync<E: Engine>(&mut self, engine: &E, attempted: &[Token]) {
        let real = engine.kv_len(self.seq) as usize;
        let before = self.kv.len();
        if real >= before && real - before <= attempted.len() {
            self.kv.extend_from_slice(&attempted[..real - before]);
        } else {
            engine.kv_clear(self.seq);
            self.kv.clear();
        }
    }
}

/// Tokens of rendered segments: template text with control tokens parsed,
/// contents (from `content_tokens`) as plain text; exactly one BOS when wanted.
fn segment_tokens<E: Engine>(
    engine: &E,
    segments: &[Segment],
    bos: Option<Token>,
    mut content_tokens: impl FnMut(usize) -> Result<Vec<Token>, EngineError>,
) -> Result<Vec<Token>, SessionError> {
    let mut tokens = Vec::new();
    for seg in segments {
        match seg {
            Segment::Template(text) => tokens.extend(engine.tokenize(text, true)?),
            Segment::Content(i) => tokens.extend(content_tokens(*i)?),
        }
    }
    Ok(with_single_bos(tokens, bos))
}

/// Render messages with the model's format: the exact text and its tokens
/// (contents tokenized as plain text, as in a session).
pub fn render_prompt<E: Engine>(
    engine: &E,
    profile: &ModelProfile,
    messages: &[(Role, &str)],
    add_generation_prompt: bool,
) -> Result<(String, Vec<Token>), SessionError> {
    let segments = profile.format.render_segments(messages, add_generation_prompt)?;
    let tokens = segment_tokens(engine, &segments, profile.bos, |i| engine.tokenize(messages[i].1, false))?;
    let mut text = crate::template::join_segments(&segments, messages);
    if let Some(bos) = profile.bos {
        if !profile.format.prints_bos() && tokens.first() == Some(&bos) {
            text.insert_str(0, profile.format.bos_text());
        }
    }
    Ok((text, tokens))
}

/// Keep exactly one BOS at the start when the tokenizer wants one.
fn with_single_bos(mut tokens: Vec<Token>, bos: Option<Token>) -> Vec<Token> {
    if let Some(bos) = bos {
        if tokens.first() != Some(&bos) {
            tokens.insert(0, bos);
        }
        while tokens.len() > 1 && tokens[1] == bos {
            tokens.remove(1);
        }
    }
    tokens
}

/// Why a reply ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// End-of-generation token.
    EndOfGeneration,
    /// Token budget used up.
    MaxTokens,
    /// A stop string.
    StopString,
    /// The app cancelled.
    Cancelled,
}

/// Figures of one reply.
#[derive(Debug, Clone, PartialEq)]
pub struct Stats {
    /// Why it ended.
    pub stop: StopReason,
    /// Prompt tokens evaluated.
    pub prompt_tokens: u32,
    /// Tokens generated.
    pub generated_tokens: u32,
    /// Tokens in the KV afterwards.
    pub kv_tokens: u32,
    /// Exchanges dropped to fit.
    pub dropped_turns: u32,
    /// Send → first visible text.
    pub ttft_ms: f64,
    /// Prompt evaluation time.
    pub prompt_ms: f64,
    /// First token → last token.
    pub decode_ms: f64,
    /// Model residency when the turn started.
    pub residency: f32,
    /// Re-warm time before the prompt.
    pub warmup_ms: f64,
    /// The system turn came from the prefix cache.
    pub prefix_cached: bool,
}

impl Stats {
    /// Prompt tokens per second.
    pub fn prompt_tokens_per_s(&self) -> f64 {
        per_second(self.prompt_tokens, self.prompt_ms)
    }

    /// Tokens per second after the first one.
    pub fn decode_tokens_per_s(&self) -> f64 {
        per_second(self.generated_tokens.saturating_sub(1), self.decode_ms)
    }
}

fn per_second(n: u32, ms: f64) -> f64 {
    if ms > 0.0 { n as f64 * 1000.0 / ms } else { 0.0 }
}

fn ms_between(a: Instant, b: Instant) -> f64 {
    b.duration_since(a).as_secs_f64() * 1000.0
}

/// A reply in progress.
pub struct Generation<S> {
    to_decode: Vec<Token>,
    pending: Option<Token>,
    sampler: S,
    reply_ids: Vec<Token>,
    shown: String,
    budget: u32,
    utf8: Utf8Assembler,
    stops: StopFilter,
    cleaner: Option<TranslationCleaner>,
    started: Instant,
    prompt_start: Option<Instant>,
    prompt_done: Option<Instant>,
    first_token: Option<Instant>,
    last_token: Option<Instant>,
    first_visible: Option<Instant>,
    prompt_tokens: u32,
    dropped: u32,
    rewarm: bool,
    prefix_cached: bool,
    store_prefix: Option<(String, usize)>,
    residency: f32,
    warmup_ms: f64,
    stats: Option<Stats>,
    load_id: u64,
}

impl<S: Sampler> Generation<S> {
    /// Figures, once the reply has ended.
    pub fn stats(&self) -> Option<&Stats> {
        self.stats.as_ref()
    }

    /// Whether the reply has ended.
    pub fn is_finished(&self) -> bool {
        self.stats.is_some()
    }

    /// Run until there is visible text (`Some`) or the reply ends (`None`).
    pub fn next<E: Engine<Sampler = S>>(
        &mut self,
        session: &mut Session,
        engine: &E,
    ) -> Result<Option<String>, SessionError> {
        if self.stats.is_some() {
            return Ok(None);
        }
        if session.profile.load_id != self.load_id {
            self.finish(session, StopReason::Cancelled);
            return Err(SessionError::NotReady);
        }
        loop {
            if engine.cancel_requested() {
                return Ok(self.finish(session, StopReason::Cancelled));
            }
            if !self.to_decode.is_empty() {
                // Pages evicted while the app was idle: a sequential pass on
                // another thread reads them back while the prompt is evaluated,
                // so decoding waits only for pages the pass has not reached
                // yet instead of faulting them in one by one. Alongside rather
                // than before the prompt: on the phone 6 of 8 cores sit idle
                // while 2 decode, so the pass costs the prompt nothing. (On
                // the 2-core build machine neither order beat plain faulting;
                // see README, `bittybot bench` case c.)
                self.residency = engine.residency().unwrap_or(1.0);
                if self.rewarm && self.residency < REWARM_BELOW {
                    let started = Instant::now();
                    engine.warm_up_background();
                    self.warmup_ms = started.elapsed().as_secs_f64() * 1000.0;
                }
                let prompt = std::mem::take(&mut self.to_decode);
                self.prompt_start = Some(Instant::now());
                // The system turn first, alone, so its state can be saved.
                let split = match self.store_prefix.take() {
                    Some((key, n)) if n < prompt.len() => Some((key, n)),
                    _ => None,
                };
                let (head, tail) = prompt.split_at(split.as_ref().map_or(0, |(_, n)| *n));
                for (i, part) in [head, tail].into_iter().enumerate() {
                    if part.is_empty() {
                        continue;
                    }
                    if let Err(e) = engine.decode(session.seq, part) {
                        session.resync(engine, part);
                        return self.fail(session, e);
                    }
                    session.kv.extend_from_slice(part);
                    if let (0, Some((key, _))) = (i, &split) {
                        engine.prefix_store(session.seq, key, &session.kv);
                    }
                }
                self.prompt_tokens = prompt.len() as u32;
                self.prompt_done = Some(Instant::now());
            } else if let Some(t) = self.pending.take() {
                if self.reply_ids.len() as u32 >= self.budget {
                    return Ok(self.finish(session, StopReason::MaxTokens));
                }
                if let Err(e) = engine.decode(session.seq, &[t]) {
                    session.resync(engine, &[t]);
                    return self.fail(session, e);
                }
                session.kv.push(t);
            }
            let token = match self.sampler.sample() {
                Ok(t) => t,
                Err(e) => return self.fail(session, e),
            };
            let now = Instant::now();
            self.first_token.get_or_insert(now);
            if session.profile.is_stop(engine, token) {
                return Ok(self.finish(session, StopReason::EndOfGeneration));
            }
            self.last_token = Some(now);
            self.reply_ids.push(token);
            self.pending = Some(token);
            let text = self.utf8.push(&engine.token_bytes(token));
            let out = self.stops.push(&text);
            let visible = self.clean(&out.text);
            if out.stopped {
                self.shown.push_str(&visible);
                let tail = self.finish(session, StopReason::StopString);
                return Ok(join_some(visible, tail));
            }
            if !visible.is_empty() {
                self.first_visible.get_or_insert(now);
                self.shown.push_str(&visible);
                return Ok(Some(visible));
            }
        }
    }

    fn clean(&mut self, text: &str) -> String {
        match &mut self.cleaner {
            Some(c) if cfg!(feature = "shout") => c.push(text).to_uppercase(),
            Some(c) => c.push(text),
            None => text.to_owned(),
        }
    }

    fn fail(&mut self, session: &mut Session, e: EngineError) -> Result<Option<String>, SessionError> {
        if e == EngineError::Cancelled {
            return Ok(self.finish(session, StopReason::Cancelled));
        }
        self.finish(session, StopReason::Cancelled);
        Err(SessionError::Engine(e))
    }

    /// End the reply: release held-back text, record the turn, compute figures.
    /// Returns the last visible text, if any. Safe to call more than once.
    pub fn finish(&mut self, session: &mut Session, stop: StopReason) -> Option<String> {
        if self.stats.is_some() {
            return None;
        }
        let now = Instant::now();
        // An unfinished character at the very end is dropped, not shown as U+FFFD.
        let _ = self.utf8.finish();
        let held = if stop == StopReason::StopString { String::new() } else { self.stops.finish() };
        let mut tail = self.clean(&held);
        if let Some(c) = &mut self.cleaner {
            tail.push_str(&c.finish());
        }
        if !tail.is_empty() {
            self.first_visible.get_or_insert(now);
            self.shown.push_str(&tail);
        }
        let mut reply = Turn::new(Role::Assistant, self.shown.clone(), self.shown.clone());
        reply.tokens = Some(std::mem::take(&mut self.reply_ids));
        let generated = reply.tokens.as_ref().map_or(0, Vec::len) as u32;
        if session.profile.load_id == self.load_id {
            session.history.push(reply);
        }
        session.busy = false;
        let started = self.started;
        self.stats = Some(Stats {
            stop,
            prompt_tokens: self.prompt_tokens,
            generated_tokens: generated,
            kv_tokens: session.kv.len() as u32,
            dropped_turns: self.dropped,
            ttft_ms: ms_between(started, self.first_visible.unwrap_or(now)),
            prompt_ms: match (self.prompt_start, self.prompt_done) {
                (Some(a), Some(b)) => ms_between(a, b),
                _ => 0.0,
            },
            decode_ms: match (self.first_token, self.last_token) {
                (Some(a), Some(b)) => ms_between(a, b),
                _ => 0.0,
            },
            residency: self.residency,
            warmup_ms: self.warmup_ms,
            prefix_cached: self.prefix_cached,
        });
        (!tail.is_empty()).then_some(tail)
    }
}

fn join_some(a: String, b: Option<String>) -> Option<String> {
    let s = a + &b.unwrap_or_default();
    (!s.is_empty()).then_some(s)
}
