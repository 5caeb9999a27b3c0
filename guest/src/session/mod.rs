//! Chat and translation sessions: history, prompt building and fitting,
//! KV reuse; the reply loop is in `generation.rs`.
//!
//! Each session owns one KV sequence and mirrors its content as a token list,
//! so a turn evaluates only what is new. Every message's tokens are kept with
//! the message (replies as they were sampled), so the conversation re-renders
//! to exactly the tokens already in the KV. When the next turn and its reply
//! reserve would not fit, the oldest exchanges are dropped (the system turn is
//! kept) and the KV is shifted instead of re-evaluated.

mod generation;
pub mod prompt;
#[cfg(test)]
mod tests;

use std::rc::Rc;
use std::time::Instant;

pub use generation::Generation;
pub use prompt::render_prompt;

use crate::context;
use crate::host::{Engine, Host, Token};
use crate::options::SessionOptions;
use crate::pages::Pages;
use crate::prefix::{self, PrefixCache};
use crate::profile::ModelProfile;
use crate::prompts;
use crate::template::Role;
use crate::wit::app::{AppError, InputTooLong, SessionKind};

/// Smallest reply a turn must leave room for.
pub const MIN_REPLY_TOKENS: u32 = 16;

/// What a turn needs besides its session: the host, the prefix cache and
/// the model's pages.
pub struct Env<'a, H: Host> {
    /// The host.
    pub host: &'a H,
    /// Saved system-turn states.
    pub prefixes: &'a mut PrefixCache<H::Snapshot>,
    /// The loaded model's pages.
    pub pages: &'a mut Pages<H>,
    /// The load the host has now (sessions of an earlier one are not ready).
    pub current_load: Option<u64>,
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
    profile: Rc<ModelProfile>,
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

/// How the next turn starts: what to evaluate, and the prefix cache's part.
pub(crate) struct Prepared {
    pub(crate) to_decode: Vec<Token>,
    pub(crate) reply_budget: u32,
    pub(crate) dropped: u32,
    pub(crate) prefix_cached: bool,
    /// Save the state after the first `n` tokens under this key.
    pub(crate) store_prefix: Option<(String, usize)>,
}

