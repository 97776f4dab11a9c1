//! The CLIP tokenizer against `clip.tokenize` of the PyPI package `openai-clip`.
//!
//! `tests/fixtures/tokenizer/clip_tokenize.jsonl` is made by `tools/make_tokenizer_fixture.py`; this
//! test needs neither Python nor the network.
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
                Err(Error::TextTooLong { text, tokens, max }) if text == input && tokens > max && max == 77 => None,
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
    assert_eq!(tok.encode("a photo of a cat"), [320, 1125, 539, 320, 2368]);
    assert_eq!((SOT, EOT, CONTEXT_LENGTH), (49406, 49407, 77));
}

#[test]
fn too_long_text_is_an_error_that_carries_the_text() {
    let tok = Tokenizer::default();
    let text = "a ".repeat(80);
    match tok.tokenize(&text, false) {
        Err(Error::TextTooLong { text: t, tokens, max }) => {
            assert_eq!(t, text);
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
        let decoded = tok.decode(&ids);
        // Words come back separated by single spaces, with a space after the last one.
        let words = |s: &str| s.split_whitespace().collect::<String>();
        assert_eq!(words(&decoded), words(&cleaned), "{text:?} -> {decoded:?}");
        assert_eq!(tok.encode(&decoded), tok.encode(text), "{text:?} -> {decoded:?}");
    }
    assert_eq!(tok.decode(&tok.encode("a photo of a cat")), "a photo of a cat ");
    assert_eq!(tok.decode(&[SOT, 320, EOT, 0, 0]), "a ");
    assert_eq!(tok.decode(&[]), "");
    assert_eq!(tok.decode(&[u32::MAX, 320]), "a ");
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
