//! Inputs that made a fuzz target (see `fuzz/`) panic, abort, hang or allocate without bound, kept under
//! `tests/fixtures/fuzz/<target>/`. Each goes through its target's entry point again and must give a typed
//! error naming the file.
use std::path::{Path, PathBuf};

use actionclip::data::FrameTemplate;
use actionclip::{weights, ActionClip, Error};
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
