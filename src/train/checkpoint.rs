//! Checkpoint directories written atomically: the new checkpoint is written into a temporary directory beside
//! the target, flushed, and swapped in by renames, so a kill at any moment leaves either the previous or the
//! new checkpoint whole (between the two renames the previous one sits at `.{name}.old`, where resuming
//! looks for it and the next run puts it back).
//!
//! A checkpoint directory holds
//! - `model.safetensors`: the f32 master weights in canonical names with the model config in the metadata
//!   (so `ActionClip::load("run/best")` works),
//! - `optimizer.safetensors`: AdamW's moment buffers,
//! - `trainer_state.json`: [`TrainerState`].
use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::config::TrainConfig;
use super::error::{TrainError, TrainResult};
use super::optimizer::AdamW;
use super::schedule::LrSchedule;
use super::vars::{ModelVars, Precision};
use crate::{ActionClipConfig, Error, Result};

/// File names inside a checkpoint directory.
pub(crate) const MODEL_FILE: &str = "model.safetensors";
/// The optimizer's moment buffers.
pub(crate) const OPTIMIZER_FILE: &str = "optimizer.safetensors";
/// The trainer state.
pub(crate) const STATE_FILE: &str = "trainer_state.json";

/// How the trainer's randomness is derived. Every random choice of the loop (the template of each sample)
/// comes from a ChaCha8 stream keyed by `(seed, epoch, batch)`, and the loader's shuffling and augmentation
/// are keyed by `(seed, epoch, clip)`, so the seed and the position are the whole RNG state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RngState {
    /// The run's seed.
    pub seed: u64,
    /// The scheme (for readers of the JSON).
    pub scheme: String,
}

/// Everything besides weights and moments that a resumed run needs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainerState {
    /// Format version of this file.
    pub version: u32,
    /// Completed epochs.
    pub epoch: usize,
    /// Training batches of the current (incomplete) epoch already used; 0 at an epoch boundary.
    pub batch_in_epoch: usize,
    /// Optimizer iterations done (the schedule's position).
    pub step: usize,
    /// AdamW updates applied (iterations minus those skipped by the f16 loss scaler).
    pub optimizer_steps: u64,
    /// Best test top-1 so far (fraction) and the epoch it was reached at.
    pub best_top1: Option<f64>,
    /// The epoch of `best_top1`.
    pub best_epoch: Option<usize>,
    /// The f16 loss scale (1 otherwise) and successful steps since its last change.
    pub loss_scale: f64,
    /// Successful f16 steps since the loss scale last changed.
    pub scale_good_steps: usize,
    /// The resolved learning-rate schedule.
    pub schedule: LrSchedule,
    /// The RNG state.
    pub rng: RngState,
    /// The training configuration.
    pub train_config: TrainConfig,
    /// The model configuration.
    pub model_config: ActionClipConfig,
    /// Mean training loss of each completed epoch.
    pub epoch_losses: Vec<f64>,
    /// Sum of the step losses of the current epoch so far (for its mean after a resume).
    pub epoch_loss_sum: f64,
    /// Steps in that sum.
    pub epoch_loss_count: usize,
}

impl TrainerState {
    /// The state of a run that has not started: epoch 0, no best metric, the f16 loss scale at its start.
    pub(crate) fn new(cfg: &TrainConfig, model_cfg: &ActionClipConfig) -> Self {
        Self {
            version: 1,
            epoch: 0,
            batch_in_epoch: 0,
            step: 0,
            optimizer_steps: 0,
            best_top1: None,
            best_epoch: None,
            loss_scale: if cfg.precision == Precision::F16 { cfg.loss_scale.init } else { 1.0 },
            scale_good_steps: 0,
            schedule: LrSchedule::Constant,
            rng: RngState {
                seed: cfg.seed,
                scheme: "ChaCha8 keyed by (seed, epoch, batch) for templates; loader keyed by (seed, epoch, clip)"
                    .into(),
            },
            train_config: cfg.clone(),
            model_config: model_cfg.clone(),
            epoch_losses: Vec::new(),
            epoch_loss_sum: 0.0,
            epoch_loss_count: 0,
        }
    }

    /// Adds the loss of an optimizer step to the current epoch's mean.
    pub(crate) fn add_step_loss(&mut self, loss: f64) {
        self.epoch_loss_sum += loss;
        self.epoch_loss_count += 1;
    }

    /// Closes the current epoch: counts it, records its mean step loss (NaN without steps) and returns it.
    pub(crate) fn close_epoch(&mut self) -> f64 {
        let mean =
            if self.epoch_loss_count > 0 { self.epoch_loss_sum / self.epoch_loss_count as f64 } else { f64::NAN };
        self.epoch += 1;
        self.batch_in_epoch = 0;
        self.epoch_loss_sum = 0.0;
        self.epoch_loss_count = 0;
        self.epoch_losses.push(mean);
        mean
    }

