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
    if let Ok(value) = serde_json::from_str::<serde_json::Value>(schema) {
        check_bounds(&value)?;
    }
    let grammar = llama_cpp_2::json_schema_to_grammar(schema).map_err(|e| {
        PluginError::invalid_argument(format!(
            "response_format (Ollama: format): llama.cpp cannot turn this JSON schema into a \
             grammar ({e}); use the JSON Schema subset llama.cpp supports"
        ))
    })?;
    check_repetitions(&grammar)?;
    Ok(grammar)
}

/// Refuses a schema (or any schema inside it) whose lower bound exceeds its upper bound:
/// `minLength`/`maxLength`, `minItems`/`maxItems`, `minProperties`/`maxProperties`,
/// `minimum`/`maximum`. No answer can meet such a schema, and llama.cpp's converter either
/// builds a grammar that cannot end or quietly drops a bound.
///
/// # Errors
/// `R1_ERR_INVALID_ARGUMENT` naming `response_format` and the two keywords.
fn check_bounds(schema: &serde_json::Value) -> Result<(), PluginError> {
    match schema {
        serde_json::Value::Object(map) => {
            for (low, high) in [
                ("minLength", "maxLength"),
                ("minItems", "maxItems"),
                ("minProperties", "maxProperties"),
                ("minimum", "maximum"),
            ] {
                let number = |k: &str| map.get(k).and_then(serde_json::Value::as_f64);
                if let (Some(a), Some(b)) = (number(low), number(high)) {
                    if a > b {
                        return Err(PluginError::invalid_argument(format!(
                            "response_format (Ollama: format): the JSON schema has {low} {a} \
                             above {high} {b}; no answer can meet it"
                        )));
                    }
                }
            }
            map.values().try_for_each(check_bounds)
        }
        serde_json::Value::Array(items) => items.iter().try_for_each(check_bounds),
        _ => Ok(()),
    }
}

/// The largest repetition bound a grammar may hold (`x{m,n}`: m, n ≤ this). llama.cpp's grammar
/// parser expands a bounded repetition into about n rules, so `maxLength: 1000000` would build a
/// million rules before the first token.
pub const MAX_REPETITION: u64 = 10_000;

/// Refuses a grammar whose repetitions (`{m}`, `{m,}`, `{m,n}`) cannot be met (m > n, from a
/// schema with `minLength` > `maxLength`, `minItems` > `maxItems`, …) or exceed
/// [`MAX_REPETITION`]. Such a grammar made llama.cpp's grammar parser allocate without bound —
/// gigabytes a second, before any token — so it must never reach it. Quoted literals and
/// character classes are skipped.
///
/// # Errors
/// `R1_ERR_INVALID_ARGUMENT` naming `response_format` and the bounds.
pub fn check_repetitions(grammar: &str) -> Result<(), PluginError> {
    let bytes = grammar.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            quote @ (b'"' | b'[') => {
                let close = if quote == b'"' { b'"' } else { b']' };
                i += 1;
                while i < bytes.len() && bytes[i] != close {
                    i += if bytes[i] == b'\\' { 2 } else { 1 };
                }
            }
            b'{' => {
                let end = grammar[i..].find('}').map(|e| i + e);
                if let Some(end) = end {
                    let inner = &grammar[i + 1..end];
                    let mut parts = inner.splitn(2, ',');
                    let number =
                        |s: Option<&str>| s.map(str::trim).and_then(|s| s.parse::<u64>().ok());
                    let min = number(parts.next());
                    let max = number(parts.next());
                    let bad = |what: String| {
                        Err(PluginError::invalid_argument(format!(
                            "response_format (Ollama: format): the JSON schema asks for {what}; \
                             no answer can meet it"
                        )))
                    };
                    if let (Some(min), Some(max)) = (min, max) {
                        if min > max {
                            return bad(format!(
                                "at least {min} and at most {max} of something (a minimum above \
                                 its maximum, e.g. minLength > maxLength or minItems > maxItems)"
                            ));
                        }
                    }
                    if let Some(n) = min.into_iter().chain(max).find(|n| *n > MAX_REPETITION) {
                        return Err(PluginError::invalid_argument(format!(
                            "response_format (Ollama: format): the JSON schema asks for a \
                             repetition of {n}; r1d's limit is {MAX_REPETITION} (a length or item \
                             count bound that large cannot be compiled into a grammar)"
                        )));
                    }
                    i = end;
                }
            }
            _ => {}
        }
        i += 1;
    }
    Ok(())
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
    fn schemas_no_answer_can_meet_are_refused_before_llama_cpp_parses_them() {
        for schema in [
            r#"{"type":"string","minLength":5,"maxLength":2}"#,
            r#"{"type":"array","items":{"type":"integer"},"minItems":3,"maxItems":1}"#,
            r#"{"type":"string","maxLength":1000000}"#,
        ] {
            let err = json_schema_grammar(schema).unwrap_err();
            assert_eq!(
                err.status,
                r1_plugin_sdk::abi::R1_ERR_INVALID_ARGUMENT,
                "{schema}"
            );
            assert!(err.message.contains("response_format"), "{}", err.message);
        }
        let fine = json_schema_grammar(r#"{"type":"string","minLength":2,"maxLength":5}"#);
        assert!(fine.is_ok(), "{fine:?}");
        // Braces inside literals and classes are not repetitions.
        assert!(check_repetitions(r#"root ::= "{5,2}" [{}] x{1,3}"#).is_ok());
        assert!(check_repetitions("root ::= x{3,1}").is_err());
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
