//! Encode a folder, a split file or a list of videos into sharded safetensors features, resumable.
//!
//! ```text
//! cargo run --release --features video --example extract_features -- --weights model_best.pt \
//!     --videos UCF101/ --output features/ucf101
//! cargo run --release --features video --example extract_features -- --weights model_best.pt \
//!     --videos ucfTrainTestlist/testlist01.txt --root UCF101/ --output features/test01 --views 2 --three-crops
//! cargo run --release --features video --example extract_features -- --random-weights vit-b32 \
//!     --videos clips/ --output /tmp/f --decode-only     # how fast the decoder alone is
//! ```
//! `--videos` is a folder (searched recursively for video files and frame folders) or a list file
//! (one path per line, relative to `--root` or the list's folder; UCF101's split files read as they
//! are). Labels are the names of the folders holding the clips. The output folder gets
//! `shard-*.safetensors` (`video` `[n, D]`, with `--views`/`--three-crops` also `video_views`, with
//! `--frame-features` also `frames`), `index.csv` (path, label, shard, row), `failures.csv`,
//! `manifest.json`, and `classes.safetensors`: the class embeddings of the labels (`--labels`, default
//! the clips' folder names) in the 16 ActionCLIP templates. Run the same command again after a crash or
//! Ctrl-C: finished shards are kept and skipped.
use std::ops::ControlFlow;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use actionclip::data::VideoDataset;
use actionclip::inference::{extract_features, save_class_features, ExtractConfig, ExtractEvent};
use actionclip::{prompts, ActionClip, Tokenizer, TowerWeights, ZeroShotClassifier};
use anyhow::{Context, Result};
use candle_core::Device;
use clap::Parser;
use indicatif::{ProgressBar, ProgressStyle};

mod common;

#[derive(Parser, Debug)]
#[command(about = "Encode videos into sharded safetensors features with ActionCLIP (resumable)")]
struct Args {
    /// A folder of videos / frame folders, or a list file (a split file such as testlist01.txt).
    #[arg(long)]
    videos: PathBuf,
    /// Folder that the paths of a list file are relative to (default: the list file's folder).
    #[arg(long)]
    root: Option<PathBuf>,
    /// Output folder.
    #[arg(long)]
    output: PathBuf,
    /// Weights: a checkpoint file or directory (any supported format) or a Hugging Face model id.
    #[arg(long)]
    weights: Option<String>,
    /// Timing mode: a real-size model with random weights (`vit-b32` or `vit-b16`).
    #[arg(long, value_parser = ["vit-b32", "vit-b16"])]
    random_weights: Option<String>,
    /// Labels for the class embeddings: `ucf101`, `hmdb51`, a file or a comma list (default: the
    /// clips' folder names).
    #[arg(long)]
    labels: Option<String>,
    /// Clips per shard.
    #[arg(long, default_value_t = 1000)]
    shard_size: usize,
    /// Clips per model call.
    #[arg(long, default_value_t = 4)]
    batch_size: usize,
    /// Decoding threads.
    #[arg(long, default_value_t = 2)]
    workers: usize,
    /// Temporal views per clip.
    #[arg(long, default_value_t = 1)]
    views: usize,
    /// Three spatial crops per view instead of the centre crop.
    #[arg(long)]
    three_crops: bool,
    /// Also store per-frame features.
    #[arg(long)]
    frame_features: bool,
    /// Only decode and preprocess (no model call, nothing written): the decoder's own speed.
    #[arg(long)]
    decode_only: bool,
    /// How the towers' linear layers hold their weights: `packed` (default), `full`, `f16` or `int8`.
    #[arg(long, default_value = "packed")]
    tower_weights: TowerWeights,
}

fn main() -> Result<()> {
    let args = Args::parse();
    let device = Device::Cpu;
    let dataset = VideoDataset::scan(&args.videos, args.root.as_deref())?;
    eprintln!("{} clips in {} classes from {}", dataset.len(), dataset.num_classes(), args.videos.display());
    let (model, _) =
        common::load_model(args.weights.as_deref(), args.random_weights.as_deref(), args.tower_weights, &device)?;
    let config = ExtractConfig {
        shard_size: args.shard_size,
        batch_size: args.batch_size,
        workers: args.workers,
        temporal_views: args.views,
        three_crops: args.three_crops,
        frame_features: args.frame_features,
    };
    if args.decode_only {
        return decode_only(&model, dataset, &config);
    }
    let labels = match &args.labels {
        Some(spec) => common::labels(spec, false)?,
        None => dataset.humanized_classes(),
    };
    let tokenizer = Tokenizer::new();
    let zs = ZeroShotClassifier::new(&model, &tokenizer, &labels, &prompts::ACTIONCLIP_TEMPLATES)?;
    std::fs::create_dir_all(&args.output).with_context(|| format!("creating {}", args.output.display()))?;
    save_class_features(&zs, args.output.join("classes.safetensors"))?;

    let interrupted = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&interrupted);
    ctrlc::set_handler(move || flag.store(true, Ordering::SeqCst)).context("installing the Ctrl-C handler")?;
    let bar = ProgressBar::new(dataset.len() as u64).with_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} clips {per_sec} eta {eta} {msg}")?.progress_chars("=> "),
    );
    let started = Instant::now();
    let mut observe = |event: ExtractEvent| {
        match event {
            ExtractEvent::Started { done, .. } => bar.set_position(done as u64),
            ExtractEvent::Encoded { done, .. } => bar.set_position(done as u64),
            ExtractEvent::Failed { path, reason } => bar.println(format!("skipped {}: {reason}", path.display())),
            ExtractEvent::ShardWritten { path, rows, .. } => {
                bar.set_message(format!("wrote {} ({rows})", path.display()))
            }
        }
        if interrupted.load(Ordering::SeqCst) {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        }
    };
    let summary = extract_features(&model, &dataset, &args.output, &config, &mut observe)?;
    bar.finish_and_clear();
    let seconds = started.elapsed().as_secs_f64();
    eprintln!(
        "{} clips encoded in {seconds:.1} s ({:.2} clips/s), {} from earlier runs, {} failed (failures.csv); {} shards in {}",
        summary.encoded,
        summary.encoded as f64 / seconds,
        summary.resumed,
        summary.failed.len(),
        summary.shards,
        args.output.display()
    );
    if summary.stopped {
        eprintln!("stopped early: run the same command again to finish (finished shards are kept)");
    }
    Ok(())
}

/// Decodes and preprocesses every clip as the extraction does, without the model: clips/s of the loader.
fn decode_only(model: &ActionClip, dataset: VideoDataset, config: &ExtractConfig) -> Result<()> {
    let total = dataset.len();
    let loader = config.loader(model, dataset)?;
    let started = Instant::now();
    let mut clips = 0;
    for batch in loader.epoch(0) {
        clips += batch?.ids.len();
    }
    let seconds = started.elapsed().as_secs_f64();
    eprintln!(
        "decode only: {clips} of {total} clips in {seconds:.1} s ({:.2} clips/s, {} threads)",
        clips as f64 / seconds,
        config.workers
    );
    Ok(())
}
