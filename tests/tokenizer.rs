//! The CLIP tokenizer against `clip.tokenize` of the PyPI package `openai-clip`, and a Hugging Face
//! `tokenizer.json` loaded with `Tokenizer::from_file` against Hugging Face's `tokenizers`.
//!
//! `tests/fixtures/tokenizer/clip_tokenize*.jsonl` are made by `tools/make_tokenizer_fixture.py`,
//! `clip_tokenizer.json.gz` and `hf_tokenize.jsonl` by `tools/make_hf_tokenizer.py`; these tests need
//! neither Python nor the network.
use actionclip::{Error, Tokenizer};
use candle_core::{DType, Device};

const SOT: u32 = Tokenizer::SOT;
const EOT: u32 = Tokenizer::EOT;
const CONTEXT_LENGTH: usize = Tokenizer::CONTEXT_LENGTH;

const FIXTURE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/tokenizer/clip_tokenize.jsonl");

fn ids_of(value: &serde_json::Value, key: &str, line: usize) -> Vec<u32> {
    value[key]
        .as_array()
        .unwrap_or_else(|| panic!("line {line}: `{key}` is not an array"))
        .iter()
        .map(|id| id.as_u64().unwrap_or_else(|| panic!("line {line}: bad id {id}")) as u32)
        .collect()
}

fn unpadded(ids: &[u32]) -> Vec<u32> {
    let end = ids.iter().rposition(|&id| id != 0).map_or(0, |p| p + 1);
    ids[..end].to_vec()
}

/// How `Error::TextTooLong` quotes `text`: whole up to 100 characters, else its first 100 and `...`.
fn quoted(text: &str) -> String {
    if text.chars().count() > 100 {
        format!("{}...", text.chars().take(100).collect::<String>())
    } else {
        text.to_string()
    }
}

#[test]
fn matches_openai_clip_tokenize() {
    let text = std::fs::read_to_string(FIXTURE).unwrap_or_else(|e| panic!("{FIXTURE}: {e}"));
    let tok = Tokenizer::new();
    let mut count = 0;
    let mut too_long = 0;
    let mut mismatches = Vec::new();
    for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let line_no = i + 1;
        let case: serde_json::Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("line {line_no}: {e}"));
        let input = case["text"].as_str().unwrap_or_else(|| panic!("line {line_no}: no text"));
        count += 1;
        let problem = if case.get("error").is_some() {
            too_long += 1;
            assert_eq!(case["error"], "too_long", "line {line_no}");
            let expected = ids_of(&case, "truncated", line_no);
            let strict = match tok.tokenize(input, false) {
                Err(Error::TextTooLong { text, tokens, max }) if text == quoted(input) && tokens > max && max == 77 => {
                    None
                }
                Err(e) => Some(format!("expected TextTooLong, got error {e}")),
                Ok(ids) => Some(format!("expected TextTooLong, got {:?}", unpadded(&ids))),
            };
            let truncated = tok.tokenize(input, true).map(|ids| unpadded(&ids));
            match (strict, truncated) {
                (Some(p), _) => Some(p),
                (None, Ok(ids)) if ids == expected => None,
                (None, Ok(ids)) => Some(format!("truncated\n    expected {expected:?}\n    got      {ids:?}")),
                (None, Err(e)) => Some(format!("truncate=true failed: {e}")),
            }
        } else {
            let expected = ids_of(&case, "ids", line_no);
            match tok.tokenize(input, false) {
                Ok(ids) if unpadded(&ids) == expected && ids.len() == CONTEXT_LENGTH => None,
                Ok(ids) => Some(format!("\n    expected {expected:?}\n    got      {:?}", unpadded(&ids))),
                Err(e) => Some(format!("unexpected error {e}")),
            }
        };
        if let Some(problem) = problem {
            mismatches.push(format!("line {line_no} {input:?}: {problem}"));
        }
    }
    assert!(count >= 2000, "only {count} fixture texts");
    assert!(too_long >= 3, "only {too_long} too-long fixture texts");
    assert!(
        mismatches.is_empty(),
        "{} of {count} texts differ from clip.tokenize; the first ones:\n{}",
        mismatches.len(),
        mismatches.iter().take(20).cloned().collect::<Vec<_>>().join("\n")
    );
    println!("{count} texts ({too_long} too long) match clip.tokenize");
}

