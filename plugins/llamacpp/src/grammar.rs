//! Structured output: a JSON Schema turned into a GBNF grammar by llama.cpp's own converter
//! (`json_schema_to_grammar`, the one llama-server uses for `response_format`), and llama.cpp's
//! grammar sampler over it — lazy, with a trigger pattern, when the constraint starts after a
//! text such as R1's `</think>` (the reasoning stays free, the answer is constrained).

use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::sampling::LlamaSampler;
use r1_plugin_sdk::PluginError;

/// Root rule of the lazy grammar: the trigger text, a little whitespace, then the schema's root.
const TRIGGERED_ROOT: &str = "r1-constrained";

/// Root rule of a wrapped grammar: the prefix text, the schema's root, the suffix text.
const WRAPPED_ROOT: &str = "r1-wrapped";

/// Whitespace allowed between the trigger text and the JSON value (R1 writes `</think>\n\n`).
const MAX_GAP: u32 = 16;

/// The GBNF grammar of `schema`, JSON text (llama.cpp's converter; its root rule is `root`).
///
/// # Errors
/// `R1_ERR_INVALID_ARGUMENT` naming `response_format` when llama.cpp cannot convert the schema.
pub fn json_schema_grammar(schema: &str) -> Result<String, PluginError> {
    llama_cpp_2::json_schema_to_grammar(schema).map_err(|e| {
        PluginError::invalid_argument(format!(
            "response_format (Ollama: format): llama.cpp cannot turn this JSON schema into a \
             grammar ({e}); use the JSON Schema subset llama.cpp supports"
        ))
    })
}

/// The grammar sampler for `schema`, the JSON between `wrap`'s two texts when given:
/// constrained from the first token, or — with `constrain_after` — free until that text
/// appears, then constrained from that text on (the grammar starts with it, so the text itself
/// still passes).
///
/// # Errors
/// `R1_ERR_INVALID_ARGUMENT` when the schema cannot be converted, or the grammar not parsed.
pub fn json_schema_sampler(
    model: &LlamaModel,
    schema: &str,
    wrap: Option<&(String, String)>,
    constrain_after: Option<&str>,
) -> Result<LlamaSampler, PluginError> {
    let mut grammar = json_schema_grammar(schema)?;
    let mut root = "root";
    if let Some((prefix, suffix)) = wrap {
        grammar = wrapped_grammar(&grammar, prefix, suffix);
        root = WRAPPED_ROOT;
    }
    let refused = |e: llama_cpp_2::GrammarError| {
        PluginError::invalid_argument(format!(
            "response_format (Ollama: format): llama.cpp refused the grammar made from this JSON \
             schema: {e}"
        ))
    };
    match constrain_after.filter(|t| !t.is_empty()) {
        None => LlamaSampler::grammar(model, &grammar, root).map_err(refused),
        Some(trigger) => {
            let grammar = triggered_grammar(&grammar, root, trigger);
            LlamaSampler::grammar_lazy_patterns(
                model,
                &grammar,
                TRIGGERED_ROOT,
                &[ecmascript_escape(trigger)],
                &[],
            )
            .map_err(refused)
        }
    }
}

/// `grammar` (its start rule `root`) behind `trigger`: a new root rule that matches the trigger
/// text, up to [`MAX_GAP`] whitespace characters, then `root`. llama.cpp feeds a lazy grammar the
/// generated text from the start of the trigger pattern's match.
fn triggered_grammar(grammar: &str, root: &str, trigger: &str) -> String {
    let literal = gbnf_literal(trigger);
    format!("{grammar}\n{TRIGGERED_ROOT} ::= {literal} [ \\t\\n]{{0,{MAX_GAP}}} {root}\n")
}

/// `grammar` (root rule `root`) between two literal texts, as the rule [`WRAPPED_ROOT`].
fn wrapped_grammar(grammar: &str, prefix: &str, suffix: &str) -> String {
    let (prefix, suffix) = (gbnf_literal(prefix), gbnf_literal(suffix));
    format!("{grammar}\n{WRAPPED_ROOT} ::= {prefix} root {suffix}\n")
}

/// `text` as a GBNF string literal: a JSON string literal is one (same escapes: \" \\ \n \t
/// \uXXXX).
fn gbnf_literal(text: &str) -> String {
    serde_json::Value::from(text).to_string()
}

/// `text` as an ECMAScript regular expression matching it literally: llama.cpp compiles trigger
/// patterns with `std::regex` (ECMAScript grammar), so its syntax characters get a backslash.
/// (The `regex` crate's `escape` also escapes `#`, `&`, `-`, `~`, which are not ECMAScript
/// escapes.)
fn ecmascript_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len() * 2);
    for c in text.chars() {
        if "^$\\.*+?()[]{}|".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_schema_becomes_gbnf_with_a_root_rule() {
        let schema = serde_json::json!({
            "type": "object",
            "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
            "required": ["name", "age"],
            "additionalProperties": false
        });
        let grammar = json_schema_grammar(&schema.to_string()).unwrap();
        assert!(grammar.contains("root ::="), "{grammar}");
        assert!(grammar.contains("name"), "{grammar}");
    }

    #[test]
    fn a_schema_llama_cpp_cannot_convert_is_refused_naming_response_format() {
        let schema = serde_json::json!({"$ref": "#/definitions/missing"});
        let e = json_schema_grammar(&schema.to_string()).unwrap_err();
        assert!(e.message.contains("response_format"), "{}", e.message);
    }

    #[test]
    fn the_triggered_grammar_starts_with_the_trigger_text() {
        let g = triggered_grammar("root ::= \"{}\"", "root", "</think>");
        assert!(
            g.ends_with("r1-constrained ::= \"</think>\" [ \\t\\n]{0,16} root\n"),
            "{g}"
        );
        assert_eq!(ecmascript_escape("</think>"), "</think>");
        let w = wrapped_grammar("root ::= \"{}\"", "<tool_call>\n", "\n</tool_call>");
        assert!(
            w.ends_with("r1-wrapped ::= \"<tool_call>\\n\" root \"\\n</tool_call>\"\n"),
            "{w}"
        );
        assert_eq!(ecmascript_escape("a.b(c)"), "a\\.b\\(c\\)");
    }
}
