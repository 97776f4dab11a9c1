//! Feature extraction at scale: a dataset of videos encoded into sharded safetensors files with an
//! index ([`extract_features`]), and label sentences into class embeddings ([`save_class_features`]).
//!
//! Output folder layout:
//! - `manifest.json`: the settings and a fingerprint of the clip list; a restart with other settings or
//!   another list is refused rather than mixed in.
//! - `shard-00000.safetensors`, ...: shard `k` covers clips `k * shard_size ..` of the list. Tensors:
//!   `video` `[n, D]` (video features, not normalised, the mean over views), with several views also
//!   `video_views` `[n, V, D]`, and with frame features `frames` `[n, V, T, D]` (image tower outputs
//!   before the temporal head). Its metadata `actionclip.rows` holds the path and label of each row and
//!   `actionclip.failed` the clips of the shard that could not be read, with the reason.
//! - `index.csv`: `path,label,shard,row` for every encoded clip, rewritten at the end of each run.
//! - `failures.csv`: `path,reason` for every clip left out.
//!
//! Shards are written to a temporary name and renamed, so a shard on disk is always whole: a run that
//! stops (a crash, a kill, a cancel from the observer) loses at most the shard it was filling, and the
//! next run skips the finished shards. Decoding runs on loader threads while the model encodes.
use std::collections::{BTreeMap, HashMap};
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};

use crate::data::{ClipPipeline, Loader, LoaderConfig, OnFailure, VideoDataset};
use crate::weights::write_tensors;
use crate::{ActionClip, Error, Result, ZeroShotClassifier};

/// Metadata key of a shard's rows (JSON list of `[path, label]`).
const ROWS_KEY: &str = "actionclip.rows";
/// Metadata key of a shard's failed clips (JSON list of `[path, reason]`).
const FAILED_KEY: &str = "actionclip.failed";
/// Version of the output layout, stored in the manifest.
const LAYOUT_VERSION: u32 = 1;

/// Settings for [`extract_features`].
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ExtractConfig {
    /// Clips per shard file.
    pub shard_size: usize,
    /// Clips encoded per model call.
    pub batch_size: usize,
    /// Decoding threads.
    pub workers: usize,
    /// Temporal views per clip (evenly spread test clips; 1: the evaluation's single view).
    pub temporal_views: usize,
    /// Three spatial crops per temporal view (left/centre/right) instead of the centre crop.
    pub three_crops: bool,
    /// Also store the per-frame features (`frames`, `[n, V, T, D]`).
    pub frame_features: bool,
}

impl Default for ExtractConfig {
    /// 1,000 clips per shard, batches of 8, 2 decoding threads, one centre view, no frame features.
    fn default() -> Self {
        Self {
            shard_size: 1000,
            batch_size: 8,
            workers: 2,
            temporal_views: 1,
            three_crops: false,
            frame_features: false,
        }
    }
}

impl ExtractConfig {
    /// The loader [`extract_features`] reads `dataset` with: the evaluation's test sampling with these
    /// views, in list order, failed clips skipped, batches on the model's device.
    pub fn loader(&self, model: &ActionClip, dataset: VideoDataset) -> Result<Loader> {
        let cfg = model.config();
        let size = cfg.clip.vision.image_size as u32;
        let pipeline = ClipPipeline::multi_view(cfg.frames, size, self.temporal_views, self.three_crops)?;
        let loader_cfg = LoaderConfig {
            batch_size: self.batch_size,
            workers: self.workers,
            shuffle: false,
            on_failure: OnFailure::Skip,
            dtype: DType::F32,
            device: model.device().clone(),
            ..LoaderConfig::default()
        };
        Loader::new(dataset, pipeline, loader_cfg)
    }
}

/// Progress of [`extract_features`], for a progress bar or a log.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ExtractEvent<'e> {
    /// The run starts: `done` of `total` clips are in shards already on disk.
    Started {
        /// Clips in the list.
        total: usize,
        /// Clips covered by finished shards.
        done: usize,
    },
    /// A batch was encoded; `done` of `total` clips are now covered.
    Encoded {
        /// Clips covered so far (encoded or failed).
        done: usize,
        /// Clips in the list.
        total: usize,
    },
    /// A clip could not be read; it is left out and listed in `failures.csv`.
    Failed {
        /// The clip.
        path: &'e Path,
        /// Why.
        reason: &'e str,
    },
    /// A shard was written.
    ShardWritten {
        /// Its number.
        shard: usize,
        /// Its file.
        path: &'e Path,
        /// Clips encoded in it.
        rows: usize,
    },
}