#[test]
fn a_photo_of_a_cat() {
    let tok = Tokenizer::new();
    let ids = tok.tokenize("a photo of a cat", false).unwrap();
    let mut expected = vec![49406, 320, 1125, 539, 320, 2368, 49407];
    expected.resize(77, 0);
    assert_eq!(ids, expected);
    assert_eq!(tok.encode("a photo of a cat").unwrap(), [320, 1125, 539, 320, 2368]);
    assert_eq!((SOT, EOT, CONTEXT_LENGTH), (49406, 49407, 77));
}

#[test]
fn too_long_text_is_an_error_that_quotes_the_text() {
    let tok = Tokenizer::default();
    let text = "a ".repeat(80);
    match tok.tokenize(&text, false) {
        Err(Error::TextTooLong { text: t, tokens, max }) => {
            assert_eq!(t, format!("{}...", &text[..100]));
            assert_eq!(tokens, 82);
            assert_eq!(max, 77);
        }
        other => panic!("expected TextTooLong, got {other:?}"),
    }
    let err = tok.tokenize(&text, false).unwrap_err().to_string();
    assert!(err.contains("a a a"), "{err}");
    let ids = tok.tokenize(&text, true).unwrap();
    assert_eq!(ids.len(), 77);
    assert_eq!(ids[0], SOT);
    assert!(ids[1..76].iter().all(|&id| id == 320));
    assert_eq!(ids[76], EOT);
    // 75 words fit exactly, 76 do not.
    assert!(tok.tokenize(&"a ".repeat(75), false).is_ok());
    assert!(tok.tokenize(&"a ".repeat(76), false).is_err());
}

#[test]
fn decode_round_trip() {
    let tok = Tokenizer::new();
    for text in [
        "a photo of a cat",
        "Can you recognize the action of ApplyEyeMakeup?",
        "it's 3.14 o'clock — café, Москва, 東京 😀!!",
        "",
    ] {
        let ids = tok.tokenize(text, false).unwrap();
        let cleaned = text.to_lowercase();
        let decoded = tok.decode(&ids).unwrap();
        // Words come back separated by single spaces, with a space after the last one.
        let words = |s: &str| s.split_whitespace().collect::<String>();
        assert_eq!(words(&decoded), words(&cleaned), "{text:?} -> {decoded:?}");
        assert_eq!(tok.encode(&decoded).unwrap(), tok.encode(text).unwrap(), "{text:?} -> {decoded:?}");
    }
    assert_eq!(tok.decode(&tok.encode("a photo of a cat").unwrap()).unwrap(), "a photo of a cat ");
    assert_eq!(tok.decode(&[SOT, 320, EOT, 0, 0]).unwrap(), "a ");
    assert_eq!(tok.decode(&[]).unwrap(), "");
    assert_eq!(tok.decode(&[u32::MAX, 320]).unwrap(), "a ");
}

#[test]
fn encode_batch_shape_and_dtype() {
    let tok = Tokenizer::new();
    let device = Device::Cpu;
    let texts = ["a video of archery", "a photo of a cat", ""];
    let batch = tok.encode_batch(&texts, &device).unwrap();
    assert_eq!(batch.dims(), &[3, 77]);
    assert_eq!(batch.dtype(), DType::U32);
    let rows = batch.to_vec2::<u32>().unwrap();
    for (row, text) in rows.iter().zip(texts) {
        assert_eq!(row, &tok.tokenize(text, false).unwrap());
    }
    assert_eq!(rows[2][..3], [SOT, EOT, 0]);

    let owned: Vec<String> = vec!["a ".repeat(100), "short".into()];
    assert!(matches!(tok.encode_batch(&owned, &device), Err(Error::TextTooLong { .. })));
    let cut = tok.encode_batch_truncated(&owned, &device).unwrap();
    assert_eq!(cut.dims(), &[2, 77]);
    assert_eq!(cut.to_vec2::<u32>().unwrap()[0][76], EOT);

    let empty: [&str; 0] = [];
    assert_eq!(tok.encode_batch(&empty, &device).unwrap().dims(), &[0, 77]);
}

const ADVERSARIAL: &str =
    concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/tokenizer/clip_tokenize_adversarial.jsonl");

/// The ids a fixture line expects: `clip.tokenize(text)` without the padding, or, for a text that is
/// too long, `clip.tokenize(text, truncate=True)` without the padding.
#[derive(Clone, Debug, PartialEq)]
enum Expected {
    Ids(Vec<u32>),
    TooLong(Vec<u32>),
}

