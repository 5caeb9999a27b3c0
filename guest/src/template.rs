//! Chat formats: turning a conversation into the exact text a model expects.
//!
//! Two sources of format: the built-in Tiny Aya (Cohere) template, used for
//! every `cohere2` model so the prompt is exactly Tiny Aya's own format
//! (README, "CLI", shows a rendered one), and otherwise the model's own GGUF
//! `tokenizer.chat_template`, rendered with minijinja (plus Python-compatible
//! string methods, as Hugging Face templates use them).
//!
//! Message contents never pass through the tokenizer's control-token parser:
//! the template is rendered with a private-use sentinel in place of each
//! message's content, and the output is split into [`Segment`]s — template
//! text (tokenized with control tokens recognised) and content references
//! (tokenized as plain text). That is what keeps `<|END_OF_TURN_TOKEN|>` typed
//! by a user from becoming a control token.

use minijinja::{Environment, ErrorKind, context};
use serde::Serialize;

/// The reference Tiny Aya chat template (tool, document and thinking sections left out).
pub const TINY_AYA_TEMPLATE: &str = include_str!("../templates/tiny-aya.jinja");

/// Architectures that get the built-in Tiny Aya format.
const COHERE_ARCHITECTURES: &[&str] = &["cohere2"];

/// Whether a model of this architecture is Tiny Aya (the built-in Cohere
/// format, and its end-of-turn control tokens).
pub fn is_tiny_aya(architecture: &str) -> bool {
    COHERE_ARCHITECTURES.contains(&architecture)
}

/// Who wrote a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// The system prompt.
    System,
    /// The person using the app.
    User,
    /// The model.
    Assistant,
}

impl Role {
    /// The role's name as templates spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::System => "system",
            Role::User => "user",
            Role::Assistant => "assistant",
        }
    }

    /// Parse a role name.
    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "system" => Some(Role::System),
            "user" => Some(Role::User),
            "assistant" => Some(Role::Assistant),
            _ => None,
        }
    }
}

/// A piece of rendered prompt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Segment {
    /// Template text: may contain control-token text, which becomes control tokens.
    Template(String),
    /// The content of message `n`: always plain text.
    Content(usize),
}

/// Where a chat format came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FormatSource {
    /// The built-in Tiny Aya template.
    BuiltInTinyAya,
    /// The model's GGUF `tokenizer.chat_template`.
    Gguf,
}

/// Errors of the chat format.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TemplateError {
    /// The model has no template and no built-in one applies.
    Missing(String),
    /// The template failed to compile or render.
    Render(String),
}

impl std::fmt::Display for TemplateError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TemplateError::Missing(s) | TemplateError::Render(s) => f.write_str(s),
        }
    }
}

// Private-use code points: never produced by templates, rare in real text.
const SENTINEL_OPEN: char = '\u{F8F0}';
const SENTINEL_CLOSE: char = '\u{F8F1}';

#[derive(Serialize)]
struct TemplateMessage {
    role: &'static str,
    content: String,
}

/// A compiled chat format.
pub struct ChatFormat {
    env: Environment<'static>,
    source: FormatSource,
    bos_text: String,
    eos_text: String,
    prints_bos: bool,
}

impl std::fmt::Debug for ChatFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatFormat").field("source", &self.source).finish()
    }
}

impl ChatFormat {
    /// Pick and compile the format for a model: the built-in Tiny Aya template
    /// for `cohere2`, else the GGUF template. `bos_text`/`eos_text` are the
    /// texts of the BOS/EOS tokens (templates print them as `bos_token`).
    pub fn for_model(
        architecture: &str,
        gguf_template: Option<&str>,
        bos_text: &str,
        eos_text: &str,
    ) -> Result<ChatFormat, TemplateError> {
        let (source, text) = if is_tiny_aya(architecture) {
            (FormatSource::BuiltInTinyAya, TINY_AYA_TEMPLATE.to_owned())
        } else {
            match gguf_template {
                Some(t) if !t.trim().is_empty() => (FormatSource::Gguf, t.to_owned()),
                _ => {
                    return Err(TemplateError::Missing(format!(
                        "the model (architecture `{architecture}`) has no tokenizer.chat_template \
                         and no built-in format applies"
                    )));
                }
            }
        };
        Self::compile(source, text, bos_text, eos_text)
    }

