//! The fine-tuning loop: per sample a random training template, the symmetric KL loss, backward, gradient
//! clipping, an AdamW step over the three parameter groups, a per-iteration schedule; evaluation after every
//! epoch; atomic `last/` and `best/` checkpoints; exact resume; metrics, plots and a summary in the run
//! directory. The library never prints: progress goes to an [`Observer`].
use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarMap;
use rand::Rng;
use serde::{Deserialize, Serialize};

use super::checkpoint::{self, RngState, TrainerState, MODEL_FILE, OPTIMIZER_FILE};
use super::eval::{self, EvalReport};
use super::metrics::{EpochLog, EvalLog, MetricsWriter, Record, StepLog};
use super::optimizer::{global_grad_norm, AdamW, AdamWConfig, Group};
use super::schedule::LrSchedule;
use super::vars::{Freeze, ModelVars, Precision};
use super::{TrainError, TrainResult};
use crate::data::{sample_rng, Loader, SampleFailure};
use crate::weights::LoadedWeights;
use crate::{loss, prompts, ActionClip, ActionClipConfig, Error, Tokenizer, TowerWeights};

/// Domain separating the template RNG from the loader's streams.
const TEMPLATE_DOMAIN: u64 = 0x5445_4d50_4c41_5445; // "TEMPLATE"

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

