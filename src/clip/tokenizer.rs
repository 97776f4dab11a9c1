//! The CLIP byte-pair-encoding tokenizer ([`Tokenizer`]) on Hugging Face's `tokenizers`: OpenAI's vocabulary
//! embedded in the crate, or any Hugging Face `tokenizer.json`.
use std::path::Path;
use std::sync::{Arc, OnceLock};

use candle_core::{Device, Tensor};
use regex::Regex;
use tokenizers::decoders::byte_level::ByteLevel;
use tokenizers::models::bpe::{Merges, Vocab, BPE};
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::SplitDelimiterBehavior;

use super::clean::TextCleaner;
use crate::{Error, Result};

/// Id of `<|startoftext|>` in the embedded vocabulary.
const SOT: u32 = 49406;
/// Id of `<|endoftext|>` in the embedded vocabulary.
const EOT: u32 = 49407;
/// Number of tokens of a tokenized text (start and end markers and zero padding included).
const CONTEXT_LENGTH: usize = crate::config::CONTEXT_LENGTH;
const SOT_TOKEN: &str = "<|startoftext|>";
const EOT_TOKEN: &str = "<|endoftext|>";

/// The vocabulary file of `openai-clip`, decompressed by `build.rs`.
const VOCAB_FILE: &str = include_str!(concat!(env!("OUT_DIR"), "/bpe_simple_vocab_16e6.txt"));
/// Merges used by CLIP: lines `1..=48894` of the vocabulary file (`49152 - 256 - 2`).
const NUM_MERGES: usize = 49152 - 256 - 2;
/// The pre-tokenizer of `SimpleTokenizer` (`regex` with `re.IGNORECASE` there).
const PIECE_PATTERN: &str =
    r"(?i)<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+";
/// What errors and `Debug` call the embedded tokenizer.
const EMBEDDED_NAME: &str = "embedded OpenAI CLIP vocabulary";

/// The CLIP BPE tokenizer: OpenAI's vocabulary embedded in the crate ([`Tokenizer::new`]), or a Hugging
/// Face `tokenizer.json` ([`Tokenizer::from_file`]), both run by Hugging Face's `tokenizers`.
///
/// [`Tokenizer::new`] is cheap: the embedded vocabulary is parsed once per process and shared. Clones
/// share the vocabulary or the loaded file. It is `Send + Sync` and can be used from many threads at once.
///
/// [`Tokenizer::new`] produces the same ids as `clip.tokenize` of the PyPI package `openai-clip` (its
/// `SimpleTokenizer`): the vocabulary file `bpe_simple_vocab_16e6.txt.gz` from that package (MIT
/// licence) is decompressed at build time and compiled into the library, so it cannot fail and needs
/// no file and no network.
///
/// # The pipeline of [`Tokenizer::new`]
/// 1. OpenAI's text cleaning, in this crate (`tokenizers` has no ftfy and no `html.unescape`, and
///    lowercases one character at a time): the parts of `ftfy.fix_text` that act on well-formed text
///    (HTML entities, Windows-1252 C1 controls, ligatures, character widths, curly quotes, line breaks,
///    terminal escapes, control characters, NFC), `html.unescape` twice, lowercase with Python's rules
///    (a final `Σ` becomes `ς`). ftfy's mojibake repair is left out; for text that is not mojibake it
///    does nothing. OpenAI's whitespace collapsing is left out too: whitespace never enters a piece, so
///    it changes no id.
/// 2. A literal `<|startoftext|>` or `<|endoftext|>` that the CLIP pattern (below) matches as a whole
///    piece becomes its marker id, as `SimpleTokenizer`'s cache makes it; the text on either side goes
///    through the next steps on its own. Anywhere else (`!<|endoftext|>`, where the punctuation run
///    takes the `<|`) the literal is ordinary text.
/// 3. A `tokenizers` pipeline built from the embedded vocabulary: the pre-tokenizer `Split` with the
///    CLIP pattern
///    `(?i)<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+`
///    (the matches are the pieces, the rest is dropped; case-insensitive as `SimpleTokenizer`'s
///    `re.IGNORECASE`, so `'ſ` is one piece), then `ByteLevel` (each byte to one of GPT-2's 256 byte
///    symbols, no prefix space, no second split); the model `BPE` with the 48,894 merges, the
///    end-of-word suffix `</w>` and `<|endoftext|>` as the unknown token (never used: every byte has a
///    symbol).
/// 4. [`Tokenizer::tokenize`] wraps the ids in `<|startoftext|>` ([`Tokenizer::SOT`]) and `<|endoftext|>`
///    ([`Tokenizer::EOT`]) and zero-pads them to [`Tokenizer::CONTEXT_LENGTH`] (77); a longer text is an
///    error, or is cut as `clip.tokenize(truncate=True)` cuts it.
///
/// # Example
/// ```
/// use actionclip::Tokenizer;
///
/// let tok = Tokenizer::new();
/// assert_eq!(tok.encode("a photo of a cat")?, vec![320, 1125, 539, 320, 2368]);
/// let ids = tok.tokenize("a photo of a cat", false)?;
/// assert_eq!(ids.len(), 77);
/// assert_eq!(&ids[..7], &[Tokenizer::SOT, 320, 1125, 539, 320, 2368, Tokenizer::EOT]);
/// assert_eq!(tok.decode(&ids)?, "a photo of a cat ");
/// # Ok::<(), actionclip::Error>(())
/// ```
#[derive(Clone)]
pub struct Tokenizer {
    inner: Arc<Inner>,
}

