//! Inputs that made a fuzz target (see `fuzz/`) panic, abort, hang or allocate without bound, kept under
//! `tests/fixtures/fuzz/<target>/`. Each goes through its target's entry point again and must give a typed
//! error naming the file.
use std::path::{Path, PathBuf};

use actionclip::data::FrameTemplate;
use actionclip::{weights, ActionClip, ActionClipConfig, ClipConfig, Error, PostNetwork, VisualPrompt};
use candle_core::{DType, Device};

/// The kept inputs of one fuzz target, sorted by name.
fn findings(target: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/fuzz").join(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.unwrap().path())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no inputs in {}", dir.display());
    files
}

/// `ActionClip::load` of every kept checkpoint gives an error; `weights::load` gives one too, or the tensors
/// of a file whose defect is in its config.
fn assert_checkpoints_refused(target: &str) {
    for file in findings(target) {
        match weights::load(&file) {
            Ok(_) => {}
            Err(Error::Checkpoint { path, .. } | Error::UnknownFormat { path, .. }) => assert_eq!(path, file),
            Err(other) => panic!("{}: expected a checkpoint or format error, got {other:?}", file.display()),
        }
        let err = ActionClip::load(&file, &Device::Cpu, DType::F32).err();
        assert!(err.is_some(), "{} built a model", file.display());
    }
}

#[test]
fn pytorch_findings_are_typed_errors() {
    assert_checkpoints_refused("pytorch");
}

#[test]
fn safetensors_findings_are_typed_errors() {
    assert_checkpoints_refused("safetensors");
}

/// The `text_formats` target's frame-folder inputs (first byte 7: a template line, then file names): the
/// template is refused with a config error.
#[test]
fn frame_template_findings_are_typed_errors() {
    for file in findings("text_formats") {
        let bytes = std::fs::read(&file).unwrap();
        assert_eq!(bytes.first().map(|b| b % 8), Some(7), "{}: not a frame-folder input", file.display());
        let text = String::from_utf8_lossy(&bytes[1..]);
        let template = text.lines().next().unwrap_or_default();
        match FrameTemplate::parse(template) {
            Err(Error::Config(_)) => {}
            other => panic!("{}: expected a config error, got {other:?}", file.display()),
        }
    }
}

/// The `infer` target's finding: a config whose patch embedding would have 2 * 10^14 elements (as shapes
/// declared in a state dict, or a stored config, may ask for) made `ActionClip::expected_shapes`, which
/// `ActionClip::load` runs before reading any weight, abort on a 3 PB allocation. The input itself is in the
/// target's corpus (`fuzz/corpus/infer`).
#[test]
fn expected_shapes_of_a_huge_config_are_a_typed_error() {
    let mut clip = ClipConfig::tiny();
    (clip.vision.patch_size, clip.vision.image_size) = (1 << 20, 1 << 20);
    let prompt = VisualPrompt { joint: false, temporal_shift: false, post: PostNetwork::MeanPool };
    let config = ActionClipConfig { clip, frames: 8, prompt };
    let err = ActionClip::expected_shapes(&config).unwrap_err();
    assert!(err.to_string().contains("visual.conv1.weight"), "{err}");
}

/// The `video` target's finding: a damaged Matroska stream whose colour space is outside ffmpeg-next's enum
/// crashed the process (SIGSEGV) when its frames were converted to RGB. Decoding gives frames or a typed
/// video error (this one: two frames, then a missing frame).
#[cfg(feature = "video")]
#[test]
fn video_findings_decode_or_give_video_errors() {
    for file in findings("video") {
        match actionclip::data::decode_frames(&file, &[0, 1, 2]) {
            Ok(frames) => assert!(frames.len() <= 3, "{}", file.display()),
            Err(Error::Video { .. } | Error::EmptyClip { .. } | Error::MissingFrame { .. }) => {}
            Err(other) => panic!("{}: expected a video error, got {other:?}", file.display()),
        }
    }
}
