//! The fine-tuning engine: [`Trainer`] holds the model's variables, AdamW and the trainer state, takes steps
//! ([`Trainer::accumulate`], [`Trainer::apply_step`]) and runs epochs ([`Trainer::fit`]): per sample a
//! random training template, the symmetric KL loss, an optimizer step per `accumulate` batches, evaluation
//! after the epoch, atomic `last/` and `best/` checkpoints and the run directory's files. The library never
//! prints: progress goes to an [`Observer`].
//!
//! In a data-parallel job ([`Trainer::with_collective`]) every rank runs the same calls: each trains on its
//! share of every epoch, the loss is taken over the global batch, gradients are summed before clipping,
//! evaluation is split between the ranks, and rank 0 alone writes the run directory, each write followed
//! by an exchange of every rank's status, so a failure anywhere stops every rank with that rank's error.
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::VarMap;

use super::checkpoint::{self, TrainerState, STATE_FILE};
use super::config::{StartFrom, TrainConfig, TrainData};
use super::distributed::{self, Collective, ReduceOp, SingleProcess};
use super::error::{TrainError, TrainResult};
use super::eval::{self, EvalReport};
use super::events::{Event, Observer, RunSummary, StepOutput};
use super::metrics::{EpochLog, EvalLog, Record, StepLog};
use super::optimizer::{AdamW, Group};
use super::run_dir::{run_config, EvalKind, RunDir};
use super::schedule::LrSchedule;
use super::step::{self, Accumulated, Encoded, GradAccumulator};
use super::templates::{class_words, PromptBank};
use super::vars::ModelVars;
use crate::data::{Batch, Loader, Shard};
use crate::{ActionClip, ActionClipConfig, Tokenizer, TowerWeights};

/// The fine-tuning engine.
pub struct Trainer {
    cfg: TrainConfig,
    model_cfg: ActionClipConfig,
    vars: ModelVars,
    optimizer: AdamW,
    state: TrainerState,
    run_dir: Option<PathBuf>,
    tokenizer: Tokenizer,
    acc: GradAccumulator,
    resumed: bool,
    run_info: serde_json::Value,
    /// The ranks of the job ([`SingleProcess`] unless [`Trainer::with_collective`] set one).
    collective: Box<dyn Collective>,
    /// Shapes of the trainable parameters, in the order of the gradient slots.
    grad_shapes: Vec<Shape>,
}

/// What one call of [`Trainer::fit`] carries from part to part.
struct Run<'a> {
    /// The run's data, the training loader cut to this rank's share.
    data: TrainData,
    observer: &'a mut dyn Observer,
    out: Option<RunDir>,
    classes: Vec<String>,
    prompts: PromptBank,
    /// Loader batches per epoch.
    batches: usize,
    summary: RunSummary,
    /// When `fit` was called.
    called: Instant,
    /// When training began (after the zero-shot evaluation): the step records' clock.
    training: Instant,
    /// When the current epoch began.
    epoch_began: Instant,
    /// When the previous optimizer step ended: the clips-per-second clock.
    step_ended: Instant,
}

impl Run<'_> {
    /// Appends a line to `metrics.jsonl` when there is a run directory.
    fn record(&mut self, record: Record) -> TrainResult<()> {
        if let Some(out) = &mut self.out {
            out.record(&record)?;
        }
        Ok(())
    }
}

