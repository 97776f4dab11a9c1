//! Fine-tune ActionCLIP on UCF101 (or any dataset in its layout or in TSN list files).
//!
//! ```text
//! cargo run --release --example finetune_ucf101 -- --demo          # synthetic data, tiny model from scratch
//! cargo run --release --features video --example finetune_ucf101 -- \
//!     --root data/UCF-101 --weights openai/clip-vit-base-patch16 --frames 8 --sim-header Transf \
//!     --epochs 50 --batch-size 32 --output runs/ucf101_b16
//! cargo run --release --features video --example finetune_ucf101 -- --config configs/ucf101.yaml --resume
//! cargo run --release --features video --example finetune_ucf101 -- --root data/UCF-101 \
//!     --weights runs/ucf101_b16/best --evaluate-only --multi-view 4x3
//! ```
//! Settings come from defaults (the reference's UCF101 recipe), then the optional `--config` file (TOML or
//! YAML, with the reference's keys: `network.arch`, `network.sim_header`, `data.num_segments`,
//! `solver.lr`, ... or the same names as the flags), then the flags. Ctrl-C saves `last/` and exits; a
//! second Ctrl-C exits at once. Everything lands in `--output` (metrics.jsonl, config.json, curves.png,
//! confusion.png, summary.md, last/, best/).
//!
//! The demo's model is tiny (vision width 64 x 2 layers, patch 8, 32 px; text width 64 x 1 layer; temporal
//! shift + a 1-layer Transf head). Its text tower keeps its random initialisation: trained from scratch on
//! eight label sentences that differ in one word, it maps the sentences of classes the image tower cannot
//! tell apart yet onto one point, and then no gradient can separate them again (the four translations and
//! the two rotations stayed confused at ~48% top-1); frozen, the eight sentence embeddings stay distinct
//! targets and the image tower and temporal head learn the motions. Environment variables `DEMO_VW`,
//! `DEMO_VL`, `DEMO_TW`, `DEMO_TL`, `DEMO_PATCH`, `DEMO_RES` and `DEMO_HL` change its vision width and
//! layers, text width and layers, patch size, resolution (the clips are 64x64) and temporal-head layers,
//! `DEMO_CLIPS` the clips per class (96 by default, 99 at most; a tenth of them, at least one, are test
//! clips), `DEMO_TRAIN_TEXT=1` trains the text tower too (at `--lr`) and `DEMO_JITTER=1` turns colour
//! jitter on.
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use actionclip::data::{self, ClipPipeline, ClipTransform, Loader, LoaderConfig, Sampling, Storage, Subset, VideoDataset};
use actionclip::train::{
    AdamWConfig, EvalReport, Event, Freeze, Observer, Precision, SchedulePolicy, StartFrom, TrainConfig, TrainData, TrainError, Trainer,
};
use actionclip::{ActionClipConfig, ClipConfig, PostNetwork, TextConfig, TowerWeights, VisionConfig, VisualPrompt};
use anyhow::{bail, Context, Result};
use candle_core::Device;
use clap::Parser;
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use serde::Serialize;