impl Session {
    /// A new session on KV sequence `seq`.
    pub fn new(kind: SessionKind, seq: u32, profile: Rc<ModelProfile>) -> Self {
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

    /// Current settings.
    pub fn options(&self) -> &SessionOptions {
        &self.options
    }

    /// Replace the settings.
    pub fn set_options(&mut self, options: SessionOptions) -> Result<(), AppError> {
        options.check()?;
        self.options = options;
        Ok(())
    }

    /// The model this session was opened on.
    pub fn profile(&self) -> &ModelProfile {
        &self.profile
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
    pub fn set_languages(&mut self, source: Option<&str>, target: &str) -> Result<(), AppError> {
        let bad = |m: &str| Err(AppError::InvalidArgument(m.to_owned()));
        if self.kind != SessionKind::Translation {
            return bad("languages apply to translation sessions only");
        }
        if target.trim().is_empty() {
            return bad("the target language is empty");
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
            (SessionKind::Chat, _) => Some(crate::variant::CHAT_SYSTEM_PROMPT.to_owned()),
            (SessionKind::Translation, Some((src, tgt))) => {
                Some(prompts::translation_system_prompt(src.as_deref(), tgt))
            }
            (SessionKind::Translation, None) => None,
        }
    }

    fn user_turn(&self, text: &str) -> Result<Turn, AppError> {
        match self.kind {
            SessionKind::Chat => Ok(Turn::new(Role::User, text.to_owned(), text.to_owned())),
            SessionKind::Translation => {
                let (src, tgt) = self
                    .languages
                    .clone()
                    .ok_or_else(|| AppError::InvalidArgument("set the target language first".into()))?;
                let request = prompts::translation_request(src.as_deref(), &tgt, text);
                Ok(Turn::new(Role::User, request, text.to_owned()))
            }
        }
    }

    /// Start a reply to `text`. The prompt is fitted and the KV prepared here;
    /// evaluation happens in the generation's first `next`.
    pub fn send<H: Host>(
        &mut self,
        env: &mut Env<'_, H>,
        text: &str,
    ) -> Result<Generation<H::Sampler>, AppError> {
        if env.current_load != Some(self.profile.load_id) {
            return Err(AppError::NotReady);
        }
        if self.busy {
            return Err(AppError::Busy);
        }
        let started = Instant::now();
        let prepared = self.prepare_turn(env, text)?;
        let sampler = env.host.sampler(&self.options.sampler)?;
        self.busy = true;
        Ok(Generation::new(self, prepared, sampler, started))
    }

    fn prepare_turn<H: Host>(&mut self, env: &mut Env<'_, H>, text: &str) -> Result<Prepared, AppError> {
        let host = env.host;
        let user = self.user_turn(text)?;
        // The system turn: keep its tokens while its text is unchanged.
        let system_text = self.system_prompt();
        if self.system.as_ref().map(|s| &s.content) != system_text.as_ref() {
            self.system = system_text.map(|t| Turn::new(Role::System, t.clone(), t));
        }
        // The guest's mirror must match the real KV position; if it does not,
        // start the sequence over rather than trust either.
        if host.kv_len(self.seq) as usize != self.kv.len() {
            host.kv_clear(self.seq);
            self.kv.clear();
        }
        let fitted = self.fit(host, user)?;
        // An empty sequence starts with the system turn: restore its saved
        // state instead of evaluating it, or evaluate it and save it.
        let mut prefix_cached = false;
        let mut store_prefix = None;
        if self.options.prefix_cache && self.kv.is_empty() {
            if let Some(system) = self.system_prefix(host)? {
                if system.len() < fitted.tokens.len() && fitted.tokens.starts_with(&system) {
                    let key = prefix::key(&self.profile.cache_id, &system);
                    if env.prefixes.restore(host, self.seq, &key, &system) {
                        self.kv = system;
                        prefix_cached = true;
                    } else {
                        store_prefix = Some((key, system.len()));
                    }
                }
            }
        }
        let plan = context::plan(&self.kv, &fitted.tokens, fitted.dropped > 0);
        self.apply_plan(host, &plan);
        let mut to_decode = fitted.tokens[plan.reused..].to_vec();
        if to_decode.is_empty() {
            // Everything is cached, but the logits of the last token are needed.
            let last = self.kv.len() - 1;
            host.kv_remove(self.seq, last as u32, None);
            self.kv.truncate(last);
            to_decode.push(fitted.tokens[last]);
        }
        Ok(Prepared {
            to_decode,
            reply_budget: fitted.reply_budget,
            dropped: fitted.dropped as u32,
            prefix_cached,
            store_prefix,
        })
    }

    /// Drop the oldest exchanges until the prompt plus a reply reserve fits.
    fn fit<E: Engine>(&mut self, engine: &E, user: Turn) -> Result<Fitted, AppError> {
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

    fn fit_history<E: Engine>(&mut self, engine: &E, reserve: u32) -> Result<Fitted, AppError> {
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
            return Err(AppError::InputTooLong(InputTooLong {
                tokens: len,
                limit: n_ctx.saturating_sub(MIN_REPLY_TOKENS),
            }));
        }
    }

    fn finish_fit(&mut self, tokens: Vec<Token>, dropped: usize) -> Fitted {
        self.history.drain(..dropped);
        let room = self.profile.n_ctx - tokens.len() as u32;
        Fitted { reply_budget: self.options.max_tokens.min(room), tokens, dropped }
    }

    /// Tokens of system + history[skip..] + generation prompt.
    fn prompt_tokens<E: Engine>(&mut self, engine: &E, skip: usize) -> Result<Vec<Token>, AppError> {
        let mut turns: Vec<&mut Turn> = Vec::new();
        if let Some(s) = self.system.as_mut() {
            turns.push(s);
        }
        turns.extend(self.history[skip..].iter_mut());
        let refs: Vec<(Role, &str)> = turns.iter().map(|t| (t.role, t.content.as_str())).collect();
        let segments = self.profile.format.render_segments(&refs, true)?;
        prompt::segment_tokens(engine, &segments, self.profile.bos, |i| {
            let turn = &mut turns[i];
            if turn.tokens.is_none() {
                turn.tokens = Some(engine.tokenize(&turn.content, false)?);
            }
            Ok(turn.tokens.clone().unwrap_or_default())
        })
    }

    /// Tokens of the system turn alone, as it opens the prompt.
    fn system_prefix<E: Engine>(&mut self, engine: &E) -> Result<Option<Vec<Token>>, AppError> {
        let Some(system) = self.system.as_mut() else { return Ok(None) };
        let segments =
            self.profile.format.render_segments(&[(Role::System, system.content.as_str())], false)?;
        let tokens = prompt::segment_tokens(engine, &segments, self.profile.bos, |_| {
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
