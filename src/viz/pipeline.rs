//! One video, start to end: the evaluation's prediction, a window timeline, every frame annotated and
//! written as MP4 (feature `video`) or GIF, a contact sheet, and optionally a small GIF thumbnail.
use std::path::{Path, PathBuf};

use image::{imageops::FilterType, RgbImage};

use super::annotate::{annotate_frame, prepare_frame, AnnotateStyle, Annotation};
use super::output::{write_animation, write_gif, AnimationFormat};
use super::sheet::{contact_sheet, SheetContent, SheetStyle};
use crate::data;
use crate::error::{Error, Result};
use crate::inference::{window_for_frame, ClipPrediction, WindowPrediction};
use crate::ZeroShotClassifier;

/// Frame rate used when a clip does not say (frame folders, or no `video` feature).
pub(crate) const DEFAULT_FPS: f64 = 25.0;
/// Most frames a GIF thumbnail keeps (evenly spaced).
const THUMB_FRAMES: usize = 48;

/// Settings of [`visualize_video`].
#[derive(Debug, Clone, PartialEq)]
pub struct VisualizeOptions {
    /// Window length in frames for the timeline; `None`: four times the model's frame count.
    pub window: Option<usize>,
    /// Frames between window starts; `None`: half the window.
    pub stride: Option<usize>,
    /// Labels in the video-level top list (the contact sheet's bar chart).
    pub top_k: usize,
    /// Frames are scaled up until their shorter side has at least this many pixels, so text fits.
    pub min_side: u32,
    /// Most frames annotated (from the start); longer videos are cut there, and the window timeline
    /// covers the annotated part only. The video-level prediction always uses the whole video.
    pub max_frames: usize,
    /// Width of a GIF thumbnail of the annotated video, or `None` for no thumbnail.
    pub thumbnail_width: Option<u32>,
    /// How annotations are drawn.
    pub style: AnnotateStyle,
    /// Contact sheet layout.
    pub sheet: SheetStyle,
}

impl Default for VisualizeOptions {
    fn default() -> Self {
        Self {
            window: None,
            stride: None,
            top_k: 5,
            min_side: 256,
            max_frames: 750,
            thumbnail_width: None,
            style: AnnotateStyle::default(),
            sheet: SheetStyle::default(),
        }
    }
}

/// What [`visualize_video`] computed and wrote.
#[derive(Debug, Clone, PartialEq)]
pub struct VisualizeOutput {
    /// The video-level prediction: exactly [`ZeroShotClassifier::predict_path`]'s.
    pub prediction: ClipPrediction,
    /// The window timeline over the annotated frames.
    pub windows: Vec<WindowPrediction>,
    /// Frames in the clip.
    pub total_frames: usize,
    /// Frames annotated and written (at most [`VisualizeOptions::max_frames`]).
    pub frames_written: usize,
    /// Size of the written frames.
    pub size: (u32, u32),
    /// Frame rate of the written video.
    pub fps: f64,
    /// The annotated video (`NAME.annotated.mp4` or `.gif`).
    pub annotated: PathBuf,
    /// Its format.
    pub format: AnimationFormat,
    /// The contact sheet (`NAME.sheet.png`).
    pub sheet: PathBuf,
    /// The GIF thumbnail (`NAME.thumb.gif`), when asked for.
    pub thumbnail: Option<PathBuf>,
}

/// The frame rate of a clip: the container's for video files (feature `video`), else [`DEFAULT_FPS`].
pub(crate) fn clip_fps(path: &Path) -> f64 {
    if path.is_dir() {
        return DEFAULT_FPS;
    }
    match data::probe(path) {
        Ok(info) if info.fps.is_finite() && info.fps > 0.0 => info.fps,
        _ => DEFAULT_FPS,
    }
}