#[derive(Parser, Debug, Default, Serialize)]
#[command(about = "Fine-tune ActionCLIP on UCF101 (or a synthetic demo dataset)")]
struct Args {
    /// A TOML or YAML file with the reference's keys (or the flags' names); flags override it.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Write a synthetic UCF101-layout dataset into the run directory and train a tiny model from scratch.
    #[arg(long)]
    demo: bool,
    /// UCF101 root (class folders with videos, or frame folders with --frame-folders).
    #[arg(long)]
    root: Option<PathBuf>,
    /// Folder with classInd.txt and the split lists (default: the root, root/ucfTrainTestlist or ../ucfTrainTestlist).
    #[arg(long)]
    splits: Option<PathBuf>,
    /// The root holds frame folders (`Class/v_Class_gXX_cYY/img_00001.jpg`) instead of videos.
    #[arg(long)]
    frame_folders: bool,
    /// TSN/ActionCLIP list files instead of UCF101 splits: `frame_dir num_frames label` lines.
    #[arg(long)]
    train_list: Option<PathBuf>,
    /// Test list file (with --train-list).
    #[arg(long)]
    val_list: Option<PathBuf>,
    /// Label CSV `id,name` (with --train-list).
    #[arg(long)]
    label_list: Option<PathBuf>,
    /// CLIP architecture (`ViT-B/32`, `ViT-B/16`, `ViT-L/14`); without --weights its OpenAI weights are
    /// looked up on the Hugging Face hub cache.
    #[arg(long)]
    arch: Option<String>,
    /// Starting weights: a checkpoint file or directory (any supported format) or a hub model id.
    #[arg(long)]
    weights: Option<String>,
    /// Train from scratch (random initialisation of the --arch dimensions).
    #[arg(long)]
    scratch: bool,
    /// Frames (segments) per clip.
    #[arg(long)]
    frames: Option<usize>,
    /// Consecutive frames per segment.
    #[arg(long)]
    seg_length: Option<usize>,
    /// Temporal head: meanP, Conv_1D, LSTM, Transf, Transf_cls.
    #[arg(long)]
    sim_header: Option<String>,
    /// Pre-network joint space-time prompt.
    #[arg(long)]
    joint: Option<bool>,
    /// In-network temporal shift.
    #[arg(long)]
    tsm: Option<bool>,
    /// Epochs.
    #[arg(long)]
    epochs: Option<usize>,
    /// Base learning rate (text tower).
    #[arg(long)]
    lr: Option<f64>,
    /// Image tower learning rate = lr * ratio.
    #[arg(long)]
    ratio: Option<f64>,
    /// Temporal head learning rate = lr * f_ratio.
    #[arg(long)]
    f_ratio: Option<f64>,
    /// Decoupled weight decay.
    #[arg(long)]
    weight_decay: Option<f64>,
    /// Warmup epochs.
    #[arg(long)]
    warmup: Option<f64>,
    /// Schedule: cosine or multistep.
    #[arg(long)]
    schedule: Option<String>,
    /// Clips per batch.
    #[arg(long)]
    batch_size: Option<usize>,
    /// Loader threads.
    #[arg(long)]
    workers: Option<usize>,
    /// UCF101 split (1, 2 or 3).
    #[arg(long)]
    split: Option<u8>,
    /// Input resolution (default: the model's).
    #[arg(long)]
    input_size: Option<u32>,
    /// Run directory.
    #[arg(long)]
    output: Option<PathBuf>,
    /// Resume from a checkpoint (default: OUTPUT/last).
    #[arg(long, num_args = 0..=1, default_missing_value = "")]
    resume: Option<PathBuf>,
    /// Only evaluate the starting weights (no training).
    #[arg(long)]
    evaluate_only: bool,
    /// With --evaluate-only: how the towers' linear layers hold their weights, `full` (f32), `packed`
    /// (f32 laid out for the CPU's AVX-512 GEMM: the same results, faster), `f16` or `int8` (CPU; fastest).
    #[arg(long, default_value = "full", value_parser = |s: &str| TowerWeights::parse(s).map(|_| s.to_string()))]
    tower_weights: String,
    /// Multi-view test after training (or with --evaluate-only): CLIPSxCROPS, e.g. 4x3.
    #[arg(long)]
    multi_view: Option<String>,
    /// f32, bf16, f16 or auto (bf16 on GPU, f32 on CPU).
    #[arg(long)]
    precision: Option<String>,
    /// Batches per optimizer step.
    #[arg(long)]
    accumulate: Option<usize>,
    /// Clip the global gradient norm.
    #[arg(long)]
    clip_grad: Option<f64>,
    /// Freeze the text tower.
    #[arg(long)]
    freeze_text: bool,
    /// Freeze the image tower.
    #[arg(long)]
    freeze_vision: bool,
    /// Keep biases, norms, embeddings and logit_scale out of weight decay.
    #[arg(long)]
    no_decay_exempt: bool,
    /// Seed.
    #[arg(long)]
    seed: Option<u64>,
    /// Skip the zero-shot evaluation of the starting weights.
    #[arg(long)]
    no_zero_shot: bool,
    /// Device: cpu, cuda, cuda:N or metal.
    #[arg(long, default_value = "cpu")]
    device: String,
}

/// Every setting, resolved (written into the run's config.json).
#[derive(Debug, Clone, Serialize)]
struct Settings {
    arch: String,
    weights: Option<String>,
    scratch: bool,
    frames: usize,
    seg_length: usize,
    sim_header: String,
    joint: bool,
    tsm: bool,
    epochs: usize,
    lr: f64,
    ratio: f64,
    f_ratio: f64,
    weight_decay: f64,
    warmup: f64,
    schedule: String,
    lr_decay_step: Vec<f64>,
    lr_decay_factor: f64,
    batch_size: usize,
    workers: usize,
    split: u8,
    input_size: Option<u32>,
    root: Option<PathBuf>,
    train_list: Option<PathBuf>,
    val_list: Option<PathBuf>,
    label_list: Option<PathBuf>,
    output: PathBuf,
    resume: Option<PathBuf>,
    evaluate_only: bool,
    seed: u64,
    eval_freq: usize,
}

