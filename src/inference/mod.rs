//! Paths in, predictions out: one prediction per video with exactly the evaluation's sampling and
//! preprocessing ([`ZeroShotClassifier::classify_path`]), a timeline of predictions over sliding
//! windows of a whole video ([`ZeroShotClassifier::predict_windows`]), live streams and long videos
//! window by window ([`StreamClassifier`]), feature extraction to sharded files ([`extract_features`],
//! [`save_class_features`]), and label lists from the built-in UCF101/HMDB51 sets, files or comma lists
//! ([`parse_labels`]).
//!
//! | job | items |
//! |---|---|
//! | labels | [`parse_labels`], [`LabelList`], class embeddings cached on disk (`ZeroShotClassifier::new_cached`) |
//! | files | `ZeroShotClassifier::{predict_path, classify_path, predict_windows, predict_windows_path}`, [`ClipPrediction`], [`WindowPrediction`] |
//! | streams (feature `video`) | [`StreamClassifier`], [`StreamConfig`], [`Span`], [`StreamWindow`], [`StreamWindows`] |
//! | features | [`extract_features`], [`ExtractConfig`], [`ExtractEvent`], [`ExtractSummary`], [`save_class_features`] |
//!
//! ```no_run
//! # fn main() -> actionclip::Result<()> {
//! use actionclip::{inference, prompts, ActionClip, Tokenizer, ZeroShotClassifier};
//! let (model, _) = ActionClip::load("model_best.pt", &candle_core::Device::Cpu, candle_core::DType::F32)?;
//! let tokenizer = Tokenizer::new();
//! let labels = inference::parse_labels("ucf101", true)?; // humanized, repeats dropped
//! let zs = ZeroShotClassifier::new(&model, &tokenizer, &labels.labels, &prompts::ACTIONCLIP_TEMPLATES)?;
//! for (label, p) in zs.classify_path("v_Archery_g01_c01.avi", 5)? {
//!     println!("{label}: {:.1}%", 100.0 * p);
//! }
//! // One prediction per 32-frame window, every 16 frames.
//! for w in zs.predict_windows_path("v_Archery_g01_c01.avi", 32, 16, 1)? {
//!     println!("frames {}..{}: {} ({:.1}%)", w.start, w.end, w.top[0].0, 100.0 * w.top[0].1);
//! }
//! # Ok(()) }
//! ```
use std::collections::{BTreeMap, HashSet};
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use image::RgbImage;

use crate::data::{sample_rng, ClipPipeline, ClipSource, FrameNaming, Sampling, TestTransform, MAX_CLASSES};
use crate::{prompts, Error, Result, ZeroShotClassifier};

mod class_cache;
mod features;
mod stream;

pub use features::{extract_features, save_class_features, ExtractConfig, ExtractEvent, ExtractSummary};
pub use stream::{Span, StreamClassifier, StreamConfig, StreamWindow, StreamWindows};

/// Windows encoded per model call in [`ZeroShotClassifier::predict_windows`].
const WINDOW_BATCH: usize = 8;

/// The evaluation's prediction for one clip.
#[derive(Debug, Clone, PartialEq)]
pub struct ClipPrediction {
    /// The `k` most probable labels with their probabilities, most probable first.
    pub top: Vec<(String, f32)>,
    /// The 0-based frame indices the model saw (the test sampling's segment centres).
    pub indices: Vec<usize>,
}

/// One window of a timeline made by [`ZeroShotClassifier::predict_windows`].
#[derive(Debug, Clone, PartialEq)]
pub struct WindowPrediction {
    /// First frame of the window (0-based, inclusive).
    pub start: usize,
    /// One past the last frame of the window.
    pub end: usize,
    /// The frames the model saw: the test sampling's segment centres inside the window (the model's
    /// frame count of them).
    pub indices: Vec<usize>,
    /// The `k` most probable labels with their probabilities, most probable first.
    pub top: Vec<(String, f32)>,
}

