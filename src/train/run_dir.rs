//! The run directory's files besides the checkpoints: `config.json` (model, training and data settings),
//! `metrics.jsonl`, the latest evaluation reports, `curves.png` and `confusion.png`, and at the end
//! `summary.json` and `summary.md`.
use std::path::{Path, PathBuf};

use super::checkpoint::{recover, write_file_atomic, write_json};
use super::config::{TrainConfig, TrainData};
use super::eval::EvalReport;
use super::events::RunSummary;
use super::metrics::{read_records, MetricsWriter, Record};
use super::plots::{plot_confusion, plot_curves};
use crate::data::Loader;
use crate::{ActionClipConfig, Error, Result};

/// Which evaluation a report comes from (it names the report's file and its metrics line).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum EvalKind {
    /// The starting weights, before training.
    ZeroShot,
    /// The single-view test after an epoch.
    Epoch,
    /// The multi-view test after the last epoch.
    MultiView,
}

impl EvalKind {
    /// The `split` of its metrics line.
    pub(crate) fn split(self) -> &'static str {
        match self {
            EvalKind::MultiView => "test_multiview",
            EvalKind::ZeroShot | EvalKind::Epoch => "test",
        }
    }

    /// The file its report is written to.
    fn file_name(self) -> &'static str {
        match self {
            EvalKind::ZeroShot => "eval_zero_shot.json",
            EvalKind::Epoch => "eval_last.json",
            EvalKind::MultiView => "eval_multiview.json",
        }
    }
}

/// An open run directory.
pub(crate) struct RunDir {
    path: PathBuf,
    metrics: MetricsWriter,
}

impl RunDir {
    /// Creates `path`, puts back checkpoints a kill left in the middle of a swap, writes `config.json` and
    /// opens `metrics.jsonl`. `resumed_at` (step, epoch) keeps the lines a resumed run wrote up to there;
    /// without it the file starts empty.
    pub(crate) fn open(path: &Path, config: &serde_json::Value, resumed_at: Option<(usize, usize)>) -> Result<Self> {
        std::fs::create_dir_all(path).map_err(|e| Error::io(path, e))?;
        recover(&path.join("last"))?;
        recover(&path.join("best"))?;
        write_json(&path.join("config.json"), config)?;
        let metrics = MetricsWriter::open(&path.join("metrics.jsonl"), resumed_at)?;
        Ok(Self { path: path.to_path_buf(), metrics })
    }

    /// Appends a line to `metrics.jsonl`.
    pub(crate) fn record(&mut self, record: &Record) -> Result<()> {
        self.metrics.write(record)
    }

    /// Writes an evaluation report to the file of its kind.
    pub(crate) fn write_eval(&self, kind: EvalKind, report: &EvalReport) -> Result<()> {
        write_json(&self.path.join(kind.file_name()), report)
    }

    /// Draws the training curves from `metrics.jsonl` and, with a report, its confusion matrix.
    pub(crate) fn plot(&self, eval: Option<&EvalReport>, classes: &[String]) -> Result<()> {
        let records = read_records(&self.path.join("metrics.jsonl"))?;
        plot_curves(&records, &self.path.join("curves.png"))?;
        if let Some(report) = eval {
            plot_confusion(report, classes, &self.path.join("confusion.png"))?;
        }
        Ok(())
    }

    /// Writes `summary.json` and the human-readable `summary.md`.
    pub(crate) fn write_summary(
        &self,
        summary: &RunSummary,
        model_cfg: &ActionClipConfig,
        classes: &[String],
    ) -> Result<()> {
        write_json(&self.path.join("summary.json"), summary)?;
        let path = self.path.join("summary.md");
        write_file_atomic(&path, summary_markdown(summary, model_cfg, classes).as_bytes())
    }
}

/// The contents of `config.json`: the model, the training settings, the data and the caller's `run_info`.
pub(crate) fn run_config(
    model_cfg: &ActionClipConfig,
    cfg: &TrainConfig,
    data: &TrainData,
    run_info: &serde_json::Value,
) -> serde_json::Value {
    let describe = |l: &Loader| serde_json::json!({ "clips": l.dataset().len(), "batches": l.num_batches(), "batch_size": l.config().batch_size, "workers": l.config().workers, "seed": l.config().seed });
    serde_json::json!({
        "model": model_cfg,
        "train": cfg,
        "data": {
            "classes": data.train.dataset().classes,
            "train": describe(&data.train),
            "test": data.test.as_ref().map(describe),
            "multi_view": data.multi_view.as_ref().map(describe),
        },
        "run": run_info,
    })
}

/// `summary.md`: the model, the run's length, the evaluations, the weakest classes, the best checkpoint.
fn summary_markdown(summary: &RunSummary, model_cfg: &ActionClipConfig, classes: &[String]) -> String {
    let pct = |x: f64| format!("{:.2}%", 100.0 * x);
    let (v, t) = (&model_cfg.clip.vision, &model_cfg.clip.text);
    let mut md = String::from("# Fine-tuning run\n\n");
    md.push_str(&format!(
        "- model: vision width {} x {} layers, patch {}, {} px; text width {} x {} layers; {} frames; temporal prompt {:?}\n",
        v.width, v.layers, v.patch_size, v.image_size, t.width, t.layers, model_cfg.frames, model_cfg.prompt
    ));
    md.push_str(&format!(
        "- epochs: {} ({} optimizer steps), {:.1} s\n",
        summary.epochs, summary.steps, summary.seconds
    ));
    if let Some(z) = &summary.zero_shot {
        md.push_str(&format!("- starting weights (zero-shot): top-1 {}, top-5 {}\n", pct(z.top1), pct(z.top5)));
    }
    if let Some(e) = &summary.last_eval {
        md.push_str(&format!(
            "- last epoch: top-1 {}, top-5 {}, mean class accuracy {} over {} clips\n",
            pct(e.top1),
            pct(e.top5),
            pct(e.mean_class_accuracy),
            e.samples
        ));
        let mut worst: Vec<(usize, f64)> =
            e.per_class.iter().copied().enumerate().filter(|(k, _)| e.class_counts[*k] > 0).collect();
        worst.sort_by(|a, b| a.1.total_cmp(&b.1));
        let names: Vec<String> = worst
            .iter()
            .take(5)
            .map(|(k, a)| format!("{} {}", classes.get(*k).map(String::as_str).unwrap_or("?"), pct(*a)))
            .collect();
        md.push_str(&format!("- weakest classes: {}\n", names.join(", ")));
    }
    if let (Some(b), Some(ep)) = (summary.best_top1, summary.best_epoch) {
        md.push_str(&format!("- best top-1: {} at epoch {} (checkpoint `best/`)\n", pct(b), ep));
    }
    if let Some(m) = &summary.multi_view {
        md.push_str(&format!("- multi-view ({} views): top-1 {}, top-5 {}\n", m.views, pct(m.top1), pct(m.top5)));
    }
    md.push_str("\nFiles: `metrics.jsonl`, `config.json`, `curves.png`, `confusion.png`, `last/`, `best/` (load with `ActionClip::load(\"<run>/best\")`).\n");
    md
}
