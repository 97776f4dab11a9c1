//! The OpenAI CLIP byte-pair-encoding tokenizer ([`Tokenizer`]), with its vocabulary embedded in the crate.
use std::collections::HashMap;
use std::sync::OnceLock;

use candle_core::{Device, Tensor};
use regex::Regex;
use unicode_normalization::UnicodeNormalization;

use crate::{Error, Result};

/// Id of `<|startoftext|>`, the first token of every tokenized text.
const SOT: u32 = 49406;
/// Id of `<|endoftext|>`, the token after the last word; the text tower pools its features here.
const EOT: u32 = 49407;
/// Number of tokens of a tokenized text (start and end markers and zero padding included).
const CONTEXT_LENGTH: usize = crate::config::CONTEXT_LENGTH;

/// The vocabulary file of `openai-clip`, decompressed by `build.rs`.
const VOCAB_FILE: &str = include_str!(concat!(env!("OUT_DIR"), "/bpe_simple_vocab_16e6.txt"));
/// Merges used by CLIP: lines `1..=48894` of the vocabulary file (`49152 - 256 - 2`).
const NUM_MERGES: usize = 49152 - 256 - 2;
/// The pre-tokenizer of `SimpleTokenizer` (`regex` with `re.IGNORECASE` there).
const PIECE_PATTERN: &str =
    r"(?i)<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+";
/// ftfy fixes one line at a time, and cuts longer lines into segments of this many characters.
const FTFY_MAX_SEGMENT_CHARS: usize = 1_000_000;

/// The CLIP BPE tokenizer.
///
/// Cheap to create and to clone: the vocabulary is parsed once per process and shared. It is
/// `Send + Sync` and can be used from many threads at once.
///
/// It produces the same ids as `clip.tokenize` of the PyPI package `openai-clip` (its
/// `SimpleTokenizer`): the vocabulary file `bpe_simple_vocab_16e6.txt.gz` from that package (MIT
/// licence) is decompressed at build time and compiled into the library, so [`Tokenizer::new`] cannot
/// fail and needs no file and no network.
///
/// # The pipeline
/// 1. Text cleaning, as `openai-clip` does it: `ftfy.fix_text`, `html.unescape` twice, strip, collapse
///    whitespace runs to one space, lowercase.
/// 2. Pre-tokenisation with the CLIP pattern
///    `<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+`
///    (case-insensitive, leftmost-first).
/// 3. Each piece is encoded byte by byte to the 256 byte symbols of GPT-2's `bytes_to_unicode`, the
///    last symbol gets `</w>`, and the merges are applied lowest rank first.
/// 4. [`Tokenizer::tokenize`] wraps the ids in `<|startoftext|>` ([`Tokenizer::SOT`]) and `<|endoftext|>`
///    ([`Tokenizer::EOT`]) and zero-pads them to [`Tokenizer::CONTEXT_LENGTH`] (77).
///
/// # ftfy
/// `ftfy.fix_text` is a large heuristic library; this tokenizer ports the parts of its default
/// configuration that act on well-formed text, in ftfy's order and repeated until nothing changes,
/// like ftfy 6:
/// - HTML entities (`&amp;`, `&eacute;`, `&#x27;`, upper-case `&EACUTE;`; only with a semicolon), skipped
///   from the first line that contains a `<` on, as ftfy's `unescape_html="auto"` does;
/// - C1 control characters (U+0080..U+009F) read as Windows-1252 (`fix_c1_controls`);
/// - Latin ligatures and digraphs (`ﬁ ﬂ ﬀ ﬃ ﬄ ﬅ ﬆ Ĳ ĳ ŉ Ǳ ǲ ǳ Ǆ ǅ ǆ Ǉ ǈ ǉ Ǌ ǋ ǌ`);
/// - full-width and half-width forms to their standard width, U+3000 to a space
///   (`fix_character_width`);
/// - curly quotes to straight ones (`‘ ’ ‚ ‛ ʼ` to `'`, `“ ” „ ‟` to `"`);
/// - line breaks (`\r\n`, `\r`, U+2028, U+2029, U+0085) to `\n`;
/// - ANSI terminal escapes removed;
/// - the control characters ftfy removes (U+0000..U+0008, U+000B, U+000E..U+001F, U+007F,
///   U+206A..U+206F, U+FEFF, U+FFF9..U+FFFC);
/// - NFC normalisation.
///
/// Left out: mojibake repair (`fix_encoding`: re-decoding text that was decoded with the wrong
/// codec, with `restore_byte_a0`, `replace_lossy_sequences` and `decode_inconsistent_utf8`), which
/// rests on ftfy's statistical "badness" heuristics; for text that is not mojibake it does nothing.
/// `fix_surrogates` has nothing to do in Rust, whose strings cannot hold surrogates. Character
/// classes (letters, numbers, whitespace, case mappings, NFC) follow the Unicode tables of the Rust
/// crates, which may be newer than Python's for characters added recently.
///
/// # Example
/// ```
/// use actionclip::Tokenizer;
///
/// let tok = Tokenizer::new();
/// assert_eq!(tok.encode("a photo of a cat"), vec![320, 1125, 539, 320, 2368]);
/// let ids = tok.tokenize("a photo of a cat", false)?;
/// assert_eq!(ids.len(), 77);
/// assert_eq!(&ids[..7], &[Tokenizer::SOT, 320, 1125, 539, 320, 2368, Tokenizer::EOT]);
/// assert_eq!(tok.decode(&ids), "a photo of a cat ");
/// # Ok::<(), actionclip::Error>(())
/// ```
#[derive(Clone, Copy)]
pub struct Tokenizer {
    shared: &'static Shared,
}