impl WindowPrediction {
    /// Whether frame `frame` lies inside the window.
    pub fn contains(&self, frame: usize) -> bool {
        (self.start..self.end).contains(&frame)
    }

    /// The window's centre, in frames.
    pub(crate) fn centre(&self) -> f64 {
        (self.start + self.end) as f64 / 2.0
    }
}

/// The window that describes frame `frame` best: among the windows holding it, the one whose centre is
/// nearest (the earlier one on ties); `None` when no window holds it.
pub(crate) fn window_for_frame(windows: &[WindowPrediction], frame: usize) -> Option<&WindowPrediction> {
    let at = frame as f64 + 0.5;
    windows
        .iter()
        .filter(|w| w.contains(frame))
        .min_by(|a, b| (a.centre() - at).abs().total_cmp(&(b.centre() - at).abs()))
}

/// The `[start, end)` frame ranges of windows of `window` frames every `stride` frames over a clip of
/// `num_frames` frames. The last window is moved back to end at the last frame when the stride does
/// not land there, so every frame is covered; a clip shorter than `window` is one window.
pub(crate) fn window_ranges(num_frames: usize, window: usize, stride: usize) -> Result<Vec<(usize, usize)>> {
    if window == 0 || stride == 0 {
        return Err(Error::Config(format!(
            "sliding windows need a window and a stride of at least one frame (got {window} and {stride})"
        )));
    }
    if num_frames == 0 {
        return Ok(Vec::new());
    }
    if num_frames <= window {
        return Ok(vec![(0, num_frames)]);
    }
    let mut out: Vec<(usize, usize)> =
        (0..).map(|i| i * stride).take_while(|s| s + window <= num_frames).map(|s| (s, s + window)).collect();
    if out.last().is_some_and(|&(_, e)| e < num_frames) {
        out.push((num_frames - window, num_frames));
    }
    Ok(out)
}

/// A label list as [`parse_labels`] read it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabelList {
    /// The labels, without repeats, in first-seen order.
    pub labels: Vec<String>,
    /// Labels that appeared more than once (each listed once); they are used once.
    pub repeated: Vec<String>,
}

/// UCF101's 101 class names (`ApplyEyeMakeup`, ...), one a line, in class-index order.
const UCF101_CLASSES: &str = include_str!("../../weights/ucf101_classes.txt");
/// HMDB51's 51 class names (`brush_hair`, ...), one a line, in class-index order.
const HMDB51_CLASSES: &str = include_str!("../../weights/hmdb51_classes.txt");

/// The non-blank lines of a built-in class list, trimmed.
fn class_list(text: &str) -> Vec<String> {
    text.lines().map(|l| l.trim().to_string()).filter(|l| !l.is_empty()).collect()
}

/// Reads a label list: `ucf101` or `hmdb51` (built in), an existing file (one label per line; blank lines
/// skipped), or a comma-separated list. With `humanize`, labels become words ([`prompts::humanize`]:
/// `ApplyEyeMakeup` -> `apply eye makeup`). Repeated labels are kept once and reported in
/// [`LabelList::repeated`] (the classifier would drop them too); an empty list, or one with more than
/// [`MAX_CLASSES`] labels, is [`Error::Labels`].
pub fn parse_labels(spec: &str, humanize: bool) -> Result<LabelList> {
    let raw: Vec<String> = match spec.trim() {
        "ucf101" => class_list(UCF101_CLASSES),
        "hmdb51" => class_list(HMDB51_CLASSES),
        s if Path::new(s).is_file() => {
            std::fs::read_to_string(s).map_err(|e| Error::io(s, e))?.lines().map(str::to_string).collect()
        }
        s => s.split(',').map(str::to_string).collect(),
    };
    let mut labels: Vec<String> = Vec::with_capacity(raw.len().min(MAX_CLASSES));
    let mut repeated: Vec<String> = Vec::new();
    let mut seen: HashSet<String> = HashSet::new();
    for l in raw.iter().map(|l| l.trim()).filter(|l| !l.is_empty()) {
        let l = if humanize { prompts::humanize(l) } else { l.to_string() };
        if !seen.insert(l.clone()) {
            if !repeated.contains(&l) {
                repeated.push(l);
            }
        } else if labels.len() == MAX_CLASSES {
            return Err(Error::Labels(format!("the label list {spec:?} has more than {MAX_CLASSES} labels")));
        } else {
            labels.push(l);
        }
    }
    if labels.is_empty() {
        return Err(Error::Labels(format!("the label list {spec:?} is empty")));
    }
    Ok(LabelList { labels, repeated })
}

