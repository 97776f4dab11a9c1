//! Choosing videos for a batch: N random clips from every class folder of a dataset laid out as
//! `DIR/Class/clip` (UCF101's layout; clips are video files or frame folders), reproducible by seed.
use std::path::{Path, PathBuf};

use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use super::confusion::ConfusionMatrix;
use super::pipeline::{visualize_video, VisualizeOptions};
use super::report::{
    confusion_matrix, write_report_html, write_summary_csv, ClassSummary, ReportEntry, ReportPrediction,
};
use crate::error::{Error, Result};
use crate::ZeroShotClassifier;

/// Video file extensions a class folder is searched for (lower case).
const VIDEO_EXTENSIONS: [&str; 11] = ["avi", "mp4", "mkv", "webm", "mov", "m4v", "mpg", "mpeg", "wmv", "flv", "ogv"];

/// A clip chosen by [`sample_per_class`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SampledClip {
    /// The class folder's name (`ApplyEyeMakeup`).
    pub class: String,
    /// The clip: a video file or a frame folder.
    pub path: PathBuf,
}

/// Whether `path` is a frame folder (holds `img_00001.jpg`, `.png` or `.jpeg`).
fn is_frame_folder(path: &Path) -> bool {
    path.is_dir() && ["jpg", "png", "jpeg"].iter().any(|e| path.join(format!("img_00001.{e}")).is_file())
}

/// Whether `path` looks like a video file (by its extension; the file may still be unreadable).
fn is_video_file(path: &Path) -> bool {
    path.is_file()
        && path
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| VIDEO_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
}

fn sorted_entries(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut entries = std::fs::read_dir(dir)
        .map_err(|e| Error::io(dir, e))?
        .map(|e| e.map(|e| e.path()).map_err(|e| Error::io(dir, e)))
        .collect::<Result<Vec<_>>>()?;
    entries.sort();
    Ok(entries)
}

/// FNV-1a, so that a class's draw depends on its name, not on which other classes exist.
fn name_hash(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3))
}

/// Up to `per_class` clips from every class folder under `dir` (sub-folders that are not frame folders
/// themselves, sorted by name), drawn without replacement with a generator keyed by `seed` and the class
/// name; a class with fewer clips gives all of them. Clips are video files (by extension) and frame
/// folders; the result is class by class, each class's clips sorted by path. A missing `dir` is
/// [`Error::Io`]; a `dir` without class folders holding clips is [`Error::Io`] (not found) too.
pub fn sample_per_class(dir: impl AsRef<Path>, per_class: usize, seed: u64) -> Result<Vec<SampledClip>> {
    let dir = dir.as_ref();
    let mut out = Vec::new();
    for class_dir in sorted_entries(dir)?.into_iter().filter(|p| p.is_dir() && !is_frame_folder(p)) {
        let class = class_dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let mut clips: Vec<PathBuf> =
            sorted_entries(&class_dir)?.into_iter().filter(|p| is_video_file(p) || is_frame_folder(p)).collect();
        if clips.is_empty() {
            continue;
        }
        let mut rng = ChaCha8Rng::seed_from_u64(seed ^ name_hash(&class));
        clips.shuffle(&mut rng);
        clips.truncate(per_class);
        clips.sort();
        out.extend(clips.into_iter().map(|path| SampledClip { class: class.clone(), path }));
    }
    if out.is_empty() {
        let reason =
            std::io::Error::new(std::io::ErrorKind::NotFound, "no class folders holding video files or frame folders");
        return Err(Error::io(dir, reason));
    }
    Ok(out)
}

/// Everything [`run_batch`] wrote.
#[derive(Debug, Clone, PartialEq)]
pub struct BatchOutput {
    /// One entry per clip, in the order given (failed clips included).
    pub entries: Vec<ReportEntry>,
    /// Per-class results.
    pub classes: Vec<ClassSummary>,
    /// The confusion matrix over the classified clips.
    pub confusion: ConfusionMatrix,
    /// `report.html`.
    pub report: PathBuf,
    /// `summary.csv`.
    pub summary: PathBuf,
    /// `confusion.png`.
    pub confusion_png: PathBuf,
}

/// A file-name-safe version of `s` (letters, digits, `-`, `_`, `.`; everything else `_`).
fn safe_name(s: &str) -> String {
    s.chars().map(|c| if c.is_ascii_alphanumeric() || "-_.".contains(c) { c } else { '_' }).collect()
}

/// Visualises every clip ([`visualize_video`], outputs under `out_dir/videos/CLASS__CLIP.*`, GIF
/// thumbnails on unless `opts` says otherwise) and writes `out_dir/report.html`, `out_dir/summary.csv`
/// and `out_dir/confusion.png`. `truth` gives a clip's true label (in the classifier's label words);
/// video names in the report are relative to `root` when they lie under it. A clip that fails (missing,
/// unreadable, too short) is listed as failed with its error and the batch goes on; `progress` is
/// called after every clip with its position and entry. Errors are returned only for the report files.
pub fn run_batch(
    classifier: &ZeroShotClassifier,
    clips: &[SampledClip],
    truth: impl Fn(&SampledClip) -> Option<String>,
    root: &Path,
    out_dir: &Path,
    opts: &VisualizeOptions,
    mut progress: impl FnMut(usize, &ReportEntry),
) -> Result<BatchOutput> {
    let media = out_dir.join("videos");
    std::fs::create_dir_all(&media).map_err(|e| Error::io(&media, e))?;
    let mut opts = opts.clone();
    if opts.thumbnail_width.is_none() {
        opts.thumbnail_width = Some(200);
    }
    let rel = |p: &Path| p.strip_prefix(out_dir).unwrap_or(p).to_string_lossy().replace('\\', "/");
    let mut entries = Vec::with_capacity(clips.len());
    for (i, clip) in clips.iter().enumerate() {
        let t = truth(clip);
        let stem = clip.path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
        let name = safe_name(&format!("{}__{}", clip.class, stem));
        let outcome = visualize_video(classifier, &clip.path, t.as_deref(), &media, &name, &opts)
            .map(|o| ReportPrediction {
                top: o.prediction.top,
                annotated: Some(rel(&o.annotated)),
                thumbnail: o.thumbnail.as_deref().map(rel),
                sheet: Some(rel(&o.sheet)),
            })
            .map_err(|e| e.to_string());
        let video = clip.path.strip_prefix(root).unwrap_or(&clip.path).to_string_lossy().into_owned();
        entries.push(ReportEntry { video, truth: t, outcome });
        progress(i, &entries[i]);
    }
    let rows: Vec<String> = entries.iter().filter_map(|e| e.truth.clone()).fold(Vec::new(), |mut v, t| {
        if !v.contains(&t) {
            v.push(t);
        }
        v
    });
    let confusion = confusion_matrix(&entries, &rows, classifier.labels());
    let (report, summary, confusion_png) =
        (out_dir.join("report.html"), out_dir.join("summary.csv"), out_dir.join("confusion.png"));
    write_report_html(&report, &format!("ActionCLIP predictions: {} videos", entries.len()), &entries)?;
    let classes = write_summary_csv(&summary, &entries)?;
    confusion.save_png(&confusion_png)?;
    Ok(BatchOutput { entries, classes, confusion, report, summary, confusion_png })
}
