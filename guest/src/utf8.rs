//! Assembling streamed token bytes into complete UTF-8 text.
//!
//! A token's bytes may end in the middle of a multi-byte character (common
//! for CJK, emoji, and scripts the vocabulary splits into byte tokens). The
//! assembler emits only complete characters and keeps the unfinished tail
//! for the next token. Bytes that can never form a character are replaced
//! with U+FFFD, as a lossy decoder would, so nothing blocks the stream.

/// Collects bytes and releases complete UTF-8 text.
#[derive(Debug, Default, Clone)]
pub struct Utf8Assembler {
    pending: Vec<u8>,
}

impl Utf8Assembler {
    /// An empty assembler.
    pub fn new() -> Self {
        Self::default()
    }

    /// Add bytes; return the text that is now complete (possibly empty).
    pub fn push(&mut self, bytes: &[u8]) -> String {
        self.pending.extend_from_slice(bytes);
        let mut out = String::new();
        loop {
            match std::str::from_utf8(&self.pending) {
                Ok(s) => {
                    out.push_str(s);
                    self.pending.clear();
                    return out;
                }
                Err(e) => {
                    let valid = e.valid_up_to();
                    // `from_utf8` just said this prefix is valid, so this cannot fail.
                    out.push_str(std::str::from_utf8(&self.pending[..valid]).unwrap_or_default());
                    match e.error_len() {
                        // An incomplete character at the end: wait for more bytes.
                        None => {
                            self.pending.drain(..valid);
                            return out;
                        }
                        // Bytes that can never be valid: replace and go on.
                        Some(bad) => {
                            out.push(char::REPLACEMENT_CHARACTER);
                            self.pending.drain(..valid + bad);
                        }
                    }
                }
            }
        }
    }

    /// Bytes held back, waiting for the rest of a character.
    pub fn pending_len(&self) -> usize {
        self.pending.len()
    }

    /// End of stream: an unfinished character becomes U+FFFD.
    pub fn finish(&mut self) -> String {
        if self.pending.is_empty() {
            String::new()
        } else {
            self.pending.clear();
            char::REPLACEMENT_CHARACTER.to_string()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ascii_passes_through() {
        let mut a = Utf8Assembler::new();
        assert_eq!(a.push(b"Hello"), "Hello");
        assert_eq!(a.push(b", world"), ", world");
        assert_eq!(a.finish(), "");
    }

    #[test]
    fn character_split_across_two_tokens() {
        // "é" = C3 A9
        let mut a = Utf8Assembler::new();
        assert_eq!(a.push(b"caf\xC3"), "caf");
        assert_eq!(a.pending_len(), 1);
        assert_eq!(a.push(b"\xA9!"), "é!");
        assert_eq!(a.pending_len(), 0);
    }

    #[test]
    fn character_split_across_three_tokens() {
        // "日" = E6 97 A5, "😀" = F0 9F 98 80
        let mut a = Utf8Assembler::new();
        assert_eq!(a.push(b"\xE6"), "");
        assert_eq!(a.push(b"\x97"), "");
        assert_eq!(a.push(b"\xA5\xF0\x9F"), "日");
        assert_eq!(a.push(b"\x98"), "");
        assert_eq!(a.push(b"\x80"), "😀");
    }

    #[test]
    fn invalid_bytes_become_replacement_and_do_not_block() {
        let mut a = Utf8Assembler::new();
        assert_eq!(a.push(b"a\xFFb"), "a\u{FFFD}b");
        assert_eq!(a.push(b"\xE6\x97"), "");
        assert_eq!(a.finish(), "\u{FFFD}");
        assert_eq!(a.push(b"ok"), "ok");
    }
}
