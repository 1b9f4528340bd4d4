//! The GGUF header reader on arbitrary bytes: an error or a header, never a panic, a hang or a
//! huge allocation; what r1d derives from a header (completeness, sizes, names) never panics.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let result = gguf_header::read_bytes(data, "fuzz.gguf");
    let check = gguf_header::HeaderCheck::of(&result);
    let _ = check.explanation();
    let Ok(header) = result else { return };
    assert_eq!(header.file_bytes, data.len() as u64);
    assert!(
        header.data_offset >= 24,
        "the data starts after the fixed header"
    );
    assert_eq!(header.data_offset % header.alignment, 0);
    let _ = header.architecture();
    let _ = header.arch_uint("context_length");
    let _ = header.file_type_name();
    let _ = header.parameter_count();
    let _ = header.expected_file_bytes();
    for t in &header.tensors {
        let _ = t.bytes();
    }
});
