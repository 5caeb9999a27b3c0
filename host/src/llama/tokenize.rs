//! Tokenization in time linear in the input.
//!
//! llama.cpp first splits the text at special-token occurrences
//! (`tokenizer_st_partition`), walking a linked list of fragments for each
//! match: quadratic in the number of occurrences (1 MiB of special-token
//! text took 10 s, 2 MiB 39 s), inside one host call nothing can interrupt.
//! This module does the same split in linear time — every occurrence found
//! in one Aho-Corasick pass, then accepted in llama.cpp's order on a set of
//! intervals — and hands llama.cpp only the plain pieces between them, which
//! it tokenizes in linear time. The tokens are identical:
//!
//! - the applicable tokens are those llama.cpp caches as special (CONTROL,
//!   USER_DEFINED, UNKNOWN; with `parse_special` false only USER_DEFINED);
//! - they are tried longest first (equal lengths by id), each taking its
//!   leftmost non-overlapping occurrences in what is still plain text — not
//!   leftmost-longest: a longer token beats a shorter one that starts earlier;
//! - LSTRIP / RSTRIP drop the ASCII whitespace next to a match;
//! - each plain piece is tokenized on its own without special parsing, as
//!   llama.cpp does per fragment (SPM's space prefix included).
//!
//! Checked against llama.cpp on real vocabularies in the tests.

use std::collections::BTreeMap;

use aho_corasick::{AhoCorasick, AhoCorasickBuilder, MatchKind};
use llama_cpp_sys_2 as sys;

use super::ffi::{Token, Vocab};

struct Special {
    id: Token,
    len: usize,
    plain_too: bool,
    lstrip: bool,
    rstrip: bool,
}

/// The special tokens of a vocabulary, ready to split text at.
pub struct Specials {
    ac: Option<AhoCorasick>,
    tokens: Vec<Special>,
    /// Indices into `tokens`, longest first.
    order: Vec<usize>,
}

enum Piece {
    Text(usize, usize),
    Token(Token),
}

fn is_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | 0x0b | 0x0c | b'\r')
}

impl Specials {
    /// Collect a vocabulary's special tokens.
    pub fn of(vocab: &Vocab<'_>) -> Specials {
        let cached = (sys::LLAMA_TOKEN_ATTR_CONTROL
            | sys::LLAMA_TOKEN_ATTR_USER_DEFINED
            | sys::LLAMA_TOKEN_ATTR_UNKNOWN) as u32;
        let mut tokens = Vec::new();
        let mut texts = Vec::new();
        for id in 0..vocab.n_tokens() {
            let attr = vocab.attr(id);
            if attr & cached == 0 {
                continue;
            }
            let text = vocab.text(id);
            if text.is_empty() {
                continue;
            }
            tokens.push(Special {
                id,
                len: text.len(),
                plain_too: attr & sys::LLAMA_TOKEN_ATTR_USER_DEFINED as u32 != 0
                    && attr & (sys::LLAMA_TOKEN_ATTR_CONTROL | sys::LLAMA_TOKEN_ATTR_UNKNOWN) as u32 == 0,
                lstrip: attr & sys::LLAMA_TOKEN_ATTR_LSTRIP as u32 != 0,
                rstrip: attr & sys::LLAMA_TOKEN_ATTR_RSTRIP as u32 != 0,
            });
            texts.push(text);
        }
        let mut order: Vec<usize> = (0..tokens.len()).collect();
        order.sort_by(|&a, &b| tokens[b].len.cmp(&tokens[a].len).then(tokens[a].id.cmp(&tokens[b].id)));
        let ac = (!texts.is_empty())
            .then(|| AhoCorasickBuilder::new().match_kind(MatchKind::Standard).build(&texts).ok())
            .flatten();
        Specials { ac, tokens, order }
    }

    /// Split `text` into plain pieces and special tokens, in order.
    fn split(&self, text: &str, parse_special: bool) -> Vec<Piece> {
        let bytes = text.as_bytes();
        let Some(ac) = &self.ac else { return vec![Piece::Text(0, bytes.len())] };
        let mut by_token: Vec<Vec<(usize, usize)>> = vec![Vec::new(); self.tokens.len()];
        for m in ac.find_overlapping_iter(text) {
            let t = m.pattern().as_usize();
            if parse_special || self.tokens[t].plain_too {
                by_token[t].push((m.start(), m.end()));
            }
        }
        // The plain intervals, by start.
        let mut plain: BTreeMap<usize, usize> = BTreeMap::new();
        if !bytes.is_empty() {
            plain.insert(0, bytes.len());
        }
        let mut found: BTreeMap<usize, Token> = BTreeMap::new();
        for &t in &self.order {
            let occurrences = &mut by_token[t];
            occurrences.sort_unstable();
            let tok = &self.tokens[t];
            for &(s, e) in occurrences.iter() {
                let Some((&a, &b)) = plain.range(..=s).next_back() else { continue };
                if e > b {
                    continue;
                }
                plain.remove(&a);
                let mut left = s;
                if tok.lstrip {
                    while left > a && is_space(bytes[left - 1]) {
                        left -= 1;
                    }
                }
                let mut right = e;
                if tok.rstrip {
                    while right < b && is_space(bytes[right]) {
                        right += 1;
                    }
                }
                if left > a {
                    plain.insert(a, left);
                }
                if b > right {
                    plain.insert(right, b);
                }
                found.insert(s, tok.id);
            }
        }
        let mut pieces: Vec<(usize, Piece)> =
            plain.into_iter().map(|(a, b)| (a, Piece::Text(a, b))).collect();
        pieces.extend(found.into_iter().map(|(s, id)| (s, Piece::Token(id))));
        pieces.sort_by_key(|p| p.0);
        pieces.into_iter().map(|p| p.1).collect()
    }

    /// Tokenize like `llama_tokenize(text, add_special = false, parse_special)`.
    pub fn tokenize(&self, vocab: &Vocab<'_>, text: &str, parse_special: bool) -> Result<Vec<Token>, String> {
        let mut out = Vec::new();
        for piece in self.split(text, parse_special) {
            match piece {
                Piece::Token(id) => out.push(id),
                // Piece boundaries are special-token boundaries, so always char boundaries.
                Piece::Text(a, b) => out.extend(vocab.tokenize(&text[a..b], false)?),
            }
        }
        Ok(out)
    }
}