/// The parsed vocabulary and the compiled patterns, built once per process.
struct Shared {
    /// Bytes of every id (the byte symbols mapped back to bytes; `</w>` kept as its four bytes).
    id_bytes: Vec<Box<[u8]>>,
    /// Id of each byte's symbol inside a word.
    byte_ids: [u32; 256],
    /// Id of each byte's symbol ending a word (`</w>` appended).
    byte_end_ids: [u32; 256],
    /// `(left id, right id) -> (merge rank, id of the merged symbol)`.
    merges: HashMap<(u32, u32), (u32, u32)>,
    /// Number of merges read from the vocabulary file.
    num_merges: usize,
    pieces: Regex,
    whitespace: Regex,
    ansi_escape: Regex,
    /// Python's `html.unescape` pattern.
    html_charref: Regex,
    /// ftfy's `HTML_ENTITY_RE`.
    ftfy_entity: Regex,
}

static SHARED: OnceLock<Shared> = OnceLock::new();

impl Tokenizer {
    /// Id of `<|startoftext|>`, the first token of every tokenized text.
    pub const SOT: u32 = SOT;
    /// Id of `<|endoftext|>`, the token after the last word; the text tower pools its features here.
    pub const EOT: u32 = EOT;
    /// Tokens per tokenized text (start and end markers and zero padding included).
    pub const CONTEXT_LENGTH: usize = CONTEXT_LENGTH;

    /// The tokenizer with the embedded OpenAI CLIP vocabulary. The first call in a process parses
    /// the vocabulary (some tens of milliseconds); later calls are free.
    pub fn new() -> Tokenizer {
        Tokenizer { shared: SHARED.get_or_init(Shared::build) }
    }

    /// Number of ids of the vocabulary (49,408).
    pub fn vocab_size(&self) -> usize {
        self.shared.id_bytes.len()
    }

    /// The BPE ids of `text` after CLIP's text cleaning, without the start and end markers and
    /// without any length limit. A literal `<|startoftext|>` or `<|endoftext|>` in the text becomes
    /// the marker id, as in `openai-clip`.
    pub fn encode(&self, text: &str) -> Vec<u32> {
        let mut ids = Vec::new();
        self.encode_into(text, &mut ids);
        ids
    }

