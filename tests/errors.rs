//! Bad input gets a typed error naming the culprit, never a panic.
mod common;

use actionclip::{ActionClip, ActionClipConfig, Error, PostNetwork, VisualPrompt};
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use common::*;

fn model(cfg: &ActionClipConfig) -> ActionClip {
    ActionClip::new(VarBuilder::from_tensors(weights(), DType::F32, &Device::Cpu), cfg).unwrap()
}

fn frames(dims: &[usize]) -> Tensor {
    Tensor::zeros(dims, DType::F32, &Device::Cpu).unwrap()
}

#[test]
fn wrong_frame_rank_or_size_is_an_input_shape_error() {
    let m = model(&tiny_config(false, false, PostNetwork::MeanPool));
    for dims in [&[4, 3, 32, 32][..], &[1, 4, 3, 64, 64], &[1, 4, 1, 32, 32], &[0, 4, 3, 32, 32]] {
        match m.encode_video(&frames(dims)) {
            Err(Error::InputShape { what: "frames", found, .. }) => assert_eq!(found, dims),
            other => panic!("{dims:?}: expected InputShape, got {:?}", other.map(|t| t.dims().to_vec())),
        }
    }
}

#[test]
fn frame_counts_the_prompt_cannot_take_are_rejected() {
    let cls = model(&tiny_config(false, false, PostNetwork::TransformerCls { layers: 2 }));
    let err = cls.encode_video(&frames(&[1, 3, 3, 32, 32])).unwrap_err();
    assert!(matches!(err, Error::FrameCount { part: "TransformerCls head", found: 3, .. }), "{err}");

    let joint = model(&tiny_config(true, false, PostNetwork::MeanPool));
    let err = joint.encode_video(&frames(&[1, 6, 3, 32, 32])).unwrap_err();
    assert!(matches!(err, Error::FrameCount { found: 6, .. }), "{err}");

    let transf = model(&tiny_config(false, false, PostNetwork::Transformer { layers: 2 }));
    let err = transf.encode_video(&frames(&[1, 78, 3, 32, 32])).unwrap_err();
    assert!(matches!(err, Error::FrameCount { part: "Transformer head", found: 78, .. }), "{err}");
    // Any count up to 77 works for the temporal transformer, mean pooling and the temporal shift.
    assert_eq!(transf.encode_video(&frames(&[2, 7, 3, 32, 32])).unwrap().dims(), [2, 64]);
    let tsm = model(&tiny_config(false, true, PostNetwork::MeanPool));
    assert_eq!(tsm.encode_video(&frames(&[1, 1, 3, 32, 32])).unwrap().dims(), [1, 64]);
}

#[test]
fn nonsensical_prompt_combinations_are_rejected() {
    for prompt in [
        VisualPrompt { joint: true, temporal_shift: true, post: PostNetwork::MeanPool },
        VisualPrompt { joint: true, temporal_shift: false, post: PostNetwork::Lstm },
        VisualPrompt { joint: false, temporal_shift: false, post: PostNetwork::Transformer { layers: 0 } },
    ] {
        let cfg = ActionClipConfig { clip: tiny_clip(), frames: 4, prompt };
        let vb = VarBuilder::from_tensors(weights(), DType::F32, &Device::Cpu);
        assert!(matches!(ActionClip::new(vb, &cfg), Err(Error::InvalidPrompt(_))), "{prompt:?}");
    }
}

#[test]
fn bad_tokens_are_rejected() {
    let m = model(&tiny_config(false, false, PostNetwork::MeanPool));
    let too_long = Tensor::zeros((1, 78), DType::U32, &Device::Cpu).unwrap();
    assert!(matches!(m.encode_text(&too_long), Err(Error::InputShape { what: "tokens", .. })));
    let out_of_vocab = Tensor::new(&[[5u32, 1000]], &Device::Cpu).unwrap();
    assert!(matches!(m.encode_text(&out_of_vocab), Err(Error::InputShape { what: "tokens", .. })));
}

