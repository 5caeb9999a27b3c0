//! Prompt tokens: rendered segments turned into tokens — template text
//! with control tokens parsed, message contents as plain text — with
//! exactly one BOS at the start when the tokenizer wants one.

use crate::host::{Engine, InferenceError, Token};
use crate::profile::ModelProfile;
use crate::template::{Role, Segment};
use crate::wit::app::AppError;

/// Tokens of rendered segments; `content_tokens(i)` gives message `i`'s.
pub fn segment_tokens<E: Engine>(
    engine: &E,
    segments: &[Segment],
    bos: Option<Token>,
    mut content_tokens: impl FnMut(usize) -> Result<Vec<Token>, InferenceError>,
) -> Result<Vec<Token>, AppError> {
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
) -> Result<(String, Vec<Token>), AppError> {
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
pub fn with_single_bos(mut tokens: Vec<Token>, bos: Option<Token>) -> Vec<Token> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_bos_at_the_start() {
        assert_eq!(with_single_bos(vec![5, 6], Some(1)), vec![1, 5, 6]);
        assert_eq!(with_single_bos(vec![1, 1, 5], Some(1)), vec![1, 5]);
        assert_eq!(with_single_bos(vec![5, 6], None), vec![5, 6]);
    }
}
