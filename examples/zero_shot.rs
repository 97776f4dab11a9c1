//! Zero-shot action recognition on raw videos or frame folders.
//!
//! ```text
//! cargo run --release --example zero_shot -- --weights model_best.pt --labels ucf101 clips/
//! cargo run --release --example zero_shot -- --weights openai/clip-vit-base-patch16 --labels "archery,surfing" v.avi
//! cargo run --release --example zero_shot -- --demo      # synthetic clips + a random tiny model (smoke run)
//! ```
//! Inputs are video files (feature `video`), frame folders (`img_00001.jpg`, ...) or directories of
//! them. Labels are `ucf101`, `hmdb51` (built in), a file with one label per line, or a comma list;
//! they are humanized (`ApplyEyeMakeup` -> `apply eye makeup`) unless `--raw-labels`.
use std::path::{Path, PathBuf};

use actionclip::{
    data, prompts, ActionClip, ActionClipConfig, ClipConfig, PostNetwork, Tokenizer, VisualPrompt, ZeroShotClassifier,
};
use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use clap::Parser;

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
}

fn labels(spec: &str, raw: bool) -> Result<Vec<String>> {
    let list: Vec<String> = match spec {
        "ucf101" => include_str!("../weights/ucf101_classes.txt").lines().map(str::to_string).collect(),
        "hmdb51" => include_str!("../weights/hmdb51_classes.txt").lines().map(str::to_string).collect(),
        s if Path::new(s).is_file() => std::fs::read_to_string(s).with_context(|| format!("reading labels {s}"))?.lines().map(str::to_string).collect(),
        s => s.split(',').map(str::to_string).collect(),
    };
    let list: Vec<String> = list.iter().map(|l| l.trim()).filter(|l| !l.is_empty()).map(|l| if raw { l.to_string() } else { prompts::humanize(l) }).collect();
    let unique: std::collections::HashSet<&String> = list.iter().collect();
    if unique.len() != list.len() {
        eprintln!("warning: repeated labels are used once");
    }
    if list.is_empty() {
        bail!("the label list {spec:?} is empty");
    }
    Ok(list)
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
            let mut entries: Vec<PathBuf> = std::fs::read_dir(input)?.filter_map(|e| e.ok().map(|e| e.path())).collect();
            entries.sort();
            out.extend(clips(&entries)?);
        } else if is_frame_folder || input.extension().is_some_and(|e| ["avi", "mp4", "mkv", "webm", "mov"].contains(&e.to_string_lossy().to_lowercase().as_str())) {
            out.push(input.clone());
        }
    }
    Ok(out)
}

/// A random tiny model and a few generated clips, for `--demo`.
fn demo(dir: &Path, device: &Device) -> Result<(ActionClip, ActionClipConfig, Vec<PathBuf>, String)> {
    let synthetic = data::synthetic::write_dataset(dir, &data::synthetic::SyntheticConfig { clips_per_class: 2, test_clips_per_class: 1, ..Default::default() })?;
    let mut clip = ClipConfig::vit_b32();
    clip.vision = actionclip::VisionConfig { width: 64, layers: 2, heads: 1, patch_size: 8, image_size: 32 };
    clip.text.width = 64;
    clip.text.layers = 2;
    clip.text.heads = 1;
    clip.embed_dim = 64;
    let cfg = ActionClipConfig { clip, frames: 8, prompt: VisualPrompt { joint: false, temporal_shift: false, post: PostNetwork::Transformer { layers: 2 } } };
    let model = ActionClip::new(VarBuilder::from_varmap(&VarMap::new(), DType::F32, device), &cfg)?;
    Ok((model, cfg, vec![synthetic.root.clone()], synthetic.classes.join(",")))
}

fn main() -> Result<()> {
    let mut args = Args::parse();
    let device = Device::Cpu;
    let tmp = tempfile::tempdir()?;
    let (model, cfg, inputs) = if args.demo {
        let (model, cfg, inputs, labels) = demo(tmp.path(), &device)?;
        eprintln!("demo: random tiny model, synthetic clips in {} (predictions are meaningless)", tmp.path().display());
        args.labels = labels;
        (model, cfg, inputs)
    } else {
        let weights = args.weights.as_deref().context("--weights PATH|HUB_ID is required (or --demo)")?;
        let (model, cfg) = ActionClip::load(weights, &device, DType::F32)?;
        (model, cfg, args.inputs.clone())
    };
    let labels = labels(&args.labels, args.raw_labels)?;
    let tokenizer = Tokenizer::new();
    let zs = ZeroShotClassifier::new(&model, &tokenizer, &labels, &prompts::ACTIONCLIP_TEMPLATES)?;
    let frames = args.frames.unwrap_or(cfg.frames);
    let size = cfg.clip.vision.image_size as u32;
    let clips = clips(&inputs)?;
    if clips.is_empty() {
        bail!("no video files or frame folders among the inputs");
    }
    for path in clips {
        let result = data::test_clip(&path, frames, size).and_then(|clip| {
            let batch: Tensor = clip.unsqueeze(0)?;
            zs.classify(&batch, args.top_k)
        });
        match result {
            Ok(top) if args.json => {
                let top: Vec<_> = top[0].iter().map(|(l, p)| serde_json::json!({"label": l, "probability": p})).collect();
                println!("{}", serde_json::json!({"video": path.display().to_string(), "top": top}));
            }
            Ok(top) => {
                println!("{}", path.display());
                for (rank, (label, p)) in top[0].iter().enumerate() {
                    println!("  {:>2}. {:<40} {:>6.2}%", rank + 1, label, 100.0 * p);
                }
            }
            Err(e) if args.json => println!("{}", serde_json::json!({"video": path.display().to_string(), "error": e.to_string()})),
            Err(e) => println!("{}\n  error: {e}", path.display()),
        }
    }
    Ok(())
}
