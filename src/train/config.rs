//! Training settings: [`TrainConfig`] (epochs, optimizer, schedule, accumulation, clipping, precision,
//! logging), where the weights start ([`StartFrom`]) and the data of a run ([`TrainData`]).
use serde::{Deserialize, Serialize};

use super::error::{TrainError, TrainResult};
use super::optimizer::AdamWConfig;
use super::schedule::LrSchedule;
use super::vars::{Freeze, Precision};
use crate::data::Loader;
use crate::weights::LoadedWeights;
use crate::Error;

/// The learning-rate policy (resolved to iterations once the epoch length is known).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum SchedulePolicy {
    /// Warmup, then cosine to 0 at the last iteration (the reference's `cosine`).
    Cosine,
    /// Warmup, then the rate times `gamma` at each milestone epoch (the reference's `multistep`).
    MultiStep {
        /// Epochs at which the rate drops.
        milestones: Vec<f64>,
        /// The drop factor.
        gamma: f64,
    },
    /// A constant rate (no warmup).
    Constant,
}

/// Dynamic loss scaling for f16 compute (as `torch.cuda.amp.GradScaler`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LossScaleConfig {
    /// The first scale.
    pub init: f64,
    /// The scale is multiplied by `growth` after this many finite steps in a row.
    pub growth_interval: usize,
    /// Growth factor.
    pub growth: f64,
    /// Factor applied (and the step skipped) when gradients overflow.
    pub backoff: f64,
}

impl Default for LossScaleConfig {
    /// 2^16, doubling every 2000 good steps, halving on overflow.
    fn default() -> Self {
        Self { init: 65536.0, growth_interval: 2000, growth: 2.0, backoff: 0.5 }
    }
}

/// Training settings (the model's own settings are its [`ActionClipConfig`](crate::ActionClipConfig)).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    /// Epochs to train.
    pub epochs: usize,
    /// AdamW and its parameter groups.
    pub optimizer: AdamWConfig,
    /// Warmup length in epochs (fractions allowed), converted to iterations.
    pub warmup_epochs: f64,
    /// The learning-rate policy after warmup.
    pub schedule: SchedulePolicy,
    /// Loader batches per optimizer step (gradients are averaged over them).
    pub accumulate: usize,
    /// Clip the global gradient norm to this value (the reference configures 20 but never applies it).
    pub clip_grad_norm: Option<f64>,
    /// Towers kept fixed.
    pub freeze: Freeze,
    /// Compute precision (master weights are always f32).
    pub precision: Precision,
    /// f16 loss scaling.
    pub loss_scale: LossScaleConfig,
    /// Seed of the initialisation of new weights and of the template choice.
    pub seed: u64,
    /// Write every n-th step to metrics.jsonl (and report it to the observer).
    pub log_every: usize,
    /// Evaluate every n epochs (and after the last); 0: only after the last.
    pub eval_every: usize,
    /// Evaluate the starting weights before training (zero-shot).
    pub zero_shot_eval: bool,
    /// Draw PNG plots into the run directory.
    pub plots: bool,
}

impl Default for TrainConfig {
    /// The reference's UCF101 recipe: 50 epochs, AdamW lr 5e-6 (image tower x1, head x10), weight decay 0.2,
    /// 5 warmup epochs then cosine, no clipping, f32, seed 0.
    fn default() -> Self {
        Self {
            epochs: 50,
            optimizer: AdamWConfig::default(),
            warmup_epochs: 5.0,
            schedule: SchedulePolicy::Cosine,
            accumulate: 1,
            clip_grad_norm: None,
            freeze: Freeze::default(),
            precision: Precision::F32,
            loss_scale: LossScaleConfig::default(),
            seed: 0,
            log_every: 1,
            eval_every: 1,
            zero_shot_eval: true,
            plots: true,
        }
    }
}

impl TrainConfig {
    /// Checks the values.
    pub fn validate(&self) -> crate::Result<()> {
        self.optimizer.validate()?;
        if self.accumulate == 0 || self.log_every == 0 {
            return Err(Error::Config("accumulate and log_every must be at least 1".into()));
        }
        if !(self.warmup_epochs.is_finite() && self.warmup_epochs >= 0.0) {
            return Err(Error::Config(format!("warmup_epochs must be >= 0, got {}", self.warmup_epochs)));
        }
        if let Some(c) = self.clip_grad_norm {
            if !(c.is_finite() && c > 0.0) {
                return Err(Error::Config(format!("clip_grad_norm must be positive, got {c}")));
            }
        }
        if self.precision == Precision::F16
            && !(self.loss_scale.init > 0.0
                && self.loss_scale.growth >= 1.0
                && self.loss_scale.backoff > 0.0
                && self.loss_scale.backoff < 1.0)
        {
            return Err(Error::Config("loss scaling needs init > 0, growth >= 1 and 0 < backoff < 1".into()));
        }
        Ok(())
    }

    /// The per-iteration schedule for `steps_per_epoch` optimizer steps per epoch.
    pub fn resolve_schedule(&self, steps_per_epoch: usize) -> LrSchedule {
        let warmup = (self.warmup_epochs * steps_per_epoch as f64).round() as usize;
        let total = (self.epochs * steps_per_epoch).max(1);
        match &self.schedule {
            SchedulePolicy::Constant => LrSchedule::Constant,
            SchedulePolicy::Cosine => LrSchedule::WarmupCosine { warmup: warmup.min(total), total },
            SchedulePolicy::MultiStep { milestones, gamma } => LrSchedule::WarmupMultiStep {
                warmup,
                milestones: milestones.iter().map(|m| (m * steps_per_epoch as f64).round() as usize).collect(),
                gamma: *gamma,
            },
        }
    }
}

/// Where the weights come from.
pub enum StartFrom {
    /// Every weight from its initialiser (seeded).
    Scratch,
    /// Pretrained weights (CLIP or ActionCLIP, any format [`crate::weights::load`] reads); weights the file
    /// lacks (a new temporal head, the joint time embedding) start from their initialisers.
    Weights(Box<LoadedWeights>),
}

/// The data of a run.
#[derive(Clone)]
pub struct TrainData {
    /// Training clips (a shuffling loader with the training pipeline).
    pub train: Loader,
    /// Test clips for the per-epoch evaluation (single view; no shuffle, no dropped batch).
    pub test: Option<Loader>,
    /// Test clips with a multi-view pipeline, evaluated after the last epoch.
    pub multi_view: Option<Loader>,
}

impl TrainData {
    /// Checks the splits before anything runs: non-empty, every label inside the class list, the same classes.
    pub fn validate(&self) -> TrainResult<()> {
        let mut splits = vec![("train", &self.train)];
        if let Some(t) = &self.test {
            splits.push(("test", t));
        }
        if let Some(t) = &self.multi_view {
            splits.push(("multi-view test", t));
        }
        let classes = &self.train.dataset().classes;
        for (name, loader) in splits {
            let ds = loader.dataset();
            if ds.is_empty() {
                return Err(TrainError::EmptySplit { split: name.to_string() });
            }
            if let Some(s) = ds.samples.iter().find(|s| s.label >= ds.classes.len()) {
                return Err(TrainError::LabelOutOfRange {
                    split: name.to_string(),
                    path: s.path.clone(),
                    label: s.label,
                    classes: ds.classes.len(),
                });
            }
            if &ds.classes != classes {
                return Err(Error::Labels(format!(
                    "the {name} split has {} classes that differ from the training split's {}",
                    ds.classes.len(),
                    classes.len()
                ))
                .into());
            }
        }
        Ok(())
    }
}
