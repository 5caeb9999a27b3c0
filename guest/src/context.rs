//! KV reuse: how to turn what a sequence holds into what the next prompt needs
//! with the fewest tokens evaluated.
//!
//! The guest mirrors each KV sequence as the list of tokens in it. For a new
//! prompt it keeps the longest common prefix. When older turns were dropped to
//! make room, the turns after them are still in the KV: instead of evaluating
//! them again, the dropped block is removed and the rest shifted down (what
//! llama.cpp calls a context shift).

use crate::host::Token;

/// The KV operations that turn `old` into a prefix of `new`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KvPlan {
    /// Keep old[..keep_prefix] as it is.
    pub keep_prefix: usize,
    /// Then remove old[keep_prefix..shift_from] and move old[shift_from..] down.
    /// `None`: drop everything after the prefix.
    pub shift_from: Option<usize>,
    /// Tokens of `new` already in the KV after the operations.
    pub reused: usize,
}

/// Length of the common prefix of two token lists.
pub fn common_prefix(a: &[Token], b: &[Token]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

/// Plan how to reuse `old` for `new`. Shifting is only considered when
/// `allow_shift` (turns were dropped from the middle of the conversation);
/// otherwise a divergence means the tail was computed on other context.
pub fn plan(old: &[Token], new: &[Token], allow_shift: bool) -> KvPlan {
    let prefix = common_prefix(old, new);
    if prefix == old.len() {
        return KvPlan { keep_prefix: prefix, shift_from: None, reused: prefix };
    }
    if allow_shift {
        let wanted = &new[prefix..];
        // The smallest `from` whose tail of `old` starts `wanted` keeps the most tokens.
        for from in prefix + 1..old.len() {
            let tail = &old[from..];
            if tail.len() <= wanted.len() && wanted.starts_with(tail) {
                return KvPlan { keep_prefix: prefix, shift_from: Some(from), reused: prefix + tail.len() };
            }
        }
    }
    KvPlan { keep_prefix: prefix, shift_from: None, reused: prefix }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn appending_reuses_everything() {
        let p = plan(&[1, 2, 3], &[1, 2, 3, 4, 5], false);
        assert_eq!(p, KvPlan { keep_prefix: 3, shift_from: None, reused: 3 });
    }

    #[test]
    fn divergence_drops_the_tail() {
        let p = plan(&[1, 2, 3, 9], &[1, 2, 3, 4], true);
        assert_eq!(p.reused, 3);
        assert_eq!(p.shift_from, None);
    }

    #[test]
    fn dropped_turn_is_removed_and_the_rest_shifted() {
        // system [1,2], turn A [10,11], turn B [20,21], reply [30]; A is dropped.
        let old = [1, 2, 10, 11, 20, 21, 30];
        let new = [1, 2, 20, 21, 30, 40, 41];
        let p = plan(&old, &new, true);
        assert_eq!(p, KvPlan { keep_prefix: 2, shift_from: Some(4), reused: 5 });
    }

    #[test]
    fn no_shift_unless_allowed() {
        let old = [1, 2, 10, 11, 20, 21];
        let new = [1, 2, 20, 21, 30];
        assert_eq!(plan(&old, &new, false).reused, 2);
    }
}