impl Default for Settings {
    /// The reference's UCF101 recipe (configs/ucf101/ucf_train.yaml).
    fn default() -> Self {
        Self {
            arch: "ViT-B/16".into(),
            weights: None,
            scratch: false,
            frames: 8,
            seg_length: 1,
            sim_header: "Transf".into(),
            joint: false,
            tsm: false,
            epochs: 50,
            lr: 5e-6,
            ratio: 1.0,
            f_ratio: 10.0,
            weight_decay: 0.2,
            warmup: 5.0,
            schedule: "cosine".into(),
            lr_decay_step: vec![15.0],
            lr_decay_factor: 0.1,
            batch_size: 32,
            workers: 2,
            split: 1,
            input_size: None,
            root: None,
            train_list: None,
            val_list: None,
            label_list: None,
            output: PathBuf::from("runs/finetune_ucf101"),
            resume: None,
            evaluate_only: false,
            seed: 1024,
            eval_freq: 1,
        }
    }
}

/// Reads a TOML or YAML config into JSON.
fn read_config(path: &Path) -> Result<serde_json::Value> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let is_toml = path.extension().is_some_and(|e| e == "toml");
    Ok(if is_toml {
        serde_json::to_value(toml::from_str::<toml::Value>(&text).with_context(|| format!("{} is not valid TOML", path.display()))?)?
    } else {
        serde_json::to_value(serde_yaml::from_str::<serde_yaml::Value>(&text).with_context(|| format!("{} is not valid YAML", path.display()))?)?
    })
}

/// The first of `keys` (dotted paths) present in the config.
fn lookup<'a>(cfg: &'a serde_json::Value, keys: &[&str]) -> Option<&'a serde_json::Value> {
    keys.iter().find_map(|k| {
        let mut v = cfg;
        for part in k.split('.') {
            v = v.get(part)?;
        }
        (!v.is_null()).then_some(v)
    })
}

fn apply_config(s: &mut Settings, cfg: &serde_json::Value) -> Result<()> {
    macro_rules! take {
        ($field:expr, $keys:expr, $conv:ident) => {
            if let Some(v) = lookup(cfg, $keys) {
                $field = $conv(v).with_context(|| format!("config key {:?}: {v}", $keys[0]))?;
            }
        };
    }
    fn f(v: &serde_json::Value) -> Result<f64> {
        v.as_f64().or_else(|| v.as_str().and_then(|s| s.parse().ok())).context("expected a number")
    }
    fn u(v: &serde_json::Value) -> Result<usize> {
        v.as_u64().map(|x| x as usize).context("expected a whole number")
    }
    fn b(v: &serde_json::Value) -> Result<bool> {
        v.as_bool().context("expected true or false")
    }
    fn st(v: &serde_json::Value) -> Result<String> {
        v.as_str().map(str::to_string).context("expected a string")
    }
    fn os(v: &serde_json::Value) -> Result<Option<String>> {
        Ok(v.as_str().filter(|s| !s.is_empty()).map(str::to_string))
    }
    fn op(v: &serde_json::Value) -> Result<Option<PathBuf>> {
        Ok(v.as_str().filter(|s| !s.is_empty()).map(PathBuf::from))
    }
    fn steps(v: &serde_json::Value) -> Result<Vec<f64>> {
        match v {
            serde_json::Value::Array(a) => a.iter().map(f).collect(),
            other => Ok(vec![f(other)?]),
        }
    }
    take!(s.arch, &["network.arch", "arch"], st);
    take!(s.weights, &["pretrain", "weights"], os);
    take!(s.frames, &["data.num_segments", "frames"], u);
    take!(s.seg_length, &["data.seg_length", "seg_length"], u);
    take!(s.sim_header, &["network.sim_header", "sim_header"], st);
    take!(s.joint, &["network.joint", "joint"], b);
    take!(s.tsm, &["network.tsm", "tsm"], b);
    take!(s.epochs, &["solver.epochs", "epochs"], u);
    take!(s.lr, &["solver.lr", "lr"], f);
    take!(s.ratio, &["solver.ratio", "ratio"], f);
    take!(s.f_ratio, &["solver.f_ratio", "f_ratio"], f);
    take!(s.weight_decay, &["solver.weight_decay", "weight_decay"], f);
    take!(s.warmup, &["solver.lr_warmup_step", "warmup"], f);
    take!(s.schedule, &["solver.type", "schedule"], st);
    take!(s.lr_decay_step, &["solver.lr_decay_step", "lr_decay_step"], steps);
    take!(s.lr_decay_factor, &["solver.lr_decay_factor", "lr_decay_factor"], f);
    take!(s.batch_size, &["data.batch_size", "batch_size"], u);
    take!(s.workers, &["data.workers", "workers"], u);
    if let Some(v) = lookup(cfg, &["data.split", "split"]) {
        s.split = u(v)? as u8;
    }
    if let Some(v) = lookup(cfg, &["data.input_size", "input_size"]) {
        s.input_size = Some(u(v)? as u32);
    }
    take!(s.root, &["data.root", "root"], op);
    take!(s.train_list, &["data.train_list", "train_list"], op);
    take!(s.val_list, &["data.val_list", "val_list"], op);
    take!(s.label_list, &["data.label_list", "label_list"], op);
    take!(s.resume, &["resume"], op);
    take!(s.evaluate_only, &["solver.evaluate", "evaluate_only"], b);
    if let Some(v) = lookup(cfg, &["output", "logging.output"]) {
        s.output = PathBuf::from(st(v)?);
    }
    if let Some(v) = lookup(cfg, &["seed"]) {
        s.seed = u(v)? as u64;
    }
    take!(s.eval_freq, &["logging.eval_freq", "eval_freq"], u);
    Ok(())
}