/// `(line number, text, expected ids)` of every line of a fixture file.
fn read_cases(path: &str) -> Vec<(usize, String, Expected)> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let mut cases = Vec::new();
    for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let line_no = i + 1;
        let case: serde_json::Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{path}:{line_no}: {e}"));
        let input = case["text"].as_str().unwrap_or_else(|| panic!("{path}:{line_no}: no text")).to_string();
        let expected = if case.get("error").is_some() {
            assert_eq!(case["error"], "too_long", "{path}:{line_no}");
            Expected::TooLong(ids_of(&case, "truncated", line_no))
        } else {
            Expected::Ids(ids_of(&case, "ids", line_no))
        };
        cases.push((line_no, input, expected));
    }
    cases
}

/// What `tok` gets wrong on `text`, if anything: `tokenize` with and without truncation, and `encode`.
fn problem(tok: &Tokenizer, text: &str, expected: &Expected) -> Option<String> {
    let strict = tok.tokenize(text, false);
    match expected {
        Expected::Ids(ids) => match strict {
            Ok(got) if unpadded(&got) == *ids && got.len() == CONTEXT_LENGTH => None,
            Ok(got) => Some(format!("\n    expected {ids:?}\n    got      {:?}", unpadded(&got))),
            Err(e) => Some(format!("unexpected error {e}")),
        },
        Expected::TooLong(ids) => match (strict, tok.tokenize(text, true)) {
            (Err(Error::TextTooLong { tokens, max: 77, .. }), Ok(got)) if tokens > 77 && unpadded(&got) == *ids => None,
            (Err(Error::TextTooLong { .. }), Ok(got)) => {
                Some(format!("truncated\n    expected {ids:?}\n    got      {:?}", unpadded(&got)))
            }
            (strict, truncated) => {
                Some(format!("expected TextTooLong and truncated ids, got {strict:?} and {truncated:?}"))
            }
        },
    }
}

#[test]
fn adversarial_texts_match_openai_clip_tokenize() {
    let tok = Tokenizer::new();
    let cases = read_cases(ADVERSARIAL);
    assert!(cases.len() >= 100, "only {} adversarial texts", cases.len());
    let mismatches: Vec<String> = cases
        .iter()
        .filter_map(|(line, text, expected)| {
            problem(&tok, text, expected).map(|p| format!("line {line} {text:?}: {p}"))
        })
        .collect();
    assert!(
        mismatches.is_empty(),
        "{} of {} adversarial texts differ from clip.tokenize; the first ones:\n{}",
        mismatches.len(),
        cases.len(),
        mismatches.iter().take(20).cloned().collect::<Vec<_>>().join("\n")
    );
}

const HF_TOKENIZER_GZ: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/tokenizer/clip_tokenizer.json.gz");
const HF_IDS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/tokenizer/hf_tokenize.jsonl");

/// `clip_tokenizer.json.gz` decompressed into a temporary folder, loaded with `Tokenizer::from_file`.
fn hf_tokenizer() -> (tempfile::TempDir, std::path::PathBuf, Tokenizer) {
    use std::io::Read;
    let gz = std::fs::read(HF_TOKENIZER_GZ).unwrap_or_else(|e| panic!("{HF_TOKENIZER_GZ}: {e}"));
    let mut json = Vec::new();
    flate2::read::GzDecoder::new(gz.as_slice()).read_to_end(&mut json).expect("gzip");
    let dir = tempfile::tempdir().expect("temporary folder");
    let path = dir.path().join("tokenizer.json");
    std::fs::write(&path, json).expect("write tokenizer.json");
    let tok = Tokenizer::from_file(&path).expect("the Hugging Face CLIP tokenizer.json loads");
    (dir, path, tok)
}

