//! One reply, pulled chunk by chunk: evaluate the prompt, then sample →
//! stop? → text (UTF-8 assembly, stop strings held back, translation
//! clean-up) → decode the token → sample again, until end-of-generation,
//! the token budget, a stop string or a cancel.

use std::time::Instant;

use super::{Env, Prepared, Session, Turn};
use crate::filter::{StopFilter, TranslationCleaner};
use crate::host::{Host, InferenceError, Sampler, Token};
use crate::pages::REWARM_BELOW;
use crate::template::Role;
use crate::utf8::Utf8Assembler;
use crate::wit::app::{AppError, GenerationStats, MemoryOutlook, SessionKind, StopReason};

/// What the user sees of the reply so far.
struct Text {
    utf8: Utf8Assembler,
    stops: StopFilter,
    cleaner: Option<TranslationCleaner>,
    shown: String,
}

impl Text {
    /// Bytes of a sampled token in; visible text out (and whether a stop string completed).
    fn push(&mut self, bytes: &[u8]) -> (String, bool) {
        let text = self.utf8.push(bytes);
        let out = self.stops.push(&text);
        (self.clean(&out.text), out.stopped)
    }

    fn clean(&mut self, text: &str) -> String {
        match &mut self.cleaner {
            Some(c) => crate::variant::translation_text(c.push(text)),
            None => text.to_owned(),
        }
    }

    /// End of the reply: what was held back and may now show.
    fn finish(&mut self, stop: StopReason) -> String {
        // An unfinished character at the very end is dropped, not shown as U+FFFD.
        let _ = self.utf8.finish();
        let held = if stop == StopReason::StopString { String::new() } else { self.stops.finish() };
        // Trailing whitespace and quotes of a translation stay dropped.
        self.clean(&held)
    }
}

/// When things happened.
struct Clock {
    started: Instant,
    prompt: Option<(Instant, Instant)>,
    first_token: Option<Instant>,
    last_token: Option<Instant>,
    first_visible: Option<Instant>,
}

fn ms_between(a: Instant, b: Instant) -> f64 {
    b.duration_since(a).as_secs_f64() * 1000.0
}

fn per_second(n: u32, ms: f64) -> f64 {
    if ms > 0.0 { n as f64 * 1000.0 / ms } else { 0.0 }
}

/// A reply in progress.
pub struct Generation<S> {
    prepared: Prepared,
    sampler: S,
    /// The last sampled token, decoded before the next sample.
    pending: Option<Token>,
    reply: Vec<Token>,
    text: Text,
    clock: Clock,
    rewarm: bool,
    prompt_tokens: u32,
    residency: f32,
    warmup_ms: f64,
    stats: Option<GenerationStats>,
    load_id: u64,
}

impl<S: Sampler> Generation<S> {
    pub(super) fn new(session: &Session, prepared: Prepared, sampler: S, started: Instant) -> Self {
        Generation {
            prepared,
            sampler,
            pending: None,
            reply: Vec::new(),
            text: Text {
                utf8: Utf8Assembler::new(),
                stops: StopFilter::new(&session.options.stop_strings),
                cleaner: (session.kind == SessionKind::Translation).then(TranslationCleaner::new),
                shown: String::new(),
            },
            clock: Clock { started, prompt: None, first_token: None, last_token: None, first_visible: None },
            rewarm: session.options.rewarm,
            prompt_tokens: 0,
            residency: 1.0,
            warmup_ms: 0.0,
            stats: None,
            load_id: session.profile.load_id,
        }
    }

    /// Figures, once the reply has ended.
    pub fn stats(&self) -> Option<&GenerationStats> {
        self.stats.as_ref()
    }

    /// Run until there is visible text (`Some`) or the reply ends (`None`).
    pub fn next<H: Host<Sampler = S>>(
        &mut self,
        session: &mut Session,
        env: &mut Env<'_, H>,
    ) -> Result<Option<String>, AppError> {
        if self.stats.is_some() {
            return Ok(None);
        }
        let out = self.step(session, env);
        // The reply ended in this step: a warm pass may have finished
        // meanwhile, and a reply that read the weights tells whether memory
        // holds them. Not a reply of an earlier load: the pages now are
        // another load's, which it never read.
        if let Some(stats) = &mut self.stats {
            if stats.generated_tokens > 0 && env.current_load == Some(self.load_id) {
                env.pages.observe_reply_end(env.host);
            }
            stats.outlook = env.pages.outlook();
        }
        out
    }