/// What a [`Tokenizer`] and its clones share.
struct Inner {
    hf: tokenizers::Tokenizer,
    /// The start and end markers of [`Tokenizer::tokenize`].
    sot: u32,
    eot: u32,
    /// OpenAI's steps around the `tokenizers` pipeline (the embedded vocabulary only).
    openai: Option<OpenAiSteps>,
    /// The file the tokenizer was loaded from, or [`EMBEDDED_NAME`].
    name: String,
}

/// Steps 1 and 2 of the pipeline of [`Tokenizer::new`].
struct OpenAiSteps {
    cleaner: TextCleaner,
    /// The CLIP pattern, to find the literal markers that are whole pieces.
    pieces: Regex,
}

static EMBEDDED: OnceLock<Arc<Inner>> = OnceLock::new();

impl Tokenizer {
    /// Id of `<|startoftext|>` in the embedded vocabulary, the first token of every tokenized text
    /// ([`Tokenizer::sot`] gives a loaded file's).
    pub const SOT: u32 = SOT;
    /// Id of `<|endoftext|>` in the embedded vocabulary, the token after the last word; the text tower
    /// pools its features here ([`Tokenizer::eot`] gives a loaded file's).
    pub const EOT: u32 = EOT;
    /// Tokens per tokenized text (start and end markers and zero padding included).
    pub const CONTEXT_LENGTH: usize = CONTEXT_LENGTH;

    /// The tokenizer with the embedded OpenAI CLIP vocabulary. The first call in a process parses
    /// the vocabulary (some tens of milliseconds); later calls are free.
    pub fn new() -> Tokenizer {
        Tokenizer { inner: Arc::clone(EMBEDDED.get_or_init(|| Arc::new(Inner::embedded()))) }
    }

