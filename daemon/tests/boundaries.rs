//! The module boundaries `docs/architecture.md` promises, checked on the source tree:
//!
//! - only `backend` and `engine` name the plugin ABI crate (`r1_plugin_abi`): the engine hands
//!   the rest of the daemon its own types;
//! - only `api/` names the client crate's wire types (`r1d_client::wire`, `r1d_client::ollama`):
//!   the core (control, supervisor, store, planner, engine, `main.rs`) knows no wire shape.
//!
//! A plain text scan of every `.rs` file under `daemon/src`, comments excluded. It is strict on
//! purpose: a use through a re-export under another name is not caught, but a direct path or a
//! grouped `use` is.

use std::path::{Path, PathBuf};

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("daemon/src is readable") {
        let path = entry.expect("directory entry").path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The file's code with `//` comments (and doc comments) removed.
fn code(text: &str) -> String {
    text.lines()
        .map(|line| match line.find("//") {
            // A `//` inside a string literal ("http://…") is rare in these paths; cutting it
            // only loses code after it, which can hide a use but never invent one.
            Some(i) => &line[..i],
            None => line,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Whether `code` names the plugin ABI crate.
fn names_abi(code: &str) -> bool {
    code.contains("r1_plugin_abi")
}

/// Whether `code` names the wire types: `r1d_client::wire`, `r1d_client::ollama`, or either
/// inside a grouped `use r1d_client::{…}`.
fn names_wire(code: &str) -> bool {
    if code.contains("r1d_client::wire") || code.contains("r1d_client::ollama") {
        return true;
    }
    let mut rest = code;
    while let Some(i) = rest.find("r1d_client::{") {
        let group = &rest[i + "r1d_client::{".len()..];
        let end = group.find('}').unwrap_or(group.len());
        let inner = &group[..end];
        if inner
            .split(|c: char| !(c.is_alphanumeric() || c == '_'))
            .any(|w| w == "wire" || w == "ollama")
        {
            return true;
        }
        rest = &group[end..];
    }
    false
}

fn relative(path: &Path, root: &Path) -> String {
    path.strip_prefix(root)
        .unwrap_or(path)
        .to_string_lossy()
        .replace('\\', "/")
}

fn violations(root: &Path, breaks: impl Fn(&str, &str) -> bool) -> Vec<String> {
    let mut files = Vec::new();
    sources(root, &mut files);
    files.sort();
    files
        .iter()
        .filter_map(|path| {
            let rel = relative(path, root);
            let text = std::fs::read_to_string(path).expect("source is UTF-8");
            breaks(&rel, &code(&text)).then_some(rel)
        })
        .collect()
}

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

#[test]
fn only_backend_and_engine_name_the_plugin_abi() {
    let found = violations(&src(), |rel, code| {
        let allowed = rel == "backend.rs"
            || rel.starts_with("backend/")
            || rel == "engine.rs"
            || rel.starts_with("engine/");
        !allowed && names_abi(code)
    });
    assert!(
        found.is_empty(),
        "these modules name r1_plugin_abi; convert to the engine's own types instead: {found:?}"
    );
}

#[test]
fn only_api_names_the_wire_types() {
    let found = violations(&src(), |rel, code| {
        !rel.starts_with("api/") && names_wire(code)
    });
    assert!(
        found.is_empty(),
        "these modules outside api/ name r1d_client's wire types; convert in api/ instead: {found:?}"
    );
}

#[test]
fn the_detectors_catch_what_they_are_for() {
    assert!(names_wire("use r1d_client::wire::Event;"));
    assert!(names_wire("let s: r1d_client::ollama::Tags = x;"));
    assert!(names_wire("use r1d_client::{euid, wire};"));
    assert!(names_wire(
        "use r1d_client::{\n    ollama::Tags,\n    euid,\n};"
    ));
    assert!(!names_wire("use r1d_client::{euid, user_socket_path};"));
    assert!(!names_wire("let wire = r1d_client::euid();"));
    assert!(names_abi("use r1_plugin_abi::json::ModelInfo;"));
    assert!(!names_abi(&code(
        "// r1_plugin_abi is named only in a comment"
    )));
}