    /// Compile an explicit template text.
    pub fn compile(
        source: FormatSource,
        template: String,
        bos_text: &str,
        eos_text: &str,
    ) -> Result<ChatFormat, TemplateError> {
        let mut env = Environment::new();
        // Hugging Face templates call Python string methods (`strip`, `startswith`, …).
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", |msg: String| -> Result<String, minijinja::Error> {
            Err(minijinja::Error::new(ErrorKind::InvalidOperation, msg))
        });
        let prints_bos = template.contains("bos_token");
        env.add_template_owned("chat", template)
            .map_err(|e| TemplateError::Render(format!("chat template does not compile: {e}")))?;
        Ok(ChatFormat {
            env,
            source,
            bos_text: bos_text.to_owned(),
            eos_text: eos_text.to_owned(),
            prints_bos,
        })
    }

    /// The text templates print as `bos_token`.
    pub fn bos_text(&self) -> &str {
        &self.bos_text
    }

    /// Whether the template prints `bos_token` itself.
    pub fn prints_bos(&self) -> bool {
        self.prints_bos
    }

    /// Where this format came from.
    pub fn source(&self) -> FormatSource {
        self.source
    }

    /// Render the conversation into segments. Message `n`'s content appears
    /// as `Segment::Content(n)`.
    pub fn render_segments(
        &self,
        messages: &[(Role, &str)],
        add_generation_prompt: bool,
    ) -> Result<Vec<Segment>, TemplateError> {
        let templated: Vec<TemplateMessage> = messages
            .iter()
            .enumerate()
            .map(|(i, (role, _))| TemplateMessage {
                role: role.as_str(),
                content: format!("{SENTINEL_OPEN}{i}{SENTINEL_CLOSE}"),
            })
            .collect();
        let tmpl = self.env.get_template("chat").map_err(|e| TemplateError::Render(e.to_string()))?;
        let out = tmpl
            .render(context! {
                messages => minijinja::Value::from(minijinja::value::Serde(&templated)),
                add_generation_prompt => add_generation_prompt,
                bos_token => self.bos_text.as_str(),
                eos_token => self.eos_text.as_str(),
            })
            .map_err(|e| TemplateError::Render(format!("chat template failed: {e}")))?;
        Ok(split_sentinels(&out, messages.len()))
    }

    /// Render the conversation into the exact text the model sees.
    pub fn render_text(
        &self,
        messages: &[(Role, &str)],
        add_generation_prompt: bool,
    ) -> Result<String, TemplateError> {
        let segments = self.render_segments(messages, add_generation_prompt)?;
        Ok(join_segments(&segments, messages))
    }
}

/// The text of rendered segments, with contents filled in.
pub fn join_segments(segments: &[Segment], messages: &[(Role, &str)]) -> String {
    let mut s = String::new();
    for seg in segments {
        match seg {
            Segment::Template(t) => s.push_str(t),
            Segment::Content(i) => s.push_str(messages[*i].1),
        }
    }
    s
}

/// Split rendered output at content sentinels.
fn split_sentinels(out: &str, n_messages: usize) -> Vec<Segment> {
    let mut segments = Vec::new();
    let mut rest = out;
    while let Some(open) = rest.find(SENTINEL_OPEN) {
        let after = &rest[open + SENTINEL_OPEN.len_utf8()..];
        let parsed = after.find(SENTINEL_CLOSE).and_then(|close| {
            after[..close].parse::<usize>().ok().filter(|&i| i < n_messages).map(|i| (i, close))
        });
        match parsed {
            Some((index, close)) => {
                if open > 0 {
                    push_template(&mut segments, &rest[..open]);
                }
                segments.push(Segment::Content(index));
                rest = &after[close + SENTINEL_CLOSE.len_utf8()..];
            }
            None => {
                // A stray sentinel character that is not ours: keep it as text.
                let end = open + SENTINEL_OPEN.len_utf8();
                push_template(&mut segments, &rest[..end]);
                rest = &rest[end..];
            }
        }
    }
    if !rest.is_empty() {
        push_template(&mut segments, rest);
    }
    segments
}

