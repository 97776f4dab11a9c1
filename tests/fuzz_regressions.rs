//! Inputs that made a fuzz target (see `fuzz/`) panic, abort, hang or allocate without bound, kept under
//! `tests/fixtures/fuzz/<target>/`. Each goes through its target's entry point again and must give a typed
//! error naming the file.
use std::path::{Path, PathBuf};

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

/// `weights::load` and `ActionClip::load` of every kept checkpoint give a checkpoint or format error naming it.
fn assert_checkpoints_refused(target: &str) {
    for file in findings(target) {
        let err = weights::load(&file).expect_err(&format!("{} loaded", file.display()));
        match &err {
            Error::Checkpoint { path, .. } | Error::UnknownFormat { path, .. } => assert_eq!(path, &file, "{err}"),
            other => panic!("{}: expected a checkpoint or format error, got {other:?}", file.display()),
        }
        assert!(ActionClip::load(&file, &Device::Cpu, DType::F32).is_err(), "{}", file.display());
    }
}

#[test]
fn pytorch_findings_are_typed_errors() {
    assert_checkpoints_refused("pytorch");
}