/// A zip-format `.pt` whose `archive/data.pkl` is `pickle`.
fn pt_with_pickle(dir: &std::path::Path, pickle: &[u8]) -> std::path::PathBuf {
    use std::io::Write;
    let path = dir.join("hostile.pt");
    let mut zip = zip::ZipWriter::new(std::fs::File::create(&path).unwrap());
    let stored = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    zip.start_file("archive/data.pkl", stored).unwrap();
    zip.write_all(pickle).unwrap();
    zip.start_file("archive/version", stored).unwrap();
    zip.write_all(b"3\n").unwrap();
    zip.finish().unwrap();
    path
}

#[test]
fn a_pickle_nested_200000_deep_is_a_checkpoint_error_not_an_abort() {
    let dir = tempfile::tempdir().unwrap();
    let n = 200_000;
    let mut pickle = vec![0x80, 2];
    pickle.extend(std::iter::repeat_n(b']', n));
    pickle.extend(std::iter::repeat_n(b'a', n - 1));
    pickle.push(b'.');
    let path = pt_with_pickle(dir.path(), &pickle);
    match ActionClip::load(&path, &Device::Cpu, DType::F32) {
        Err(Error::Checkpoint { path: p, reason }) => {
            assert_eq!(p, path);
            assert!(reason.contains("nests deeper than 256"), "{reason}");
        }
        other => panic!("expected a checkpoint error, got {:?}", other.map(|_| ())),
    }
}

#[test]
fn a_pickle_naming_os_system_is_refused_with_the_global_named() {
    let dir = tempfile::tempdir().unwrap();
    let path = pt_with_pickle(dir.path(), b"\x80\x02cos\nsystem\nX\x04\x00\x00\x00true\x85R.");
    match ActionClip::load(&path, &Device::Cpu, DType::F32) {
        Err(Error::Checkpoint { reason, .. }) => assert!(reason.contains("`os.system`"), "{reason}"),
        other => panic!("expected a checkpoint error, got {:?}", other.map(|_| ())),
    }
}

/// A one-megabyte label is tokenized at once: an error quoting its start, or 77 ids when truncation is asked.
#[test]
fn a_megabyte_label_is_a_text_too_long_error_quoting_its_start() {
    let tok = actionclip::Tokenizer::new();
    let label = "a person doing a very long action ".repeat(1 << 20 >> 5);
    assert!(label.len() >= 1 << 20);
    match tok.tokenize(&label, false).unwrap_err() {
        Error::TextTooLong { text, tokens, max } => {
            assert_eq!(max, 77);
            assert!(tokens > 200_000, "{tokens} tokens");
            assert!(text.starts_with("a person doing") && text.ends_with("...") && text.len() <= 110, "{text}");
        }
        other => panic!("expected TextTooLong, got {other:?}"),
    }
    let ids = tok.tokenize(&label, true).unwrap();
    assert_eq!(ids.len(), 77);
}

/// A million distinct labels are refused before any of them is encoded, and a million repeats of a few
/// labels are deduplicated quickly (the check is by hash, not by scanning the list).
#[test]
fn a_label_list_past_the_class_limit_is_refused_before_encoding() {
    let many: Vec<String> = (0..1_000_000).map(|i| format!("action number {i}")).collect();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("labels.txt");
    std::fs::write(&file, many.join("\n")).unwrap();
    let err = actionclip::inference::parse_labels(file.to_str().unwrap(), false).unwrap_err();
    assert!(matches!(&err, Error::Labels(m) if m.contains("more than 100000")), "{err:?}");

    let model = tiny_random_model();
    let tok = actionclip::Tokenizer::new();
    let templates = actionclip::prompts::ACTIONCLIP_TEMPLATES;
    let err = actionclip::ZeroShotClassifier::new(&model, &tok, &many, &templates).err().unwrap();
    assert!(matches!(&err, Error::Labels(m) if m.contains("more than 100000")), "{err:?}");

    let repeats: Vec<&str> = (0..1_000_000).map(|i| ["run", "jump", "swim"][i % 3]).collect();
    let zs = actionclip::ZeroShotClassifier::new(&model, &tok, &repeats, &templates).unwrap();
    assert_eq!(zs.labels(), ["run", "jump", "swim"]);
}