/// Training settings (the model's own settings are its [`ActionClipConfig`]).
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
        if self.precision == Precision::F16 && !(self.loss_scale.init > 0.0 && self.loss_scale.growth >= 1.0 && self.loss_scale.backoff > 0.0 && self.loss_scale.backoff < 1.0) {
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

/// What the trainer reports while it runs.
#[derive(Debug)]
pub enum Event<'a> {
    /// The run starts (or resumes).
    Started {
        /// Epochs of the run.
        epochs: usize,
        /// The first epoch to train (0-based).
        start_epoch: usize,
        /// Optimizer iterations already done.
        start_step: usize,
        /// Loader batches per epoch.
        batches_per_epoch: usize,
        /// Optimizer iterations per epoch.
        steps_per_epoch: usize,
        /// Trainable scalars.
        trainable: usize,
        /// Frozen scalars.
        frozen: usize,
        /// Whether this continues a checkpoint.
        resumed: bool,
    },
    /// An epoch starts.
    EpochStarted {
        /// 0-based epoch.
        epoch: usize,
        /// Loader batches in it.
        batches: usize,
        /// Batches already done (a resumed epoch).
        done: usize,
    },
    /// A loader batch went through forward and backward.
    Batch {
        /// 0-based epoch.
        epoch: usize,
        /// Batches of the epoch done.
        done: usize,
        /// Loss of the batch.
        loss: f64,
    },
    /// An optimizer step (every `log_every`-th).
    Step(&'a StepLog),
    /// Clips the loader could not read (already replaced or left out).
    LoaderFailures(&'a [SampleFailure]),
    /// An evaluation starts.
    EvalStarted {
        /// Completed epochs.
        epoch: usize,
        /// Test batches.
        batches: usize,
        /// Whether it is the multi-view evaluation.
        multi_view: bool,
    },
    /// Evaluation progress.
    EvalProgress {
        /// Batches done.
        done: usize,
        /// Batches in all.
        total: usize,
    },
    /// An evaluation finished.
    Evaluated(&'a EvalReport, &'a EvalLog),
    /// An epoch finished (after its evaluation).
    EpochEnded(&'a EpochLog),
    /// A checkpoint directory was written.
    CheckpointSaved {
        /// The directory.
        path: &'a Path,
        /// Whether it is `best/`.
        best: bool,
    },
    /// The observer asked to stop; `last/` holds the state to resume from.
    Stopped {
        /// Completed epochs.
        epoch: usize,
        /// Optimizer iterations done.
        step: usize,
    },
}

/// Receives progress; examples own printing and progress bars.
pub trait Observer {
    /// Called for every event.
    fn event(&mut self, _event: &Event<'_>) {}
    /// Polled after every optimizer step and epoch: `true` saves `last/` and returns.
    fn should_stop(&mut self) -> bool {
        false
    }
}

/// An observer that ignores everything.
pub struct Silent;
impl Observer for Silent {}

/// What one optimizer step did.
#[derive(Clone, Debug, PartialEq)]
pub struct StepOutput {
    /// Mean loss over the step's batches.
    pub loss: f64,
    /// Global gradient norm before clipping.
    pub grad_norm: f64,
    /// The schedule factor used.
    pub lr_factor: f64,
    /// Whether the update was skipped (f16 overflow).
    pub skipped: bool,
}

/// The outcome of [`Trainer::fit`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunSummary {
    /// Completed epochs.
    pub epochs: usize,
    /// Optimizer iterations.
    pub steps: usize,
    /// Whether the observer stopped the run early.
    pub stopped: bool,
    /// Best single-view test top-1 and its epoch.
    pub best_top1: Option<f64>,
    /// The epoch of the best top-1.
    pub best_epoch: Option<usize>,
    /// The starting weights' (zero-shot) evaluation.
    pub zero_shot: Option<EvalReport>,
    /// The last single-view evaluation.
    pub last_eval: Option<EvalReport>,
    /// The multi-view evaluation after the last epoch.
    pub multi_view: Option<EvalReport>,
    /// Wall-clock seconds of this call.
    pub seconds: f64,
    /// Mean training loss per completed epoch.
    pub epoch_losses: Vec<f64>,
}

/// The fine-tuning engine.
pub struct Trainer {
    cfg: TrainConfig,
    model_cfg: ActionClipConfig,
    vars: ModelVars,
    optimizer: AdamW,
    state: TrainerState,
    run_dir: Option<PathBuf>,
    tokenizer: Tokenizer,
    grad_acc: Vec<Option<Tensor>>,
    micro: usize,
    micro_loss: f64,
    micro_clips: usize,
    resumed: bool,
    run_info: serde_json::Value,
}

impl Trainer {
    /// A trainer for a model of `model_cfg`, starting from scratch or from pretrained weights.
    pub fn new(model_cfg: &ActionClipConfig, start: StartFrom, cfg: TrainConfig, device: &Device) -> TrainResult<Self> {
        cfg.validate()?;
        model_cfg.validate()?;
        let master = VarMap::new();
        let vars = ModelVars::new(master, model_cfg, cfg.seed, cfg.freeze, cfg.precision, device)?;
        if let StartFrom::Weights(weights) = &start {
            let missing = weights.copy_into_var_map(&vars.master).map_err(|e| match e {
                Error::KeyShape { key, found, expected } => TrainError::ArchitectureMismatch {
                    path: weights.path.clone(),
                    reason: format!("{key} has shape {found:?} in the checkpoint, the model needs {expected:?}"),
                },
                other => other.into(),
            })?;
            if let Some(key) = missing.iter().find(|k| !(k.starts_with("fusion_model.") || *k == "visual.time_embedding")) {
                return Err(TrainError::ArchitectureMismatch {
                    path: weights.path.clone(),
                    reason: format!("{key} is missing ({} weights missing in all); only a new temporal head or time embedding may start from scratch", missing.len()),
                });
            }
            vars.sync_compute()?;
        }
        let params = vars.trainable.iter().map(|(n, v, _)| (n.clone(), v.clone())).collect();
        let optimizer = AdamW::new(params, cfg.optimizer.clone())?;
        let state = TrainerState {
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
            rng: RngState { seed: cfg.seed, scheme: "ChaCha8 keyed by (seed, epoch, batch) for templates; loader keyed by (seed, epoch, clip)".into() },
            train_config: cfg.clone(),
            model_config: model_cfg.clone(),
            epoch_losses: Vec::new(),
            epoch_loss_sum: 0.0,
            epoch_loss_count: 0,
        };
        let n = vars.trainable.len();
        Ok(Self {
            cfg,
            model_cfg: model_cfg.clone(),
            vars,
            optimizer,
            state,
            run_dir: None,
            tokenizer: Tokenizer::new(),
            grad_acc: vec![None; n],
            micro: 0,
            micro_loss: 0.0,
            micro_clips: 0,
            resumed: false,
            run_info: serde_json::Value::Null,
        })
    }

    /// Sets the run directory (created by [`Trainer::fit`]); without one nothing is written.
    pub fn with_run_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.run_dir = Some(dir.into());
        self
    }

    /// Extra JSON (for example the command line's resolved options) stored in the run's `config.json`.
    pub fn set_run_info(&mut self, info: serde_json::Value) {
        self.run_info = info;
    }

    /// The run directory.
    pub fn run_dir(&self) -> Option<&Path> {
        self.run_dir.as_deref()
    }

    /// The model being trained (its compute copy).
    pub fn model(&self) -> &ActionClip {
        &self.vars.model
    }

    /// The model configuration.
    pub fn model_config(&self) -> &ActionClipConfig {
        &self.model_cfg
    }

    /// The training configuration.
    pub fn config(&self) -> &TrainConfig {
        &self.cfg
    }

    /// The f32 master variables by canonical name.
    pub fn varmap(&self) -> &VarMap {
        &self.vars.master
    }

    /// A copy of the master weights by canonical name (f32).
    pub fn weights(&self) -> std::collections::HashMap<String, Tensor> {
        self.vars.master_tensors().unwrap_or_default()
    }

    /// The optimizer.
    pub fn optimizer(&self) -> &AdamW {
        &self.optimizer
    }

    /// The trainer state (epoch, step, best metric, ...).
    pub fn state(&self) -> &TrainerState {
        &self.state
    }

    /// Sets the learning-rate schedule directly ([`Trainer::fit`] resolves it from the config otherwise).
    pub fn set_schedule(&mut self, schedule: LrSchedule) -> TrainResult<()> {
        schedule.validate()?;
        self.state.schedule = schedule;
        Ok(())
    }

    /// Continues from a checkpoint directory (`run/last`, or `run` itself meaning `run/last`): weights,
    /// optimizer moments and trainer state. The checkpoint must be of this model's architecture.
    pub fn resume(&mut self, dir: impl AsRef<Path>) -> TrainResult<()> {
        let mut dir = dir.as_ref().to_path_buf();
        if !dir.join(checkpoint::STATE_FILE).is_file() && (dir.join("last").exists() || checkpoint::old_path(&dir.join("last")).exists()) {
            dir = dir.join("last");
        }
        let dir = checkpoint::resolve_checkpoint(&dir)?;
        let mut state = checkpoint::read_state(&dir)?;
        if state.model_config != self.model_cfg {
            return Err(TrainError::ArchitectureMismatch { path: dir.clone(), reason: describe_config_difference(&state.model_config, &self.model_cfg) });
        }
        let weights = crate::weights::load(dir.join(MODEL_FILE))?;
        self.vars.load_master(&weights.tensors).map_err(|e| match e {
            Error::KeyShape { key, found, expected } => TrainError::ArchitectureMismatch {
                path: dir.join(MODEL_FILE),
                reason: format!("{key} has shape {found:?} in the checkpoint, the model needs {expected:?}"),
            },
            Error::MissingKey { key, .. } => TrainError::ArchitectureMismatch { path: dir.join(MODEL_FILE), reason: format!("{key} is missing") },
            other => other.into(),
        })?;
        self.optimizer.load(dir.join(OPTIMIZER_FILE), state.optimizer_steps)?;
        state.train_config = self.cfg.clone();
        self.state = state;
        self.resumed = true;
        self.clear_accumulation();
        Ok(())
    }

    fn clear_accumulation(&mut self) {
        self.grad_acc.iter_mut().for_each(|g| *g = None);
        self.micro = 0;
        self.micro_loss = 0.0;
        self.micro_clips = 0;
    }

    /// Forward and backward of one batch; gradients are added to the accumulation buffers (weighted by
    /// `1 / accumulate`). Returns the batch's loss.
    // frames [B, T, 3, H, W], tokens [B, 77] u32, B labels
    pub fn accumulate(&mut self, frames: &Tensor, tokens: &Tensor, labels: &[u32]) -> TrainResult<f64> {
        let model = &self.vars.model;
        let video = model.encode_video_t(frames, true)?;
        let text = model.encode_text_t(tokens, true)?;
        let (v2t, t2v) = model.logits(&video, &text)?;
        let l = loss::symmetric_kl_loss(&v2t, &t2v, labels)?;
        let value = l.to_dtype(DType::F32)?.to_scalar::<f32>()? as f64;
        if !value.is_finite() {
            self.clear_accumulation();
            let last = self.run_dir.as_ref().map(|d| d.join("last")).filter(|d| d.join(checkpoint::STATE_FILE).is_file());
            return Err(TrainError::NonFiniteLoss { epoch: self.state.epoch, step: self.state.step, loss: value, last_good: last });
        }
        let weight = self.state.loss_scale / self.cfg.accumulate as f64;
        let scaled = if weight == 1.0 { l } else { l.affine(weight, 0.0)? };
        let grads = scaled.backward()?;
        for (slot, (_, _, t)) in self.grad_acc.iter_mut().zip(&self.vars.trainable) {
            if let Some(g) = grads.get(t) {
                let g = g.detach().to_dtype(DType::F32)?;
                *slot = Some(match slot.take() {
                    Some(acc) => (acc + g)?,
                    None => g,
                });
            }
        }
        self.micro += 1;
        self.micro_loss += value;
        self.micro_clips += labels.len();
        Ok(value)
    }

    /// Applies the accumulated gradients: unscale, overflow check (f16), clip, AdamW at the schedule's rate,
    /// refresh the compute copy, advance the iteration.
    pub fn apply_step(&mut self) -> TrainResult<StepOutput> {
        let mut grads: Vec<Option<Tensor>> = self.grad_acc.iter_mut().map(|g| g.take()).collect();
        let loss = if self.micro > 0 { self.micro_loss / self.micro as f64 } else { f64::NAN };
        self.micro = 0;
        self.micro_loss = 0.0;
        let scale = self.state.loss_scale;
        if scale != 1.0 {
            for g in grads.iter_mut().flatten() {
                *g = g.affine(1.0 / scale, 0.0)?;
            }
        }
        let norm = global_grad_norm(&grads)?;
        let lr_factor = self.state.schedule.factor(self.state.step);
        let mut skipped = false;
        if !norm.is_finite() {
            if self.cfg.precision == Precision::F16 {
                skipped = true;
                self.state.loss_scale *= self.cfg.loss_scale.backoff;
                self.state.scale_good_steps = 0;
            } else {
                return Err(TrainError::NonFiniteGradient { epoch: self.state.epoch, step: self.state.step });
            }
        }
        if !skipped {
            if let Some(max) = self.cfg.clip_grad_norm {
                let coef = max / (norm + 1e-6);
                if coef < 1.0 {
                    for g in grads.iter_mut().flatten() {
                        *g = g.affine(coef, 0.0)?;
                    }
                }
            }
            self.optimizer.step(&grads, lr_factor)?;
            self.vars.sync_compute()?;
            self.state.optimizer_steps = self.optimizer.step_count();
            if self.cfg.precision == Precision::F16 {
                self.state.scale_good_steps += 1;
                if self.state.scale_good_steps >= self.cfg.loss_scale.growth_interval {
                    self.state.loss_scale *= self.cfg.loss_scale.growth;
                    self.state.scale_good_steps = 0;
                }
            }
        }
        self.state.step += 1;
        Ok(StepOutput { loss, grad_norm: norm, lr_factor, skipped })
    }

    /// One optimizer step on one batch (`accumulate` then `apply_step`); the step PyTorch's training loop
    /// takes, for parity checks and custom loops.
    pub fn train_step(&mut self, frames: &Tensor, tokens: &Tensor, labels: &[u32]) -> TrainResult<StepOutput> {
        self.accumulate(frames, tokens, labels)?;
        self.apply_step()
    }

    /// Writes a checkpoint directory (atomically): model, optimizer state, trainer state.
    pub fn save_checkpoint(&self, dir: impl AsRef<Path>) -> TrainResult<()> {
        checkpoint::write_atomic(dir.as_ref(), |tmp| {
            crate::weights::save_safetensors(&self.vars.master_tensors()?, Some(&self.model_cfg), tmp.join(MODEL_FILE))?;
            self.optimizer.save(tmp.join(OPTIMIZER_FILE))?;
            checkpoint::write_json(&tmp.join(checkpoint::STATE_FILE), &self.state)
        })?;
        Ok(())
    }

    /// Evaluates the current weights on `loader` (see [`eval::evaluate`]); the dataset's class names are
    /// humanized for the prompts.
    pub fn evaluate(&self, loader: &Loader, progress: &mut dyn FnMut(usize, usize)) -> TrainResult<EvalReport> {
        self.evaluate_with(TowerWeights::Full, loader, progress)
    }

    /// [`Trainer::evaluate`] with the towers' linear weights held as `format` (f16 or int8 inference; see
    /// [`ActionClip::with_tower_weights`]).
    pub fn evaluate_with(&self, format: TowerWeights, loader: &Loader, progress: &mut dyn FnMut(usize, usize)) -> TrainResult<EvalReport> {
        let words = class_words(&loader.dataset().classes)?;
        let converted;
        let model = match format {
            TowerWeights::Full => &self.vars.model,
            _ => {
                converted = self.vars.model.with_tower_weights(format)?;
                &converted
            }
        };
        Ok(eval::evaluate(model, &self.tokenizer, &words, loader, self.state.epoch, self.state.step, progress)?)
    }

    /// Trains for the configured epochs (from where a resumed checkpoint left off), evaluating, saving and
    /// plotting along the way.
    pub fn fit(&mut self, data: &TrainData, observer: &mut dyn Observer) -> TrainResult<RunSummary> {
        let start = Instant::now();
        validate_data(data)?;
        let classes = data.train.dataset().classes.clone();
        let words = class_words(&classes)?;
        let token_cache = self.token_cache(&words)?;
        let batches = data.train.num_batches();
        let steps_per_epoch = batches.div_ceil(self.cfg.accumulate);
        self.state.schedule = self.cfg.resolve_schedule(steps_per_epoch);
        self.state.schedule.validate()?;
        self.state.train_config = self.cfg.clone();

        let mut metrics = match &self.run_dir {
            Some(dir) => {
                std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
                checkpoint::recover(&dir.join("last"))?;
                checkpoint::recover(&dir.join("best"))?;
                self.write_run_config(dir, data)?;
                let keep = self.resumed.then_some((self.state.step, self.state.epoch));
                Some(MetricsWriter::open(&dir.join("metrics.jsonl"), keep)?)
            }
            None => None,
        };
        let (trainable, frozen) = self.vars.counts();
        observer.event(&Event::Started {
            epochs: self.cfg.epochs,
            start_epoch: self.state.epoch,
            start_step: self.state.step,
            batches_per_epoch: batches,
            steps_per_epoch,
            trainable,
            frozen,
            resumed: self.resumed,
        });

        let mut summary = RunSummary {
            epochs: self.state.epoch,
            steps: self.state.step,
            stopped: false,
            best_top1: self.state.best_top1,
            best_epoch: self.state.best_epoch,
            zero_shot: None,
            last_eval: None,
            multi_view: None,
            seconds: 0.0,
            epoch_losses: self.state.epoch_losses.clone(),
        };
        if let (Some(test), true, true) = (&data.test, self.cfg.zero_shot_eval, !self.resumed && self.state.step == 0) {
            let report = self.run_eval(test, false, true, &mut metrics, observer)?;
            summary.zero_shot = Some(report);
        }

        let run_start = Instant::now();
        while self.state.epoch < self.cfg.epochs {
            let epoch = self.state.epoch;
            let epoch_start = Instant::now();
            observer.event(&Event::EpochStarted { epoch, batches, done: self.state.batch_in_epoch });
            let skip = self.state.batch_in_epoch;
            let mut it = data.train.epoch(epoch as u64);
            let mut step_timer = Instant::now();
            let mut last_index = skip;
            for batch in it.by_ref() {
                let batch = batch?;
                if batch.index < skip {
                    continue;
                }
                if !batch.failures.is_empty() {
                    observer.event(&Event::LoaderFailures(&batch.failures));
                }
                let labels = batch.labels.to_vec1::<u32>()?;
                if let Some(&bad) = labels.iter().find(|&&l| l as usize >= classes.len()) {
                    let id = batch.ids[labels.iter().position(|&l| l == bad).unwrap_or(0)];
                    return Err(TrainError::LabelOutOfRange {
                        split: "train".into(),
                        path: data.train.dataset().samples[id].path.clone(),
                        label: bad as usize,
                        classes: classes.len(),
                    });
                }
                let tokens = self.prompt_tokens(&token_cache, classes.len(), &labels, epoch, batch.index)?;
                let loss = self.accumulate(&batch.frames, &tokens, &labels)?;
                last_index = batch.index + 1;
                observer.event(&Event::Batch { epoch, done: last_index, loss });
                if self.micro == self.cfg.accumulate {
                    let stop = self.finish_step(epoch, last_index, batches, &mut step_timer, run_start, &mut metrics, observer)?;
                    if stop {
                        drop(it);
                        return self.stop_early(summary, start, observer);
                    }
                }
            }
            drop(it);
            if self.micro > 0 {
                let stop = self.finish_step(epoch, last_index.max(batches), batches, &mut step_timer, run_start, &mut metrics, observer)?;
                if stop && self.state.batch_in_epoch < batches {
                    return self.stop_early(summary, start, observer);
                }
            }
            let train_seconds = epoch_start.elapsed().as_secs_f64();
            let mean_loss = if self.state.epoch_loss_count > 0 { self.state.epoch_loss_sum / self.state.epoch_loss_count as f64 } else { f64::NAN };
            self.state.epoch += 1;
            self.state.batch_in_epoch = 0;
            self.state.epoch_loss_sum = 0.0;
            self.state.epoch_loss_count = 0;
            self.state.epoch_losses.push(mean_loss);
            summary.epoch_losses = self.state.epoch_losses.clone();

            let last_epoch = self.state.epoch == self.cfg.epochs;
            let due = last_epoch || (self.cfg.eval_every > 0 && self.state.epoch.is_multiple_of(self.cfg.eval_every));
            let mut improved = false;
            let mut eval_report = None;
            if let (Some(test), true) = (&data.test, due) {
                let report = self.run_eval(test, false, false, &mut metrics, observer)?;
                if self.state.best_top1.is_none_or(|b| report.top1 > b) {
                    self.state.best_top1 = Some(report.top1);
                    self.state.best_epoch = Some(self.state.epoch);
                    improved = true;
                }
                eval_report = Some(report);
            }
            let epoch_log = EpochLog {
                epoch: self.state.epoch,
                step: self.state.step,
                train_loss: mean_loss,
                top1: eval_report.as_ref().map(|r| r.top1),
                top5: eval_report.as_ref().map(|r| r.top5),
                best_top1: self.state.best_top1,
                train_seconds,
            };
            if let Some(m) = metrics.as_mut() {
                m.write(&Record::Epoch(epoch_log.clone()))?;
            }
            observer.event(&Event::EpochEnded(&epoch_log));
            if let Some(dir) = self.run_dir.clone() {
                self.save_checkpoint(dir.join("last"))?;
                observer.event(&Event::CheckpointSaved { path: &dir.join("last"), best: false });
                if improved || (data.test.is_none() && last_epoch) {
                    self.save_checkpoint(dir.join("best"))?;
                    observer.event(&Event::CheckpointSaved { path: &dir.join("best"), best: true });
                }
                if self.cfg.plots {
                    self.draw_plots(&dir, eval_report.as_ref(), &classes)?;
                }
            }
            summary.epochs = self.state.epoch;
            summary.steps = self.state.step;
            summary.best_top1 = self.state.best_top1;
            summary.best_epoch = self.state.best_epoch;
            if eval_report.is_some() {
                summary.last_eval = eval_report;
            }
            if !last_epoch && observer.should_stop() {
                return self.stop_early(summary, start, observer);
            }
        }
        if let Some(mv) = &data.multi_view {
            summary.multi_view = Some(self.run_eval(mv, true, false, &mut metrics, observer)?);
        }
        summary.seconds = start.elapsed().as_secs_f64();
        if let Some(dir) = &self.run_dir {
            self.write_summary(dir, &summary, &classes)?;
        }
        Ok(summary)
    }

    #[allow(clippy::too_many_arguments)]
    fn finish_step(
        &mut self,
        epoch: usize,
        done: usize,
        batches: usize,
        timer: &mut Instant,
        run_start: Instant,
        metrics: &mut Option<MetricsWriter>,
        observer: &mut dyn Observer,
    ) -> TrainResult<bool> {
        let clips = self.micro_clips;
        self.micro_clips = 0;
        let out = self.apply_step()?;
        self.state.batch_in_epoch = done;
        self.state.epoch_loss_sum += out.loss;
        self.state.epoch_loss_count += 1;
        let seconds = timer.elapsed().as_secs_f64();
        *timer = Instant::now();
        if self.state.step.is_multiple_of(self.cfg.log_every) {
            let lr = |g: Group| self.cfg.optimizer.group_lr(g) * out.lr_factor;
            let log = StepLog {
                epoch,
                step: self.state.step,
                batch: done,
                batches,
                loss: out.loss,
                lr: lr(Group::Text),
                lr_visual: lr(Group::Visual),
                lr_fusion: lr(Group::Fusion),
                grad_norm: out.grad_norm,
                loss_scale: self.state.loss_scale,
                skipped: out.skipped,
                clips,
                clips_per_s: clips as f64 / seconds.max(1e-9),
                elapsed_s: run_start.elapsed().as_secs_f64(),
            };
            if let Some(m) = metrics.as_mut() {
                m.write(&Record::Step(log.clone()))?;
            }
            observer.event(&Event::Step(&log));
        }
        Ok(observer.should_stop())
    }

    fn stop_early(&mut self, mut summary: RunSummary, start: Instant, observer: &mut dyn Observer) -> TrainResult<RunSummary> {
        self.clear_accumulation();
        if let Some(dir) = self.run_dir.clone() {
            self.save_checkpoint(dir.join("last"))?;
            observer.event(&Event::CheckpointSaved { path: &dir.join("last"), best: false });
        }
        observer.event(&Event::Stopped { epoch: self.state.epoch, step: self.state.step });
        summary.stopped = true;
        summary.epochs = self.state.epoch;
        summary.steps = self.state.step;
        summary.seconds = start.elapsed().as_secs_f64();
        Ok(summary)
    }

    fn run_eval(&mut self, loader: &Loader, multi_view: bool, zero_shot: bool, metrics: &mut Option<MetricsWriter>, observer: &mut dyn Observer) -> TrainResult<EvalReport> {
        observer.event(&Event::EvalStarted { epoch: self.state.epoch, batches: loader.num_batches(), multi_view });
        let report = {
            let mut progress = |done: usize, total: usize| observer.event(&Event::EvalProgress { done, total });
            self.evaluate(loader, &mut progress)?
        };
        let log = EvalLog {
            epoch: report.epoch,
            step: report.step,
            split: if multi_view { "test_multiview".into() } else { "test".into() },
            zero_shot,
            views: report.views,
            samples: report.samples,
            top1: report.top1,
            top5: report.top5,
            mean_class_accuracy: report.mean_class_accuracy,
            seconds: report.seconds,
        };
        if let Some(m) = metrics.as_mut() {
            m.write(&Record::Eval(log.clone()))?;
        }
        if let Some(dir) = &self.run_dir {
            let name = if zero_shot { "eval_zero_shot.json" } else if multi_view { "eval_multiview.json" } else { "eval_last.json" };
            checkpoint::write_json(&dir.join(name), &report)?;
        }
        observer.event(&Event::Evaluated(&report, &log));
        Ok(report)
    }

    /// Tokens of every (template, class) sentence, template-major, 77 ids each.
    fn token_cache(&self, words: &[String]) -> TrainResult<Vec<u32>> {
        let sentences = prompts::fill_all(&prompts::ACTIONCLIP_TEMPLATES, words);
        let mut out = Vec::with_capacity(sentences.len() * 77);
        for s in &sentences {
            out.extend(self.tokenizer.tokenize(s, true)?);
        }
        Ok(out)
    }

    /// The training text of each sample: a uniformly drawn template with its class, keyed by
    /// (seed, epoch, batch) so that a resumed run draws the same.
    fn prompt_tokens(&self, cache: &[u32], classes: usize, labels: &[u32], epoch: usize, batch: usize) -> TrainResult<Tensor> {
        let ctx = self.model_cfg.clip.text.context_length;
        let row = cache.len() / (prompts::ACTIONCLIP_TEMPLATES.len() * classes);
        let mut rng = sample_rng(self.cfg.seed ^ TEMPLATE_DOMAIN, epoch as u64, batch as u64);
        let mut ids = Vec::with_capacity(labels.len() * ctx);
        for &label in labels {
            let j = rng.gen_range(0..prompts::ACTIONCLIP_TEMPLATES.len());
            let at = (j * classes + label as usize) * row;
            let mut r = cache[at..at + row].to_vec();
            r.resize(ctx, 0);
            ids.extend(r);
        }
        Ok(Tensor::from_vec(ids, (labels.len(), ctx), self.vars.model.device())?)
    }

    fn write_run_config(&self, dir: &Path, data: &TrainData) -> TrainResult<()> {
        let describe = |l: &Loader| serde_json::json!({ "clips": l.dataset().len(), "batches": l.num_batches(), "batch_size": l.config().batch_size, "workers": l.config().workers, "seed": l.config().seed });
        let value = serde_json::json!({
            "model": self.model_cfg,
            "train": self.cfg,
            "data": {
                "classes": data.train.dataset().classes,
                "train": describe(&data.train),
                "test": data.test.as_ref().map(describe),
                "multi_view": data.multi_view.as_ref().map(describe),
            },
            "run": self.run_info,
        });
        checkpoint::write_json(&dir.join("config.json"), &value)?;
        Ok(())
    }

    fn draw_plots(&self, dir: &Path, eval: Option<&EvalReport>, classes: &[String]) -> TrainResult<()> {
        let records = super::metrics::read_records(&dir.join("metrics.jsonl"))?;
        super::plots::plot_curves(&records, &dir.join("curves.png"))?;
        if let Some(report) = eval {
            super::plots::plot_confusion(report, classes, &dir.join("confusion.png"))?;
        }
        Ok(())
    }

    fn write_summary(&self, dir: &Path, summary: &RunSummary, classes: &[String]) -> TrainResult<()> {
        checkpoint::write_json(&dir.join("summary.json"), summary)?;
        let pct = |x: f64| format!("{:.2}%", 100.0 * x);
        let mut md = String::from("# Fine-tuning run\n\n");
        md.push_str(&format!("- model: vision width {} x {} layers, patch {}, {} px; text width {} x {} layers; {} frames; temporal prompt {:?}\n",
            self.model_cfg.clip.vision.width, self.model_cfg.clip.vision.layers, self.model_cfg.clip.vision.patch_size, self.model_cfg.clip.vision.image_size,
            self.model_cfg.clip.text.width, self.model_cfg.clip.text.layers, self.model_cfg.frames, self.model_cfg.prompt));
        md.push_str(&format!("- epochs: {} ({} optimizer steps), {:.1} s\n", summary.epochs, summary.steps, summary.seconds));
        if let Some(z) = &summary.zero_shot {
            md.push_str(&format!("- starting weights (zero-shot): top-1 {}, top-5 {}\n", pct(z.top1), pct(z.top5)));
        }
        if let Some(e) = &summary.last_eval {
            md.push_str(&format!("- last epoch: top-1 {}, top-5 {}, mean class accuracy {} over {} clips\n", pct(e.top1), pct(e.top5), pct(e.mean_class_accuracy), e.samples));
            let mut worst: Vec<(usize, f64)> = e.per_class.iter().copied().enumerate().filter(|(k, _)| e.class_counts[*k] > 0).collect();
            worst.sort_by(|a, b| a.1.total_cmp(&b.1));
            let names: Vec<String> = worst.iter().take(5).map(|(k, a)| format!("{} {}", classes.get(*k).map(String::as_str).unwrap_or("?"), pct(*a))).collect();
            md.push_str(&format!("- weakest classes: {}\n", names.join(", ")));
        }
        if let (Some(b), Some(ep)) = (summary.best_top1, summary.best_epoch) {
            md.push_str(&format!("- best top-1: {} at epoch {} (checkpoint `best/`)\n", pct(b), ep));
        }
        if let Some(m) = &summary.multi_view {
            md.push_str(&format!("- multi-view ({} views): top-1 {}, top-5 {}\n", m.views, pct(m.top1), pct(m.top5)));
        }
        md.push_str("\nFiles: `metrics.jsonl`, `config.json`, `curves.png`, `confusion.png`, `last/`, `best/` (load with `ActionClip::load(\"<run>/best\")`).\n");
        std::fs::write(dir.join("summary.md"), md).map_err(|e| Error::io(dir.join("summary.md"), e))?;
        Ok(())
    }
}

/// Humanized class names for the prompts; they must be distinct.
fn class_words(classes: &[String]) -> TrainResult<Vec<String>> {
    if classes.is_empty() {
        return Err(Error::Labels("the class list is empty".into()).into());
    }
    let words: Vec<String> = classes.iter().map(|c| prompts::humanize(c)).collect();
    for (i, w) in words.iter().enumerate() {
        if let Some(j) = words[..i].iter().position(|x| x == w) {
            return Err(Error::Labels(format!("classes {:?} and {:?} both read {w:?} as words; rename one", classes[j], classes[i])).into());
        }
    }
    Ok(words)
}

/// Checks the splits before anything runs: non-empty, every label inside the class list, the same classes.
pub fn validate_data(data: &TrainData) -> TrainResult<()> {
    let mut splits = vec![("train", &data.train)];
    if let Some(t) = &data.test {
        splits.push(("test", t));
    }
    if let Some(t) = &data.multi_view {
        splits.push(("multi-view test", t));
    }
    let classes = &data.train.dataset().classes;
    for (name, loader) in splits {
        let ds = loader.dataset();
        if ds.is_empty() {
            return Err(TrainError::EmptySplit { split: name.to_string() });
        }
        if let Some(s) = ds.samples.iter().find(|s| s.label >= ds.classes.len()) {
            return Err(TrainError::LabelOutOfRange { split: name.to_string(), path: s.path.clone(), label: s.label, classes: ds.classes.len() });
        }
        if &ds.classes != classes {
            return Err(Error::Labels(format!("the {name} split has {} classes that differ from the training split's {}", ds.classes.len(), classes.len())).into());
        }
    }
    Ok(())
}

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
