//! Our own words to the model: system prompts for chat and translation, the
//! translation request, and the language names the user may use.

/// Tiny Aya Global's 70 languages: (code, English name). Codes are ISO 639-1
/// where one exists, else ISO 639-3 / BCP 47.
pub const LANGUAGES: &[(&str, &str)] = &[
    ("ca", "Catalan"),
    ("gl", "Galician"),
    ("nl", "Dutch"),
    ("da", "Danish"),
    ("fi", "Finnish"),
    ("cs", "Czech"),
    ("pt", "Portuguese"),
    ("fr", "French"),
    ("lt", "Lithuanian"),
    ("sk", "Slovak"),
    ("eu", "Basque"),
    ("en", "English"),
    ("sv", "Swedish"),
    ("pl", "Polish"),
    ("es", "Spanish"),
    ("sl", "Slovenian"),
    ("uk", "Ukrainian"),
    ("el", "Greek"),
    ("nb", "Norwegian Bokmål"),
    ("ro", "Romanian"),
    ("sr", "Serbian"),
    ("de", "German"),
    ("it", "Italian"),
    ("ru", "Russian"),
    ("ga", "Irish"),
    ("hu", "Hungarian"),
    ("bg", "Bulgarian"),
    ("hr", "Croatian"),
    ("et", "Estonian"),
    ("lv", "Latvian"),
    ("cy", "Welsh"),
    ("ar", "Arabic"),
    ("mt", "Maltese"),
    ("tr", "Turkish"),
    ("he", "Hebrew"),
    ("fa", "Persian"),
    ("te", "Telugu"),
    ("mr", "Marathi"),
    ("bn", "Bengali"),
    ("ta", "Tamil"),
    ("hi", "Hindi"),
    ("pa", "Punjabi"),
    ("gu", "Gujarati"),
    ("ur", "Urdu"),
    ("ne", "Nepali"),
    ("zh-Hant", "Traditional Chinese"),
    ("yue", "Cantonese"),
    ("vi", "Vietnamese"),
    ("tl", "Tagalog"),
    ("jv", "Javanese"),
    ("km", "Khmer"),
    ("th", "Thai"),
    ("my", "Burmese"),
    ("ms", "Malay"),
    ("ko", "Korean"),
    ("lo", "Lao"),
    ("id", "Indonesian"),
    ("zh-Hans", "Simplified Chinese"),
    ("ja", "Japanese"),
    ("zu", "Zulu"),
    ("am", "Amharic"),
    ("ha", "Hausa"),
    ("ig", "Igbo"),
    ("sw", "Swahili"),
    ("xh", "Xhosa"),
    ("wo", "Wolof"),
    ("sn", "Shona"),
    ("yo", "Yoruba"),
    ("pcm", "Nigerian Pidgin"),
    ("mg", "Malagasy"),
];

/// The display name for a language given as a code (`fr`, `zh-Hans`) or a
/// name in any letter case (`french`). Unknown names are kept as typed: the
/// model knows more languages than the 70 it was tuned on.
pub fn language_name(input: &str) -> String {
    let input = input.trim();
    LANGUAGES
        .iter()
        .find(|(code, name)| code.eq_ignore_ascii_case(input) || name.eq_ignore_ascii_case(input))
        .map(|(_, name)| (*name).to_owned())
        .unwrap_or_else(|| input.to_owned())
}

/// System prompt of chat sessions.
pub const CHAT_SYSTEM_PROMPT: &str = "You are BittyBot, a friendly assistant that runs \
offline on the user's phone. Answer helpfully, clearly and concisely. Reply in the \
language the user writes in unless they ask for another one.";

/// System prompt of translation sessions for a language pair.
pub fn translation_system_prompt(source: Option<&str>, target: &str) -> String {
    let from = match source {
        Some(s) => format!("from {s} "),
        None => String::new(),
    };
    format!(
        "You are a translation engine. Translate the text of each user message {from}into \
         {target}. Output only the {target} translation: no explanations, notes, \
         alternatives, transliterations or quotation marks around it. Keep the meaning, \
         tone, names, numbers and line breaks. If the text is already in {target}, output \
         it unchanged."
    )
}

/// The user turn of a translation request.
pub fn translation_request(source: Option<&str>, target: &str, text: &str) -> String {
    match source {
        Some(s) => format!("Translate from {s} to {target}:\n\n{text}"),
        None => format!("Translate to {target}:\n\n{text}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seventy_languages_with_unique_codes() {
        assert_eq!(LANGUAGES.len(), 70);
        let mut codes: Vec<_> = LANGUAGES.iter().map(|(c, _)| c.to_ascii_lowercase()).collect();
        codes.sort();
        codes.dedup();
        assert_eq!(codes.len(), 70);
    }

    #[test]
    fn codes_and_names_resolve() {
        assert_eq!(language_name("fr"), "French");
        assert_eq!(language_name(" JAPANESE "), "Japanese");
        assert_eq!(language_name("zh-hans"), "Simplified Chinese");
        assert_eq!(language_name("Klingon"), "Klingon");
    }

    #[test]
    fn requests_name_the_languages() {
        assert_eq!(translation_request(None, "French", "Hi"), "Translate to French:\n\nHi");
        assert_eq!(
            translation_request(Some("English"), "German", "Hi"),
            "Translate from English to German:\n\nHi"
        );
        let sys = translation_system_prompt(Some("English"), "German");
        assert!(sys.contains("from English into German"));
        assert!(sys.contains("Output only the German translation"));
    }
}
