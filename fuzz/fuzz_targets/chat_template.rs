//! Chat template rendering with hostile messages (tags, special tokens, Jinja syntax, huge or
//! empty contents, odd roles, prefills), through the real templates of the test models and
//! through arbitrary templates: a prompt or a template error, never a panic or a hang.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use r1d::chat::{render, Message, ModelProfile, FALLBACK_TEMPLATE};

const R1: &str = include_str!("../templates/deepseek-r1-distill-qwen.jinja");
const SMOLLM2: &str = include_str!("../templates/smollm2.jinja");

#[derive(Debug, Arbitrary)]
enum Template {
    R1,
    SmolLm2,
    Fallback,
    /// A template from a model file (a GGUF's `tokenizer.chat_template` is the file's author's).
    Custom(String),
}

#[derive(Debug, Arbitrary)]
struct Input {
    template: Template,
    messages: Vec<(u8, String)>,
    bos: Option<String>,
    eos: Option<String>,
    deepseek_r1: bool,
    reasoning: bool,
}

const ROLES: [&str; 6] = [
    "system",
    "user",
    "assistant",
    "tool",
    "developer",
    "<｜User｜>",
];

fuzz_target!(|input: Input| {
    let template = match &input.template {
        Template::R1 => R1,
        Template::SmolLm2 => SMOLLM2,
        Template::Fallback => FALLBACK_TEMPLATE,
        // Bounded: a template is a few KB, and minijinja's cost grows with its loops.
        Template::Custom(t) if t.len() <= 4096 => t.as_str(),
        Template::Custom(_) => return,
    };
    let messages: Vec<Message> = input
        .messages
        .iter()
        .take(64)
        .map(|(role, content)| Message {
            role: ROLES[usize::from(*role) % ROLES.len()].to_owned(),
            content: content.clone(),
            ..Message::default()
        })
        .collect();
    let Ok(mut prompt) = render(
        template,
        &messages,
        input.bos.as_deref(),
        input.eos.as_deref(),
    ) else {
        return;
    };
    if prompt.has_bos {
        let bos = input.bos.as_deref().unwrap_or_default();
        assert!(!bos.is_empty() && prompt.text.starts_with(bos));
    }
    let profile = ModelProfile {
        deepseek_r1: input.deepseek_r1,
        reasoning: input.reasoning || input.deepseek_r1,
    };
    let mut skipped = prompt.clone();
    profile.open_reasoning(&mut prompt);
    profile.skip_reasoning(&mut skipped);
    assert!(!skipped.opens_reasoning || !profile.reasoning || skipped.continues);
});
