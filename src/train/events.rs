//! What a run reports: [`Event`]s to an [`Observer`] while it runs, [`StepOutput`] per optimizer step and
//! [`RunSummary`] at the end. The library never prints; examples turn events into progress bars.
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::eval::EvalReport;
use super::metrics::{EpochLog, EvalLog, StepLog};
use crate::data::SampleFailure;

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
    /// Polled after every optimizer step of `accumulate` full batches and after every epoch but the last:
    /// `true` saves `last/` and returns.
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

/// The outcome of [`Trainer::fit`](super::Trainer::fit).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
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
