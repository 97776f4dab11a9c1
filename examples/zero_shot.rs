//! Zero-shot action recognition on raw videos or frame folders.
//!
//! ```text
//! cargo run --release --example zero_shot -- --weights model_best.pt --labels ucf101 clips/
//! cargo run --release --example zero_shot -- --weights openai/clip-vit-base-patch16 --labels "archery,surfing" v.avi
//! HF_HUB_OFFLINE=1 cargo run --release --example zero_shot -- --weights openai/clip-vit-base-patch16 clips/  # cache only
//! cargo run --release --example zero_shot -- --demo      # synthetic clips + a random tiny model (smoke run)
//! cargo run --release --features video --example zero_shot -- --random-weights vit-b16 --repeat 3   # latency
//! ```
//! A hub model is downloaded into the Hugging Face cache (`HF_HOME`, `HF_HUB_CACHE`) with a progress bar
//! when it is not there yet; `--offline` or `HF_HUB_OFFLINE=1` only reads the cache.
//! `--tower-weights int8` (or `f16`) runs the towers' linear layers on quantized weights; the default
//! `packed` keeps f32 weights, laid out once for the CPU's GEMM.
//! `--random-weights vit-b32|vit-b16` builds a real-size model (8 frames, 6-layer temporal transformer)
//! with random weights and prints timings to stderr: model build, class embeddings, and per video the
//! time from the file to the printed label (decode + preprocess, then encode + classify). Without
//! inputs it times a generated 320x240, 175-frame clip (UCF101's size and mean length).
//! Inputs are video files (feature `video`), frame folders (`img_00001.jpg`, ...) or directories of
//! them. Labels are `ucf101`, `hmdb51` (built in), a file with one label per line, or a comma list;
//! they are humanized (`ApplyEyeMakeup` -> `apply eye makeup`) unless `--raw-labels`.
use std::path::{Path, PathBuf};

use actionclip::{
    data, prompts, ActionClip, ActionClipConfig, ClipConfig, PostNetwork, Tokenizer, TowerWeights, VisualPrompt,
};
use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use clap::Parser;

mod common;

#[derive(Parser, Debug)]
#[command(about = "Zero-shot action recognition with ActionCLIP")]
struct Args {
    /// Video files, frame folders, or directories holding them.
    inputs: Vec<PathBuf>,
    /// Weights: a checkpoint file or directory (any supported format) or a Hugging Face model id.
    #[arg(long)]
    weights: Option<String>,
    /// Labels: `ucf101`, `hmdb51`, a file (one label per line) or a comma-separated list.
    #[arg(long, default_value = "ucf101")]
    labels: String,
    /// Use labels as written instead of humanizing them.
    #[arg(long)]
    raw_labels: bool,
    /// How many classes to print per video.
    #[arg(long, default_value_t = 5)]
    top_k: usize,
    /// Frames sampled per video (default: the model's frame count).
    #[arg(long)]
    frames: Option<usize>,
    /// Print JSON lines instead of tables.
    #[arg(long)]
    json: bool,
    /// Run on generated clips with a random tiny model (shows the pipeline; predictions are meaningless).
    #[arg(long)]
    demo: bool,
    /// Latency mode: a real-size model with random weights (`vit-b32` or `vit-b16`, 8 frames); timings on stderr.
    #[arg(long, value_parser = ["vit-b32", "vit-b16"])]
    random_weights: Option<String>,
    /// Classify every input this many times (latency mode: the first run is cold, the rest warm).
    #[arg(long, default_value_t = 1)]
    repeat: usize,
    /// Only read the hub cache, never download (as `HF_HUB_OFFLINE=1`).
    #[arg(long)]
    offline: bool,
    /// How the towers' linear layers hold their weights: `packed` (f32 laid out once for the CPU's
    /// AVX-512 or AVX2 GEMM: the results of `full`, faster; plain f32 elsewhere), `full` (f32), `f16` or `int8`
    /// (CPU; fastest).
    #[arg(long, default_value = "packed")]
    tower_weights: TowerWeights,
    /// Print timings to stderr (on by default with `--random-weights`).
    #[arg(long)]
    timings: bool,
    /// Encode the class sentences even when their embeddings are cached (in
    /// `~/.cache/actionclip/class-features`, keyed by the weights, labels and templates).
    #[arg(long)]
    no_cache: bool,
}

