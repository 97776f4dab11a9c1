//! Draws ActionCLIP's predictions onto videos.
//!
//! ```text
//! # one video: annotated MP4 (GIF without the `video` feature) + contact sheet
//! cargo run --release --features video --example visualize -- \
//!     --video v_Archery_g01_c01.avi --weights model_best.pt --labels ucf101 --truth Archery --output viz/
//! # N random videos per class folder, plus report.html, summary.csv and confusion.png
//! cargo run --release --features video --example visualize -- \
//!     --videos-dir UCF101/ --per-class 2 --seed 0 --weights model_best.pt --output viz/
//! # no download: the synthetic dataset and a random tiny model (or --weights RUN_DIR from finetune_ucf101 --demo)
//! cargo run --release --features video --example visualize -- --demo --output viz/
//! ```
//! Every annotated frame shows the true label (when known), the video-level prediction (the
//! evaluation's sampling and preprocessing, so it is what an evaluation counts) and the prediction of the
//! window of frames around it. Labels are humanized (`ApplyEyeMakeup` -> `apply eye makeup`) unless
//! `--raw-labels`; in batch mode they default to the class folder names.
use std::path::{Path, PathBuf};

use actionclip::{
    data, inference, prompts, viz, ActionClip, ActionClipConfig, ClipConfig, PostNetwork, Tokenizer, TowerWeights,
    VisualPrompt, ZeroShotClassifier,
};
use anyhow::{bail, Context, Result};
use candle_core::{DType, Device};
use candle_nn::{VarBuilder, VarMap};
use clap::Parser;

#[derive(Parser, Debug)]
#[command(about = "Draw ActionCLIP predictions onto videos (one video, or N random videos per class)")]
struct Args {
    /// One video file or frame folder (single mode).
    #[arg(long, conflicts_with = "videos_dir")]
    video: Option<PathBuf>,
    /// A dataset root with one folder per class (batch mode).
    #[arg(long)]
    videos_dir: Option<PathBuf>,
    /// Videos drawn at random from every class folder (batch mode).
    #[arg(long, default_value_t = 2)]
    per_class: usize,
    /// Seed of the random choice (batch mode).
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Weights: a checkpoint file or run directory (any supported format) or a Hugging Face model id.
    #[arg(long)]
    weights: Option<String>,
    /// Labels: `ucf101`, `hmdb51`, a file (one per line) or a comma list. Default: the class folder
    /// names in batch mode, `ucf101` in single mode.
    #[arg(long)]
    labels: Option<String>,
    /// Use labels (and class folder names as truths) as written instead of humanizing them.
    #[arg(long)]
    raw_labels: bool,
    /// The true label of `--video` (single mode), humanized like the labels.
    #[arg(long)]
    truth: Option<String>,
    /// Output folder.
    #[arg(long, default_value = "viz_out")]
    output: PathBuf,
    /// Frames per timeline window (default: 4 x the model's frame count).
    #[arg(long)]
    window: Option<usize>,
    /// Frames between timeline windows (default: half a window).
    #[arg(long)]
    stride: Option<usize>,
    /// Labels in the video-level top list.
    #[arg(long, default_value_t = 5)]
    top_k: usize,
    /// Most frames annotated per video (from the start).
    #[arg(long, default_value_t = 750)]
    max_frames: usize,
    /// Synthetic dataset + random tiny model (or `--weights` pointing at a `finetune_ucf101 --demo` run).
    #[arg(long)]
    demo: bool,
    /// How the towers' linear layers hold their weights: `packed` (f32 laid out once for the CPU's
    /// AVX-512 or AVX2 GEMM: the results of `full`, faster; plain f32 elsewhere), `full` (f32), `f16` or `int8`
    /// (CPU; fastest).
    #[arg(long, default_value = "packed")]
    tower_weights: TowerWeights,
}

/// The random tiny model of `--demo` (predictions are meaningless; it shows the pipeline).
fn tiny_model(device: &Device) -> Result<(ActionClip, ActionClipConfig)> {
    let clip = ClipConfig::tiny();
    let cfg = ActionClipConfig {
        clip,
        frames: 8,
        prompt: VisualPrompt { joint: false, temporal_shift: false, post: PostNetwork::Transformer { layers: 2 } },
    };
    let model = ActionClip::new(VarBuilder::from_varmap(&VarMap::new(), DType::F32, device), &cfg)?;
    Ok((model, cfg))
}

fn label_words(s: &str, raw: bool) -> String {
    if raw {
        s.trim().to_string()
    } else {
        prompts::humanize(s)
    }
}

/// The class folder names under `dir` that hold clips (sorted), as truths and default labels.
fn class_folders(dir: &Path) -> Result<Vec<String>> {
    let mut out: Vec<String> = viz::sample_per_class(dir, 1, 0)?.into_iter().map(|c| c.class).collect();
    out.dedup();
    Ok(out)
}