/// Runs `classifier` on the video file or frame folder `path` and writes, into `out_dir` (created if
/// needed) under the file name stem `name`: the annotated video (every frame shows `truth` when given,
/// the video-level prediction and probability, and the current window's), the contact sheet (the
/// frames the model saw and a bar chart of the top [`VisualizeOptions::top_k`]), and optionally a GIF
/// thumbnail.
///
/// The video-level prediction is [`ZeroShotClassifier::predict_path`] (the evaluation's sampling and
/// preprocessing), so it equals what an evaluation reports for the clip. Bad input fails before
/// anything is written: a missing path is [`Error::Io`], an unreadable video [`Error::Video`].
pub fn visualize_video(
    classifier: &ZeroShotClassifier,
    path: impl AsRef<Path>,
    truth: Option<&str>,
    out_dir: impl AsRef<Path>,
    name: &str,
    opts: &VisualizeOptions,
) -> Result<VisualizeOutput> {
    let (path, out_dir) = (path.as_ref(), out_dir.as_ref());
    let prediction = classifier.predict_path(path, opts.top_k.max(1))?;
    let total_frames = data::frame_count(path)?;
    let frames = decode_leading(path, total_frames.min(opts.max_frames.max(1)))?;
    let t = classifier.model().config().frames;
    let window = opts.window.unwrap_or(4 * t).max(1);
    let stride = opts.stride.unwrap_or(window.div_ceil(2)).max(1);
    let windows = classifier.predict_windows(&frames, window, stride, 1)?;

    // The frames the model saw, for the contact sheet (decoded again only past the annotated part).
    let sampled: Vec<(usize, RgbImage)> = if prediction.indices.iter().all(|&i| i < frames.len()) {
        prediction.indices.iter().map(|&i| (i, frames[i].clone())).collect()
    } else {
        prediction.indices.iter().copied().zip(data::decode_frames(path, &prediction.indices)?).collect()
    };

    let top1 = prediction.top.first().cloned().unwrap_or_default();
    let annotated: Vec<RgbImage> = frames
        .into_iter()
        .enumerate()
        .map(|(f, frame)| {
            let mut img = prepare_frame(&frame, opts.min_side);
            let ann = Annotation {
                truth: truth.map(str::to_string),
                video: top1.clone(),
                window: window_for_frame(&windows, f)
                    .and_then(|w| w.top.first().map(|(l, p)| (w.start, w.end, l.clone(), *p))),
            };
            annotate_frame(&mut img, &ann, &opts.style);
            img
        })
        .collect();
    let size = annotated.first().map(|f| f.dimensions()).unwrap_or((0, 0));

    std::fs::create_dir_all(out_dir).map_err(|e| Error::io(out_dir, e))?;
    let fps = clip_fps(path);
    let (annotated_path, format) = write_animation(out_dir.join(format!("{name}.annotated")), &annotated, fps)?;

    let sheet_path = out_dir.join(format!("{name}.sheet.png"));
    let title =
        path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| path.display().to_string());
    let sheet =
        contact_sheet(&SheetContent { title: &title, truth, frames: &sampled, top: &prediction.top }, &opts.sheet);
    sheet.save(&sheet_path).map_err(|e| Error::Image { path: sheet_path.clone(), reason: e.to_string() })?;

    let thumbnail = match opts.thumbnail_width {
        Some(w) => Some(write_thumbnail(&out_dir.join(format!("{name}.thumb.gif")), &annotated, w, fps)?),
        None => None,
    };

    Ok(VisualizeOutput {
        prediction,
        windows,
        total_frames,
        frames_written: annotated.len(),
        size,
        fps,
        annotated: annotated_path,
        format,
        sheet: sheet_path,
        thumbnail,
    })
}

/// The first `m` frames of a video, all of them or an error naming how many could be decoded.
fn decode_leading(path: &Path, m: usize) -> Result<Vec<RgbImage>> {
    let frames = data::decode_frames(path, &(0..m).collect::<Vec<_>>())?;
    if frames.len() != m {
        return Err(Error::Video {
            path: path.to_path_buf(),
            reason: format!("{} of {m} frames could be decoded", frames.len()),
        });
    }
    Ok(frames)
}

/// A small looping GIF of at most [`THUMB_FRAMES`] annotated frames, `width` pixels wide (16 at least).
fn write_thumbnail(path: &Path, annotated: &[RgbImage], width: u32, fps: f64) -> Result<PathBuf> {
    let size = annotated.first().map(|f| f.dimensions()).unwrap_or((0, 0));
    let step = annotated.len().div_ceil(THUMB_FRAMES).max(1);
    let w = width.max(16);
    let h = ((size.1 as f64 * w as f64 / size.0.max(1) as f64).round() as u32).max(2);
    let small: Vec<RgbImage> =
        annotated.iter().step_by(step).map(|f| image::imageops::resize(f, w, h, FilterType::Triangle)).collect();
    write_gif(path, &small, fps / step as f64, 30)?;
    Ok(path.to_path_buf())
}
