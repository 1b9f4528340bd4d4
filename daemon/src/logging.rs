//! The log writer: one event, one line, whatever the event carries.
//!
//! Log lines carry strings that users chose — model names, paths and repository names from
//! requests, plugin messages about them. A newline in one would start a forged line (`… INFO
//! serving model x` that r1d never wrote) in the journal or a log file, and a terminal escape
//! could rewrite the screen. [`EscapingStderr`] escapes every control character inside a line
//! (`\n`, `\r`, `\x1b`, …, as Rust's `escape_debug` writes them) and keeps only the line's own
//! final newline. On a terminal with colours, the formatter's own escape sequences (`ESC`) are
//! let through, and all other control characters escaped.
//!
//! Writing never fails loudly: stderr a closed pipe (EPIPE; Rust programs ignore SIGPIPE) or a
//! full disk drops the line and r1d goes on.
//!
//! Under systemd ([`Output::choose`]): when stderr is the journal (`JOURNAL_STREAM`) and
//! journald's native socket answers, events go there through `tracing-journald`, each field a
//! journal field of its own (`MODEL=`, `ROUTE=`, `STATUS=`, `PROMPT_TOKENS=`, …, with
//! `PRIORITY=`, `TARGET=` and `SYSLOG_IDENTIFIER=r1d`), so `journalctl -o json` or
//! `journalctl MODEL=deepseek-r1:7b-q4_k_m` can select them; the native protocol carries a value's
//! newlines inside its field, so no forged entries there either. Without the socket, lines with
//! `<N>` priority prefixes go to stderr, which journald reads; elsewhere, plain text lines.

use std::io::Write;

/// Where log events go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    /// journald's native protocol: structured fields.
    Journal,
    /// Text lines on stderr prefixed with their syslog priority (`<6>`), without timestamps
    /// (journald adds its own): stderr is the journal, but its native socket does not answer.
    JournalStream,
    /// Text lines on stderr with timestamps; `ansi`: with colours (a terminal).
    Text {
        /// Colours (stderr is a terminal).
        ansi: bool,
    },
}

impl Output {
    /// The output for a process whose stderr is the journal or not (`systemd::stderr_is_journal`),
    /// whose journald socket answers or not, and whose stderr is a terminal or not.
    pub fn choose(stderr_is_journal: bool, journald_answers: bool, terminal: bool) -> Output {
        match (stderr_is_journal, journald_answers) {
            (true, true) => Output::Journal,
            (true, false) => Output::JournalStream,
            (false, _) => Output::Text { ansi: terminal },
        }
    }
}

/// The `tracing-journald` layer r1d logs through under systemd: fields under their own names (no
/// `F_` prefix), identifier `r1d`, and the priorities of the `<N>` prefixes
/// (`systemd::SyslogPriority`: info 6, debug and trace 7) rather than the crate's (info 5).
///
/// # Errors
/// The socket error when journald's native socket (`/run/systemd/journal/socket`) does not
/// answer.
pub fn journald_layer() -> std::io::Result<tracing_journald::Layer> {
    use tracing_journald::{Priority, PriorityMappings};
    Ok(tracing_journald::layer()?
        .with_field_prefix(None)
        .with_syslog_identifier("r1d".to_owned())
        .with_priority_mappings(PriorityMappings {
            info: Priority::Informational,
            debug: Priority::Debug,
            ..PriorityMappings::new()
        }))
}

/// A `MakeWriter` for tracing-subscriber that writes escaped lines to stderr.
#[derive(Debug, Clone, Copy)]
pub struct EscapingStderr {
    /// Let `ESC` through (the formatter writes colours).
    pub ansi: bool,
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for EscapingStderr {
    type Writer = LineWriter;

    fn make_writer(&'a self) -> Self::Writer {
        LineWriter { ansi: self.ansi }
    }
}

/// Writes one formatted event (see [`EscapingStderr`]).
#[derive(Debug)]
pub struct LineWriter {
    ansi: bool,
}

impl Write for LineWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let line = escape_line(buf, self.ansi);
        // One write per line, so lines of several threads do not interleave; errors dropped.
        let _ = std::io::stderr().lock().write_all(&line);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        let _ = std::io::stderr().flush();
        Ok(())
    }
}

/// `buf` with every ASCII control character but a final newline (and `ESC` when `ansi`) escaped.
pub fn escape_line(buf: &[u8], ansi: bool) -> Vec<u8> {
    let (body, newline) = match buf.strip_suffix(b"\n") {
        Some(body) => (body, true),
        None => (buf, false),
    };
    let mut out = Vec::with_capacity(buf.len() + 8);
    for &b in body {
        match b {
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\t' => out.push(b'\t'),
            0x1b if ansi => out.push(b),
            0x00..=0x1f | 0x7f => out.extend_from_slice(format!("\\x{b:02x}").as_bytes()),
            _ => out.push(b),
        }
    }
    if newline {
        out.push(b'\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_journal_gets_fields_only_when_stderr_is_the_journal_and_journald_answers() {
        let cases = [
            // (stderr is the journal, journald answers, terminal) → output
            ((true, true, false), Output::Journal),
            ((true, false, false), Output::JournalStream),
            // A journald that answers does not matter when stderr is not the journal (a
            // terminal, a pipe, a file: the user reads text there).
            ((false, true, true), Output::Text { ansi: true }),
            ((false, true, false), Output::Text { ansi: false }),
            ((false, false, false), Output::Text { ansi: false }),
        ];
        for ((journal, answers, terminal), want) in cases {
            assert_eq!(
                Output::choose(journal, answers, terminal),
                want,
                "{journal} {answers} {terminal}"
            );
        }
    }

    #[test]
    fn a_newline_in_a_field_cannot_start_a_forged_line() {
        let line = b"ERROR failed to load model /m/x\nINFO r1d: serving model evil\n";
        assert_eq!(
            escape_line(line, false),
            b"ERROR failed to load model /m/x\\nINFO r1d: serving model evil\n".to_vec()
        );
        assert_eq!(
            escape_line(b"a\r\x1b[2Jb\x7f\n", false),
            b"a\\r\\x1b[2Jb\\x7f\n".to_vec()
        );
        // Colours of the formatter stay on a terminal; tabs and UTF-8 are untouched.
        assert_eq!(
            escape_line(b"\x1b[32mok\x1b[0m\t\xc3\xa9\n", true),
            b"\x1b[32mok\x1b[0m\t\xc3\xa9\n".to_vec()
        );
    }
}