    /// Loads a Hugging Face `tokenizer.json` (for example the one of `openai/clip-vit-base-patch32`).
    ///
    /// The file's own pipeline runs as it is, so the ids are those Hugging Face's `tokenizers` gives
    /// for that file; OpenAI's text cleaning is not added (Hugging Face's CLIP tokenizer has no ftfy and
    /// no `html.unescape`, so it differs from `clip.tokenize` on texts with HTML entities, curly quotes,
    /// ligatures, full-width forms or control characters, on a final `Σ`, on `'ſ`, and on literal
    /// markers that are not written in lower case or are glued to punctuation).
    ///
    /// [`Tokenizer::tokenize`] uses the same conventions as for the embedded vocabulary: the
    /// start and end markers are the two ids the file's post-processor puts around a text (CLIP's
    /// `<|startoftext|>` and `<|endoftext|>`), or, if it adds no such pair, the ids of the tokens
    /// `<|startoftext|>` and `<|endoftext|>`; [`Tokenizer::CONTEXT_LENGTH`] (77) ids, zero padding,
    /// truncation as `clip.tokenize(truncate=True)`. Truncation and padding settings in the file are
    /// ignored. The text tower pools each row at its largest id, so the end marker must be the largest
    /// id of the vocabulary, as CLIP's `<|endoftext|>` is.
    ///
    /// A file that cannot be read is an [`Error::Io`]; one that is not a `tokenizer.json`, or has no
    /// start and end markers, an [`Error::Tokenizer`] naming it.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Tokenizer> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        let name = path.display().to_string();
        let error = |reason: String| Error::Tokenizer { name: name.clone(), reason };
        let mut hf = tokenizers::Tokenizer::from_bytes(&bytes)
            .map_err(|e| error(format!("not a Hugging Face tokenizer.json: {e}")))?;
        hf.with_truncation(None).map_err(|e| error(format!("cannot turn its truncation off: {e}")))?;
        hf.with_padding(None);
        let (sot, eot) = file_markers(&hf).ok_or_else(|| {
            error(format!(
                "no start and end markers: its post-processor does not put one id on each side of a text, \
                 and it has no {SOT_TOKEN} and {EOT_TOKEN} tokens"
            ))
        })?;
        Ok(Tokenizer { inner: Arc::new(Inner { hf, sot, eot, openai: None, name }) })
    }

    /// Number of ids of the vocabulary, added tokens included (49,408 for CLIP).
    pub fn vocab_size(&self) -> usize {
        self.inner.hf.get_vocab_size(true)
    }

    /// Id of the start marker, the first token of every tokenized text ([`Tokenizer::SOT`] for the
    /// embedded vocabulary).
    pub fn sot(&self) -> u32 {
        self.inner.sot
    }

    /// Id of the end marker, the token after the last word ([`Tokenizer::EOT`] for the embedded
    /// vocabulary).
    pub fn eot(&self) -> u32 {
        self.inner.eot
    }

    /// The BPE ids of `text`, without the start and end markers and without any length limit. For the
    /// embedded vocabulary, a literal `<|startoftext|>` or `<|endoftext|>` that is a whole piece of the
    /// text becomes the marker id, as in `openai-clip`.
    ///
    /// Fails only for a loaded file whose pipeline rejects the text ([`Error::Tokenizer`]).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let mut ids = Vec::new();
        self.inner.encode_into(text, &mut ids)?;
        Ok(ids)
    }

    /// `[sot] + encode(text) + [eot]`, zero-padded to [`Tokenizer::CONTEXT_LENGTH`] ids, like
    /// `clip.tokenize(text, truncate=truncate)`.
    ///
    /// A text that needs more than 77 ids is an [`Error::TextTooLong`] unless `truncate` is set; then
    /// the first 77 ids are kept and the last one is replaced by the end marker.
    pub fn tokenize(&self, text: &str, truncate: bool) -> Result<Vec<u32>> {
        let (sot, eot) = (self.inner.sot, self.inner.eot);
        let mut ids = Vec::with_capacity(CONTEXT_LENGTH + 1);
        ids.push(sot);
        self.inner.encode_into(text, &mut ids)?;
        ids.push(eot);
        if ids.len() > CONTEXT_LENGTH {
            if !truncate {
                return Err(Error::text_too_long(text, ids.len(), CONTEXT_LENGTH));
            }
            ids.truncate(CONTEXT_LENGTH);
            if let Some(last) = ids.last_mut() {
                *last = eot;
            }
        }
        ids.resize(CONTEXT_LENGTH, 0);
        Ok(ids)
    }

    /// Tokenizes a batch of texts into a `[N, 77]` `u32` tensor on `device` (the input of the text
    /// tower). Fails with [`Error::TextTooLong`] on the first text that does not fit; see
    /// [`Tokenizer::encode_batch_truncated`] to cut long texts instead.
    pub fn encode_batch<S: AsRef<str>>(&self, texts: &[S], device: &Device) -> Result<Tensor> {
        self.batch(texts, device, false)
    }

    /// Like [`Tokenizer::encode_batch`], but texts that are too long are truncated as
    /// `clip.tokenize(texts, truncate=True)` does.
    pub fn encode_batch_truncated<S: AsRef<str>>(&self, texts: &[S], device: &Device) -> Result<Tensor> {
        self.batch(texts, device, true)
    }

    /// Text of a sequence of ids, like `SimpleTokenizer.decode`: the tokens go through the decoder
    /// (for CLIP, byte-level: the symbols are mapped back to bytes and read as UTF-8, invalid sequences
    /// becoming U+FFFD), and every `</w>` becomes a space (so the text ends with a space). Unlike
    /// `SimpleTokenizer.decode`, the start and end markers, the file's other special tokens, the
    /// trailing zero padding and ids outside the vocabulary are skipped.
    ///
    /// Fails only for a loaded file whose decoder rejects the tokens ([`Error::Tokenizer`]).
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        let inner = &self.inner;
        // Id 0 (`!` inside a word in CLIP's vocabulary) never ends a word, so trailing zeros are padding.
        let end = ids.iter().rposition(|&id| id != 0).map_or(0, |p| p + 1);
        let kept: Vec<u32> = ids[..end].iter().copied().filter(|&id| id != inner.sot && id != inner.eot).collect();
        let text = inner.hf.decode(&kept, true).map_err(|e| inner.error(format!("cannot decode {kept:?}: {e}")))?;
        Ok(text.replace("</w>", " "))
    }

    fn batch<S: AsRef<str>>(&self, texts: &[S], device: &Device, truncate: bool) -> Result<Tensor> {
        let mut all = Vec::with_capacity(texts.len() * CONTEXT_LENGTH);
        for text in texts {
            all.extend(self.tokenize(text.as_ref(), truncate)?);
        }
        Ok(Tensor::from_vec(all, (texts.len(), CONTEXT_LENGTH), device)?)
    }
}