    /// `[SOT] + encode(text) + [EOT]`, zero-padded to [`Tokenizer::CONTEXT_LENGTH`] ids, like
    /// `clip.tokenize(text, truncate=truncate)`.
    ///
    /// A text that needs more than 77 ids is an [`Error::TextTooLong`] unless `truncate` is set; then
    /// the first 77 ids are kept and the last one is replaced by [`Tokenizer::EOT`].
    pub fn tokenize(&self, text: &str, truncate: bool) -> Result<Vec<u32>> {
        let mut ids = Vec::with_capacity(CONTEXT_LENGTH + 1);
        ids.push(SOT);
        self.encode_into(text, &mut ids);
        ids.push(EOT);
        if ids.len() > CONTEXT_LENGTH {
            if !truncate {
                return Err(Error::TextTooLong { text: text.to_string(), tokens: ids.len(), max: CONTEXT_LENGTH });
            }
            ids.truncate(CONTEXT_LENGTH);
            if let Some(last) = ids.last_mut() {
                *last = EOT;
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

    /// Text of a sequence of ids, like `SimpleTokenizer.decode`: the symbols are joined, mapped back
    /// to bytes and read as UTF-8 (invalid sequences become U+FFFD), and every `</w>` becomes a space
    /// (so the text ends with a space). Unlike `SimpleTokenizer.decode`, the markers [`Tokenizer::SOT`] and
    /// [`Tokenizer::EOT`], the trailing zero padding and ids outside the vocabulary are skipped.
    pub fn decode(&self, ids: &[u32]) -> String {
        // Id 0 (`!` inside a word) never ends a word, so trailing zeros are always padding.
        let end = ids.iter().rposition(|&id| id != 0).map_or(0, |p| p + 1);
        let mut bytes = Vec::new();
        for &id in &ids[..end] {
            if id == SOT || id == EOT {
                continue;
            }
            if let Some(b) = self.shared.id_bytes.get(id as usize) {
                bytes.extend_from_slice(b);
            }
        }
        String::from_utf8_lossy(&bytes).replace("</w>", " ")
    }

    fn batch<S: AsRef<str>>(&self, texts: &[S], device: &Device, truncate: bool) -> Result<Tensor> {
        let mut all = Vec::with_capacity(texts.len() * CONTEXT_LENGTH);
        for text in texts {
            all.extend(self.tokenize(text.as_ref(), truncate)?);
        }
        Ok(Tensor::from_vec(all, (texts.len(), CONTEXT_LENGTH), device)?)
    }

    fn encode_into(&self, text: &str, ids: &mut Vec<u32>) {
        let text = self.shared.clean(text);
        for piece in self.shared.pieces.find_iter(&text) {
            self.shared.bpe(piece.as_str(), ids);
        }
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
            .field("vocab_size", &self.vocab_size())
            .field("merges", &self.shared.num_merges)
            .finish()
    }
}

impl Shared {
    fn build() -> Shared {
        let byte_symbols = bytes_to_unicode();
        // `bytes_to_unicode().values()` in insertion order: the printable bytes, then the others.
        let byte_order: Vec<u8> = (0..=255u8)
            .filter(|&b| is_printable_byte(b))
            .chain((0..=255u8).filter(|&b| !is_printable_byte(b)))
            .collect();
        let mut vocab: Vec<String> = byte_order.iter().map(|&b| byte_symbols[b as usize].to_string()).collect();
        vocab.extend(byte_order.iter().map(|&b| format!("{}</w>", byte_symbols[b as usize])));
        let mut pairs: Vec<Option<(&str, &str)>> = Vec::with_capacity(NUM_MERGES);
        for line in VOCAB_FILE.split('\n').skip(1).take(NUM_MERGES) {
            let parts: Vec<&str> = line.split_whitespace().collect();
            vocab.push(parts.concat());
            pairs.push(match parts.as_slice() {
                [a, b] => Some((a, b)),
                _ => None,
            });
        }
        vocab.push("<|startoftext|>".to_string());
        vocab.push("<|endoftext|>".to_string());

        // Python's `dict(zip(vocab, range(len(vocab))))`: a repeated string keeps its last id.
        let mut encoder: HashMap<&str, u32> = HashMap::with_capacity(vocab.len());
        for (id, symbol) in vocab.iter().enumerate() {
            encoder.insert(symbol.as_str(), id as u32);
        }
        let mut merges = HashMap::with_capacity(pairs.len());
        for (rank, pair) in pairs.iter().enumerate() {
            let Some((a, b)) = pair else { continue };
            let merged = format!("{a}{b}");
            if let (Some(&ia), Some(&ib), Some(&im)) = (encoder.get(a), encoder.get(b), encoder.get(merged.as_str())) {
                merges.insert((ia, ib), (rank as u32, im));
            }
        }
        let mut byte_ids = [0u32; 256];
        let mut byte_end_ids = [0u32; 256];
        for b in 0..256 {
            let symbol = byte_symbols[b].to_string();
            byte_ids[b] = encoder.get(symbol.as_str()).copied().unwrap_or(0);
            byte_end_ids[b] = encoder.get(format!("{symbol}</w>").as_str()).copied().unwrap_or(0);
        }
        let mut byte_decoder: HashMap<char, u8> = HashMap::with_capacity(256);
        for (b, &c) in byte_symbols.iter().enumerate() {
            byte_decoder.insert(c, b as u8);
        }
        let id_bytes =
            vocab.iter().map(|symbol| symbol.chars().filter_map(|c| byte_decoder.get(&c).copied()).collect()).collect();
        Shared {
            id_bytes,
            byte_ids,
            byte_end_ids,
            num_merges: pairs.len(),
            merges,
            pieces: constant_regex(PIECE_PATTERN),
            whitespace: constant_regex(r"\s+"),
            ansi_escape: constant_regex(r"\x1b\[((?:\d|;)*)([a-zA-Z])"),
            html_charref: constant_regex(r"&(#[0-9]+;?|#[xX][0-9a-fA-F]+;?|[^\t\n\x0c <&#;]{1,32};?)"),
            ftfy_entity: constant_regex(r"&#?[0-9A-Za-z]{1,24};"),
        }
    }

    /// `SimpleTokenizer.bpe` on one pre-tokenized piece, appending the ids of its symbols.
    fn bpe(&self, piece: &str, ids: &mut Vec<u32>) {
        match piece {
            "<|startoftext|>" => return ids.push(SOT),
            "<|endoftext|>" => return ids.push(EOT),
            _ => {}
        }
        let Some((&last, rest)) = piece.as_bytes().split_last() else { return };
        let mut word: Vec<u32> = rest.iter().map(|&b| self.byte_ids[b as usize]).collect();
        word.push(self.byte_end_ids[last as usize]);
        while word.len() > 1 {
            // The adjacent pair with the lowest merge rank (ranks are unique per pair).
            let mut best: Option<(u32, u32, u32, u32)> = None;
            for pair in word.windows(2) {
                if let Some(&(rank, merged)) = self.merges.get(&(pair[0], pair[1])) {
                    if best.is_none_or(|(r, ..)| rank < r) {
                        best = Some((rank, pair[0], pair[1], merged));
                    }
                }
            }
            let Some((_, first, second, merged)) = best else { break };
            // Merge every occurrence, left to right, without overlaps.
            let mut next = Vec::with_capacity(word.len());
            let mut i = 0;
            while i < word.len() {
                if word[i] == first && word.get(i + 1) == Some(&second) {
                    next.push(merged);
                    i += 2;
                } else {
                    next.push(word[i]);
                    i += 1;
                }
            }
            word = next;
        }
        ids.extend(word);
    }

    /// `whitespace_clean(basic_clean(text)).lower()` of `openai-clip`.
    fn clean(&self, text: &str) -> String {
        let text = self.fix_text(text);
        let text = self.html_unescape(&self.html_unescape(&text));
        let text = self.whitespace.replace_all(python_strip(&text), " ");
        python_strip(&text).to_lowercase()
    }

    /// The ported subset of `ftfy.fix_text` with its default configuration (see the module docs).
    fn fix_text(&self, text: &str) -> String {
        let mut out = String::with_capacity(text.len());
        let mut unescape_html = true;
        let mut rest = text;
        while !rest.is_empty() {
            let mut end = rest.find('\n').map_or(rest.len(), |i| i + 1);
            if end > FTFY_MAX_SEGMENT_CHARS {
                if let Some((i, _)) = rest[..end].char_indices().nth(FTFY_MAX_SEGMENT_CHARS) {
                    end = i;
                }
            }
            let segment = &rest[..end];
            // `unescape_html="auto"`: once a line contains `<`, ftfy stops decoding entities.
            if segment.contains('<') {
                unescape_html = false;
            }
            out.push_str(&self.fix_segment(segment, unescape_html));
            rest = &rest[end..];
        }
        out
    }

    /// ftfy's `fix_and_explain` without `fix_encoding`: the fixers in ftfy's order, repeated until
    /// the text stops changing.
    fn fix_segment(&self, segment: &str, unescape_html: bool) -> String {
        let mut text = segment.to_string();
        // Every round that changes something shortens the text or replaces characters that no
        // fixer produces, so this ends long before the bound, which only guards against surprises.
        for _ in 0..segment.len() + 16 {
            let mut fixed = if unescape_html { self.ftfy_unescape_html(&text) } else { text.clone() };
            fixed = fixed.chars().map(fix_c1_control).collect();
            fixed = fix_latin_ligatures(&fixed);
            fixed = fix_character_width(&fixed);
            fixed = fixed.chars().map(uncurl_quote).collect();
            fixed = fix_line_breaks(&fixed);
            fixed = self.ansi_escape.replace_all(&fixed, "").into_owned();
            fixed.retain(|c| !is_removed_control_char(c));
            fixed = fixed.nfc().collect();
            if fixed == text {
                break;
            }
            text = fixed;
        }
        text
    }

    /// ftfy's `unescape_html`: entities with a semicolon, and upper-cased entity names.
    fn ftfy_unescape_html(&self, text: &str) -> String {
        if !text.contains('&') {
            return text.to_string();
        }
        self.ftfy_entity
            .replace_all(text, |caps: &regex::Captures<'_>| {
                let entity = &caps[0];
                let name = &entity[1..entity.len() - 1];
                if let Some(value) = named_entity(name) {
                    return value.to_string();
                }
                if !name.starts_with('#') && !name.bytes().any(|b| b.is_ascii_lowercase()) {
                    // ftfy also decodes `&EACUTE;` when `&eacute;` exists and `&EACUTE;` is not
                    // decoded by `html.unescape`.
                    if let Some(value) = named_entity(&name.to_ascii_lowercase()) {
                        if self.html_unescape(entity) == entity {
                            return value.to_uppercase();
                        }
                    }
                    return entity.to_string();
                }
                if name.starts_with('#') {
                    let decoded = self.html_unescape(entity);
                    if !decoded.contains(';') {
                        return decoded;
                    }
                }
                entity.to_string()
            })
            .into_owned()
    }

    /// Python's `html.unescape` (HTML5 rules: numeric references with the Windows-1252 fix-ups,
    /// named references, and the legacy names that need no semicolon).
    fn html_unescape(&self, text: &str) -> String {
        if !text.contains('&') {
            return text.to_string();
        }
        self.html_charref.replace_all(text, |caps: &regex::Captures<'_>| replace_charref(&caps[1])).into_owned()
    }
}

fn constant_regex(pattern: &str) -> Regex {
    // The patterns are constants of this module, checked by the tests.
    Regex::new(pattern).unwrap_or_else(|e| panic!("invalid built-in pattern {pattern}: {e}"))
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

/// Python's `str.strip()`: `str.isspace` is Unicode White_Space plus U+001C..U+001F.
fn python_strip(text: &str) -> &str {
    text.trim_matches(|c: char| c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c))
}

/// Windows-1252 for the C1 range (U+0080..U+009F); the five bytes Windows-1252 leaves undefined
/// keep their code point (Python's `html` table and ftfy's "sloppy" codec agree on this).
fn windows_1252_c1(c: char) -> char {
    const TABLE: [char; 32] = [
        '\u{20AC}', '\u{81}', '\u{201A}', '\u{192}', '\u{201E}', '\u{2026}', '\u{2020}', '\u{2021}', '\u{2C6}',
        '\u{2030}', '\u{160}', '\u{2039}', '\u{152}', '\u{8D}', '\u{17D}', '\u{8F}', '\u{90}', '\u{2018}', '\u{2019}',
        '\u{201C}', '\u{201D}', '\u{2022}', '\u{2013}', '\u{2014}', '\u{2DC}', '\u{2122}', '\u{161}', '\u{203A}',
        '\u{153}', '\u{9D}', '\u{17E}', '\u{178}',
    ];
    match c {
        '\u{80}'..='\u{9f}' => TABLE[c as usize - 0x80],
        _ => c,
    }
}

/// ftfy's `fix_c1_controls`.
fn fix_c1_control(c: char) -> char {
    windows_1252_c1(c)
}

/// ftfy's `fix_latin_ligatures`.
fn fix_latin_ligatures(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            'Ĳ' => out.push_str("IJ"),
            'ĳ' => out.push_str("ij"),
            'ŉ' => out.push_str("ʼn"),
            'Ǳ' => out.push_str("DZ"),
            'ǲ' => out.push_str("Dz"),
            'ǳ' => out.push_str("dz"),
            'Ǆ' => out.push_str("DŽ"),
            'ǅ' => out.push_str("Dž"),
            'ǆ' => out.push_str("dž"),
            'Ǉ' => out.push_str("LJ"),
            'ǈ' => out.push_str("Lj"),
            'ǉ' => out.push_str("lj"),
            'Ǌ' => out.push_str("NJ"),
            'ǋ' => out.push_str("Nj"),
            'ǌ' => out.push_str("nj"),
            'ﬀ' => out.push_str("ff"),
            'ﬁ' => out.push_str("fi"),
            'ﬂ' => out.push_str("fl"),
            'ﬃ' => out.push_str("ffi"),
            'ﬄ' => out.push_str("ffl"),
            'ﬅ' => out.push_str("ſt"),
            'ﬆ' => out.push_str("st"),
            _ => out.push(c),
        }
    }
    out
}

/// ftfy's `fix_character_width`: U+3000 to a space, U+FF01..U+FFEF to their NFKC form.
fn fix_character_width(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '\u{3000}' => out.push(' '),
            '\u{ff01}'..='\u{ffef}' => out.extend(std::iter::once(c).nfkc()),
            _ => out.push(c),
        }
    }
    out
}

