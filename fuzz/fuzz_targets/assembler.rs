//! The streamed-text assembler on arbitrary token bytes (characters split across tokens,
//! invalid UTF-8, stop strings, `<think>`/`</think>` split anywhere), checked against what the
//! pieces must be, not only for panics:
//! - no piece is empty, and no piece holds a stop string;
//! - a reasoning piece never holds `</think>`;
//! - raw text (`ReasoningFormat::None`) is exactly the tokens' text decoded as a whole
//!   (lossily), after the `<think>\n` the prompt opened, cut where the first stop string to
//!   complete starts (llama-server's rule: after each token, the earliest stop string found in
//!   the text so far) — however the bytes were split into tokens.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use r1d::chat::{Assembler, Channel, ReasoningFormat};

#[derive(Debug, Arbitrary)]
struct Input {
    opens_reasoning: bool,
    format: u8,
    stops: Vec<String>,
    tokens: Vec<Vec<u8>>,
}

fuzz_target!(|input: Input| {
    let format = match input.format % 3 {
        0 => ReasoningFormat::DeepSeek,
        1 => ReasoningFormat::None,
        _ => ReasoningFormat::Off,
    };
    let stops: Vec<String> = input.stops.into_iter().take(4).collect();
    let mut assembler = Assembler::new(input.opens_reasoning, stops.clone(), format);
    let mut pieces = Vec::new();
    let mut pushed = 0;
    for token in &input.tokens {
        if assembler.stopped() {
            break;
        }
        pieces.extend(assembler.push(token));
        pushed += token.len();
        // Log-probability entries are released by it: never past the bytes pushed.
        assert!(assembler.settled_bytes() <= pushed);
    }
    pieces.extend(assembler.finish());
    if !assembler.stopped() {
        // At the end every token is settled (its entry is sent).
        assert_eq!(assembler.settled_bytes(), pushed);
    }
    for piece in &pieces {
        assert!(!piece.text.is_empty(), "an empty piece");
        for stop in stops.iter().filter(|s| !s.is_empty()) {
            assert!(
                !piece.text.contains(stop.as_str()),
                "piece {:?} holds stop string {stop:?}",
                piece.text
            );
        }
        if piece.channel == Channel::Reasoning {
            assert!(!piece.text.contains("</think>"), "{:?}", piece.text);
        }
    }
    if format == ReasoningFormat::None {
        let opened = if input.opens_reasoning {
            "<think>\n"
        } else {
            ""
        };
        let first_stop = |text: &str| {
            stops
                .iter()
                .filter(|s| !s.is_empty())
                .filter_map(|s| text.find(s.as_str()))
                .min()
        };
        // The text as each token completes it (a character still incomplete is not text yet),
        // then all of it at the end.
        let mut so_far: Vec<u8> = Vec::new();
        let mut expected = None;
        for token in &input.tokens {
            so_far.extend_from_slice(token);
            let complete = so_far.len() - incomplete_tail(&so_far);
            let text = format!("{opened}{}", String::from_utf8_lossy(&so_far[..complete]));
            if let Some(cut) = first_stop(&text) {
                expected = Some(text[..cut].to_owned());
                break;
            }
        }
        let expected = expected.unwrap_or_else(|| {
            // A character the tokens never completed is dropped at the end (llama-server's
            // `validate_utf8`).
            let complete = so_far.len() - incomplete_tail(&so_far);
            let text = format!("{opened}{}", String::from_utf8_lossy(&so_far[..complete]));
            match first_stop(&text) {
                Some(cut) => text[..cut].to_owned(),
                None => text,
            }
        });
        let text: String = pieces.iter().map(|p| p.text.as_str()).collect();
        assert!(
            pieces.iter().all(|p| p.channel == Channel::Content),
            "raw text in the reasoning channel"
        );
        assert_eq!(text, expected);
    }
});

/// Bytes at the end of `bytes` that start a character more bytes could complete.
fn incomplete_tail(bytes: &[u8]) -> usize {
    let mut rest = bytes;
    loop {
        match std::str::from_utf8(rest) {
            Ok(_) => return 0,
            Err(e) => match e.error_len() {
                Some(bad) => rest = &rest[e.valid_up_to() + bad..],
                None => return rest.len() - e.valid_up_to(),
            },
        }
    }
}