/// Expands directories into the clips they hold (video files and frame folders), sorted.
fn clips(inputs: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for input in inputs {
        if !input.exists() {
            bail!("{}: no such file or directory", input.display());
        }
        let is_frame_folder = input.is_dir() && input.join("img_00001.jpg").exists();
        if input.is_dir() && !is_frame_folder {
            let mut entries: Vec<PathBuf> =
                std::fs::read_dir(input)?.filter_map(|e| e.ok().map(|e| e.path())).collect();
            entries.sort();
            out.extend(clips(&entries)?);
        } else if is_frame_folder
            || input.extension().is_some_and(|e| {
                ["avi", "mp4", "mkv", "webm", "mov"].contains(&e.to_string_lossy().to_lowercase().as_str())
            })
        {
            out.push(input.clone());
        }
    }
    Ok(out)
}

/// A random tiny model and a few generated clips, for `--demo`.
fn demo(dir: &Path, device: &Device) -> Result<(ActionClip, ActionClipConfig, Vec<PathBuf>, String)> {
    let synthetic = data::synthetic::write_dataset(
        dir,
        &data::synthetic::SyntheticConfig { clips_per_class: 2, test_clips_per_class: 1, ..Default::default() },
    )?;
    let clip = ClipConfig::tiny();
    let cfg = ActionClipConfig {
        clip,
        frames: 8,
        prompt: VisualPrompt { joint: false, temporal_shift: false, post: PostNetwork::Transformer { layers: 2 } },
    };
    let model = ActionClip::new(VarBuilder::from_varmap(&VarMap::new(), DType::F32, device), &cfg)?;
    Ok((model, cfg, vec![synthetic.root.clone()], synthetic.classes.join(",")))
}

/// A real-size model with random weights for `--random-weights`, and (without inputs) a generated clip
/// of UCF101's size and mean length.
fn random_model(
    name: &str,
    dir: &Path,
    inputs: &[PathBuf],
    device: &Device,
) -> Result<(ActionClip, ActionClipConfig, Vec<PathBuf>)> {
    let (model, cfg) = common::random_model(name, device)?;
    if !inputs.is_empty() {
        return Ok((model, cfg, inputs.to_vec()));
    }
    let synthetic = data::synthetic::SyntheticConfig {
        num_classes: 1,
        clips_per_class: 2,
        test_clips_per_class: 1,
        frames: 175,
        width: 320,
        height: 240,
        ..Default::default()
    };
    let ds = data::synthetic::write_dataset(dir, &synthetic)?;
    let first = viz_first_clip(&ds.root)?;
    Ok((model, cfg, vec![first]))
}

fn viz_first_clip(root: &Path) -> Result<PathBuf> {
    Ok(actionclip::viz::sample_per_class(root, 1, 0)?.remove(0).path)
}

fn main() -> Result<()> {
    let mut args = Args::parse();
    let device = Device::Cpu;
    let tmp = tempfile::tempdir()?;
    let timing = args.timings || args.random_weights.is_some();
    let (model, cfg, inputs) = load_model(&mut args, tmp.path(), &device)?;
    let model = model.with_tower_weights(args.tower_weights)?;
    let labels = common::labels(&args.labels, args.raw_labels)?;
    let tokenizer = Tokenizer::new();
    let t_labels = std::time::Instant::now();
    let zs = common::classifier(&model, &tokenizer, &labels, args.no_cache)?;
    if timing {
        let n = labels.len() * prompts::ACTIONCLIP_TEMPLATES.len();
        let dt = t_labels.elapsed().as_secs_f64();
        eprintln!(
            "class embeddings: {} labels x {} templates = {n} sentences ready in {dt:.2} s (encoded, or read from \
             the cache)",
            labels.len(),
            prompts::ACTIONCLIP_TEMPLATES.len(),
        );
    }
    let frames = args.frames.unwrap_or(cfg.frames);
    let size = cfg.clip.vision.image_size as u32;
    let clips = clips(&inputs)?;
    if clips.is_empty() {
        bail!("no video files or frame folders among the inputs");
    }
    for path in clips.iter().flat_map(|c| std::iter::repeat_n(c, args.repeat.max(1))) {
        // What `zs.classify_path(path, k)` does (with `--frames` able to override the model's count),
        // in two timed steps.
        let t0 = std::time::Instant::now();
        let clip = data::test_clip(path, frames, size);
        let t1 = std::time::Instant::now();
        let result = clip.and_then(|clip| {
            let batch: Tensor = clip.unsqueeze(0)?;
            zs.classify(&batch, args.top_k)
        });
        let t2 = std::time::Instant::now();
        print_result(path, result.map(|mut top| top.remove(0)), args.json);
        if timing {
            let ms = |a: std::time::Instant, b: std::time::Instant| 1e3 * (b - a).as_secs_f64();
            let t3 = std::time::Instant::now();
            eprintln!(
                "latency: file to printed label {:.0} ms (decode + preprocess {:.0} ms, encode + classify {:.0} ms)",
                ms(t0, t3),
                ms(t0, t1),
                ms(t1, t2)
            );
        }
    }
    Ok(())
}

