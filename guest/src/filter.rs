//! What the user sees of a reply: stop strings and translation clean-up.
//!
//! Text arrives in small chunks. A stop string may span several chunks, so
//! any tail that could still become a stop string is held back until it is
//! ruled out; when a stop string completes, the text before it is released
//! and the reply ends. Nothing is lost or duplicated at chunk boundaries.
//!
//! Translation replies additionally lose surrounding whitespace and quotes:
//! leading ones as they arrive, trailing ones by holding back a tail of
//! whitespace/quote characters until more text follows or the reply ends.

/// Quote characters stripped around translations.
const QUOTES: &[char] = &['"', '\'', '“', '”', '„', '‟', '«', '»', '‹', '›', '「', '」', '『', '』', '`'];

fn is_strippable(c: char) -> bool {
    c.is_whitespace() || QUOTES.contains(&c)
}

/// The result of pushing text through the stop filter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StopOutput {
    /// Text that is now safe to show.
    pub text: String,
    /// A stop string completed: the reply is over.
    pub stopped: bool,
}

/// Holds back text that may be the beginning of a stop string.
#[derive(Debug, Clone, Default)]
pub struct StopFilter {
    stops: Vec<String>,
    held: String,
    stopped: bool,
}

impl StopFilter {
    /// A filter for the given stop strings (empty strings are ignored).
    pub fn new(stops: &[String]) -> Self {
        StopFilter {
            stops: stops.iter().filter(|s| !s.is_empty()).cloned().collect(),
            held: String::new(),
            stopped: false,
        }
    }

    /// Add text; get what is safe to show.
    pub fn push(&mut self, text: &str) -> StopOutput {
        if self.stopped {
            return StopOutput { text: String::new(), stopped: true };
        }
        self.held.push_str(text);
        // A complete stop string: release what precedes the earliest one.
        if let Some(at) = self.stops.iter().filter_map(|s| self.held.find(s.as_str())).min() {
            let out = self.held[..at].to_owned();
            self.held.clear();
            self.stopped = true;
            return StopOutput { text: out, stopped: true };
        }
        // Keep the longest tail that is a proper prefix of some stop string.
        let keep = self.longest_partial_tail();
        let split = self.held.len() - keep;
        let out = self.held[..split].to_owned();
        self.held.drain(..split);
        StopOutput { text: out, stopped: false }
    }

    /// End of reply: release anything held back (it cannot become a stop string now).
    pub fn finish(&mut self) -> String {
        if self.stopped {
            return String::new();
        }
        std::mem::take(&mut self.held)
    }

    fn longest_partial_tail(&self) -> usize {
        let held = self.held.as_str();
        let mut best = 0;
        for stop in &self.stops {
            // Tails of `held` that are proper prefixes of `stop`, at char boundaries.
            let max = stop.len().saturating_sub(1).min(held.len());
            for len in (best + 1..=max).rev() {
                let start = held.len() - len;
                if held.is_char_boundary(start) && stop.starts_with(&held[start..]) {
                    best = len;
                    break;
                }
            }
        }
        best
    }
}

/// Strips whitespace and quotes around a streamed translation.
#[derive(Debug, Clone, Default)]
pub struct TranslationCleaner {
    started: bool,
    held: String,
}

impl TranslationCleaner {
    /// A cleaner at the start of a reply.
    pub fn new() -> Self {
        Self::default()
    }

    /// Add text; get what is safe to show.
    pub fn push(&mut self, text: &str) -> String {
        let mut text = text;
        if !self.started {
            text = text.trim_start_matches(is_strippable);
            if text.is_empty() {
                return String::new();
            }
            self.started = true;
        }
        self.held.push_str(text);
        let keep_from = self.held.trim_end_matches(is_strippable).len();
        let out = self.held[..keep_from].to_owned();
        self.held.drain(..keep_from);
        out
    }

    /// End of reply: trailing whitespace and quotes are dropped.
    pub fn finish(&mut self) -> String {
        self.held.clear();
        String::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(filter: &mut StopFilter, chunks: &[&str]) -> (String, bool) {
        let mut shown = String::new();
        for c in chunks {
            let out = filter.push(c);
            shown.push_str(&out.text);
            if out.stopped {
                return (shown, true);
            }
        }
        shown.push_str(&filter.finish());
        (shown, false)
    }

    #[test]
    fn stop_string_across_chunks_is_cut_and_nothing_else_lost() {
        let mut f = StopFilter::new(&["\nUser:".to_owned()]);
        let (shown, stopped) = run(&mut f, &["Sure, 4.", "\nUs", "er: next"]);
        assert_eq!(shown, "Sure, 4.");
        assert!(stopped);
    }

    #[test]
    fn near_miss_is_released_in_order() {
        let mut f = StopFilter::new(&["###".to_owned()]);
        let mut shown = String::new();
        for c in ["a#", "#b", "c"] {
            shown.push_str(&f.push(c).text);
        }
        shown.push_str(&f.finish());
        assert_eq!(shown, "a##bc");
    }

    #[test]
    fn held_text_is_released_at_the_end() {
        let mut f = StopFilter::new(&["STOP".to_owned()]);
        let out = f.push("the ST");
        assert_eq!(out.text, "the ");
        assert_eq!(f.finish(), "ST");
    }

    #[test]
    fn multibyte_stop_strings_respect_char_boundaries() {
        let mut f = StopFilter::new(&["「終」".to_owned()]);
        let (shown, stopped) = run(&mut f, &["はい「", "終", "」です"]);
        assert_eq!(shown, "はい");
        assert!(stopped);
    }

    #[test]
    fn no_stops_means_no_holding() {
        let mut f = StopFilter::new(&[]);
        assert_eq!(f.push("abc").text, "abc");
    }

    #[test]
    fn translation_quotes_and_whitespace_are_stripped_while_streaming() {
        let mut c = TranslationCleaner::new();
        let mut shown = String::new();
        for chunk in [" ", "\"Bon", "jour", " le monde", ".\"", "\n"] {
            shown.push_str(&c.push(chunk));
        }
        shown.push_str(&c.finish());
        assert_eq!(shown, "Bonjour le monde.");
    }

    #[test]
    fn inner_quotes_and_spaces_survive() {
        let mut c = TranslationCleaner::new();
        let mut shown = String::new();
        for chunk in ["«Il a dit ", "\"oui\" ", "hier»"] {
            shown.push_str(&c.push(chunk));
        }
        shown.push_str(&c.finish());
        assert_eq!(shown, "Il a dit \"oui\" hier");
    }
}