impl Default for Tokenizer {
    fn default() -> Self {
        Tokenizer::new()
    }
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("source", &self.inner.name)
            .field("vocab_size", &self.vocab_size())
            .field("sot", &self.inner.sot)
            .field("eot", &self.inner.eot)
            .finish()
    }
}

impl Inner {
    /// The `tokenizers` pipeline of the embedded vocabulary (step 3 of the pipeline) and OpenAI's steps
    /// around it.
    fn embedded() -> Inner {
        let (vocab, merges) = openai_vocabulary();
        // The vocabulary, the merges and the pattern are constants of the crate, checked by the tests.
        let bpe = BPE::builder()
            .vocab_and_merges(vocab, merges)
            .end_of_word_suffix("</w>".to_string())
            .unk_token(EOT_TOKEN.to_string())
            .build()
            .unwrap_or_else(|e| panic!("the embedded CLIP vocabulary does not make a BPE model: {e}"));
        let split = Split::new(SplitPattern::Regex(PIECE_PATTERN.to_string()), SplitDelimiterBehavior::Removed, true)
            .unwrap_or_else(|e| panic!("invalid built-in pattern {PIECE_PATTERN}: {e}"));
        let byte_level = ByteLevel::new(false, false, false);
        let mut hf = tokenizers::Tokenizer::new(bpe);
        hf.with_pre_tokenizer(Some(Sequence::new(vec![split.into(), byte_level.into()])));
        hf.with_decoder(Some(byte_level));
        let pieces =
            Regex::new(PIECE_PATTERN).unwrap_or_else(|e| panic!("invalid built-in pattern {PIECE_PATTERN}: {e}"));
        Inner {
            hf,
            sot: SOT,
            eot: EOT,
            openai: Some(OpenAiSteps { cleaner: TextCleaner::new(), pieces }),
            name: EMBEDDED_NAME.to_string(),
        }
    }