fn apply_args(s: &mut Settings, a: &Args) {
    macro_rules! over {
        ($($f:ident),*) => { $( if let Some(v) = a.$f.clone() { s.$f = v; } )* };
    }
    over!(arch, frames, seg_length, sim_header, joint, tsm, epochs, lr, ratio, f_ratio, weight_decay, warmup, schedule, batch_size, workers, split, output, seed);
    if a.weights.is_some() {
        s.weights = a.weights.clone();
    }
    if a.input_size.is_some() {
        s.input_size = a.input_size;
    }
    for (dst, src) in [(&mut s.root, &a.root), (&mut s.train_list, &a.train_list), (&mut s.val_list, &a.val_list), (&mut s.label_list, &a.label_list)] {
        if src.is_some() {
            *dst = src.clone();
        }
    }
    if let Some(r) = &a.resume {
        s.resume = Some(if r.as_os_str().is_empty() { s.output.join("last") } else { r.clone() });
    }
    s.scratch |= a.scratch;
    s.evaluate_only |= a.evaluate_only;
}

/// The demo: 8 synthetic motion classes, a tiny model from scratch (or from `--weights`, e.g. a demo run's
/// `best`, to evaluate it).
fn demo_settings(s: &mut Settings, a: &Args) {
    s.arch = "demo-tiny".into();
    s.scratch = true;
    s.frames = a.frames.unwrap_or(8);
    s.sim_header = a.sim_header.clone().unwrap_or_else(|| "Transf".into());
    s.tsm = a.tsm.unwrap_or(true);
    s.epochs = a.epochs.unwrap_or(DEMO_EPOCHS);
    s.lr = a.lr.unwrap_or(1e-3);
    s.ratio = a.ratio.unwrap_or(1.0);
    s.f_ratio = a.f_ratio.unwrap_or(1.0);
    s.weight_decay = a.weight_decay.unwrap_or(0.05);
    s.warmup = a.warmup.unwrap_or(1.0);
    s.batch_size = a.batch_size.unwrap_or(8);
    s.workers = a.workers.unwrap_or(1);
    s.input_size = Some(demo_env("DEMO_RES", 32) as u32);
    s.seed = a.seed.unwrap_or(0);
    if a.output.is_none() {
        s.output = PathBuf::from("runs/finetune_demo");
    }
}

/// Demo epochs (87 steps of 8 clips each).
const DEMO_EPOCHS: usize = 60;
/// Synthetic clips per class in the demo (one UCF group each; at most 99).
const DEMO_CLIPS_PER_CLASS: usize = 96;

/// The demo's synthetic dataset: 8 motion classes of `DEMO_CLIPS` (default 96) clips, a tenth of them
/// test clips, 32 frames of 64x64 as JPEG frame folders.
fn demo_data_config() -> data::synthetic::SyntheticConfig {
    let clips = demo_env("DEMO_CLIPS", DEMO_CLIPS_PER_CLASS).max(2);
    data::synthetic::SyntheticConfig {
        num_classes: 8,
        clips_per_class: clips,
        test_clips_per_class: (clips / 10).max(1),
        frames: 32,
        width: 64,
        height: 64,
        seed: 0,
        format: data::synthetic::SyntheticFormat::FrameFolders,
        ..Default::default()
    }
}

/// Writes the demo dataset into `root`, replacing whatever is there: it takes a few seconds and is
/// deterministic, so a resumed run sees the same clips, while a dataset left by another version of the
/// generator or other settings is never reused.
fn demo_dataset(root: &Path) -> Result<()> {
    if root.exists() {
        std::fs::remove_dir_all(root).with_context(|| format!("removing the old demo dataset {}", root.display()))?;
    }
    data::synthetic::write_dataset(root, &demo_data_config())?;
    Ok(())
}