impl ZeroShotClassifier<'_> {
    /// The evaluation's single-view test pipeline for this classifier's model: its frame count of
    /// segment centres, short side to `size * 256 / 224` (bicubic), centre crop to its input size.
    fn test_pipeline(&self) -> Result<ClipPipeline> {
        let cfg = self.model().config();
        ClipPipeline::test(cfg.frames, cfg.clip.vision.image_size as u32)
    }

    /// Predicts one video file (feature `video`) or frame folder with exactly the evaluation's sampling
    /// and preprocessing ([`crate::data::test_clip`] with the model's frame count and input size), and
    /// says which frames were used.
    ///
    /// A missing path is [`Error::Io`], an unreadable video [`Error::Video`], a clip without frames
    /// [`Error::EmptyClip`].
    pub fn predict_path(&self, path: impl AsRef<Path>, k: usize) -> Result<ClipPrediction> {
        let path = path.as_ref();
        let pipeline = self.test_pipeline()?;
        // The same calls as `data::test_clip` (test mode ignores the generator).
        let clip = pipeline.load(path, None, &mut sample_rng(0, 0, 0))?;
        let frames = clip.to_tensor(DType::F32, &Device::Cpu)?.to_device(self.model().device())?; // [T, 3, S, S]
        let top = self.classify(&frames.unsqueeze(0)?, k)?.swap_remove(0);
        Ok(ClipPrediction { top, indices: clip.indices })
    }

    /// The `k` most probable labels of one video file or frame folder, most probable first, with the
    /// evaluation's sampling and preprocessing (see [`ZeroShotClassifier::predict_path`]).
    pub fn classify_path(&self, path: impl AsRef<Path>, k: usize) -> Result<Vec<(String, f32)>> {
        Ok(self.predict_path(path, k)?.top)
    }

    /// A timeline of predictions over decoded frames: windows of `window` frames every `stride` frames,
    /// each read like an evaluation clip (the model's frame count of segment centres inside the window,
    /// the test transform), top `k` labels per window. The last window is moved back to end at the last
    /// frame when the stride does not land there, so every frame is covered; fewer frames than `window`
    /// make one window.
    // N frames -> windows of [T, 3, S, S] -> one top-k list per window
    pub fn predict_windows(
        &self,
        frames: &[RgbImage],
        window: usize,
        stride: usize,
        k: usize,
    ) -> Result<Vec<WindowPrediction>> {
        let plan = self.window_plan(frames.len(), window, stride)?;
        self.run_windows(plan, |i| frames.get(i), k)
    }

    /// [`ZeroShotClassifier::predict_windows`] over a video file (feature `video`) or frame folder,
    /// decoding only the frames the windows sample.
    pub fn predict_windows_path(
        &self,
        path: impl AsRef<Path>,
        window: usize,
        stride: usize,
        k: usize,
    ) -> Result<Vec<WindowPrediction>> {
        let path = path.as_ref();
        let naming = FrameNaming::default();
        let num_frames = ClipSource::open(path, &naming, None)?.len();
        let plan = self.window_plan(num_frames, window, stride)?;
        let mut wanted: Vec<usize> = plan.iter().flat_map(|(_, _, idx)| idx.iter().copied()).collect();
        wanted.sort_unstable();
        wanted.dedup();
        let images = ClipSource::open(path, &naming, Some(num_frames))?.read(&wanted)?;
        if images.len() != wanted.len() {
            return Err(Error::Video {
                path: path.to_path_buf(),
                reason: format!("{} of {} frames could be read", images.len(), wanted.len()),
            });
        }
        let by_index: BTreeMap<usize, RgbImage> = wanted.into_iter().zip(images).collect();
        self.run_windows(plan, |i| by_index.get(&i), k)
    }

    /// `(start, end, sampled indices)` per window.
    fn window_plan(&self, num_frames: usize, window: usize, stride: usize) -> Result<Vec<(usize, usize, Vec<usize>)>> {
        let sampling = Sampling::new(self.model().config().frames)?;
        Ok(window_ranges(num_frames, window, stride)?
            .into_iter()
            .map(|(s, e)| (s, e, sampling.test_indices(e - s).into_iter().map(|i| s + i).collect()))
            .collect())
    }

    fn run_windows<'f>(
        &self,
        plan: Vec<(usize, usize, Vec<usize>)>,
        frame: impl Fn(usize) -> Option<&'f RgbImage>,
        k: usize,
    ) -> Result<Vec<WindowPrediction>> {
        let cfg = self.model().config();
        let size = cfg.clip.vision.image_size as u32;
        let (t, s) = (cfg.frames, size as usize);
        let transform = TestTransform::new(size);
        let mut out = Vec::with_capacity(plan.len());
        for chunk in plan.chunks(WINDOW_BATCH) {
            let per_window = t * 3 * s * s;
            let mut data = vec![0f32; chunk.len() * per_window];
            for ((_, _, idx), dst) in chunk.iter().zip(data.chunks_mut(per_window)) {
                let imgs = idx
                    .iter()
                    .map(|&i| {
                        frame(i)
                            .cloned()
                            .ok_or_else(|| Error::Config(format!("window frame {i} is not among the frames given")))
                    })
                    .collect::<Result<Vec<_>>>()?;
                transform.apply_into(&imgs, dst)?;
            }
            let batch =
                Tensor::from_vec(data, (chunk.len(), t, 3, s, s), &Device::Cpu)?.to_device(self.model().device())?; // [W, T, 3, S, S]
            let tops = self.classify(&batch, k)?;
            out.extend(chunk.iter().zip(tops).map(|((s, e, idx), top)| WindowPrediction {
                start: *s,
                end: *e,
                indices: idx.clone(),
                top,
            }));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_cover_every_frame() {
        assert_eq!(window_ranges(10, 4, 4).unwrap(), vec![(0, 4), (4, 8), (6, 10)]);
        assert_eq!(window_ranges(8, 4, 2).unwrap(), vec![(0, 4), (2, 6), (4, 8)]);
        assert_eq!(window_ranges(3, 8, 4).unwrap(), vec![(0, 3)]);
        assert!(window_ranges(0, 8, 4).unwrap().is_empty());
        assert!(window_ranges(10, 0, 4).is_err());
        assert!(window_ranges(10, 4, 0).is_err());
    }

    #[test]
    fn labels_parse_and_dedup() {
        let l = parse_labels("ApplyEyeMakeup, archery,,apply_eye_makeup", true).unwrap();
        assert_eq!(l.labels, ["apply eye makeup", "archery"]);
        assert_eq!(l.repeated, ["apply eye makeup"]);
        assert_eq!(parse_labels("ucf101", false).unwrap().labels.len(), 101);
        assert_eq!(parse_labels("hmdb51", false).unwrap().labels.len(), 51);
        assert!(matches!(parse_labels(" , ", true), Err(Error::Labels(_))));
    }

    #[test]
    fn frames_map_to_the_nearest_window() {
        let w = |start, end| WindowPrediction { start, end, indices: vec![], top: vec![] };
        let ws = [w(0, 8), w(4, 12), w(8, 16)];
        assert_eq!(window_for_frame(&ws, 1).unwrap().start, 0);
        assert_eq!(window_for_frame(&ws, 8).unwrap().start, 4);
        assert_eq!(window_for_frame(&ws, 15).unwrap().start, 8);
        assert!(window_for_frame(&ws, 16).is_none());
    }
}
