//! Compiles `r1_plugin.h` with the system C compiler and checks that sizes, field offsets and
//! constants match the Rust definitions. Fails when the header and `lib.rs` drift apart.

use std::path::PathBuf;
use std::process::Command;

use r1_plugin_abi::{api_field_offsets, constants, R1OwnedStr, R1PluginApi, R1Str};

fn c_program() -> String {
    let mut body = String::new();
    body.push_str("#include <stdio.h>\n#include \"r1_plugin.h\"\nint main(void) {\n");
    body.push_str("printf(\"sizeof R1PluginApi %zu\\n\", sizeof(R1PluginApi));\n");
    body.push_str("printf(\"sizeof R1Str %zu\\n\", sizeof(R1Str));\n");
    body.push_str("printf(\"sizeof R1OwnedStr %zu\\n\", sizeof(R1OwnedStr));\n");
    for (field, _) in api_field_offsets() {
        body.push_str(&format!(
            "printf(\"offset {field} %zu\\n\", offsetof(R1PluginApi, {field}));\n"
        ));
    }
    for (name, _) in constants() {
        body.push_str(&format!(
            "printf(\"const {name} %lld\\n\", (long long)({name}));\n"
        ));
    }
    // The entry point's type must match too: this line fails to compile if it does not.
    body.push_str("R1PluginEntryFn entry = r1_plugin_entry; (void)entry;\nreturn 0; }\n");
    body.push_str("const R1PluginApi *r1_plugin_entry(uint32_t v) { (void)v; return 0; }\n");
    body
}

fn rust_lines() -> Vec<String> {
    let mut lines = vec![
        format!("sizeof R1PluginApi {}", std::mem::size_of::<R1PluginApi>()),
        format!("sizeof R1Str {}", std::mem::size_of::<R1Str>()),
        format!("sizeof R1OwnedStr {}", std::mem::size_of::<R1OwnedStr>()),
    ];
    lines.extend(
        api_field_offsets()
            .into_iter()
            .map(|(f, o)| format!("offset {f} {o}")),
    );
    lines.extend(
        constants()
            .into_iter()
            .map(|(n, v)| format!("const {n} {v}")),
    );
    lines
}

#[test]
fn header_matches_rust_definitions() {
    let dir = tempfile_dir();
    let src = dir.join("check.c");
    let exe = dir.join("check");
    std::fs::write(&src, c_program()).unwrap();
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    let header_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let out = Command::new(&cc)
        .args(["-std=c11", "-Wall", "-Werror", "-I"])
        .arg(&header_dir)
        .arg(&src)
        .arg("-o")
        .arg(&exe)
        .output()
        .unwrap_or_else(|e| panic!("failed to run the C compiler {cc}: {e}"));
    assert!(
        out.status.success(),
        "r1_plugin.h does not compile:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let run = Command::new(&exe).output().unwrap();
    assert!(run.status.success());
    let c_lines: Vec<String> = String::from_utf8(run.stdout)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect();
    assert_eq!(
        c_lines,
        rust_lines(),
        "r1_plugin.h and plugins/abi/src/lib.rs disagree"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn header_declares_every_api_field_in_order() {
    // Offsets catch reordering of differently sized fields; the names in declaration order catch
    // a swap of two function pointers, which offsets alone cannot.
    let header =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/r1_plugin.h")).unwrap();
    let start = header.find("typedef struct R1PluginApi {").unwrap();
    let end = start + header[start..].find("} R1PluginApi;").unwrap();
    let block = &header[start..end];
    let mut last = 0;
    for (field, _) in api_field_offsets() {
        let needle_ptr = format!("(*{field})(");
        let needle_val = format!(" {field};");
        let pos = block
            .find(&needle_ptr)
            .or_else(|| block.find(&needle_val))
            .unwrap_or_else(|| panic!("field {field} missing from R1PluginApi in r1_plugin.h"));
        assert!(pos > last, "field {field} is out of order in r1_plugin.h");
        last = pos;
    }
}

fn tempfile_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("r1-abi-check-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