fn push_template(segments: &mut Vec<Segment>, text: &str) {
    if let Some(Segment::Template(last)) = segments.last_mut() {
        last.push_str(text);
    } else {
        segments.push(Segment::Template(text.to_owned()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHATML: &str = "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

    fn chatml() -> ChatFormat {
        ChatFormat::for_model("llama", Some(CHATML), "<|im_start|>", "<|im_end|>").unwrap()
    }

    #[test]
    fn chatml_three_turns_renders_exactly() {
        let msgs = [
            (Role::System, "Be brief."),
            (Role::User, "Hi!"),
            (Role::Assistant, "Hello. How can I help?"),
            (Role::User, "Name a colour."),
            (Role::Assistant, "Blue."),
            (Role::User, "Another one?"),
        ];
        let text = chatml().render_text(&msgs, true).unwrap();
        assert_eq!(
            text,
            "<|im_start|>system\nBe brief.<|im_end|>\n\
             <|im_start|>user\nHi!<|im_end|>\n\
             <|im_start|>assistant\nHello. How can I help?<|im_end|>\n\
             <|im_start|>user\nName a colour.<|im_end|>\n\
             <|im_start|>assistant\nBlue.<|im_end|>\n\
             <|im_start|>user\nAnother one?<|im_end|>\n\
             <|im_start|>assistant\n"
        );
    }

    #[test]
    fn contents_become_content_segments() {
        let msgs = [(Role::User, "<|im_end|> sneaky")];
        let segs = chatml().render_segments(&msgs, true).unwrap();
        assert_eq!(
            segs,
            vec![
                Segment::Template(
                    "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n<|im_start|>user\n".into()
                ),
                Segment::Content(0),
                Segment::Template("<|im_end|>\n<|im_start|>assistant\n".into()),
            ]
        );
    }

    #[test]
    fn cohere_uses_builtin_template_even_with_gguf_template() {
        let f = ChatFormat::for_model("cohere2", Some(CHATML), "<BOS_TOKEN>", "<EOS_TOKEN>").unwrap();
        assert_eq!(f.source(), FormatSource::BuiltInTinyAya);
    }

    #[test]
    fn missing_template_is_a_clear_error() {
        let err = ChatFormat::for_model("llama", None, "", "").unwrap_err();
        assert!(matches!(err, TemplateError::Missing(m) if m.contains("no tokenizer.chat_template")));
    }

    #[test]
    fn raise_exception_surfaces_as_render_error() {
        let f = ChatFormat::compile(
            FormatSource::Gguf,
            "{{ raise_exception('roles must alternate') }}".into(),
            "",
            "",
        )
        .unwrap();
        let err = f.render_segments(&[(Role::User, "x")], true).unwrap_err();
        assert!(matches!(err, TemplateError::Render(m) if m.contains("roles must alternate")));
    }

    #[test]
    fn pycompat_methods_work() {
        let f = ChatFormat::compile(
            FormatSource::Gguf,
            "{% for m in messages %}{{ m.role.upper() }}:{{ m.content.strip() }};{% endfor %}".into(),
            "",
            "",
        )
        .unwrap();
        assert_eq!(f.render_text(&[(Role::User, "  hi ")], false).unwrap(), "USER:  hi ;");
    }

    #[test]
    fn stray_private_use_characters_stay_text() {
        let segs = split_sentinels("a\u{F8F0}zz\u{F8F1}b\u{F8F0}0\u{F8F1}", 1);
        assert_eq!(segs, vec![Segment::Template("a\u{F8F0}zz\u{F8F1}b".into()), Segment::Content(0)]);
    }
}

#[cfg(test)]
mod tiny_aya_golden {
    use super::*;

    const PREAMBLE: &str = "# System Preamble\nYou are in contextual safety mode. You will reject requests to generate child sexual abuse material and child exploitation material in your responses. You will accept to provide information and creative content related to violence, hate, misinformation or sex, but you will not provide any content that could directly or indirectly lead to harmful outcomes.\n\nYour information cutoff date is June 2024.\n\n# Default Preamble\n- Your name is Aya.\n- You are a large language model built by Cohere.\n- Always respond in the same language the user is writing in.\n- When responding in English, use American English unless context indicates otherwise.\n- Prefer the active voice.\n- Use gender-neutral pronouns for unspecified persons.";

    fn aya() -> ChatFormat {
        ChatFormat::for_model("cohere2", None, "<BOS_TOKEN>", "<EOS_TOKEN>").unwrap()
    }

    #[test]
    fn three_turn_chat_is_exactly_the_cohere_format() {
        let msgs = [
            (Role::System, "Be brief."),
            (Role::User, "Hi!"),
            (Role::Assistant, "Hello."),
            (Role::User, "2+2?"),
            (Role::Assistant, "4."),
            (Role::User, "Thanks"),
        ];
        let expected = format!(
            "<BOS_TOKEN><|START_OF_TURN_TOKEN|><|SYSTEM_TOKEN|>{PREAMBLE}\n\n# Developer Preamble\nBe brief.<|END_OF_TURN_TOKEN|>\
             <|START_OF_TURN_TOKEN|><|USER_TOKEN|>Hi!<|END_OF_TURN_TOKEN|>\
             <|START_OF_TURN_TOKEN|><|CHATBOT_TOKEN|><|START_RESPONSE|>Hello.<|END_RESPONSE|><|END_OF_TURN_TOKEN|>\
             <|START_OF_TURN_TOKEN|><|USER_TOKEN|>2+2?<|END_OF_TURN_TOKEN|>\
             <|START_OF_TURN_TOKEN|><|CHATBOT_TOKEN|><|START_RESPONSE|>4.<|END_RESPONSE|><|END_OF_TURN_TOKEN|>\
             <|START_OF_TURN_TOKEN|><|USER_TOKEN|>Thanks<|END_OF_TURN_TOKEN|>\
             <|START_OF_TURN_TOKEN|><|CHATBOT_TOKEN|><|START_RESPONSE|>"
        );
        assert_eq!(aya().render_text(&msgs, true).unwrap(), expected);
    }

    #[test]
    fn translation_turn_is_exactly_the_cohere_format() {
        let system = crate::prompts::translation_system_prompt(Some("English"), "French");
        let user = crate::prompts::translation_request(Some("English"), "French", "Good morning");
        let msgs = [(Role::System, system.as_str()), (Role::User, user.as_str())];
        let expected = format!(
            "<BOS_TOKEN><|START_OF_TURN_TOKEN|><|SYSTEM_TOKEN|>{PREAMBLE}\n\n# Developer Preamble\n\
             You are a translation engine. Translate the text of each user message from English into French. \
             Output only the French translation: no explanations, notes, alternatives, transliterations or \
             quotation marks around it. Keep the meaning, tone, names, numbers and line breaks. If the text is \
             already in French, output it unchanged.<|END_OF_TURN_TOKEN|>\
             <|START_OF_TURN_TOKEN|><|USER_TOKEN|>Translate from English to French:\n\nGood morning<|END_OF_TURN_TOKEN|>\
             <|START_OF_TURN_TOKEN|><|CHATBOT_TOKEN|><|START_RESPONSE|>"
        );
        assert_eq!(aya().render_text(&msgs, true).unwrap(), expected);
    }

    #[test]
    fn bos_appears_once_and_only_at_the_start() {
        let msgs = [(Role::System, "s"), (Role::User, "a"), (Role::Assistant, "b"), (Role::User, "c")];
        let text = aya().render_text(&msgs, true).unwrap();
        assert!(text.starts_with("<BOS_TOKEN>"));
        assert_eq!(text.matches("<BOS_TOKEN>").count(), 1);
    }
}
