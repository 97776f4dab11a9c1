//! What the fuzz targets share: a scratch folder for the files they hand to the crate's path-based readers,
//! and the checkpoint loading path two targets drive with different corpora.
use std::path::{Path, PathBuf};
use std::sync::LazyLock;

use actionclip::{weights, ActionClip};
use candle_core::{DType, Device};
use tempfile::TempDir;

/// One scratch folder per fuzzing process, removed when the process exits normally.
static SCRATCH: LazyLock<TempDir> =
    LazyLock::new(|| tempfile::Builder::new().prefix("actionclip-fuzz").tempdir().expect("a scratch folder"));

/// The scratch folder of this process.
pub fn scratch_dir() -> &'static Path {
    SCRATCH.path()
}

/// Writes `bytes` to the scratch file `name` (replacing what an earlier input left there) and returns its path.
pub fn scratch_file(name: &str, bytes: &[u8]) -> PathBuf {
    let path = scratch_dir().join(name);
    std::fs::write(&path, bytes).expect("writing a scratch file");
    path
}

/// An empty scratch sub-folder `name` (whatever an earlier input left there is removed first).
pub fn fresh_dir(name: &str) -> PathBuf {
    let path = scratch_dir().join(name);
    if path.exists() {
        std::fs::remove_dir_all(&path).expect("clearing a scratch folder");
    }
    std::fs::create_dir(&path).expect("creating a scratch folder");
    path
}

/// Writes `bytes` to the scratch file `name` and reads it as a checkpoint the way a user does:
/// `weights::detect_format`, `weights::load` and, for a file that loads, `ActionClip::load` on the CPU in
/// f32 (config from the file or inferred, shape check, model build). Errors are the expected answers and
/// are dropped; a panic or abort is a finding.
pub fn load_checkpoint(name: &str, bytes: &[u8]) {
    let path = scratch_file(name, bytes);
    let _ = weights::detect_format(&path);
    if weights::load(&path).is_ok() {
        let _ = ActionClip::load(&path, &Device::Cpu, DType::F32);
    }
}