/// ftfy's `uncurl_quotes`.
fn uncurl_quote(c: char) -> char {
    match c {
        '\u{2bc}' | '\u{2018}'..='\u{201b}' => '\'',
        '\u{201c}'..='\u{201f}' => '"',
        _ => c,
    }
}

/// ftfy's `fix_line_breaks`.
fn fix_line_breaks(text: &str) -> String {
    text.replace("\r\n", "\n").replace(['\r', '\u{2028}', '\u{2029}', '\u{85}'], "\n")
}

/// The characters ftfy's `remove_control_chars` deletes.
fn is_removed_control_char(c: char) -> bool {
    matches!(c,
        '\u{0}'..='\u{8}' | '\u{b}' | '\u{e}'..='\u{1f}' | '\u{7f}'
        | '\u{206a}'..='\u{206f}' | '\u{feff}' | '\u{fff9}'..='\u{fffc}')
}

/// One match of Python's `html._charref` (the part after `&`), replaced as `html._replace_charref`.
fn replace_charref(s: &str) -> String {
    if let Some(number) = s.strip_prefix('#') {
        let (digits, radix) = match number.strip_prefix(['x', 'X']) {
            Some(hex) => (hex, 16),
            None => (number, 10),
        };
        // Too many digits for a u32 is past U+10FFFF either way.
        let code = u32::from_str_radix(digits.trim_end_matches(';'), radix).unwrap_or(u32::MAX);
        return match code {
            0x00 => "\u{FFFD}".to_string(),
            0x0D => "\r".to_string(),
            0x80..=0x9F => windows_1252_c1(char::from_u32(code).unwrap_or('\u{80}')).to_string(),
            0xD800..=0xDFFF | 0x11_0000.. => "\u{FFFD}".to_string(),
            0x01..=0x08 | 0x0B | 0x0E..=0x1F | 0x7F | 0xFDD0..=0xFDEF => String::new(),
            _ if code & 0xFFFE == 0xFFFE => String::new(),
            _ => char::from_u32(code).map(String::from).unwrap_or_default(),
        };
    }
    let value = match s.strip_suffix(';') {
        Some(name) => named_entity(name),
        None => legacy_entity(s),
    };
    if let Some(value) = value {
        return value.to_string();
    }
    // The longest prefix (of at least two characters) that is a legacy entity name.
    let boundaries: Vec<usize> = s.char_indices().map(|(i, _)| i).skip(2).collect();
    for &end in boundaries.iter().rev() {
        if let Some(value) = legacy_entity(&s[..end]) {
            return format!("{value}{}", &s[end..]);
        }
    }
    format!("&{s}")
}