/// What [`extract_features`] did.
#[derive(Debug, Clone, PartialEq)]
pub struct ExtractSummary {
    /// Clips in the list.
    pub total: usize,
    /// Clips encoded by this run.
    pub encoded: usize,
    /// Clips found in shards from an earlier run.
    pub resumed: usize,
    /// Clips left out (all runs), with the reason.
    pub failed: Vec<(PathBuf, String)>,
    /// Shard files in the folder.
    pub shards: usize,
    /// Whether the observer stopped the run before the end.
    pub stopped: bool,
}

/// The output folder's `manifest.json`.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
struct Manifest {
    layout: u32,
    clips: usize,
    /// FNV-1a of the clip paths and labels, in order.
    fingerprint: String,
    embed_dim: usize,
    frames: usize,
    input_size: usize,
    config: ExtractConfig,
}

/// Encodes every clip of `dataset` with `model` into shards under `out` (see the module docs for the
/// layout), skipping shards a previous run finished. `observe` sees the progress and can stop the run
/// with [`ControlFlow::Break`] (the shard being filled is not written).
pub fn extract_features(
    model: &ActionClip,
    dataset: &VideoDataset,
    out: &Path,
    config: &ExtractConfig,
    observe: &mut dyn FnMut(ExtractEvent) -> ControlFlow<()>,
) -> Result<ExtractSummary> {
    if config.shard_size == 0 || config.batch_size == 0 {
        return Err(Error::Config("shard_size and batch_size must be at least 1".into()));
    }
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    check_manifest(out, &manifest(model, dataset, config))?;
    let total = dataset.len();
    let shard_count = total.div_ceil(config.shard_size);
    let todo: Vec<usize> = (0..shard_count).filter(|&k| !shard_path(out, k).is_file()).collect();
    let done_before = total - todo.iter().map(|&k| shard_range(k, config.shard_size, total).len()).sum::<usize>();
    let mut summary = ExtractSummary {
        total,
        encoded: 0,
        resumed: done_before,
        failed: Vec::new(),
        shards: shard_count - todo.len(),
        stopped: false,
    };
    if observe(ExtractEvent::Started { total, done: done_before }).is_break() {
        summary.stopped = true;
    } else if !todo.is_empty() {
        encode_shards(model, dataset, out, config, &todo, &mut summary, observe)?;
    }
    write_index(out, shard_count, &mut summary)?;
    Ok(summary)
}

/// Encodes the shards `todo` (in order) and writes each as soon as all its clips are encoded or failed.
fn encode_shards(
    model: &ActionClip,
    dataset: &VideoDataset,
    out: &Path,
    config: &ExtractConfig,
    todo: &[usize],
    summary: &mut ExtractSummary,
    observe: &mut dyn FnMut(ExtractEvent) -> ControlFlow<()>,
) -> Result<()> {
    let size = config.shard_size;
    // The clips of the remaining shards, in list order; `origin[i]` is the list position of clip `i`.
    let origin: Vec<usize> = todo.iter().flat_map(|&k| shard_range(k, size, dataset.len())).collect();
    let subset = VideoDataset {
        samples: origin.iter().map(|&i| dataset.samples[i].clone()).collect(),
        classes: dataset.classes.clone(),
    };
    let loader = config.loader(model, subset)?;
    // Buffers of the shards being filled (a batch may straddle two), by shard number.
    let mut buffers: BTreeMap<usize, ShardBuffer> = BTreeMap::new();
    let mut next = 0; // index into `todo` of the next shard to write
    let mut covered = summary.resumed;
    for batch in loader.epoch(0) {
        let batch = batch?;
        for failure in &batch.failures {
            let at = origin[failure.sample];
            let path = &dataset.samples[at].path;
            buffers.entry(at / size).or_default().failed.push((path.clone(), failure.reason.clone()));
            summary.stopped |= observe(ExtractEvent::Failed { path, reason: &failure.reason }).is_break();
        }
        if !batch.ids.is_empty() {
            let (video, views, frames) = encode_batch(model, &batch.frames, config.frame_features)?;
            for (row, &id) in batch.ids.iter().enumerate() {
                let at = origin[id];
                let sample = &dataset.samples[at];
                let label = dataset.classes.get(sample.label).cloned().unwrap_or_default();
                buffers.entry(at / size).or_default().push(
                    &sample.path,
                    label,
                    &video,
                    &views,
                    frames.as_ref(),
                    row,
                )?;
            }
            summary.encoded += batch.ids.len();
        }
        covered += batch.ids.len() + batch.failures.len();
        // Write, in order, every shard whose clips are all accounted for.
        while let Some(&k) = todo.get(next) {
            let complete = buffers.get(&k).is_some_and(|b| b.covered() == shard_range(k, size, dataset.len()).len());
            if !complete {
                break;
            }
            let shard = buffers.remove(&k).unwrap_or_default();
            let (path, rows) = (shard_path(out, k), shard.rows.len());
            shard.write(&path)?;
            summary.shards += 1;
            summary.stopped |= observe(ExtractEvent::ShardWritten { shard: k, path: &path, rows }).is_break();
            next += 1;
        }
        summary.stopped |= observe(ExtractEvent::Encoded { done: covered, total: dataset.len() }).is_break();
        if summary.stopped {
            break;
        }
    }
    Ok(())
}

