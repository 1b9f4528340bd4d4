//! DeepSeek-R1's own chat template and tokenizer (the vocab-only R1 GGUF fixture), loaded through
//! the real llama.cpp plugin by r1d's plugin host and rendered by r1d's template code.

use r1_plugin_abi::json::LoadParams;
use r1d::backend::PluginHost;
use r1d::chat::{self, Message};
use r1d_tests::{fixture, plugin_dir, R1_VOCAB};

const BOS: &str = "<｜begin▁of▁sentence｜>";

fn msg(role: &str, content: &str) -> Message {
    Message {
        role: role.into(),
        content: content.into(),
        ..Default::default()
    }
}

#[test]
fn r1_original_template_multi_turn_prompt_has_one_bos_and_drops_old_reasoning() {
    let Some(path) = fixture(R1_VOCAB) else {
        return;
    };
    let plugins = plugin_dir(&["llamacpp"]);
    let host = PluginHost::discover(plugins.path()).unwrap();
    let backend = host.select(&path, None).unwrap();
    assert_eq!(backend.name(), "llamacpp");
    let model = backend
        .load(
            &LoadParams {
                path: path.to_string_lossy().into_owned(),
                vocab_only: true,
                ..Default::default()
            },
            &mut |_| true,
        )
        .unwrap();
    let info = model.info().clone();
    assert_eq!(info.architecture.as_deref(), Some("qwen2"));
    assert_eq!(info.file_type.as_deref(), Some("Q4_K_M"));
    let bos = info.bos_token.clone().unwrap();
    assert_eq!(bos.text, BOS);
    let template = info.chat_template.clone().expect("R1 ships its template");

    let messages = [
        msg("user", "Hi"),
        msg("assistant", "<think>\nnotes-42\n</think>\n\nHello!"),
        msg("user", "And now?"),
    ];
    let mut prompt = chat::render(
        &template,
        &messages,
        Some(&bos.text),
        info.eos_token.as_ref().map(|t| t.text.as_str()),
    )
    .unwrap();
    // This GGUF carries R1's original template (January 2025): it keeps what follows `</think>`
    // verbatim (Python's `split` keeps the "\n\n") and ends with the assistant tag alone; the model
    // then opens `<think>` itself. DeepSeek's later template ends with `<think>\n` instead.
    assert_eq!(
        prompt.text,
        "<｜begin▁of▁sentence｜><｜User｜>Hi<｜Assistant｜>\n\nHello!<｜end▁of▁sentence｜><｜User｜>And now?<｜Assistant｜>"
    );
    assert!(!prompt.text.contains("notes-42"));
    assert!(prompt.has_bos);
    assert!(!prompt.opens_reasoning);
    // r1d recognises R1 and opens the reasoning itself, as DeepSeek recommends.
    let profile = chat::ModelProfile::of(&info.clone().into());
    assert!(profile.deepseek_r1 && profile.reasoning);
    profile.open_reasoning(&mut prompt);
    assert!(prompt.text.ends_with("<｜Assistant｜><think>\n"));
    assert!(prompt.opens_reasoning);

    // Tokenized as the engine does: the template's BOS, none added by the tokenizer.
    let tokens = model
        .tokenize(&prompt.text, info.add_bos_token && !prompt.has_bos, true)
        .unwrap();
    assert_eq!(
        tokens.iter().filter(|&&t| t == bos.id).count(),
        1,
        "{tokens:?}"
    );
    assert_eq!(tokens[0], bos.id);

    // <｜Assistant｜> is token 151645 in R1's vocabulary, <think> 151648, "\n" 198,
    // <｜User｜> 151644, BOS 151646, <｜end▁of▁sentence｜> 151643.
    assert_eq!(
        tokens,
        [
            151646, 151644, 13048, 151645, 271, 9707, 0, 151643, 151644, 3036, 1431, 30, 151645,
            151648, 198
        ]
    );
    assert_eq!(
        tokens.iter().filter(|&&t| t == 151644).count(),
        2,
        "{tokens:?}"
    );
}
