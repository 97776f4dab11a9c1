//! The run directory's `metrics.jsonl`: one JSON object per line, `"type"` telling which kind.
//! Evaluation lines carry `top1` and `top5` as fractions in 0..1.
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// One logged optimizer step.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StepLog {
    /// 0-based epoch the step belongs to.
    pub epoch: usize,
    /// Optimizer iterations done after this step (1-based).
    pub step: usize,
    /// Training batches of this epoch used so far.
    pub batch: usize,
    /// Training batches per epoch.
    pub batches: usize,
    /// Mean loss of the step's (micro-)batches.
    pub loss: f64,
    /// Learning rate of the text group (the base rate times the schedule).
    pub lr: f64,
    /// Learning rate of the image tower.
    pub lr_visual: f64,
    /// Learning rate of the temporal head.
    pub lr_fusion: f64,
    /// Global gradient norm before clipping.
    pub grad_norm: f64,
    /// The f16 loss scale (1 otherwise).
    pub loss_scale: f64,
    /// Whether the update was skipped (f16 overflow).
    pub skipped: bool,
    /// Clips in the step.
    pub clips: usize,
    /// Training throughput over the step, clips per second (data loading included).
    pub clips_per_s: f64,
    /// Seconds since the run (or the resumed part of it) started.
    pub elapsed_s: f64,
}

/// One evaluation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EvalLog {
    /// Completed epochs (0: the starting weights).
    pub epoch: usize,
    /// Optimizer iterations done.
    pub step: usize,
    /// Which data (`test`, or `test_multiview`).
    pub split: String,
    /// Whether these are the starting weights, never fine-tuned here.
    pub zero_shot: bool,
    /// Views per video.
    pub views: usize,
    /// Videos scored.
    pub samples: usize,
    /// Top-1 accuracy (0..1).
    pub top1: f64,
    /// Top-5 accuracy (0..1).
    pub top5: f64,
    /// Mean per-class accuracy (0..1).
    pub mean_class_accuracy: f64,
    /// Seconds the evaluation took.
    pub seconds: f64,
}

/// One finished epoch.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EpochLog {
    /// Completed epochs (1-based number of this epoch).
    pub epoch: usize,
    /// Optimizer iterations done.
    pub step: usize,
    /// Mean training loss over the epoch.
    pub train_loss: f64,
    /// Test top-1 after the epoch, if evaluated.
    pub top1: Option<f64>,
    /// Test top-5 after the epoch, if evaluated.
    pub top5: Option<f64>,
    /// Best top-1 so far.
    pub best_top1: Option<f64>,
    /// Seconds of training in this epoch (evaluation excluded).
    pub train_seconds: f64,
}

/// A line of `metrics.jsonl`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Record {
    /// An optimizer step.
    Step(StepLog),
    /// An evaluation.
    Eval(EvalLog),
    /// An epoch's summary.
    Epoch(EpochLog),
}

impl Record {
    /// The optimizer iteration the record was written at.
    pub fn step(&self) -> usize {
        match self {
            Record::Step(s) => s.step,
            Record::Eval(e) => e.step,
            Record::Epoch(e) => e.step,
        }
    }
}

/// Appends records to `metrics.jsonl` (each line flushed).
pub(crate) struct MetricsWriter {
    path: PathBuf,
    file: fs::File,
}

impl MetricsWriter {
    /// Opens `path` for appending. With `keep_until = Some(step)` (a resumed run), lines written after that
    /// step by the interrupted run are dropped first, so the file describes exactly one history. With
    /// `None` the file starts empty.
    pub fn open(path: &Path, keep_until: Option<(usize, usize)>) -> Result<Self> {
        let kept: Vec<Record> = match keep_until {
            Some((step, epoch)) => read_records(path)?
                .into_iter()
                .filter(|r| match r {
                    Record::Step(s) => s.step <= step,
                    Record::Eval(e) => e.step <= step && e.epoch <= epoch,
                    Record::Epoch(e) => e.epoch <= epoch,
                })
                .collect(),
            None => Vec::new(),
        };
        let mut text = String::new();
        for r in &kept {
            text.push_str(&serde_json::to_string(r).map_err(|e| Error::Config(e.to_string()))?);
            text.push('\n');
        }
        fs::write(path, text).map_err(|e| Error::io(path, e))?;
        let file = fs::OpenOptions::new().append(true).open(path).map_err(|e| Error::io(path, e))?;
        Ok(Self { path: path.to_path_buf(), file })
    }

    /// Appends one record.
    pub fn write(&mut self, record: &Record) -> Result<()> {
        let mut line = serde_json::to_string(record).map_err(|e| Error::Config(e.to_string()))?;
        line.push('\n');
        self.file.write_all(line.as_bytes()).map_err(|e| Error::io(&self.path, e))?;
        self.file.flush().map_err(|e| Error::io(&self.path, e))
    }
}

/// Reads every record of a `metrics.jsonl` (missing file: none; unreadable lines are skipped, a torn last
/// line after a kill included).
pub fn read_records(path: &Path) -> Result<Vec<Record>> {
    let text = match fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::io(path, e)),
    };
    Ok(text.lines().filter_map(|l| serde_json::from_str(l).ok()).collect())
}
