//! The only place the `shout` test build differs from the shipping guest:
//! the guest-swap tests run a second build of this crate (`--features
//! shout`) whose behaviour is visibly different — another chat system
//! prompt, translations in capitals — over the same WIT and host.

/// System prompt of chat sessions.
#[cfg(not(feature = "shout"))]
pub const CHAT_SYSTEM_PROMPT: &str = crate::prompts::CHAT_SYSTEM_PROMPT;
/// System prompt of chat sessions (`shout` build).
#[cfg(feature = "shout")]
pub const CHAT_SYSTEM_PROMPT: &str = "You are LOUDBOT. Answer in capital letters.";

/// A translation's visible text (capitals in the `shout` build).
pub fn translation_text(text: String) -> String {
    if cfg!(feature = "shout") { text.to_uppercase() } else { text }
}