    /// Records a test top-1 after the current epoch; returns whether it is the best so far.
    pub(crate) fn record_top1(&mut self, top1: f64) -> bool {
        let improved = self.best_top1.is_none_or(|b| top1 > b);
        if improved {
            self.best_top1 = Some(top1);
            self.best_epoch = Some(self.epoch);
        }
        improved
    }
}

/// Writes the checkpoint directory `dir` atomically: the master weights (with `model_cfg` in the metadata),
/// the optimizer's moments and `state`.
pub(crate) fn save(
    dir: &Path,
    vars: &ModelVars,
    model_cfg: &ActionClipConfig,
    optimizer: &AdamW,
    state: &TrainerState,
) -> Result<()> {
    write_atomic(dir, |tmp| {
        crate::weights::save_safetensors(&vars.master_tensors()?, Some(model_cfg), tmp.join(MODEL_FILE))?;
        optimizer.save(tmp.join(OPTIMIZER_FILE))?;
        write_json(&tmp.join(STATE_FILE), state)
    })
}

/// Restores weights and optimizer moments from the checkpoint `dir` names (`run/last`, or `run` meaning
/// `run/last`) and returns its trainer state. The checkpoint must be of `model_cfg`'s architecture.
pub(crate) fn load(
    dir: &Path,
    vars: &ModelVars,
    model_cfg: &ActionClipConfig,
    optimizer: &mut AdamW,
) -> TrainResult<TrainerState> {
    let dir = locate(dir)?;
    let state = read_state(&dir)?;
    if &state.model_config != model_cfg {
        return Err(TrainError::ArchitectureMismatch {
            path: dir,
            reason: describe_config_difference(&state.model_config, model_cfg),
        });
    }
    let model_file = dir.join(MODEL_FILE);
    let weights = crate::weights::load(&model_file)?;
    vars.load_master(&weights.tensors).map_err(|e| TrainError::from_weights(&model_file, e))?;
    optimizer.load(dir.join(OPTIMIZER_FILE), state.optimizer_steps)?;
    Ok(state)
}

/// The checkpoint directory a resume names: `dir` itself, or `dir/last` when `dir` is a run directory, or
/// the previous checkpoint a swap left at `.{name}.old`.
fn locate(dir: &Path) -> Result<PathBuf> {
    let last = dir.join("last");
    let is_run_dir = !dir.join(STATE_FILE).is_file() && (last.exists() || old_path(&last).exists());
    resolve_checkpoint(if is_run_dir { &last } else { dir })
}

/// What differs between the model a checkpoint was trained with (`found`) and the requested one.
fn describe_config_difference(found: &ActionClipConfig, expected: &ActionClipConfig) -> String {
    let mut parts = Vec::new();
    if found.clip.vision != expected.clip.vision {
        parts.push(format!("image tower {:?} vs {:?}", found.clip.vision, expected.clip.vision));
    }
    if found.clip.text != expected.clip.text {
        parts.push(format!("text tower {:?} vs {:?}", found.clip.text, expected.clip.text));
    }
    if found.clip.embed_dim != expected.clip.embed_dim {
        parts.push(format!("embed_dim {} vs {}", found.clip.embed_dim, expected.clip.embed_dim));
    }
    if found.frames != expected.frames {
        parts.push(format!("frames {} vs {}", found.frames, expected.frames));
    }
    if found.prompt != expected.prompt {
        parts.push(format!("visual prompt {:?} vs {:?}", found.prompt, expected.prompt));
    }
    format!("the checkpoint was trained with a different model (checkpoint vs requested: {})", parts.join("; "))
}