impl Trainer {
    /// A trainer for a model of `model_cfg`, starting from scratch or from pretrained weights.
    pub fn new(model_cfg: &ActionClipConfig, start: StartFrom, cfg: TrainConfig, device: &Device) -> TrainResult<Self> {
        cfg.validate()?;
        model_cfg.validate()?;
        let vars = ModelVars::new(VarMap::new(), model_cfg, cfg.seed, cfg.freeze, cfg.precision, device)?;
        if let StartFrom::Weights(weights) = &start {
            let missing =
                weights.copy_into_var_map(&vars.master).map_err(|e| TrainError::from_weights(&weights.path, e))?;
            if let Some(key) =
                missing.iter().find(|k| !(k.starts_with("fusion_model.") || *k == "visual.time_embedding"))
            {
                return Err(TrainError::ArchitectureMismatch {
                    path: weights.path.clone(),
                    reason: format!("{key} is missing ({} weights missing in all); only a new temporal head or time embedding may start from scratch", missing.len()),
                });
            }
            vars.sync_compute()?;
        }
        let params = vars.trainable.iter().map(|(n, v, _)| (n.clone(), v.clone())).collect();
        let optimizer = AdamW::new(params, cfg.optimizer.clone())?;
        let grad_shapes = vars.trainable.iter().map(|(_, v, _)| v.shape().clone()).collect();
        Ok(Self {
            state: TrainerState::new(&cfg, model_cfg),
            acc: GradAccumulator::new(vars.trainable.len()),
            cfg,
            model_cfg: model_cfg.clone(),
            vars,
            optimizer,
            run_dir: None,
            tokenizer: Tokenizer::new(),
            resumed: false,
            run_info: serde_json::Value::Null,
            collective: Box::new(SingleProcess::new(device)),
            grad_shapes,
        })
    }

    /// Makes this trainer one rank of a data-parallel job: rank 0's weights are broadcast to every rank now,
    /// and from here on every rank must make the same calls in the same order (build every rank's trainer
    /// and loaders from the same settings; pass each loader whole, the trainer takes this rank's share).
    /// `TrainConfig::accumulate` and the loader's batch size are per rank: the global batch is
    /// `world_size` times the loader's.
    pub fn with_collective(mut self, collective: impl Collective + 'static) -> TrainResult<Self> {
        self.collective = Box::new(collective);
        self.broadcast_weights()?;
        Ok(self)
    }

    /// The ranks of the job this trainer belongs to.
    pub fn collective(&self) -> &dyn Collective {
        &*self.collective
    }

    /// Overwrites every weight with rank 0's (in name order, bucketed).
    fn broadcast_weights(&self) -> TrainResult<()> {
        let tensors = self.vars.master_tensors()?;
        let mut names: Vec<&String> = tensors.keys().collect();
        names.sort();
        let values: Vec<Tensor> = names.iter().map(|n| tensors[*n].clone()).collect();
        let values = distributed::broadcast_tensors(&*self.collective, &values)?;
        let synced: HashMap<String, Tensor> = names.into_iter().cloned().zip(values).collect();
        Ok(self.vars.load_master(&synced)?)
    }

