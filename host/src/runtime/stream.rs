//! One turn, streamed: the host's single send → next → stats → close loop,
//! used by the CLI, the service (and so the Android library), the benchmark
//! and the tests.

use std::time::{Duration, Instant};

use super::{Runtime, Session};
use crate::bindings::app::GenerationStats;
use crate::errors::RuntimeError;

/// A finished turn.
#[derive(Debug, Clone)]
pub struct Reply {
    /// The visible chunks, in order.
    pub chunks: Vec<String>,
    /// The guest's figures.
    pub stats: GenerationStats,
    /// From the call to `send` to the first chunk, measured by the host.
    pub first_chunk: Option<Duration>,
    /// The chunk callback asked to stop (the turn was then cancelled).
    pub stopped_by_caller: bool,
}

impl Reply {
    /// The whole text.
    pub fn text(&self) -> String {
        self.chunks.concat()
    }
}

impl Runtime {
    /// Send `text` and stream the reply: `on_chunk` gets each visible
    /// chunk as it comes and returns false to cancel the rest of the turn.
    /// The generation is always closed (an unfinished reply stays in the
    /// history), also when the turn fails.
    pub fn reply(
        &mut self,
        session: &Session,
        text: &str,
        mut on_chunk: impl FnMut(&str) -> bool,
    ) -> Result<Reply, RuntimeError> {
        let started = Instant::now();
        let generation = self.send(session, text)?;
        let mut chunks = Vec::new();
        let mut first_chunk = None;
        let mut stopped_by_caller = false;
        let pulled = loop {
            match self.next(&generation) {
                Ok(Some(chunk)) => {
                    first_chunk.get_or_insert_with(|| started.elapsed());
                    if !stopped_by_caller && !on_chunk(&chunk) {
                        stopped_by_caller = true;
                        self.cancel_handle().cancel();
                    }
                    chunks.push(chunk);
                }
                Ok(None) => break Ok(()),
                Err(e) => break Err(e),
            }
        };
        let stats = self.stats(&generation);
        let closed = self.close_generation(generation);
        pulled?;
        closed?;
        let stats = stats?.ok_or_else(|| RuntimeError::Trap("the guest reported no stats".into()))?;
        Ok(Reply { chunks, stats, first_chunk, stopped_by_caller })
    }

    /// Send a message and collect the whole reply: (chunks, stats).
    pub fn chat(
        &mut self,
        session: &Session,
        text: &str,
    ) -> Result<(Vec<String>, GenerationStats), RuntimeError> {
        self.reply(session, text, |_| true).map(|r| (r.chunks, r.stats))
    }
}