    fn encode_into(&self, text: &str, ids: &mut Vec<u32>) -> Result<()> {
        let Some(openai) = &self.openai else { return self.encode_pipeline(text, ids) };
        let text = openai.cleaner.clean(text);
        if !text.contains(SOT_TOKEN) && !text.contains(EOT_TOKEN) {
            return self.encode_pipeline(&text, ids);
        }
        // Pieces never cross a marker piece, so the text between two of them encodes on its own.
        let mut start = 0;
        for piece in openai.pieces.find_iter(&text) {
            let marker = match piece.as_str() {
                SOT_TOKEN => self.sot,
                EOT_TOKEN => self.eot,
                _ => continue,
            };
            self.encode_pipeline(&text[start..piece.start()], ids)?;
            ids.push(marker);
            start = piece.end();
        }
        self.encode_pipeline(&text[start..], ids)
    }

    /// The `tokenizers` pipeline on `text`, without the post-processor.
    fn encode_pipeline(&self, text: &str, ids: &mut Vec<u32>) -> Result<()> {
        let encoding =
            self.hf.encode_fast(text, false).map_err(|e| self.error(format!("cannot encode {text:?}: {e}")))?;
        ids.extend_from_slice(encoding.get_ids());
        Ok(())
    }

    fn error(&self, reason: String) -> Error {
        Error::Tokenizer { name: self.name.clone(), reason }
    }
}

/// The start and end markers of a loaded file: what its post-processor puts around an empty text, else
/// the ids of `<|startoftext|>` and `<|endoftext|>`.
fn file_markers(hf: &tokenizers::Tokenizer) -> Option<(u32, u32)> {
    if let Ok(encoding) = hf.encode_fast("", true) {
        if let &[sot, eot] = encoding.get_ids() {
            return Some((sot, eot));
        }
    }
    Some((hf.token_to_id(SOT_TOKEN)?, hf.token_to_id(EOT_TOKEN)?))
}

/// `SimpleTokenizer`'s vocabulary and merges: the 256 byte symbols in `bytes_to_unicode` order, the same
/// with `</w>`, the concatenation of every merge, `<|startoftext|>`, `<|endoftext|>`.
fn openai_vocabulary() -> (Vocab, Merges) {
    let byte_symbols = bytes_to_unicode();
    // `bytes_to_unicode().values()` in insertion order: the printable bytes, then the others.
    let byte_order: Vec<u8> =
        (0..=255u8).filter(|&b| is_printable_byte(b)).chain((0..=255u8).filter(|&b| !is_printable_byte(b))).collect();
    let mut vocab: Vec<String> = byte_order.iter().map(|&b| byte_symbols[b as usize].to_string()).collect();
    vocab.extend(byte_order.iter().map(|&b| format!("{}</w>", byte_symbols[b as usize])));
    let mut merges = Vec::with_capacity(NUM_MERGES);
    for line in VOCAB_FILE.split('\n').skip(1).take(NUM_MERGES) {
        let parts: Vec<&str> = line.split_whitespace().collect();
        vocab.push(parts.concat());
        if let [a, b] = parts.as_slice() {
            merges.push((a.to_string(), b.to_string()));
        }
    }
    vocab.push(SOT_TOKEN.to_string());
    vocab.push(EOT_TOKEN.to_string());
    // Python's `dict(zip(vocab, range(len(vocab))))`: a repeated string keeps its last id.
    let ids = vocab.into_iter().enumerate().map(|(id, symbol)| (symbol, id as u32)).collect();
    (ids, merges)
}

