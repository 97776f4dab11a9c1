//! Evaluation as the reference's test: every class sentence with the 16 templates, `softmax(100 * cos)` per
//! template averaged over templates, top-1/top-5 over every sample (no dropped last batch), single or
//! multi-view (views averaged), per-class accuracy and a confusion matrix. In a data-parallel job every
//! rank scores its own block of the test clips (each clip exactly once) and the counts are summed.
use candle_core::{DType, Device, Tensor};
use serde::{Deserialize, Serialize};

use super::distributed::{agree, gather_rows, row_counts, sum_values, Collective};
use super::error::TrainResult;
use crate::data::{Loader, Shard};
use crate::model::ensemble_probabilities;
use crate::{loss, prompts, ActionClip, Error, Result, Tokenizer};

/// The result of one evaluation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EvalReport {
    /// Completed training epochs when it ran (0: the starting weights, i.e. zero-shot).
    pub epoch: usize,
    /// Optimizer iterations done when it ran.
    pub step: usize,
    /// Views per video (temporal clips x crops); 1 is the reference's single view.
    pub views: usize,
    /// Videos scored.
    pub samples: usize,
    /// Top-1 accuracy, a fraction in 0..1.
    pub top1: f64,
    /// Top-5 accuracy, a fraction in 0..1.
    pub top5: f64,
    /// Mean of the per-class top-1 accuracies.
    pub mean_class_accuracy: f64,
    /// Top-1 accuracy of every class (NaN-free: a class without test samples has 0 and count 0).
    pub per_class: Vec<f64>,
    /// Test samples per class.
    pub class_counts: Vec<usize>,
    /// `confusion[true][predicted]` counts.
    pub confusion: Vec<Vec<usize>>,
    /// The top-1 class of every scored video, in the loader's order.
    #[serde(default)]
    pub predictions: Vec<usize>,
    /// Clips the loader could not read (left out or replaced, see the loader's policy).
    pub failed_clips: usize,
    /// Seconds the evaluation took.
    pub seconds: f64,
}

impl EvalReport {
    fn new(classes: usize, epoch: usize, step: usize, views: usize) -> Self {
        Self {
            epoch,
            step,
            views,
            samples: 0,
            top1: 0.0,
            top5: 0.0,
            mean_class_accuracy: 0.0,
            per_class: vec![0.0; classes],
            class_counts: vec![0; classes],
            confusion: vec![vec![0; classes]; classes],
            predictions: Vec::new(),
            failed_clips: 0,
            seconds: 0.0,
        }
    }
}

impl EvalReport {
    /// The fraction of videos whose top-1 class is the same in both reports (of the same test set, in the
    /// same order: f32 against int8 weights, say); `None` when they scored different numbers of videos.
    pub fn top1_agreement(&self, other: &EvalReport) -> Option<f64> {
        if self.predictions.len() != other.predictions.len() || self.predictions.is_empty() {
            return None;
        }
        let same = self.predictions.iter().zip(&other.predictions).filter(|(a, b)| a == b).count();
        Some(same as f64 / self.predictions.len() as f64)
    }
}

/// Encodes every class sentence (templates x classes) with the model's text tower: `[J, C, D]`, normalised.
pub fn class_features(
    model: &ActionClip,
    tokenizer: &Tokenizer,
    classes: &[String],
    templates: &[prompts::Template],
) -> Result<Tensor> {
    let sentences = prompts::fill_all(templates, classes);
    let device = model.device();
    let chunks = sentences
        .chunks(256)
        .map(|chunk| {
            let tokens = tokenizer.encode_batch(chunk, device)?;
            loss::normalize(&model.encode_text(&tokens)?.to_dtype(DType::F32)?)
        })
        .collect::<Result<Vec<_>>>()?;
    let features = Tensor::cat(&chunks, 0)?;
    let d = features.dim(1)?;
    Ok(features.reshape((templates.len(), classes.len(), d))?)
}

/// Class probabilities of a batch of clips `[B, T, 3, H, W]` or `[B, V, T, 3, H, W]` (views averaged):
/// `[B, C]`.
pub(crate) fn batch_probabilities(model: &ActionClip, frames: &Tensor, class_features: &Tensor) -> Result<Tensor> {
    match frames.rank() {
        5 => ensemble_probabilities(&model.encode_video(frames)?, class_features),
        6 => {
            let (b, v) = (frames.dim(0)?, frames.dim(1)?);
            let flat = frames.flatten(0, 1)?;
            let probs = ensemble_probabilities(&model.encode_video(&flat)?, class_features)?;
            let c = probs.dim(1)?;
            Ok(probs.reshape((b, v, c))?.mean(1)?)
        }
        _ => Err(Error::InputShape {
            what: "frames",
            expected: "[B, T, 3, H, W] or [B, V, T, 3, H, W]".into(),
            found: frames.dims().to_vec(),
        }),
    }
}

/// What the clips scored so far add up to.
#[derive(Default)]
struct Tally {
    top1: usize,
    top5: usize,
    samples: usize,
    /// Views per clip (0 for an empty split).
    views: usize,
    failed_clips: usize,
    /// `confusion[true][predicted]`.
    confusion: Vec<Vec<usize>>,
    /// The top-1 class of every clip, in the loader's order.
    predictions: Vec<usize>,
}