fn main() -> Result<()> {
    let mut args = Args::parse();
    let device = Device::Cpu;
    let demo_classes = if args.demo { Some(prepare_demo(&mut args)?) } else { None };
    let (model, cfg) = load_model(&args, &device)?;
    let model = model.with_tower_weights(args.tower_weights)?;
    eprintln!(
        "model: {} frames, {} px input, {:?} tower weights",
        cfg.frames, cfg.clip.vision.image_size, args.tower_weights
    );

    let spec = match (&args.labels, &args.videos_dir, demo_classes) {
        (Some(s), _, _) => s.clone(),
        (None, Some(dir), _) => class_folders(dir)?.join(","),
        (None, None, Some(demo)) => demo,
        (None, None, None) => "ucf101".to_string(),
    };
    let labels = inference::parse_labels(&spec, !args.raw_labels)?;
    if !labels.repeated.is_empty() {
        eprintln!("warning: repeated labels are used once: {}", labels.repeated.join(", "));
    }
    let tokenizer = Tokenizer::new();
    let zs = ZeroShotClassifier::new(&model, &tokenizer, &labels.labels, &prompts::ACTIONCLIP_TEMPLATES)?;
    let opts = viz::VisualizeOptions {
        window: args.window,
        stride: args.stride,
        top_k: args.top_k,
        max_frames: args.max_frames,
        ..Default::default()
    };
    match (&args.video, &args.videos_dir) {
        (Some(video), _) => visualize_one(&zs, video, &args, &opts),
        (None, Some(dir)) => visualize_per_class(&zs, dir, &args, &opts),
        (None, None) => bail!("give --video PATH, --videos-dir DIR or --demo"),
    }
}

/// `--demo`: the synthetic dataset of a `finetune_ucf101 --demo` run given by `--weights` (its RUN/data), or
/// a new small one under the output folder; it becomes `--videos-dir` unless a video source was given.
/// Returns its class names as a label list.
fn prepare_demo(args: &mut Args) -> Result<String> {
    let run_data = args.weights.as_deref().map(Path::new).and_then(|w| {
        [Some(w), w.parent()].into_iter().flatten().map(|d| d.join("data")).find(|d| d.join("classInd.txt").is_file())
    });
    let root = match run_data {
        Some(root) => {
            eprintln!("demo: the run's synthetic dataset in {}", root.display());
            root
        }
        None => {
            let root = args.output.join("synthetic_data");
            let cfg =
                data::synthetic::SyntheticConfig { clips_per_class: 4, test_clips_per_class: 1, ..Default::default() };
            let synthetic = data::synthetic::write_dataset(&root, &cfg)?;
            eprintln!("demo: synthetic dataset ({} classes) in {}", synthetic.classes.len(), root.display());
            root
        }
    };
    let classes = class_folders(&root)?.join(",");
    if args.video.is_none() && args.videos_dir.is_none() {
        args.videos_dir = Some(root);
    }
    Ok(classes)
}

/// The model of `--weights`, or the random tiny one of `--demo`.
fn load_model(args: &Args, device: &Device) -> Result<(ActionClip, ActionClipConfig)> {
    match (&args.weights, args.demo) {
        (Some(w), _) => Ok(ActionClip::load(w, device, DType::F32).with_context(|| format!("loading weights {w}"))?),
        (None, true) => {
            eprintln!(
                "demo: random tiny model (predictions are meaningless; pass --weights RUN_DIR for a trained one)"
            );
            tiny_model(device)
        }
        (None, false) => bail!("--weights PATH|HUB_ID is required (or --demo)"),
    }
}

/// Single mode: one annotated video and its contact sheet.
fn visualize_one(zs: &ZeroShotClassifier, video: &Path, args: &Args, opts: &viz::VisualizeOptions) -> Result<()> {
    let truth = args.truth.as_deref().map(|t| label_words(t, args.raw_labels));
    if let Some(t) = &truth {
        if !zs.labels().contains(t) {
            eprintln!("warning: the truth {t:?} is not among the labels");
        }
    }
    let name = video.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "video".into());
    let out = viz::visualize_video(zs, video, truth.as_deref(), &args.output, &name, opts)
        .with_context(|| format!("visualizing {}", video.display()))?;
    println!("{} ({} frames; {} windows of the timeline)", video.display(), out.total_frames, out.windows.len());
    for (rank, (label, p)) in out.prediction.top.iter().enumerate() {
        println!("  {:>2}. {:<40} {:>6.2}%", rank + 1, label, 100.0 * p);
    }
    println!(
        "annotated video: {} ({:?}, {} frames of {}x{})",
        out.annotated.display(),
        out.format,
        out.frames_written,
        out.size.0,
        out.size.1
    );
    println!("contact sheet:   {}", out.sheet.display());
    Ok(())
}

/// Batch mode: `--per-class` random videos of every class folder, with a report, a summary and a confusion matrix.
fn visualize_per_class(zs: &ZeroShotClassifier, dir: &Path, args: &Args, opts: &viz::VisualizeOptions) -> Result<()> {
    let clips = viz::sample_per_class(dir, args.per_class, args.seed)?;
    eprintln!("{} videos from {} ({} per class, seed {})", clips.len(), dir.display(), args.per_class, args.seed);
    let raw = args.raw_labels;
    let n = clips.len();
    let batch = viz::run_batch(
        zs,
        &clips,
        |c| Some(label_words(&c.class, raw)),
        dir,
        &args.output,
        opts,
        |i, e| {
            let status = match (&e.outcome, e.correct()) {
                (Err(reason), _) => format!("FAILED: {reason}"),
                (Ok(p), c) => {
                    let mark = match c {
                        Some(true) => "correct",
                        Some(false) => "wrong",
                        None => "-",
                    };
                    format!("{} {:.1}% ({mark})", p.top[0].0, 100.0 * p.top[0].1)
                }
            };
            eprintln!("[{}/{n}] {}: {status}", i + 1, e.video);
        },
    )?;
    let total = batch.classes.iter().fold((0, 0), |(c, d), s| (c + s.correct, d + s.videos - s.failed));
    let failed: usize = batch.classes.iter().map(|s| s.failed).sum();
    println!("top-1 accuracy {}/{} ({} failed)", total.0, total.1, failed);
    println!("report:  {}", batch.report.display());
    println!("summary: {}", batch.summary.display());
    println!("confusion matrix: {}", batch.confusion_png.display());
    Ok(())
}