/// The value of `&name;` in the HTML5 entity table.
fn named_entity(name: &str) -> Option<&'static str> {
    if let Ok(i) = MULTI_CODEPOINT_ENTITIES.binary_search_by(|(n, _)| n.cmp(&name)) {
        return Some(MULTI_CODEPOINT_ENTITIES[i].1);
    }
    let table = &html_escape::NAMED_ENTITIES;
    table.binary_search_by(|(n, _)| (*n).cmp(name.as_bytes())).ok().map(|i| table[i].1)
}

/// The value of `&name` for the legacy names HTML5 decodes without a semicolon.
fn legacy_entity(name: &str) -> Option<&'static str> {
    LEGACY_ENTITIES.binary_search(&name).ok().and_then(|_| named_entity(name))
}

/// HTML5 entities whose value is two code points (`html_escape::NAMED_ENTITIES` keeps only the
/// first), sorted by name.
const MULTI_CODEPOINT_ENTITIES: [(&str, &str); 93] = [
    ("NotEqualTilde", "\u{2242}\u{0338}"),
    ("NotGreaterFullEqual", "\u{2267}\u{0338}"),
    ("NotGreaterGreater", "\u{226B}\u{0338}"),
    ("NotGreaterSlantEqual", "\u{2A7E}\u{0338}"),
    ("NotHumpDownHump", "\u{224E}\u{0338}"),
    ("NotHumpEqual", "\u{224F}\u{0338}"),
    ("NotLeftTriangleBar", "\u{29CF}\u{0338}"),
    ("NotLessLess", "\u{226A}\u{0338}"),
    ("NotLessSlantEqual", "\u{2A7D}\u{0338}"),
    ("NotNestedGreaterGreater", "\u{2AA2}\u{0338}"),
    ("NotNestedLessLess", "\u{2AA1}\u{0338}"),
    ("NotPrecedesEqual", "\u{2AAF}\u{0338}"),
    ("NotRightTriangleBar", "\u{29D0}\u{0338}"),
    ("NotSquareSubset", "\u{228F}\u{0338}"),
    ("NotSquareSuperset", "\u{2290}\u{0338}"),
    ("NotSubset", "\u{2282}\u{20D2}"),
    ("NotSucceedsEqual", "\u{2AB0}\u{0338}"),
    ("NotSucceedsTilde", "\u{227F}\u{0338}"),
    ("NotSuperset", "\u{2283}\u{20D2}"),
    ("ThickSpace", "\u{205F}\u{200A}"),
    ("acE", "\u{223E}\u{0333}"),
    ("bne", "\u{003D}\u{20E5}"),
    ("bnequiv", "\u{2261}\u{20E5}"),
    ("caps", "\u{2229}\u{FE00}"),
    ("cups", "\u{222A}\u{FE00}"),
    ("fjlig", "\u{0066}\u{006A}"),
    ("gesl", "\u{22DB}\u{FE00}"),
    ("gvertneqq", "\u{2269}\u{FE00}"),
    ("gvnE", "\u{2269}\u{FE00}"),
    ("lates", "\u{2AAD}\u{FE00}"),
    ("lesg", "\u{22DA}\u{FE00}"),
    ("lvertneqq", "\u{2268}\u{FE00}"),
    ("lvnE", "\u{2268}\u{FE00}"),
    ("nGg", "\u{22D9}\u{0338}"),
    ("nGt", "\u{226B}\u{20D2}"),
    ("nGtv", "\u{226B}\u{0338}"),
    ("nLl", "\u{22D8}\u{0338}"),
    ("nLt", "\u{226A}\u{20D2}"),
    ("nLtv", "\u{226A}\u{0338}"),
    ("nang", "\u{2220}\u{20D2}"),
    ("napE", "\u{2A70}\u{0338}"),
    ("napid", "\u{224B}\u{0338}"),
    ("nbump", "\u{224E}\u{0338}"),
    ("nbumpe", "\u{224F}\u{0338}"),
    ("ncongdot", "\u{2A6D}\u{0338}"),
    ("nedot", "\u{2250}\u{0338}"),
    ("nesim", "\u{2242}\u{0338}"),
    ("ngE", "\u{2267}\u{0338}"),
    ("ngeqq", "\u{2267}\u{0338}"),
    ("ngeqslant", "\u{2A7E}\u{0338}"),
    ("nges", "\u{2A7E}\u{0338}"),
    ("nlE", "\u{2266}\u{0338}"),
    ("nleqq", "\u{2266}\u{0338}"),
    ("nleqslant", "\u{2A7D}\u{0338}"),
    ("nles", "\u{2A7D}\u{0338}"),
    ("notinE", "\u{22F9}\u{0338}"),
    ("notindot", "\u{22F5}\u{0338}"),
    ("nparsl", "\u{2AFD}\u{20E5}"),
    ("npart", "\u{2202}\u{0338}"),
    ("npre", "\u{2AAF}\u{0338}"),
    ("npreceq", "\u{2AAF}\u{0338}"),
    ("nrarrc", "\u{2933}\u{0338}"),
    ("nrarrw", "\u{219D}\u{0338}"),
    ("nsce", "\u{2AB0}\u{0338}"),
    ("nsubE", "\u{2AC5}\u{0338}"),
    ("nsubset", "\u{2282}\u{20D2}"),
    ("nsubseteqq", "\u{2AC5}\u{0338}"),
    ("nsucceq", "\u{2AB0}\u{0338}"),
    ("nsupE", "\u{2AC6}\u{0338}"),
    ("nsupset", "\u{2283}\u{20D2}"),
    ("nsupseteqq", "\u{2AC6}\u{0338}"),
    ("nvap", "\u{224D}\u{20D2}"),
    ("nvge", "\u{2265}\u{20D2}"),
    ("nvgt", "\u{003E}\u{20D2}"),
    ("nvle", "\u{2264}\u{20D2}"),
    ("nvlt", "\u{003C}\u{20D2}"),
    ("nvltrie", "\u{22B4}\u{20D2}"),
    ("nvrtrie", "\u{22B5}\u{20D2}"),
    ("nvsim", "\u{223C}\u{20D2}"),
    ("race", "\u{223D}\u{0331}"),
    ("smtes", "\u{2AAC}\u{FE00}"),
    ("sqcaps", "\u{2293}\u{FE00}"),
    ("sqcups", "\u{2294}\u{FE00}"),
    ("varsubsetneq", "\u{228A}\u{FE00}"),
    ("varsubsetneqq", "\u{2ACB}\u{FE00}"),
    ("varsupsetneq", "\u{228B}\u{FE00}"),
    ("varsupsetneqq", "\u{2ACC}\u{FE00}"),
    ("vnsub", "\u{2282}\u{20D2}"),
    ("vnsup", "\u{2283}\u{20D2}"),
    ("vsubnE", "\u{2ACB}\u{FE00}"),
    ("vsubne", "\u{228A}\u{FE00}"),
    ("vsupnE", "\u{2ACC}\u{FE00}"),
    ("vsupne", "\u{228B}\u{FE00}"),
];