fn demo_model(frames: usize, prompt: VisualPrompt) -> ActionClipConfig {
    ActionClipConfig {
        clip: ClipConfig {
            vision: VisionConfig { width: demo_env("DEMO_VW", 64), layers: demo_env("DEMO_VL", 2), heads: 1, patch_size: demo_env("DEMO_PATCH", 8), image_size: demo_env("DEMO_RES", 32) },
            text: TextConfig { width: demo_env("DEMO_TW", 64), layers: demo_env("DEMO_TL", 1), heads: demo_env("DEMO_TW", 64) / 64, vocab_size: 49408, context_length: 77 },
            embed_dim: 64,
        },
        frames,
        prompt,
    }
}

fn demo_env(key: &str, default: usize) -> usize {
    std::env::var(key).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn post_network(name: &str, layers: Option<usize>) -> Result<PostNetwork> {
    let mut post = PostNetwork::from_reference_name(name)?;
    match &mut post {
        PostNetwork::Transformer { layers: l } | PostNetwork::TransformerCls { layers: l } => {
            if let Some(n) = layers {
                *l = n;
            }
        }
        // Our files convolve along time; the reference's reshape is only for its own checkpoints.
        PostNetwork::Conv1d { reference_reshape } => *reference_reshape = false,
        _ => {}
    }
    Ok(post)
}

fn hub_id(arch: &str) -> Option<&'static str> {
    let key: String = arch.to_lowercase().chars().filter(|c| c.is_ascii_alphanumeric() || *c == '@').collect();
    match key.as_str() {
        "vitb32" => Some("openai/clip-vit-base-patch32"),
        "vitb16" => Some("openai/clip-vit-base-patch16"),
        "vitl14" => Some("openai/clip-vit-large-patch14"),
        "vitl14@336px" | "vitl14336" => Some("openai/clip-vit-large-patch14-336"),
        _ => None,
    }
}

fn device(spec: &str) -> Result<Device> {
    Ok(match spec {
        "cpu" => Device::Cpu,
        "metal" => Device::new_metal(0)?,
        s if s.starts_with("cuda") => Device::new_cuda(s.strip_prefix("cuda:").and_then(|n| n.parse().ok()).unwrap_or(0))?,
        other => bail!("unknown device {other:?} (cpu, cuda, cuda:N, metal)"),
    })
}

/// Progress bars, Ctrl-C and a few printed lines.
struct Console {
    bars: MultiProgress,
    total: ProgressBar,
    epoch: ProgressBar,
    eval: Option<ProgressBar>,
    stop: Arc<AtomicBool>,
    epochs: usize,
    last_loss: f64,
    started: Instant,
}

impl Console {
    fn new(stop: Arc<AtomicBool>) -> Self {
        let bars = MultiProgress::new();
        let total = bars.add(ProgressBar::new(0));
        total.set_style(ProgressStyle::with_template("{prefix:>8} [{bar:30.cyan/blue}] {pos}/{len} steps  {elapsed_precise} elapsed, ETA {eta_precise}").unwrap().progress_chars("=> "));
        total.set_prefix("run");
        let epoch = bars.add(ProgressBar::new(0));
        epoch.set_style(ProgressStyle::with_template("{prefix:>8} [{bar:30.green/white}] {pos}/{len} batches  {msg}").unwrap().progress_chars("=> "));
        Self { bars, total, epoch, eval: None, stop, epochs: 0, last_loss: f64::NAN, started: Instant::now() }
    }

    fn println(&self, line: String) {
        if self.bars.is_hidden() {
            println!("{line}");
        } else {
            let _ = self.bars.println(line);
        }
    }
}