/// Video features `[B, D]`, per-view features `[B, V, D]` and, when asked for, frame features
/// `[B, V, T, D]` of a batch `[B, T, 3, S, S]` or `[B, V, T, 3, S, S]`.
fn encode_batch(model: &ActionClip, frames: &Tensor, frame_features: bool) -> Result<(Tensor, Tensor, Option<Tensor>)> {
    let frames = if frames.rank() == 5 { frames.unsqueeze(1)? } else { frames.clone() };
    let (b, v) = (frames.dim(0)?, frames.dim(1)?);
    let flat = frames.flatten(0, 1)?; // [B*V, T, 3, S, S]
    let encoder = model.video_encoder();
    let (views, per_frame) = if frame_features {
        let per_frame = encoder.frame_features_t(&flat, false)?; // [B*V, T, D]
        (encoder.head().forward_t(&per_frame, false)?, Some(per_frame))
    } else {
        (encoder.forward(&flat)?, None)
    };
    let d = views.dim(1)?;
    let views = views.to_dtype(DType::F32)?.to_device(&Device::Cpu)?.reshape((b, v, d))?;
    let per_frame = match per_frame {
        Some(f) => {
            let t = f.dim(1)?;
            Some(f.to_dtype(DType::F32)?.to_device(&Device::Cpu)?.reshape((b, v, t, d))?)
        }
        None => None,
    };
    Ok((views.mean(1)?, views, per_frame))
}

/// The rows of the shard being filled.
#[derive(Default)]
struct ShardBuffer {
    rows: Vec<(String, String)>,
    video: Vec<Tensor>,
    views: Vec<Tensor>,
    frames: Vec<Tensor>,
    failed: Vec<(PathBuf, String)>,
}

impl ShardBuffer {
    /// Clips encoded or failed.
    fn covered(&self) -> usize {
        self.rows.len() + self.failed.len()
    }

    fn push(
        &mut self,
        path: &Path,
        label: String,
        video: &Tensor,
        views: &Tensor,
        frames: Option<&Tensor>,
        row: usize,
    ) -> Result<()> {
        self.rows.push((path.to_string_lossy().into_owned(), label));
        self.video.push(video.get(row)?);
        self.views.push(views.get(row)?);
        if let Some(f) = frames {
            self.frames.push(f.get(row)?);
        }
        Ok(())
    }

    fn write(self, path: &Path) -> Result<()> {
        let mut tensors: Vec<(&str, Tensor)> = Vec::new();
        if !self.rows.is_empty() {
            tensors.push(("video", Tensor::stack(&self.video, 0)?));
            if self.views[0].dim(0)? > 1 {
                tensors.push(("video_views", Tensor::stack(&self.views, 0)?));
            }
            if !self.frames.is_empty() {
                tensors.push(("frames", Tensor::stack(&self.frames, 0)?));
            }
        }
        let failed: Vec<(String, &str)> =
            self.failed.iter().map(|(p, r)| (p.to_string_lossy().into_owned(), r.as_str())).collect();
        let metadata = HashMap::from([
            ("format".to_string(), "pt".to_string()),
            (ROWS_KEY.to_string(), to_json(&self.rows)),
            (FAILED_KEY.to_string(), to_json(&failed)),
        ]);
        let refs: Vec<(&str, &Tensor)> = tensors.iter().map(|(k, t)| (*k, t)).collect();
        write_tensors(&refs, metadata, path)
    }
}

/// JSON text of a metadata value (lists of strings, which always serialise).
fn to_json<T: serde::Serialize + ?Sized>(value: &T) -> String {
    serde_json::to_string(value).unwrap_or_default()
}

/// The clips (list positions) of shard `k`.
fn shard_range(k: usize, size: usize, total: usize) -> std::ops::Range<usize> {
    (k * size).min(total)..((k + 1) * size).min(total)
}

fn shard_path(out: &Path, k: usize) -> PathBuf {
    out.join(format!("shard-{k:05}.safetensors"))
}

fn manifest(model: &ActionClip, dataset: &VideoDataset, config: &ExtractConfig) -> Manifest {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for sample in &dataset.samples {
        let label = dataset.classes.get(sample.label).map_or("", String::as_str);
        for byte in sample.path.to_string_lossy().bytes().chain([0]).chain(label.bytes()).chain([0]) {
            hash = (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3);
        }
    }
    let cfg = model.config();
    Manifest {
        layout: LAYOUT_VERSION,
        clips: dataset.len(),
        fingerprint: format!("{hash:016x}"),
        embed_dim: cfg.clip.embed_dim,
        frames: cfg.frames,
        input_size: cfg.clip.vision.image_size,
        config: ExtractConfig { workers: 0, batch_size: 0, ..config.clone() },
    }
}