/// Bytes that GPT-2's `bytes_to_unicode` maps to themselves.
fn is_printable_byte(b: u8) -> bool {
    matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF)
}

/// GPT-2's `bytes_to_unicode`: printable bytes map to the same code point, the other 68 bytes to
/// U+0100.. in byte order.
fn bytes_to_unicode() -> [char; 256] {
    let mut table = ['\0'; 256];
    let mut next = 0x100u32;
    for b in 0..=255u8 {
        table[b as usize] = if is_printable_byte(b) {
            char::from(b)
        } else {
            next += 1;
            char::from_u32(next - 1).unwrap_or(char::REPLACEMENT_CHARACTER)
        };
    }
    table
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_vocabulary_parses() {
        let (vocab, merges) = openai_vocabulary();
        assert_eq!(vocab.len(), crate::config::VOCAB_SIZE, "every vocabulary string is distinct");
        assert_eq!(merges.len(), NUM_MERGES, "every merge line has two parts");
        let tok = Tokenizer::new();
        assert_eq!(tok.vocab_size(), crate::config::VOCAB_SIZE);
        assert_eq!((Tokenizer::SOT, Tokenizer::EOT, Tokenizer::CONTEXT_LENGTH), (SOT, EOT, CONTEXT_LENGTH));
        assert_eq!((tok.sot(), tok.eot()), (SOT, EOT));
        let hf = &tok.inner.hf;
        assert_eq!(hf.token_to_id(SOT_TOKEN), Some(SOT));
        assert_eq!(hf.token_to_id(EOT_TOKEN), Some(EOT));
        // Byte symbols come in `bytes_to_unicode` order: `!` is 0, `a</w>` is 256 + 64.
        assert_eq!(hf.token_to_id("!"), Some(0));
        assert_eq!(hf.token_to_id("a</w>"), Some(256 + 64));
        assert_eq!(hf.token_to_id("Ā"), Some(188), "byte 0 is the first of the 68 remapped bytes");
    }

    #[test]
    fn built_in_pattern_finds_the_clip_pieces() {
        let openai = Tokenizer::new().inner.openai.as_ref().map(|o| o.pieces.clone());
        let pieces = openai.expect("the embedded tokenizer has OpenAI's steps");
        let found: Vec<&str> = pieces.find_iter("it's <|endoftext|> a1b!? 'ſ").map(|m| m.as_str()).collect();
        assert_eq!(found, ["it", "'s", "<|endoftext|>", "a", "1", "b", "!?", "'ſ"]);
    }

    #[test]
    fn markers_are_pieces_only_where_the_pattern_starts_a_piece() {
        let tok = Tokenizer::new();
        let ids = |text: &str| tok.encode(text).expect("embedded");
        assert_eq!(ids("a<|EndOfText|>b"), [320, EOT, 321]);
        assert_eq!(ids("<|endoftext|><|startoftext|>"), [EOT, SOT]);
        // The punctuation run `!<|` swallows the start of the marker.
        assert!(!ids("!<|endoftext|>").contains(&EOT));
    }

    #[test]
    fn tokenizer_is_send_sync_and_cheap_to_clone() {
        fn assert_send_sync<T: Send + Sync + Clone>() {}
        assert_send_sync::<Tokenizer>();
        let a = Tokenizer::new();
        let b = Tokenizer::new();
        assert!(Arc::ptr_eq(&a.inner, &b.inner));
        assert!(Arc::ptr_eq(&a.inner, &a.clone().inner));
        assert_eq!(
            format!("{a:?}"),
            "Tokenizer { source: \"embedded OpenAI CLIP vocabulary\", vocab_size: 49408, sot: 49406, eot: 49407 }"
        );
    }
}
