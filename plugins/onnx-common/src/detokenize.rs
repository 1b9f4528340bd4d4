//! Turning generated ids into text pieces as they come, with the `tokenizers` decoder.
//!
//! A token is not always whole characters (byte-level BPE splits multi-byte characters), and
//! decoders join tokens (SentencePiece's leading "▁"), so pieces are the difference between the
//! decoded text of a short window before and after each token — the incremental scheme of
//! Hugging Face's text-generation-inference. A piece that would end in an incomplete character
//! (U+FFFD) is held back until the following tokens complete it.

use r1_plugin_sdk::PluginError;
use tokenizers::Tokenizer;

/// Incremental decoder state for one generation.
#[derive(Debug, Default)]
pub struct Detokenizer {
    ids: Vec<u32>,
    /// Start of the window decoded for context.
    prefix_offset: usize,
    /// End of what was already emitted.
    read_offset: usize,
}

impl Detokenizer {
    /// A decoder that starts with no context.
    pub fn new() -> Detokenizer {
        Detokenizer::default()
    }

    /// Adds `id` and returns the text it completes (possibly empty). Special tokens (those
    /// flagged `special` in `tokenizer.json`, e.g. `<|im_end|>`) decode to nothing.
    ///
    /// # Errors
    /// [`PluginError::backend`] when the tokenizer cannot decode the id.
    pub fn push(&mut self, tokenizer: &Tokenizer, id: u32) -> Result<String, PluginError> {
        self.ids.push(id);
        let decode = |ids: &[u32]| {
            tokenizer
                .decode(ids, true)
                .map_err(|e| PluginError::backend(format!("failed to decode token {id}: {e}")))
        };
        let prefix = decode(&self.ids[self.prefix_offset..self.read_offset])?;
        let full = decode(&self.ids[self.prefix_offset..])?;
        if full.len() > prefix.len() && !full.ends_with('\u{FFFD}') {
            if let Some(piece) = full.get(prefix.len()..) {
                let piece = piece.to_owned();
                self.prefix_offset = self.read_offset;
                self.read_offset = self.ids.len();
                return Ok(piece);
            }
        }
        Ok(String::new())
    }
}