/// Writes the manifest into a new folder, or checks that the folder's manifest is this run's.
fn check_manifest(out: &Path, expected: &Manifest) -> Result<()> {
    let path = out.join("manifest.json");
    if path.is_file() {
        let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
        let found: Manifest = serde_json::from_str(&text)
            .map_err(|e| Error::Config(format!("{}: not an actionclip feature manifest: {e}", path.display())))?;
        if &found != expected {
            return Err(Error::Config(format!(
                "{} holds features of another clip list, model or setting ({}); use a new output folder",
                out.display(),
                manifest_difference(&found, expected)
            )));
        }
        return Ok(());
    }
    let text = serde_json::to_string_pretty(expected)
        .map_err(|e| Error::Config(format!("cannot serialise the manifest: {e}")))?;
    write_atomic(&path, text.as_bytes())
}

/// The first field in which two manifests differ, as `field: found vs expected`.
fn manifest_difference(found: &Manifest, expected: &Manifest) -> String {
    let (a, b) = (serde_json::to_value(found).unwrap_or_default(), serde_json::to_value(expected).unwrap_or_default());
    let fields = ["layout", "clips", "fingerprint", "embed_dim", "frames", "input_size", "config"];
    fields
        .iter()
        .find(|f| a[*f] != b[*f])
        .map_or_else(|| "unknown difference".into(), |f| format!("{f}: {} on disk, {} now", a[*f], b[*f]))
}

/// Reads every shard's rows and failures and writes `index.csv` and `failures.csv`.
fn write_index(out: &Path, shard_count: usize, summary: &mut ExtractSummary) -> Result<()> {
    let mut index = String::from("path,label,shard,row\n");
    let mut failures = String::from("path,reason\n");
    summary.failed.clear();
    summary.shards = 0;
    for k in 0..shard_count {
        let path = shard_path(out, k);
        if !path.is_file() {
            continue;
        }
        summary.shards += 1;
        let (rows, failed) = read_shard_metadata(&path)?;
        for (row, (clip, label)) in rows.iter().enumerate() {
            index.push_str(&format!("{},{},{k},{row}\n", csv_field(clip), csv_field(label)));
        }
        for (clip, reason) in failed {
            failures.push_str(&format!("{},{}\n", csv_field(&clip), csv_field(&reason)));
            summary.failed.push((PathBuf::from(clip), reason));
        }
    }
    write_atomic(&out.join("index.csv"), index.as_bytes())?;
    write_atomic(&out.join("failures.csv"), failures.as_bytes())
}

type Pairs = Vec<(String, String)>;

/// The rows and failures stored in a shard's metadata.
fn read_shard_metadata(path: &Path) -> Result<(Pairs, Pairs)> {
    let bad = |reason: String| Error::Checkpoint { path: path.to_path_buf(), reason };
    let data = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let (_, meta) = safetensors::SafeTensors::read_metadata(&data)
        .map_err(|e| bad(format!("not a valid safetensors file: {e}")))?;
    let meta = meta.metadata().clone().unwrap_or_default();
    let field = |key: &str| -> Result<Pairs> {
        let text = meta.get(key).ok_or_else(|| bad(format!("no `{key}` metadata: not a feature shard")))?;
        serde_json::from_str(text).map_err(|e| bad(format!("metadata `{key}`: {e}")))
    };
    Ok((field(ROWS_KEY)?, field(FAILED_KEY)?))
}

/// A CSV field, quoted when it holds a comma, a quote or a line break.
fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// Writes `bytes` to `path` through a temporary file and a rename.
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, bytes).map_err(|e| Error::io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
}

/// Writes a classifier's class embeddings to a safetensors file: `class_features` `[J, C, D]`
/// (normalised, one row per template and label), `classes` `[C, D]` (their mean over templates,
/// normalised), with the labels and templates as JSON in the metadata (`actionclip.labels`,
/// `actionclip.templates`).
pub fn save_class_features(classifier: &ZeroShotClassifier, path: impl AsRef<Path>) -> Result<()> {
    let per_template = classifier.class_features().to_dtype(DType::F32)?.to_device(&Device::Cpu)?; // [J, C, D]
    let mean = crate::loss::normalize(&per_template.mean(0)?)?; // [C, D]
    let templates: Vec<String> = classifier.templates().iter().map(|t| t.pattern().to_string()).collect();
    let metadata = HashMap::from([
        ("format".to_string(), "pt".to_string()),
        ("actionclip.labels".to_string(), to_json(classifier.labels())),
        ("actionclip.templates".to_string(), to_json(&templates)),
    ]);
    write_tensors(&[("class_features", &per_template), ("classes", &mean)], metadata, path.as_ref())
}