    fn step<H: Host<Sampler = S>>(
        &mut self,
        session: &mut Session,
        env: &mut Env<'_, H>,
    ) -> Result<Option<String>, AppError> {
        if env.current_load != Some(self.load_id) {
            self.finish(session, StopReason::Cancelled);
            return Err(AppError::NotReady);
        }
        let host = env.host;
        loop {
            if host.cancel_requested() {
                return Ok(self.finish(session, StopReason::Cancelled));
            }
            if !self.prepared.to_decode.is_empty() {
                if let Err(e) = self.evaluate_prompt(session, env) {
                    return self.fail(session, e);
                }
            } else if let Some(t) = self.pending.take() {
                if self.reply.len() as u32 >= self.prepared.reply_budget {
                    return Ok(self.finish(session, StopReason::MaxTokens));
                }
                if let Err(e) = host.decode(session.seq, &[t]) {
                    session.resync(host, &[t]);
                    return self.fail(session, e);
                }
                session.kv.push(t);
            }
            let token = match self.sampler.sample() {
                Ok(t) => t,
                Err(e) => return self.fail(session, e),
            };
            let now = Instant::now();
            self.clock.first_token.get_or_insert(now);
            if session.profile.is_stop(host, token) {
                return Ok(self.finish(session, StopReason::EndOfGeneration));
            }
            self.clock.last_token = Some(now);
            self.reply.push(token);
            self.pending = Some(token);
            let (visible, stopped) = self.text.push(&host.token_bytes(token, false));
            if !visible.is_empty() {
                self.clock.first_visible.get_or_insert(now);
                self.text.shown.push_str(&visible);
            }
            if stopped {
                let tail = self.finish(session, StopReason::StopString);
                return Ok(join_some(visible, tail));
            }
            if !visible.is_empty() {
                return Ok(Some(visible));
            }
        }
    }

    /// Evaluate the prompt (the system turn first and alone when its state
    /// is to be saved). Evicted model pages come back through a background
    /// pass alongside, so decoding waits only for pages the pass has not
    /// reached yet instead of faulting them in one by one.
    fn evaluate_prompt<H: Host>(
        &mut self,
        session: &mut Session,
        env: &mut Env<'_, H>,
    ) -> Result<(), InferenceError> {
        let host = env.host;
        self.residency = env.pages.residency(host).unwrap_or(1.0);
        env.pages.observe(self.residency);
        if self.rewarm && self.residency < REWARM_BELOW {
            let started = Instant::now();
            env.pages.warm_in_background(host);
            self.warmup_ms = started.elapsed().as_secs_f64() * 1000.0;
        }
        let prompt = std::mem::take(&mut self.prepared.to_decode);
        let start = Instant::now();
        let split = match self.prepared.store_prefix.take() {
            Some((key, n)) if n < prompt.len() => Some((key, n)),
            _ => None,
        };
        let (head, tail) = prompt.split_at(split.as_ref().map_or(0, |(_, n)| *n));
        for (i, part) in [head, tail].into_iter().enumerate() {
            if part.is_empty() {
                continue;
            }
            if let Err(e) = host.decode(session.seq, part) {
                session.resync(host, part);
                return Err(e);
            }
            session.kv.extend_from_slice(part);
            if let (0, Some((key, _))) = (i, &split) {
                env.prefixes.store(host, session.seq, key, &session.kv);
            }
        }
        self.prompt_tokens = prompt.len() as u32;
        self.clock.prompt = Some((start, Instant::now()));
        Ok(())
    }

    fn fail(&mut self, session: &mut Session, e: InferenceError) -> Result<Option<String>, AppError> {
        let tail = self.finish(session, StopReason::Cancelled);
        match e {
            InferenceError::Cancelled => Ok(tail),
            e => Err(e.into()),
        }
    }

    /// End the reply: release held-back text, record the turn, compute figures.
    /// Returns the last visible text, if any. Safe to call more than once.
    pub fn finish(&mut self, session: &mut Session, stop: StopReason) -> Option<String> {
        if self.stats.is_some() {
            return None;
        }
        let now = Instant::now();
        let tail = self.text.finish(stop);
        if !tail.is_empty() {
            self.clock.first_visible.get_or_insert(now);
            self.text.shown.push_str(&tail);
        }
        let generated = self.reply.len() as u32;
        let mut reply = Turn::new(Role::Assistant, self.text.shown.clone(), self.text.shown.clone());
        reply.tokens = Some(std::mem::take(&mut self.reply));
        if session.profile.load_id == self.load_id {
            session.history.push(reply);
        }
        session.busy = false;
        let c = &self.clock;
        let prompt_ms = c.prompt.map_or(0.0, |(a, b)| ms_between(a, b));
        let decode_ms = match (c.first_token, c.last_token) {
            (Some(a), Some(b)) => ms_between(a, b),
            _ => 0.0,
        };
        self.stats = Some(GenerationStats {
            stop,
            prompt_tokens: self.prompt_tokens,
            generated_tokens: generated,
            kv_tokens: session.kv.len() as u32,
            dropped_turns: self.prepared.dropped,
            ttft_ms: ms_between(c.started, c.first_visible.unwrap_or(now)),
            prompt_ms,
            decode_ms,
            prompt_tokens_per_s: per_second(self.prompt_tokens, prompt_ms),
            decode_tokens_per_s: per_second(generated.saturating_sub(1), decode_ms),
            residency: self.residency,
            warmup_ms: self.warmup_ms,
            prefix_cached: self.prepared.prefix_cached,
            // `next` fills it in from the pages as the reply ends (this has
            // no host to ask; a reply dropped unfinished shows no stats).
            outlook: MemoryOutlook::Resident,
        });
        (!tail.is_empty()).then_some(tail)
    }
}

fn join_some(a: String, b: Option<String>) -> Option<String> {
    let s = a + &b.unwrap_or_default();
    (!s.is_empty()).then_some(s)
}