impl Tally {
    /// Scores every clip of `loader`'s epoch 0 against `features` (`[J, C, D]`).
    fn count(
        model: &ActionClip,
        features: &Tensor,
        loader: &Loader,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<Self> {
        let c = features.dim(1)?;
        let views = !loader.dataset().is_empty() as usize;
        let mut tally = Tally { confusion: vec![vec![0; c]; c], views, ..Tally::default() };
        let total = loader.num_batches();
        let mut ep = loader.epoch(0);
        let mut done = 0;
        for batch in ep.by_ref() {
            let batch = batch?;
            tally.views = if batch.frames.rank() == 6 { batch.frames.dim(1)? } else { 1 };
            let probs = batch_probabilities(model, &batch.frames, features)?.to_vec2::<f32>()?;
            let labels = batch.labels.to_vec1::<u32>()?;
            for (row, &label) in probs.iter().zip(&labels) {
                let label = label as usize;
                if label >= c {
                    return Err(Error::Labels(format!("a test clip has label {label}, but there are {c} classes")));
                }
                let ranked = crate::model::top_k(row, 5.min(c));
                let pred = ranked[0].0;
                tally.top1 += (pred == label) as usize;
                tally.top5 += ranked.iter().any(|(i, _)| *i == label) as usize;
                tally.confusion[label][pred] += 1;
                tally.predictions.push(pred);
            }
            tally.samples += labels.len();
            done += 1;
            progress(done, total);
        }
        tally.failed_clips = ep.report().failed();
        Ok(tally)
    }

    /// The tallies of every rank added up; predictions put side by side in rank order (the ranks' blocks
    /// of the test split are contiguous, so this is the loader's order).
    fn merge(self, collective: &dyn Collective) -> TrainResult<Self> {
        if collective.world_size() == 1 {
            return Ok(self);
        }
        let counted = (self.samples > 0) as usize;
        let mut values = vec![self.top1, self.top5, self.samples, self.failed_clips, self.views * counted, counted];
        values.extend(self.confusion.iter().flatten());
        let values: Vec<f64> = values.into_iter().map(|v| v as f64).collect();
        let sums: Vec<usize> = sum_values(collective, &values)?.into_iter().map(|v| v.round() as usize).collect();
        let predictions: Vec<u32> = self.predictions.iter().map(|&p| p as u32).collect();
        let counts = row_counts(collective, predictions.len())?;
        let local =
            Tensor::from_vec(predictions, counts[collective.rank()], &Device::Cpu)?.to_device(collective.device())?;
        let predictions = gather_rows(collective, &local, &counts)?.to_vec1::<u32>()?;
        let c = self.confusion.len();
        Ok(Tally {
            top1: sums[0],
            top5: sums[1],
            samples: sums[2],
            failed_clips: sums[3],
            views: sums[4] / sums[5].max(1),
            confusion: sums[6..].chunks(c.max(1)).map(<[usize]>::to_vec).take(c).collect(),
            predictions: predictions.into_iter().map(|p| p as usize).collect(),
        })
    }

    /// The report of these counts.
    fn report(self, epoch: usize, step: usize) -> EvalReport {
        let c = self.confusion.len();
        let mut report = EvalReport::new(c, epoch, step, self.views);
        let n = self.samples.max(1) as f64;
        report.samples = self.samples;
        report.top1 = self.top1 as f64 / n;
        report.top5 = self.top5 as f64 / n;
        report.failed_clips = self.failed_clips;
        let mut seen = 0;
        let mut sum = 0.0;
        for k in 0..c {
            report.class_counts[k] = self.confusion[k].iter().sum();
            if report.class_counts[k] > 0 {
                report.per_class[k] = self.confusion[k][k] as f64 / report.class_counts[k] as f64;
                sum += report.per_class[k];
                seen += 1;
            }
        }
        report.mean_class_accuracy = if seen > 0 { sum / seen as f64 } else { 0.0 };
        report.confusion = self.confusion;
        report.predictions = self.predictions;
        report
    }
}

/// Evaluates `model` on every clip of `loader`'s epoch 0 (the loader should be a test loader: no shuffle,
/// no dropped batch; in a data-parallel job every rank passes the whole split and scores its own block).
/// `classes` are the words put into the templates (humanized class names), in label order.
/// `progress(done, total)` is called after each of this rank's batches.
#[allow(clippy::too_many_arguments)]
pub(crate) fn evaluate(
    model: &ActionClip,
    tokenizer: &Tokenizer,
    classes: &[String],
    loader: &Loader,
    epoch: usize,
    step: usize,
    collective: &dyn Collective,
    progress: &mut dyn FnMut(usize, usize),
) -> TrainResult<EvalReport> {
    let start = std::time::Instant::now();
    let local = match collective.world_size() {
        1 => Ok(loader.clone()),
        world => Shard::evaluation(collective.rank(), world).map(|shard| loader.sharded(shard)),
    };
    let tally = local.and_then(|local| {
        let features = class_features(model, tokenizer, classes, &prompts::ACTIONCLIP_TEMPLATES)?;
        Tally::count(model, &features, &local, progress)
    });
    let tally = agree(collective, tally.map_err(Into::into))?.merge(collective)?;
    let mut report = tally.report(epoch, step);
    report.seconds = start.elapsed().as_secs_f64();
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(predictions: Vec<usize>) -> EvalReport {
        EvalReport { samples: predictions.len(), predictions, ..EvalReport::new(3, 0, 0, 1) }
    }

    #[test]
    fn top1_agreement_counts_matching_predictions() {
        let a = report(vec![0, 1, 2, 2]);
        assert_eq!(a.top1_agreement(&a), Some(1.0));
        assert_eq!(a.top1_agreement(&report(vec![0, 1, 1, 0])), Some(0.5));
        assert_eq!(a.top1_agreement(&report(vec![0, 1, 2])), None, "different test sets");
        assert_eq!(report(vec![]).top1_agreement(&report(vec![])), None);
    }
}