impl Observer for Console {
    fn event(&mut self, event: &Event<'_>) {
        match event {
            Event::Started { epochs, start_epoch, start_step, steps_per_epoch, trainable, frozen, resumed, batches_per_epoch } => {
                self.epochs = *epochs;
                self.total.set_length((epochs * steps_per_epoch) as u64);
                self.total.set_position(*start_step as u64);
                self.total.reset_eta();
                self.println(format!(
                    "{} {} epochs x {} batches ({} steps each); {:.2} M trainable, {:.2} M frozen parameters{}",
                    if *resumed { "resuming:" } else { "training:" },
                    epochs,
                    batches_per_epoch,
                    steps_per_epoch,
                    *trainable as f64 / 1e6,
                    *frozen as f64 / 1e6,
                    if *resumed { format!(" (from epoch {start_epoch}, step {start_step})") } else { String::new() }
                ));
            }
            Event::EpochStarted { epoch, batches, done } => {
                self.epoch.set_prefix(format!("ep {}/{}", epoch + 1, self.epochs));
                self.epoch.set_length(*batches as u64);
                self.epoch.set_position(*done as u64);
                self.epoch.reset_eta();
            }
            Event::Batch { done, loss, .. } => {
                self.epoch.set_position(*done as u64);
                self.last_loss = *loss;
            }
            Event::Step(s) => {
                self.total.set_position(s.step as u64);
                self.epoch.set_message(format!("loss {:.4}  lr {:.2e}  {:.1} clips/s", s.loss, s.lr, s.clips_per_s));
            }
            Event::LoaderFailures(failures) => {
                for f in failures.iter() {
                    self.println(format!("skipped clip {}: {}", f.path.display(), f.reason));
                }
            }
            Event::EvalStarted { batches, multi_view, .. } => {
                let bar = self.bars.add(ProgressBar::new(*batches as u64));
                bar.set_style(ProgressStyle::with_template("{prefix:>8} [{bar:30.yellow/white}] {pos}/{len} batches  ETA {eta}").unwrap().progress_chars("=> "));
                bar.set_prefix(if *multi_view { "test-mv" } else { "test" });
                self.eval = Some(bar);
            }
            Event::EvalProgress { done, .. } => {
                if let Some(b) = &self.eval {
                    b.set_position(*done as u64);
                }
            }
            Event::Evaluated(report, log) => {
                if let Some(b) = self.eval.take() {
                    b.finish_and_clear();
                    self.bars.remove(&b);
                }
                let what = if log.zero_shot { "starting weights (zero-shot)".to_string() } else if report.views > 1 { format!("multi-view ({} views)", report.views) } else { format!("epoch {}", report.epoch) };
                self.println(format!(
                    "{what}: top-1 {:.2}%  top-5 {:.2}%  mean class {:.2}%  ({} clips, {:.1} s)",
                    100.0 * report.top1,
                    100.0 * report.top5,
                    100.0 * report.mean_class_accuracy,
                    report.samples,
                    report.seconds
                ));
            }
            Event::EpochEnded(e) => {
                self.println(format!("epoch {} done: train loss {:.4}, {:.1} s training, {:.0} s so far", e.epoch, e.train_loss, e.train_seconds, self.started.elapsed().as_secs_f64()));
            }
            Event::CheckpointSaved { path, best } => {
                if *best {
                    self.println(format!("new best -> {}", path.display()));
                }
            }
            Event::Stopped { epoch, step } => {
                self.println(format!("stopped at epoch {epoch}, step {step}; resume with --resume"));
            }
        }
    }

    fn should_stop(&mut self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }
}

fn loader(ds: VideoDataset, pipeline: ClipPipeline, s: &Settings, train: bool, device: &Device) -> Result<Loader> {
    let cfg = LoaderConfig {
        batch_size: s.batch_size,
        workers: s.workers,
        prefetch: 2,
        shuffle: train,
        seed: s.seed,
        drop_last: false,
        device: device.clone(),
        ..LoaderConfig::default()
    };
    Ok(Loader::new(ds, pipeline, cfg)?)
}

fn datasets(s: &Settings, frame_folders: bool, splits: Option<&Path>) -> Result<(VideoDataset, VideoDataset)> {
    if let Some(train_list) = &s.train_list {
        let labels = s.label_list.as_ref().context("--train-list needs --label-list")?;
        let val = s.val_list.as_ref().context("--train-list needs --val-list")?;
        let root = s.root.as_deref();
        return Ok((VideoDataset::from_list(train_list, labels, root)?, VideoDataset::from_list(val, labels, root)?));
    }
    let root = s.root.as_ref().context("give --root (the UCF101 folder), --train-list/--val-list/--label-list, or --demo")?;
    let storage = if frame_folders { Storage::FrameFolders } else { Storage::Videos };
    Ok(match splits {
        Some(dir) => (
            VideoDataset::ucf101_with_splits(root, dir, s.split, Subset::Train, storage)?,
            VideoDataset::ucf101_with_splits(root, dir, s.split, Subset::Test, storage)?,
        ),
        None => (VideoDataset::ucf101(root, s.split, Subset::Train, storage)?, VideoDataset::ucf101(root, s.split, Subset::Test, storage)?),
    })
}