/// Every fixture text of both `clip.tokenize` fixtures (`CLIP_FIXTURE` and `ADVERSARIAL`) gets the ids
/// Hugging Face's `tokenizers` gives with `clip_tokenizer.json`; `hf_tokenize.jsonl` lists the texts
/// where those differ from `clip.tokenize`'s, and on every other text the loaded file and the embedded
/// tokenizer agree.
#[test]
fn hugging_face_tokenizer_json_matches_hugging_face_tokenizers() {
    let (_dir, _path, hf) = hf_tokenizer();
    let embedded = Tokenizer::new();
    assert_eq!((hf.sot(), hf.eot()), (SOT, EOT));
    assert_eq!(hf.vocab_size(), embedded.vocab_size());
    let hf_ids: std::collections::HashMap<String, Expected> =
        read_cases(HF_IDS).into_iter().map(|(_, text, expected)| (text, expected)).collect();
    let mut cases = read_cases(FIXTURE);
    cases.extend(read_cases(ADVERSARIAL));
    let (mut same_as_embedded, mut mismatches) = (0, Vec::new());
    for (line, text, openai) in &cases {
        let expected = hf_ids.get(text).unwrap_or(openai);
        if let Some(p) = problem(&hf, text, expected) {
            mismatches.push(format!("line {line} {text:?}: {p}"));
        }
        if hf.tokenize(text, true).ok() == embedded.tokenize(text, true).ok() {
            same_as_embedded += 1;
        }
    }
    assert!(
        mismatches.is_empty(),
        "{} of {} texts differ from Hugging Face's tokenizers; the first ones:\n{}",
        mismatches.len(),
        cases.len(),
        mismatches.iter().take(20).cloned().collect::<Vec<_>>().join("\n")
    );
    // The texts in hf_tokenize.jsonl differ from clip.tokenize (ftfy, html.unescape, final sigma, 'ſ,
    // literal markers; see tools/make_hf_tokenizer.py), all others agree.
    let differing = cases.iter().filter(|(_, text, _)| hf_ids.contains_key(text)).count();
    assert_eq!(differing, hf_ids.len(), "every text of hf_tokenize.jsonl is a fixture text");
    assert_eq!(same_as_embedded, cases.len() - differing);
    println!("{} texts match Hugging Face's tokenizers; {same_as_embedded} match Tokenizer::new()", cases.len());
}

#[test]
fn hugging_face_tokenizer_json_tokenizes_and_decodes() {
    let (_dir, path, tok) = hf_tokenizer();
    assert_eq!(tok.encode("a photo of a cat").unwrap(), [320, 1125, 539, 320, 2368]);
    let ids = tok.tokenize("A photo of a cat", false).unwrap();
    assert_eq!(unpadded(&ids), [SOT, 320, 1125, 539, 320, 2368, EOT]);
    assert_eq!(tok.decode(&ids).unwrap(), "a photo of a cat ");
    let batch = tok.encode_batch_truncated(&["a ".repeat(100)], &Device::Cpu).unwrap();
    assert_eq!(batch.to_vec2::<u32>().unwrap()[0][76], EOT);
    assert!(matches!(tok.encode_batch(&["a ".repeat(100)], &Device::Cpu), Err(Error::TextTooLong { .. })));
    let debug = format!("{:?}", tok.clone());
    assert!(debug.contains(&path.display().to_string()) && debug.contains("49408"), "{debug}");
}

#[test]
fn unusable_tokenizer_files_are_typed_errors_naming_the_file() {
    let dir = tempfile::tempdir().expect("temporary folder");
    let missing = dir.path().join("missing.json");
    match Tokenizer::from_file(&missing) {
        Err(Error::Io { path, source }) => {
            assert_eq!(path, missing);
            assert_eq!(source.kind(), std::io::ErrorKind::NotFound);
        }
        other => panic!("expected Error::Io, got {other:?}"),
    }
    let garbage = dir.path().join("garbage.json");
    let not_a_tokenizer = dir.path().join("not_a_tokenizer.json");
    let no_markers = dir.path().join("no_markers.json");
    std::fs::write(&garbage, b"\x00\xffnot json {").unwrap();
    std::fs::write(&not_a_tokenizer, br#"{"model": {"type": "BPE"}, "added": 1}"#).unwrap();
    // A valid tokenizer.json without a post-processor and without CLIP's marker tokens.
    std::fs::write(
        &no_markers,
        br#"{"version": "1.0", "truncation": null, "padding": null, "added_tokens": [], "normalizer": null,
            "pre_tokenizer": null, "post_processor": null, "decoder": null,
            "model": {"type": "WordLevel", "vocab": {"a": 0, "[UNK]": 1}, "unk_token": "[UNK]"}}"#,
    )
    .unwrap();
    for path in [&garbage, &not_a_tokenizer, &no_markers] {
        let shown = path.display().to_string();
        let err = Tokenizer::from_file(path).expect_err(&shown);
        assert!(matches!(&err, Error::Tokenizer { name, .. } if *name == shown), "{shown}: {err:?}");
        assert!(err.to_string().contains(&shown), "{err}");
    }
}