/// Writes a checkpoint directory atomically: `write(tmp)` fills a temporary directory, which then replaces
/// `dir`.
pub(crate) fn write_atomic(dir: &Path, write: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    let parent = match dir.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = dir
        .file_name()
        .ok_or_else(|| Error::Config(format!("checkpoint path {} has no name", dir.display())))?
        .to_string_lossy()
        .into_owned();
    fs::create_dir_all(&parent).map_err(|e| Error::io(&parent, e))?;
    let tmp = parent.join(format!(".{name}.tmp"));
    let old = old_path(dir);
    if tmp.exists() {
        fs::remove_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
    }
    fs::create_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
    if let Err(e) = write(&tmp) {
        let _ = fs::remove_dir_all(&tmp);
        return Err(e);
    }
    // Flush every file, then the directory, before the swap.
    for entry in fs::read_dir(&tmp).map_err(|e| Error::io(&tmp, e))? {
        let path = entry.map_err(|e| Error::io(&tmp, e))?.path();
        let f = fs::File::open(&path).map_err(|e| Error::io(&path, e))?;
        f.sync_all().map_err(|e| Error::io(&path, e))?;
    }
    sync_dir(&tmp);
    if old.exists() {
        if dir.exists() {
            // A previous swap was interrupted after its first rename: `dir` is the newer whole checkpoint.
            fs::remove_dir_all(&old).map_err(|e| Error::io(&old, e))?;
        } else {
            fs::rename(&old, dir).map_err(|e| Error::io(dir, e))?;
            fs::remove_dir_all(&old).ok();
        }
    }
    if dir.exists() {
        fs::rename(dir, &old).map_err(|e| Error::io(dir, e))?;
    }
    fs::rename(&tmp, dir).map_err(|e| Error::io(dir, e))?;
    sync_dir(&parent);
    if old.exists() {
        fs::remove_dir_all(&old).map_err(|e| Error::io(&old, e))?;
    }
    Ok(())
}

fn sync_dir(dir: &Path) {
    // Directory fsync is not available everywhere (Windows); it is best effort.
    if let Ok(f) = fs::File::open(dir) {
        let _ = f.sync_all();
    }
}

/// `.{name}.old` beside `dir`: where the previous checkpoint waits during a swap.
pub(crate) fn old_path(dir: &Path) -> PathBuf {
    let name = dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    dir.with_file_name(format!(".{name}.old"))
}

/// The directory that holds the checkpoint `dir` names: `dir` itself when it holds a trainer state, or the
/// previous checkpoint a swap left at `.{name}.old` when a kill came between the two renames.
pub(crate) fn resolve_checkpoint(dir: &Path) -> Result<PathBuf> {
    if dir.join(STATE_FILE).is_file() {
        return Ok(dir.to_path_buf());
    }
    let old = old_path(dir);
    if old.join(STATE_FILE).is_file() {
        return Ok(old);
    }
    Err(Error::Checkpoint {
        path: dir.to_path_buf(),
        reason: format!("no checkpoint here (no {STATE_FILE}, and no {} either)", old.display()),
    })
}

/// Puts back a checkpoint a kill left at `.{name}.old` (when `dir` is missing). Returns whether it did.
pub(crate) fn recover(dir: &Path) -> Result<bool> {
    let old = old_path(dir);
    if !dir.exists() && old.join(STATE_FILE).is_file() {
        fs::rename(&old, dir).map_err(|e| Error::io(dir, e))?;
        return Ok(true);
    }
    Ok(false)
}

/// Reads `trainer_state.json` of a checkpoint directory.
pub fn read_state(dir: &Path) -> Result<TrainerState> {
    let path = dir.join(STATE_FILE);
    let text = fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
    serde_json::from_str(&text).map_err(|e| Error::Checkpoint { path, reason: format!("not a trainer state: {e}") })
}

/// Writes `value` as pretty JSON to `path`, atomically.
pub(crate) fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<()> {
    let text = serde_json::to_string_pretty(value)
        .map_err(|e| Error::Config(format!("cannot serialise {}: {e}", path.display())))?;
    write_file_atomic(path, (text + "\n").as_bytes())
}

/// Writes `bytes` to `path` through a temporary file beside it and a rename, so a kill or a full disk leaves
/// either the previous file or the new one, never a torn one.
pub(crate) fn write_file_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.tmp"));
    let written = fs::write(&tmp, bytes).and_then(|()| fs::rename(&tmp, path));
    if let Err(e) = written {
        let _ = fs::remove_file(&tmp);
        return Err(Error::io(path, e));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn swap_replaces_and_recovers() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("last");
        write_atomic(&dir, |tmp| fs::write(tmp.join(STATE_FILE), "1").map_err(|e| Error::io(tmp, e))).unwrap();
        write_atomic(&dir, |tmp| fs::write(tmp.join(STATE_FILE), "2").map_err(|e| Error::io(tmp, e))).unwrap();
        assert_eq!(fs::read_to_string(dir.join(STATE_FILE)).unwrap(), "2");
        // A failing writer leaves the previous checkpoint as it was.
        let err = write_atomic(&dir, |_| Err(Error::Config("boom".into())));
        assert!(err.is_err());
        assert_eq!(fs::read_to_string(dir.join(STATE_FILE)).unwrap(), "2");
        // A kill between the renames: only `.last.old` exists.
        fs::rename(&dir, old_path(&dir)).unwrap();
        assert_eq!(resolve_checkpoint(&dir).unwrap(), old_path(&dir));
        assert!(recover(&dir).unwrap());
        assert_eq!(fs::read_to_string(dir.join(STATE_FILE)).unwrap(), "2");
    }
}