fn main() -> Result<()> {
    let args = Args::parse();
    let mut s = Settings::default();
    if let Some(path) = &args.config {
        apply_config(&mut s, &read_config(path)?)?;
    }
    apply_args(&mut s, &args);
    if args.demo {
        demo_settings(&mut s, &args);
        if let Some(r) = &args.resume {
            s.resume = Some(if r.as_os_str().is_empty() { s.output.join("last") } else { r.clone() });
        }
    }
    let device = device(&args.device)?;
    let precision = Precision::parse(args.precision.as_deref().unwrap_or("auto"), &device)?;
    std::fs::create_dir_all(&s.output).with_context(|| format!("creating {}", s.output.display()))?;

    // ---- data ----
    let t0 = Instant::now();
    let (train_ds, test_ds) = if args.demo {
        let root = s.output.join("data");
        demo_dataset(&root)?;
        let train = VideoDataset::ucf101(&root, 1, Subset::Train, Storage::FrameFolders)?;
        let test = VideoDataset::ucf101(&root, 1, Subset::Test, Storage::FrameFolders)?;
        println!("demo dataset: {} ({} classes, {} training and {} test clips, written in {:.1} s)", root.display(), train.num_classes(), train.len(), test.len(), t0.elapsed().as_secs_f64());
        (train, test)
    } else {
        datasets(&s, args.frame_folders, args.splits.as_deref())?
    };

    // ---- model ----
    let prompt = VisualPrompt { joint: s.joint, temporal_shift: s.tsm, post: post_network(&s.sim_header, args.demo.then_some(demo_env("DEMO_HL", 1)))? };
    let (model_cfg, start) = if args.demo && s.weights.is_none() {
        (demo_model(s.frames, prompt), StartFrom::Scratch)
    } else if s.scratch && s.weights.is_none() {
        (ActionClipConfig { clip: ClipConfig::by_name(&s.arch)?, frames: s.frames, prompt }, StartFrom::Scratch)
    } else {
        let source = match (&s.weights, hub_id(&s.arch)) {
            (Some(w), _) => w.clone(),
            (None, Some(id)) => id.to_string(),
            (None, None) => bail!("no --weights and no known --arch {:?}; give one (or --scratch)", s.arch),
        };
        let weights = actionclip::weights::load(&source).with_context(|| format!("loading the starting weights {source}"))?;
        let mut cfg = weights.action_clip_config()?;
        let from_our_run = weights.config.is_some();
        if !from_our_run || args.frames.is_some() || args.sim_header.is_some() || args.tsm.is_some() || args.joint.is_some() {
            cfg.frames = s.frames;
            cfg.prompt = prompt;
        }
        println!("starting weights: {} ({}), {:?}", weights.path.display(), weights.format, cfg.prompt);
        (cfg, StartFrom::Weights(Box::new(weights)))
    };
    let input = s.input_size.unwrap_or(model_cfg.clip.vision.image_size as u32);

    let mut train_pipeline = ClipPipeline::train(model_cfg.frames, input)?;
    train_pipeline.sampling = Sampling::with_seg_length(model_cfg.frames, s.seg_length)?;
    if args.demo {
        // The synthetic classes include left/right and clockwise/counter-clockwise motion: no mirroring.
        if let ClipTransform::Train(t) = &mut train_pipeline.transform {
            t.flip = false;
            if std::env::var("DEMO_JITTER").is_err() {
                t.color_jitter = None;
                t.grayscale_p = 0.0;
            }
        }
    }
    let mut test_pipeline = ClipPipeline::test(model_cfg.frames, input)?;
    test_pipeline.sampling = Sampling::with_seg_length(model_cfg.frames, s.seg_length)?;
    let multi_view = match &args.multi_view {
        Some(spec) => {
            let (c, k) = spec.split_once('x').context("--multi-view takes CLIPSxCROPS, e.g. 4x3")?;
            let (clips, crops): (usize, usize) = (c.parse()?, k.parse()?);
            if crops != 1 && crops != 3 {
                bail!("--multi-view crops must be 1 or 3");
            }
            let mut p = ClipPipeline::multi_view(model_cfg.frames, input, clips, crops == 3)?;
            p.sampling = Sampling::with_seg_length(model_cfg.frames, s.seg_length)?;
            Some(loader(test_ds.clone(), p, &s, false, &device)?)
        }
        None => None,
    };
    let data = TrainData {
        train: loader(train_ds, train_pipeline, &s, true, &device)?,
        test: Some(loader(test_ds, test_pipeline, &s, false, &device)?),
        multi_view,
    };

    let schedule = match s.schedule.to_lowercase().as_str() {
        "cosine" => SchedulePolicy::Cosine,
        "multistep" => SchedulePolicy::MultiStep { milestones: s.lr_decay_step.clone(), gamma: s.lr_decay_factor },
        "constant" => SchedulePolicy::Constant,
        other => bail!("unknown schedule {other:?} (cosine, multistep, constant)"),
    };
    let train_cfg = TrainConfig {
        epochs: s.epochs,
        optimizer: AdamWConfig { lr: s.lr, ratio: s.ratio, f_ratio: s.f_ratio, weight_decay: s.weight_decay, exempt_from_decay: args.no_decay_exempt, ..AdamWConfig::default() },
        warmup_epochs: s.warmup,
        schedule,
        accumulate: args.accumulate.unwrap_or(1),
        clip_grad_norm: args.clip_grad,
        freeze: Freeze { text: args.freeze_text || (args.demo && std::env::var("DEMO_TRAIN_TEXT").is_err()), vision: args.freeze_vision },
        precision,
        seed: s.seed,
        eval_every: s.eval_freq,
        zero_shot_eval: !args.no_zero_shot,
        ..TrainConfig::default()
    };
    let mut trainer = Trainer::new(&model_cfg, start, train_cfg, &device)?.with_run_dir(&s.output);
    trainer.set_run_info(serde_json::json!({ "settings": s, "args": args, "demo": args.demo }));

    if s.evaluate_only {
        let tower_weights = TowerWeights::parse(&args.tower_weights)?;
        let mut console = Console::new(Arc::new(AtomicBool::new(false)));
        for (name, l) in [("test", data.test.as_ref()), ("test_multiview", data.multi_view.as_ref())] {
            let Some(l) = l else { continue };
            let mut evaluate = |format: TowerWeights| -> Result<EvalReport> {
                console.event(&Event::EvalStarted { epoch: 0, batches: l.num_batches(), multi_view: name != "test" });
                let bar = console.eval.clone();
                let report = trainer.evaluate_with(format, l, &mut |done, _| {
                    if let Some(b) = &bar {
                        b.set_position(done as u64)
                    }
                })?;
                if let Some(b) = console.eval.take() {
                    b.finish_and_clear();
                }
                Ok(report)
            };
            let report = evaluate(tower_weights)?;
            if tower_weights != TowerWeights::Full {
                // The same clips with f32 weights, to say how often the quantized model agrees.
                let full = evaluate(TowerWeights::Full)?;
                let agreement = report.top1_agreement(&full).map_or("n/a".into(), |a| format!("{:.2}%", 100.0 * a));
                println!("{name}: f32 weights top-1 {:.2}% ({:.1} s); {tower_weights:?} weights agree with f32 on the top-1 class of {agreement} of the clips", 100.0 * full.top1, full.seconds);
            }
            println!("{name}: top-1 {:.2}%  top-5 {:.2}%  mean class {:.2}%  ({} clips, {} views, {:.1} s)", 100.0 * report.top1, 100.0 * report.top5, 100.0 * report.mean_class_accuracy, report.samples, report.views, report.seconds);
            let path = s.output.join(format!("eval_{name}.json"));
            std::fs::write(&path, serde_json::to_string_pretty(&report)?)?;
            let classes = &data.train.dataset().classes;
            actionclip::train::plots::plot_confusion(&report, classes, &s.output.join(format!("confusion_{name}.png")))?;
        }
        return Ok(());
    }

    if let Some(r) = &s.resume {
        trainer.resume(r).with_context(|| format!("resuming from {}", r.display()))?;
    }

    let stop = Arc::new(AtomicBool::new(false));
    {
        let stop = stop.clone();
        let presses = AtomicUsize::new(0);
        ctrlc::set_handler(move || {
            if presses.fetch_add(1, Ordering::SeqCst) > 0 {
                eprintln!("\nsecond Ctrl-C: exiting without saving");
                std::process::exit(130);
            }
            eprintln!("\nCtrl-C: finishing the current step, saving last/ (press again to quit at once)");
            stop.store(true, Ordering::SeqCst);
        })?;
    }
    let mut console = Console::new(stop);
    let started = Instant::now();
    let summary = match trainer.fit(&data, &mut console) {
        Ok(s) => s,
        Err(e @ TrainError::NonFiniteLoss { .. }) => {
            console.total.abandon();
            console.epoch.abandon();
            bail!("{e}");
        }
        Err(e) => return Err(e.into()),
    };
    console.total.finish();
    console.epoch.finish_and_clear();
    println!(
        "{} {} epochs in {:.1} s; best top-1 {} (epoch {}); run directory {}",
        if summary.stopped { "stopped after" } else { "done:" },
        summary.epochs,
        started.elapsed().as_secs_f64(),
        summary.best_top1.map(|t| format!("{:.2}%", 100.0 * t)).unwrap_or("-".into()),
        summary.best_epoch.map(|e| e.to_string()).unwrap_or("-".into()),
        s.output.display()
    );
    if args.demo && !summary.stopped {
        let best = summary.best_top1.unwrap_or(0.0);
        if best < 0.9 {
            eprintln!("warning: the demo reached only {:.1}% top-1 (expected >= 90%)", 100.0 * best);
        }
    }
    Ok(())
}