    /// Runs `write` on rank 0 only, then exchanges every rank's status (a barrier): the run directory and
    /// checkpoints have one writer, and its failure stops every rank.
    fn on_rank_0(&self, write: impl FnOnce() -> TrainResult<()>) -> TrainResult<()> {
        let written = if self.collective.rank() == 0 { write() } else { Ok(()) };
        distributed::agree(&*self.collective, written)
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
    /// optimizer moments and trainer state. The checkpoint must be of this model's architecture. In a
    /// data-parallel job every rank reads the same checkpoint (a shared file system).
    pub fn resume(&mut self, dir: impl AsRef<Path>) -> TrainResult<()> {
        let loaded = checkpoint::load(dir.as_ref(), &self.vars, &self.model_cfg, &mut self.optimizer);
        let mut state = distributed::agree(&*self.collective, loaded)?;
        state.train_config = self.cfg.clone();
        self.state = state;
        self.resumed = true;
        self.acc.clear();
        Ok(())
    }

    /// Forward and backward of one batch; gradients are added to the accumulation buffers (weighted by
    /// `1 / accumulate`). Returns the batch's loss (over the global batch in a data-parallel job; NaN, with
    /// nothing added, when no rank had a clip).
    // frames [B, T, 3, H, W], tokens [B, 77] u32, B labels
    pub fn accumulate(&mut self, frames: &Tensor, tokens: &Tensor, labels: &[u32]) -> TrainResult<f64> {
        let local = Encoded::new(&self.vars.model, frames, tokens, labels).map_err(Into::into);
        Ok(self.accumulate_encoded(local)?.unwrap_or(f64::NAN))
    }

    /// [`Trainer::accumulate`] of this rank's encoded clips: the loss over the global batch, its backward,
    /// the gradients added. `None` (nothing added) when no rank had a clip.
    fn accumulate_encoded(&mut self, local: TrainResult<Encoded>) -> TrainResult<Option<f64>> {
        let local = local.and_then(|e| match e.is_finite()? {
            true => Ok(e),
            false => Err(self.non_finite_loss(f64::NAN)),
        });
        let local = distributed::agree(&*self.collective, local)?;
        let Some(loss) = step::global_batch_loss(&self.vars.model, &local, &*self.collective)? else {
            return Ok(None);
        };
        let value = loss.to_dtype(DType::F32)?.to_scalar::<f32>()? as f64;
        if !value.is_finite() {
            return Err(self.non_finite_loss(value));
        }
        let grads = step::weighted_backward(&loss, self.state.loss_scale / self.cfg.accumulate as f64)?;
        self.acc.add(&grads, &self.vars.trainable, value, local.clips())?;
        Ok(Some(value))
    }

    /// The error of a non-finite loss now; the step's partial sums are dropped.
    fn non_finite_loss(&mut self, loss: f64) -> TrainError {
        self.acc.clear();
        let last_good = self.run_dir.as_ref().map(|d| d.join("last")).filter(|d| d.join(STATE_FILE).is_file());
        TrainError::NonFiniteLoss { epoch: self.state.epoch, step: self.state.step, loss, last_good }
    }

    /// Applies the accumulated gradients: summed over the ranks, unscale, overflow check (f16), clip, AdamW
    /// at the schedule's rate, refresh the compute copy, advance the iteration.
    pub fn apply_step(&mut self) -> TrainResult<StepOutput> {
        let Accumulated { mut grads, loss } = self.acc.take();
        // Each rank holds the gradient through its own clips: their sum is the global batch's gradient.
        distributed::all_reduce_grads(&*self.collective, &mut grads, &self.grad_shapes, ReduceOp::Sum)?;
        let (grad_norm, skipped) = step::unscale_and_clip(&mut grads, &mut self.state, &self.cfg)?;
        let lr_factor = self.state.schedule.factor(self.state.step);
        if !skipped {
            self.optimizer.step(&grads, lr_factor)?;
            self.vars.sync_compute()?;
            self.state.optimizer_steps = self.optimizer.step_count();
            step::grow_loss_scale(&mut self.state, &self.cfg);
        }
        self.state.step += 1;
        Ok(StepOutput { loss, grad_norm, lr_factor, skipped })
    }

    /// One optimizer step on one batch (`accumulate` then `apply_step`); the step PyTorch's training loop
    /// takes, for parity checks and custom loops.
    pub fn train_step(&mut self, frames: &Tensor, tokens: &Tensor, labels: &[u32]) -> TrainResult<StepOutput> {
        self.accumulate(frames, tokens, labels)?;
        self.apply_step()
    }

    /// Writes a checkpoint directory (atomically): model, optimizer state, trainer state. In a
    /// data-parallel job rank 0 writes it and every rank returns once it is whole (or with its error).
    pub fn save_checkpoint(&self, dir: impl AsRef<Path>) -> TrainResult<()> {
        self.on_rank_0(|| {
            Ok(checkpoint::save(dir.as_ref(), &self.vars, &self.model_cfg, &self.optimizer, &self.state)?)
        })
    }

    /// Evaluates the current weights on every clip of `loader`'s epoch 0 (a test loader: no shuffle, no
    /// dropped batch) with ActionCLIP's template ensemble; the dataset's class names are humanized for the
    /// prompts. In a data-parallel job every rank passes the whole split, scores its own block and gets the
    /// report of the whole split. `progress(done, total)` is called after each of this rank's batches.
    pub fn evaluate(&self, loader: &Loader, progress: &mut dyn FnMut(usize, usize)) -> TrainResult<EvalReport> {
        self.evaluate_with(TowerWeights::Full, loader, progress)
    }

    /// [`Trainer::evaluate`] with the towers' linear weights held as `format` (f16 or int8 inference; see
    /// [`ActionClip::with_tower_weights`]).
    pub fn evaluate_with(
        &self,
        format: TowerWeights,
        loader: &Loader,
        progress: &mut dyn FnMut(usize, usize),
    ) -> TrainResult<EvalReport> {
        let words = class_words(&loader.dataset().classes)?;
        let converted;
        let model = match format {
            TowerWeights::Full => &self.vars.model,
            _ => {
                converted = self.vars.model.with_tower_weights(format)?;
                &converted
            }
        };
        let (epoch, step) = (self.state.epoch, self.state.step);
        eval::evaluate(model, &self.tokenizer, &words, loader, epoch, step, &*self.collective, progress)
    }

    /// Trains for the configured epochs (from where a resumed checkpoint left off), evaluating, saving and
    /// plotting along the way.
    pub fn fit(&mut self, data: &TrainData, observer: &mut dyn Observer) -> TrainResult<RunSummary> {
        let mut run = self.start_run(data, observer)?;
        while self.state.epoch < self.cfg.epochs {
            if self.train_epoch(&mut run)? {
                return self.stop_early(run);
            }
            let last_epoch = self.end_epoch(&mut run)?;
            if !last_epoch && self.should_stop(&mut run)? {
                return self.stop_early(run);
            }
        }
        self.finish_run(run)
    }

    /// Checks the data, resolves the schedule, opens the run directory, reports the start and evaluates the
    /// starting weights (a fresh run with a test split and `zero_shot_eval`).
    fn start_run<'a>(&mut self, data: &TrainData, observer: &'a mut dyn Observer) -> TrainResult<Run<'a>> {
        let called = Instant::now();
        let collective = &*self.collective;
        let checked = data.validate().and_then(|_| {
            let train = match collective.world_size() {
                1 => data.train.clone(),
                world => data.train.sharded(Shard::training(collective.rank(), world)?),
            };
            let classes = data.train.dataset().classes.clone();
            let context = self.model_cfg.clip.text.context_length;
            let prompts = PromptBank::new(&self.tokenizer, &class_words(&classes)?, context)?;
            Ok((TrainData { train, ..data.clone() }, classes, prompts))
        });
        let (data, classes, prompts) = distributed::agree(collective, checked)?;
        let batches = data.train.num_batches();
        let steps_per_epoch = batches.div_ceil(self.cfg.accumulate);
        self.state.schedule = self.cfg.resolve_schedule(steps_per_epoch);
        self.state.schedule.validate()?;
        self.state.train_config = self.cfg.clone();
        let mut out = None;
        if let Some(dir) = &self.run_dir {
            let config = run_config(&self.model_cfg, &self.cfg, &data, &self.run_info);
            let resumed_at = self.resumed.then_some((self.state.step, self.state.epoch));
            self.on_rank_0(|| {
                out = Some(RunDir::open(dir, &config, resumed_at)?);
                Ok(())
            })?;
        }
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
        let mut summary = RunSummary { epoch_losses: self.state.epoch_losses.clone(), ..RunSummary::default() };
        self.update_summary(&mut summary);
        let now = Instant::now();
        let mut run = Run {
            data,
            observer,
            out,
            classes,
            prompts,
            batches,
            summary,
            called,
            training: now,
            epoch_began: now,
            step_ended: now,
        };
        let fresh = !self.resumed && self.state.step == 0;
        if let (Some(test), true) = (run.data.test.clone(), fresh && self.cfg.zero_shot_eval) {
            run.summary.zero_shot = Some(self.run_eval(&mut run, &test, EvalKind::ZeroShot)?);
        }
        run.training = Instant::now();
        Ok(run)
    }

    /// Trains the batches of the current epoch not done yet, an optimizer step every `accumulate` batches and
    /// one for the batches left at the end. Returns whether an observer asked to stop after a step.
    fn train_epoch(&mut self, run: &mut Run) -> TrainResult<bool> {
        let epoch = self.state.epoch;
        let skip = self.state.batch_in_epoch;
        run.epoch_began = Instant::now();
        run.observer.event(&Event::EpochStarted { epoch, batches: run.batches, done: skip });
        let mut batches = run.data.train.epoch(epoch as u64).peekable();
        run.step_ended = Instant::now();
        for index in 0..run.batches {
            // A batch whose clips all failed is not yielded: this rank then brings no clips to the global batch.
            let batch = batches.next_if(|b| b.as_ref().map_or(true, |b| b.index == index)).transpose();
            if index < skip {
                continue;
            }
            self.train_batch(run, index, batch.map_err(Into::into))?;
            if self.acc.batches() == self.cfg.accumulate {
                self.finish_step(run, index + 1)?;
                if self.should_stop(run)? {
                    return Ok(true);
                }
            }
        }
        if self.acc.batches() > 0 {
            self.finish_step(run, run.batches)?;
        }
        Ok(false)
    }

    /// Forward and backward of loader batch `index` (`None`: every clip of it failed) with a freshly drawn
    /// sentence per clip.
    fn train_batch(&mut self, run: &mut Run, index: usize, batch: TrainResult<Option<Batch>>) -> TrainResult<()> {
        let epoch = self.state.epoch;
        let local = batch.and_then(|batch| self.encode_batch(run, batch.as_ref()));
        if let Some(loss) = self.accumulate_encoded(local)? {
            run.observer.event(&Event::Batch { epoch, done: index + 1, loss });
        }
        Ok(())
    }

    /// This rank's clips of a batch, encoded with their training sentences.
    fn encode_batch(&self, run: &mut Run, batch: Option<&Batch>) -> TrainResult<Encoded> {
        let model = &self.vars.model;
        let Some(batch) = batch else { return Ok(Encoded::empty(model, self.model_cfg.clip.embed_dim)?) };
        if !batch.failures.is_empty() {
            run.observer.event(&Event::LoaderFailures(&batch.failures));
        }
        let labels = batch.labels.to_vec1::<u32>()?;
        let tokens = run.prompts.draw(&labels, &batch.ids, self.cfg.seed, self.state.epoch, model.device())?;
        Ok(Encoded::new(model, &batch.frames, &tokens, &labels)?)
    }

    /// Whether the observer of any rank asks to stop (the ranks stop together).
    fn should_stop(&self, run: &mut Run) -> TrainResult<bool> {
        let stop = run.observer.should_stop() as u8 as f64;
        Ok(distributed::sum_values(&*self.collective, &[stop])?[0] > 0.0)
    }

    /// Applies the accumulated step (`done` batches of the epoch used), then logs every `log_every`-th.
    fn finish_step(&mut self, run: &mut Run, done: usize) -> TrainResult<()> {
        let clips = distributed::sum_values(&*self.collective, &[self.acc.clips() as f64])?[0] as usize;
        let out = self.apply_step()?;
        self.state.batch_in_epoch = done;
        self.state.add_step_loss(out.loss);
        let seconds = run.step_ended.elapsed().as_secs_f64();
        run.step_ended = Instant::now();
        if !self.state.step.is_multiple_of(self.cfg.log_every) {
            return Ok(());
        }
        let lr = |g: Group| self.cfg.optimizer.group_lr(g) * out.lr_factor;
        let log = StepLog {
            epoch: self.state.epoch,
            step: self.state.step,
            batch: done,
            batches: run.batches,
            loss: out.loss,
            lr: lr(Group::Text),
            lr_visual: lr(Group::Visual),
            lr_fusion: lr(Group::Fusion),
            grad_norm: out.grad_norm,
            loss_scale: self.state.loss_scale,
            skipped: out.skipped,
            clips,
            clips_per_s: clips as f64 / seconds.max(1e-9),
            elapsed_s: run.training.elapsed().as_secs_f64(),
        };
        self.on_rank_0(|| run.record(Record::Step(log.clone())))?;
        run.observer.event(&Event::Step(&log));
        Ok(())
    }

    /// Closes the epoch: its mean loss, the test when due, the epoch's metrics line, checkpoints and plots.
    /// Returns whether it was the last epoch.
    fn end_epoch(&mut self, run: &mut Run) -> TrainResult<bool> {
        let train_seconds = run.epoch_began.elapsed().as_secs_f64();
        let train_loss = self.state.close_epoch();
        run.summary.epoch_losses = self.state.epoch_losses.clone();
        let last_epoch = self.state.epoch == self.cfg.epochs;
        let due = last_epoch || (self.cfg.eval_every > 0 && self.state.epoch.is_multiple_of(self.cfg.eval_every));
        let report = match (run.data.test.clone(), due) {
            (Some(test), true) => Some(self.run_eval(run, &test, EvalKind::Epoch)?),
            _ => None,
        };
        let improved = report.as_ref().is_some_and(|r| self.state.record_top1(r.top1));
        let log = EpochLog {
            epoch: self.state.epoch,
            step: self.state.step,
            train_loss,
            top1: report.as_ref().map(|r| r.top1),
            top5: report.as_ref().map(|r| r.top5),
            best_top1: self.state.best_top1,
            train_seconds,
        };
        self.on_rank_0(|| run.record(Record::Epoch(log.clone())))?;
        run.observer.event(&Event::EpochEnded(&log));
        let best = improved || (run.data.test.is_none() && last_epoch);
        self.save_epoch(run, best, report.as_ref())?;
        self.update_summary(&mut run.summary);
        if report.is_some() {
            run.summary.last_eval = report;
        }
        Ok(last_epoch)
    }

    /// Writes `best/` (when the epoch improved) and then `last/`, and redraws the plots, when there is a run
    /// directory (rank 0). `best/` goes first: a run killed between the two resumes from the previous `last/`,
    /// repeats the epoch and writes the same `best/` again, whereas the other order would leave a `last/` whose
    /// state records a best epoch that `best/` does not hold.
    fn save_epoch(&self, run: &mut Run, best: bool, report: Option<&EvalReport>) -> TrainResult<()> {
        let Some(dir) = &self.run_dir else { return Ok(()) };
        self.on_rank_0(|| {
            if best {
                self.write_checkpoint(&dir.join("best"))?;
            }
            self.write_checkpoint(&dir.join("last"))?;
            match (&run.out, self.cfg.plots) {
                (Some(out), true) => Ok(out.plot(report, &run.classes)?),
                _ => Ok(()),
            }
        })?;
        if best {
            run.observer.event(&Event::CheckpointSaved { path: &dir.join("best"), best: true });
        }
        run.observer.event(&Event::CheckpointSaved { path: &dir.join("last"), best: false });
        Ok(())
    }

    /// Writes a checkpoint directory from this rank (atomically).
    fn write_checkpoint(&self, dir: &Path) -> TrainResult<()> {
        Ok(checkpoint::save(dir, &self.vars, &self.model_cfg, &self.optimizer, &self.state)?)
    }

    /// The multi-view test, the run's time and the summary files.
    fn finish_run(&mut self, mut run: Run) -> TrainResult<RunSummary> {
        if let Some(mv) = run.data.multi_view.clone() {
            run.summary.multi_view = Some(self.run_eval(&mut run, &mv, EvalKind::MultiView)?);
        }
        run.summary.seconds = run.called.elapsed().as_secs_f64();
        self.on_rank_0(|| match &run.out {
            Some(out) => Ok(out.write_summary(&run.summary, &self.model_cfg, &run.classes)?),
            None => Ok(()),
        })?;
        Ok(run.summary)
    }

    /// Ends a run an observer stopped: drops a partial step and writes `last/` to resume from.
    fn stop_early(&mut self, mut run: Run) -> TrainResult<RunSummary> {
        self.acc.clear();
        if let Some(dir) = self.run_dir.as_ref().map(|d| d.join("last")) {
            self.save_checkpoint(&dir)?;
            run.observer.event(&Event::CheckpointSaved { path: &dir, best: false });
        }
        run.observer.event(&Event::Stopped { epoch: self.state.epoch, step: self.state.step });
        self.update_summary(&mut run.summary);
        run.summary.stopped = true;
        run.summary.seconds = run.called.elapsed().as_secs_f64();
        Ok(run.summary)
    }

    /// Copies the position and the best metric into the summary.
    fn update_summary(&self, summary: &mut RunSummary) {
        summary.epochs = self.state.epoch;
        summary.steps = self.state.step;
        summary.best_top1 = self.state.best_top1;
        summary.best_epoch = self.state.best_epoch;
    }

    /// Evaluates on `loader`, reporting progress, and writes the metrics line and the report's file.
    fn run_eval(&self, run: &mut Run, loader: &Loader, kind: EvalKind) -> TrainResult<EvalReport> {
        let multi_view = kind == EvalKind::MultiView;
        run.observer.event(&Event::EvalStarted { epoch: self.state.epoch, batches: loader.num_batches(), multi_view });
        let report = {
            let observer = &mut *run.observer;
            let mut progress = |done: usize, total: usize| observer.event(&Event::EvalProgress { done, total });
            self.evaluate(loader, &mut progress)?
        };
        let log = EvalLog {
            epoch: report.epoch,
            step: report.step,
            split: kind.split().into(),
            zero_shot: kind == EvalKind::ZeroShot,
            views: report.views,
            samples: report.samples,
            top1: report.top1,
            top5: report.top5,
            mean_class_accuracy: report.mean_class_accuracy,
            seconds: report.seconds,
        };
        self.on_rank_0(|| {
            run.record(Record::Eval(log.clone()))?;
            match &run.out {
                Some(out) => Ok(out.write_eval(kind, &report)?),
                None => Ok(()),
            }
        })?;
        run.observer.event(&Event::Evaluated(&report, &log));
        Ok(report)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::synthetic::{write_dataset, SyntheticConfig, SyntheticFormat};
    use crate::data::{ClipPipeline, LoaderConfig, Storage, Subset, VideoDataset};
    use crate::{ClipConfig, PostNetwork, TextConfig, VisionConfig, VisualPrompt};

    /// Sets `logit_scale` to NaN when the first `last/` checkpoint is saved, so the next loss is NaN.
    struct Poison(Option<VarMap>);

    impl Observer for Poison {
        fn event(&mut self, event: &Event<'_>) {
            if let Event::CheckpointSaved { best: false, .. } = event {
                if let Some(vars) = self.0.take() {
                    let data = vars.data().lock().unwrap();
                    let v = &data["logit_scale"];
                    v.set(&Tensor::new(f32::NAN, v.device()).unwrap()).unwrap();
                }
            }
        }
    }

    #[test]
    fn a_nan_loss_stops_with_the_last_checkpoint_whole() {
        let root = tempfile::tempdir().unwrap();
        let data_dir = root.path().join("data");
        let synthetic = SyntheticConfig {
            num_classes: 3,
            clips_per_class: 3,
            test_clips_per_class: 1,
            frames: 8,
            width: 32,
            height: 32,
            format: SyntheticFormat::FrameFolders,
            ..Default::default()
        };
        write_dataset(&data_dir, &synthetic).unwrap();
        let train = VideoDataset::ucf101(&data_dir, 1, Subset::Train, Storage::FrameFolders).unwrap();
        let loader = Loader::new(
            train,
            ClipPipeline::train(4, 32).unwrap(),
            LoaderConfig { batch_size: 3, workers: 0, ..LoaderConfig::default() },
        )
        .unwrap();
        let data = TrainData { train: loader, test: None, multi_view: None };
        let model_cfg = ActionClipConfig {
            clip: ClipConfig {
                vision: VisionConfig { width: 64, layers: 1, heads: 1, patch_size: 8, image_size: 32 },
                text: TextConfig { width: 64, layers: 1, heads: 1, vocab_size: 49408, context_length: 77 },
                embed_dim: 32,
            },
            frames: 4,
            prompt: VisualPrompt { joint: false, temporal_shift: false, post: PostNetwork::MeanPool },
        };
        let cfg = TrainConfig { epochs: 2, plots: false, ..TrainConfig::default() };
        let dir = root.path().join("run");
        let mut trainer = Trainer::new(&model_cfg, StartFrom::Scratch, cfg, &Device::Cpu).unwrap().with_run_dir(&dir);
        let mut poison = Poison(Some(trainer.vars.master.clone()));
        let err = trainer.fit(&data, &mut poison).unwrap_err();
        match &err {
            TrainError::NonFiniteLoss { epoch: 1, last_good: Some(p), .. } => assert_eq!(p, &dir.join("last")),
            other => panic!("expected a NaN-loss error, got {other}"),
        }
        let state = checkpoint::read_state(&dir.join("last")).unwrap();
        assert_eq!((state.epoch, state.step), (1, 2));
        let (model, _) = ActionClip::load(dir.join("last"), &Device::Cpu, DType::F32).unwrap();
        assert!(model.logit_scale().to_scalar::<f32>().unwrap().is_finite());
    }
}