/// Entity names that HTML5 (and Python's `html.unescape`) also decode without a semicolon, sorted.
const LEGACY_ENTITIES: [&str; 106] = [
    "AElig", "AMP", "Aacute", "Acirc", "Agrave", "Aring", "Atilde", "Auml", "COPY", "Ccedil", "ETH", "Eacute", "Ecirc",
    "Egrave", "Euml", "GT", "Iacute", "Icirc", "Igrave", "Iuml", "LT", "Ntilde", "Oacute", "Ocirc", "Ograve", "Oslash",
    "Otilde", "Ouml", "QUOT", "REG", "THORN", "Uacute", "Ucirc", "Ugrave", "Uuml", "Yacute", "aacute", "acirc",
    "acute", "aelig", "agrave", "amp", "aring", "atilde", "auml", "brvbar", "ccedil", "cedil", "cent", "copy",
    "curren", "deg", "divide", "eacute", "ecirc", "egrave", "eth", "euml", "frac12", "frac14", "frac34", "gt",
    "iacute", "icirc", "iexcl", "igrave", "iquest", "iuml", "laquo", "lt", "macr", "micro", "middot", "nbsp", "not",
    "ntilde", "oacute", "ocirc", "ograve", "ordf", "ordm", "oslash", "otilde", "ouml", "para", "plusmn", "pound",
    "quot", "raquo", "reg", "sect", "shy", "sup1", "sup2", "sup3", "szlig", "thorn", "times", "uacute", "ucirc",
    "ugrave", "uml", "uuml", "yacute", "yen", "yuml",
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_vocabulary_parses() {
        let tok = Tokenizer::new();
        assert_eq!(tok.vocab_size(), crate::config::VOCAB_SIZE);
        assert_eq!((Tokenizer::SOT, Tokenizer::EOT, Tokenizer::CONTEXT_LENGTH), (SOT, EOT, CONTEXT_LENGTH));
        assert_eq!(tok.shared.num_merges, NUM_MERGES);
        assert_eq!(tok.shared.merges.len(), NUM_MERGES, "every merge has two parts that are in the vocabulary");
        assert_eq!(&*tok.shared.id_bytes[SOT as usize], b"<|startoftext|>");
        assert_eq!(&*tok.shared.id_bytes[EOT as usize], b"<|endoftext|>");
        // Byte symbols come in `bytes_to_unicode` order: `!` is 0, `a</w>` is 256 + 64.
        assert_eq!(tok.shared.byte_ids[b'!' as usize], 0);
        assert_eq!(tok.shared.byte_end_ids[b'a' as usize], 256 + 64);
        assert_eq!(&*tok.shared.id_bytes[320], b"a</w>");
    }

    #[test]
    fn built_in_patterns_compile() {
        let s = Tokenizer::new().shared;
        let pieces: Vec<&str> = s.pieces.find_iter("it's <|endoftext|> a1b!?").map(|m| m.as_str()).collect();
        assert_eq!(pieces, ["it", "'s", "<|endoftext|>", "a", "1", "b", "!?"]);
    }

    #[test]
    fn html_unescape_matches_python() {
        let s = Tokenizer::new().shared;
        for (input, expected) in [
            ("&amp;", "&"),
            ("&amp", "&"),
            ("&ampx", "&x"),
            ("this&not that", "this¬ that"),
            ("&notin;", "∉"),
            ("&notit;", "¬it;"),
            ("&#39;&#x27;&#X27;", "'''"),
            ("&#128;&#0;&#1;&#xD800;&#x110000;&#99999999999;", "€\u{FFFD}\u{FFFD}\u{FFFD}\u{FFFD}"),
            ("&acE;&fjlig;", "\u{223E}\u{333}fj"),
            ("&bogus;", "&bogus;"),
            ("a&#65", "aA"),
        ] {
            assert_eq!(s.html_unescape(input), expected, "{input}");
        }
        assert_eq!(s.ftfy_unescape_html("&amp; &EACUTE; &SZLIG; &LT; &amp &#65abc;"), "& É SS < &amp &#65abc;");
    }

    #[test]
    fn ftfy_subset() {
        let s = Tokenizer::new().shared;
        assert_eq!(s.fix_text("ﬁ ‘q’ “q” ＡＢＣ\u{3000}x\r\ny\u{feff}\u{1b}[31mz"), "fi 'q' \"q\" ABC x\nyz");
        assert_eq!(s.fix_text("cafe\u{301}"), "café");
        assert_eq!(s.fix_text("&amp;amp;amp;"), "&");
        assert_eq!(s.fix_text("<b> &amp;\n&amp;"), "<b> &amp;\n&amp;");
        assert_eq!(s.fix_text("\u{93}x\u{94}"), "\"x\"");
    }

    #[test]
    fn tokenizer_is_send_sync_and_cheap_to_clone() {
        fn assert_send_sync<T: Send + Sync + Clone>() {}
        assert_send_sync::<Tokenizer>();
        let a = Tokenizer::new();
        let b = a;
        assert!(std::ptr::eq(a.shared, b.shared));
        assert_eq!(format!("{a:?}"), "Tokenizer { vocab_size: 49408, merges: 48894 }");
    }
}