/// The model and the inputs to classify: a random model of `--random-weights` (latency mode), the demo's
/// random tiny model and synthetic clips (which also set the labels), or the `--weights` checkpoint.
fn load_model(args: &mut Args, tmp: &Path, device: &Device) -> Result<(ActionClip, ActionClipConfig, Vec<PathBuf>)> {
    if let Some(name) = &args.random_weights {
        let t_build = std::time::Instant::now();
        let (model, cfg, inputs) = random_model(name, tmp, &args.inputs, device)?;
        eprintln!(
            "latency mode: {name} with random weights, {} frames; built in {:.2} s",
            cfg.frames,
            t_build.elapsed().as_secs_f64()
        );
        Ok((model, cfg, inputs))
    } else if args.demo {
        let (model, cfg, inputs, labels) = demo(tmp, device)?;
        eprintln!("demo: random tiny model, synthetic clips in {} (predictions are meaningless)", tmp.display());
        args.labels = labels;
        Ok((model, cfg, inputs))
    } else {
        let weights = args.weights.as_deref().context("--weights PATH|HUB_ID is required (or --demo)")?;
        let weights = fetch_hub_model(weights, args.offline)?;
        let (model, cfg) = ActionClip::load(&weights, device, DType::F32)?;
        Ok((model, cfg, args.inputs.clone()))
    }
}

/// `weights` as a local path: a hub model id (no such file, `org/name`) is looked up in the hub cache and
/// downloaded when missing, with a progress bar per file; anything else is returned as it is.
#[cfg(feature = "hub")]
fn fetch_hub_model(weights: &str, offline: bool) -> Result<PathBuf> {
    use actionclip::weights::{self, HubOptions};
    use indicatif::{ProgressBar, ProgressStyle};

    let path = Path::new(weights);
    let Some(id) = weights::hub_model_id(path) else { return Ok(path.to_path_buf()) };
    let mut options = HubOptions::from_env()?;
    options.offline |= offline;
    let style = ProgressStyle::with_template("{msg:>20} [{bar:40}] {bytes}/{total_bytes} {bytes_per_sec} ({eta})")?
        .progress_chars("=> ");
    let mut bar: Option<ProgressBar> = None;
    let file = weights::hub_model_with_progress(id, &options, |p| {
        // A new bar for each file.
        if bar.as_ref().is_none_or(|b| b.message() != p.file || b.is_finished()) {
            bar = Some(ProgressBar::new(p.total).with_style(style.clone()).with_message(p.file.to_string()));
        }
        if let Some(b) = &bar {
            b.set_length(p.total);
            b.set_position(p.downloaded);
            if p.done {
                b.finish();
            }
        }
    })?;
    Ok(file)
}

/// `weights` as a local path (hub model ids need feature `hub`).
#[cfg(not(feature = "hub"))]
fn fetch_hub_model(weights: &str, _offline: bool) -> Result<PathBuf> {
    Ok(PathBuf::from(weights))
}

/// Prints one clip's top labels (or its error) as text or as a JSON line.
fn print_result(path: &Path, result: actionclip::Result<Vec<(String, f32)>>, json: bool) {
    match result {
        Ok(top) if json => {
            let top: Vec<_> = top.iter().map(|(l, p)| serde_json::json!({"label": l, "probability": p})).collect();
            println!("{}", serde_json::json!({"video": path.display().to_string(), "top": top}));
        }
        Ok(top) => {
            println!("{}", path.display());
            for (rank, (label, p)) in top.iter().enumerate() {
                println!("  {:>2}. {:<40} {:>6.2}%", rank + 1, label, 100.0 * p);
            }
        }
        Err(e) if json => {
            println!("{}", serde_json::json!({"video": path.display().to_string(), "error": e.to_string()}))
        }
        Err(e) => println!("{}\n  error: {e}", path.display()),
    }
}
