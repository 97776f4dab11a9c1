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
//! # data-parallel: 2 CPU processes (or one process per GPU with --features nccl and --distributed nccl)
//! cargo build --release --features mpi --example finetune_ucf101
//! mpirun -np 2 target/release/examples/finetune_ucf101 --distributed mpi --demo --batch-size 8
//! ```
//! Settings come from defaults (the reference's UCF101 recipe, or the demo's with `--demo`), then the
//! optional `--config` file (TOML or YAML, with the reference's keys: `network.arch`, `network.sim_header`,
//! `data.num_segments`, `solver.lr`, ... or the same names as the flags; see `actionclip::train::recipe`),
//! then the flags. Ctrl-C saves `last/` and exits; a second Ctrl-C exits at once. Everything lands in
//! `--output` (metrics.jsonl, config.json, curves.png, confusion.png, summary.md, last/, best/).
//!
//! With `--distributed mpi` (feature `mpi`, ranks from `mpirun`) or `--distributed nccl` (feature `nccl`,
//! ranks from torchrun/Slurm's `RANK`, `WORLD_SIZE`, `LOCAL_RANK`, `MASTER_ADDR`, `MASTER_PORT` or from
//! `mpirun`; `LOCAL_RANK` picks the GPU) every process trains on its share of each epoch; `--batch-size`
//! is per process, as in PyTorch DDP. Rank 0 alone prints, shows progress and writes the run directory.
//!
//! The demo (`actionclip::train::demo`) trains a tiny model (vision width 64 x 2 layers, patch 8, 32 px;
//! a frozen text tower of width 64 x 1 layer; temporal shift + a 1-layer Transf head) on 8 synthetic motion
//! classes; the `--demo-*` flags change its model, data and augmentation.
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use actionclip::data::{ClipPipeline, Loader, LoaderConfig, Sampling, Storage, Subset, VideoDataset};
use actionclip::train::demo::Demo;
use actionclip::train::distributed::{Collective, SingleProcess};
use actionclip::train::recipe::Recipe;
use actionclip::train::{
    AdamWConfig, EvalReport, Event, Freeze, Observer, Precision, RunSummary, StartFrom, TrainConfig, TrainData,
    TrainError, Trainer,
};
use actionclip::{ActionClipConfig, ClipConfig, TowerWeights};
use anyhow::{bail, Context, Result};
use candle_core::Device;
use clap::Parser;
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Serialize;

#[derive(Parser, Debug, Serialize)]
#[command(about = "Fine-tune ActionCLIP on UCF101 (or a synthetic demo dataset)")]
struct Args {
    /// A TOML or YAML file with the reference's keys (or the flags' names); flags override it.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Write a synthetic UCF101-layout dataset into the run directory and train a tiny model from scratch.
    #[arg(long)]
    demo: bool,
    #[command(flatten)]
    demo_flags: DemoFlags,
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
    /// Schedule: cosine, multistep or constant.
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
    #[arg(long, value_name = "CHECKPOINT")]
    resume: Option<Option<PathBuf>>,
    /// Only evaluate the starting weights (no training).
    #[arg(long)]
    evaluate_only: bool,
    /// With --evaluate-only: how the towers' linear layers hold their weights, `full` (f32), `packed`
    /// (f32 laid out for the CPU's AVX-512 or AVX2 GEMM: the same results, faster), `f16` or `int8` (CPU; fastest).
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
    /// Device: cpu, cuda, cuda:N or metal (with --distributed nccl: the GPU `LOCAL_RANK` names).
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Data-parallel training: `mpi` (CPU processes under mpirun; feature `mpi`) or `nccl` (one GPU per
    /// process; feature `nccl`). --batch-size is then per process.
    #[arg(long)]
    distributed: Option<String>,
}

/// The demo's model, data and augmentation (with --demo).
#[derive(clap::Args, Debug, Serialize)]
struct DemoFlags {
    /// Demo: image tower width.
    #[arg(long, default_value_t = Demo::default().vision_width)]
    demo_vision_width: usize,
    /// Demo: image tower layers.
    #[arg(long, default_value_t = Demo::default().vision_layers)]
    demo_vision_layers: usize,
    /// Demo: text tower width (a multiple of 64).
    #[arg(long, default_value_t = Demo::default().text_width)]
    demo_text_width: usize,
    /// Demo: text tower layers.
    #[arg(long, default_value_t = Demo::default().text_layers)]
    demo_text_layers: usize,
    /// Demo: patch size.
    #[arg(long, default_value_t = Demo::default().patch_size)]
    demo_patch: usize,
    /// Demo: resolution of the model and its input (the clips are 64x64).
    #[arg(long, default_value_t = Demo::default().resolution)]
    demo_resolution: usize,
    /// Demo: layers of the temporal Transformer head.
    #[arg(long, default_value_t = Demo::default().head_layers)]
    demo_head_layers: usize,
    /// Demo: clips per class (2 to 99; a tenth of them, at least one, are test clips).
    #[arg(long, default_value_t = Demo::default().clips_per_class)]
    demo_clips: usize,
    /// Demo: train the text tower too (at --lr).
    #[arg(long)]
    demo_train_text: bool,
    /// Demo: colour jitter and random grayscale on the training clips.
    #[arg(long)]
    demo_jitter: bool,
}

impl DemoFlags {
    fn demo(&self) -> Demo {
        Demo {
            vision_width: self.demo_vision_width,
            vision_layers: self.demo_vision_layers,
            text_width: self.demo_text_width,
            text_layers: self.demo_text_layers,
            patch_size: self.demo_patch,
            resolution: self.demo_resolution,
            head_layers: self.demo_head_layers,
            clips_per_class: self.demo_clips,
            train_text: self.demo_train_text,
            color_jitter: self.demo_jitter,
        }
    }
}

/// Defaults (the reference's recipe or the demo's), then the `--config` file, then the flags.
fn resolve_recipe(args: &Args) -> Result<Recipe> {
    let mut recipe = if args.demo { args.demo_flags.demo().recipe() } else { Recipe::default() };
    if let Some(path) = &args.config {
        recipe.apply(&read_config(path)?).with_context(|| format!("reading {}", path.display()))?;
    }
    apply_args(&mut recipe, args);
    Ok(recipe)
}

/// Reads a TOML or YAML file into JSON.
fn read_config(path: &Path) -> Result<serde_json::Value> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(if path.extension().is_some_and(|e| e == "toml") {
        serde_json::to_value(
            toml::from_str::<toml::Value>(&text).with_context(|| format!("{} is not valid TOML", path.display()))?,
        )?
    } else {
        serde_json::to_value(
            serde_yaml::from_str::<serde_yaml::Value>(&text)
                .with_context(|| format!("{} is not valid YAML", path.display()))?,
        )?
    })
}

/// The flags given override the recipe.
fn apply_args(r: &mut Recipe, a: &Args) {
    macro_rules! over {
        ($($f:ident),*) => { $( if let Some(v) = a.$f.clone() { r.$f = v; } )* };
    }
    over!(
        arch,
        frames,
        seg_length,
        sim_header,
        joint,
        tsm,
        epochs,
        lr,
        ratio,
        f_ratio,
        weight_decay,
        warmup,
        schedule,
        batch_size,
        workers,
        split,
        output,
        seed
    );
    for (dst, src) in [
        (&mut r.root, &a.root),
        (&mut r.train_list, &a.train_list),
        (&mut r.val_list, &a.val_list),
        (&mut r.label_list, &a.label_list),
    ] {
        if src.is_some() {
            dst.clone_from(src);
        }
    }
    if a.weights.is_some() {
        r.weights.clone_from(&a.weights);
    }
    if a.input_size.is_some() {
        r.input_size = a.input_size;
    }
    if let Some(path) = &a.resume {
        r.resume = Some(path.clone().unwrap_or_else(|| r.output.join("last")));
    }
    r.scratch |= a.scratch;
    r.evaluate_only |= a.evaluate_only;
}

fn device(spec: &str) -> Result<Device> {
    Ok(match spec {
        "cpu" => Device::Cpu,
        "metal" => Device::new_metal(0)?,
        s if s.starts_with("cuda") => {
            Device::new_cuda(s.strip_prefix("cuda:").and_then(|n| n.parse().ok()).unwrap_or(0))?
        }
        other => bail!("unknown device {other:?} (cpu, cuda, cuda:N, metal)"),
    })
}

/// This process's place in the job: `--distributed mpi|nccl`, or a single process on `--device`.
fn collective(args: &Args) -> Result<Box<dyn Collective>> {
    match args.distributed.as_deref() {
        None => Ok(Box::new(SingleProcess::new(&device(&args.device)?))),
        Some("mpi") => mpi_rank(),
        Some("nccl") => nccl_rank(),
        Some(other) => bail!("unknown --distributed {other:?} (mpi or nccl)"),
    }
}

/// This process's MPI rank (ranks from `mpirun`).
#[cfg(feature = "mpi")]
fn mpi_rank() -> Result<Box<dyn Collective>> {
    Ok(Box::new(actionclip::train::distributed::Mpi::init()?))
}

#[cfg(not(feature = "mpi"))]
fn mpi_rank() -> Result<Box<dyn Collective>> {
    bail!("--distributed mpi needs the example built with `--features mpi`")
}

/// This process's NCCL rank (ranks from the torchrun/Slurm/mpirun environment; `LOCAL_RANK` picks the GPU).
#[cfg(feature = "nccl")]
fn nccl_rank() -> Result<Box<dyn Collective>> {
    Ok(Box::new(actionclip::train::distributed::Nccl::from_env()?))
}

#[cfg(not(feature = "nccl"))]
fn nccl_rank() -> Result<Box<dyn Collective>> {
    bail!("--distributed nccl needs the example built with `--features nccl`")
}

/// The training and test clips: the demo's synthetic dataset (written by rank 0), TSN list files or UCF101
/// splits.
fn datasets(r: &Recipe, args: &Args, collective: &dyn Collective) -> Result<(VideoDataset, VideoDataset)> {
    if args.demo {
        let t0 = Instant::now();
        let root = r.output.join("data");
        let written = match collective.rank() {
            0 => Some(args.demo_flags.demo().write_dataset(&root)?),
            _ => None,
        };
        collective.barrier()?;
        let (train, test) = match written {
            Some(splits) => splits,
            None => (
                VideoDataset::ucf101(&root, 1, Subset::Train, Storage::FrameFolders)?,
                VideoDataset::ucf101(&root, 1, Subset::Test, Storage::FrameFolders)?,
            ),
        };
        say(
            collective,
            format!(
                "demo dataset: {} ({} classes, {} training and {} test clips, written in {:.1} s)",
                root.display(),
                train.num_classes(),
                train.len(),
                test.len(),
                t0.elapsed().as_secs_f64()
            ),
        );
        return Ok((train, test));
    }
    if let Some(train_list) = &r.train_list {
        let labels = r.label_list.as_ref().context("--train-list needs --label-list")?;
        let val = r.val_list.as_ref().context("--train-list needs --val-list")?;
        let root = r.root.as_deref();
        return Ok((VideoDataset::from_list(train_list, labels, root)?, VideoDataset::from_list(val, labels, root)?));
    }
    let root =
        r.root.as_ref().context("give --root (the UCF101 folder), --train-list/--val-list/--label-list, or --demo")?;
    let storage = if args.frame_folders { Storage::FrameFolders } else { Storage::Videos };
    Ok(match &args.splits {
        Some(dir) => (
            VideoDataset::ucf101_with_splits(root, dir, r.split, Subset::Train, storage)?,
            VideoDataset::ucf101_with_splits(root, dir, r.split, Subset::Test, storage)?,
        ),
        None => (
            VideoDataset::ucf101(root, r.split, Subset::Train, storage)?,
            VideoDataset::ucf101(root, r.split, Subset::Test, storage)?,
        ),
    })
}

/// Prints `line` on rank 0 only.
fn say(collective: &dyn Collective, line: String) {
    if collective.rank() == 0 {
        println!("{line}");
    }
}

/// The model to train and where its weights start: the demo's tiny model, the `--arch` dimensions from
/// scratch, or a checkpoint (`--weights`, or OpenAI's weights for `--arch`).
fn model(r: &Recipe, args: &Args, collective: &dyn Collective) -> Result<(ActionClipConfig, StartFrom)> {
    let head_layers = args.demo.then_some(args.demo_flags.demo_head_layers);
    let prompt = r.visual_prompt(head_layers)?;
    if args.demo && r.weights.is_none() {
        return Ok((args.demo_flags.demo().model_config(r.frames, prompt), StartFrom::Scratch));
    }
    if r.scratch && r.weights.is_none() {
        return Ok((
            ActionClipConfig { clip: ClipConfig::by_name(&r.arch)?, frames: r.frames, prompt },
            StartFrom::Scratch,
        ));
    }
    let source = match (&r.weights, r.hub_id()) {
        (Some(w), _) => w.clone(),
        (None, Some(id)) => id.to_string(),
        (None, None) => bail!("no --weights and no known --arch {:?}; give one (or --scratch)", r.arch),
    };
    let weights =
        actionclip::weights::load(&source).with_context(|| format!("loading the starting weights {source}"))?;
    let mut cfg = weights.action_clip_config()?;
    // A checkpoint of our own runs knows its frames and prompt; flags still override them.
    let from_our_run = weights.config.is_some();
    if !from_our_run || args.frames.is_some() || args.sim_header.is_some() || args.tsm.is_some() || args.joint.is_some()
    {
        cfg.frames = r.frames;
        cfg.prompt = prompt;
    }
    say(collective, format!("starting weights: {} ({}), {:?}", weights.path.display(), weights.format, cfg.prompt));
    Ok((cfg, StartFrom::Weights(Box::new(weights))))
}

fn loader(ds: VideoDataset, pipeline: ClipPipeline, r: &Recipe, train: bool, device: &Device) -> Result<Loader> {
    let cfg = LoaderConfig {
        batch_size: r.batch_size,
        workers: r.workers,
        prefetch: 2,
        shuffle: train,
        seed: r.seed,
        drop_last: false,
        device: device.clone(),
        ..LoaderConfig::default()
    };
    Ok(Loader::new(ds, pipeline, cfg)?)
}

/// Loaders for training, the per-epoch test and the optional multi-view test.
fn train_data(
    r: &Recipe,
    args: &Args,
    model_cfg: &ActionClipConfig,
    (train, test): (VideoDataset, VideoDataset),
    device: &Device,
) -> Result<TrainData> {
    let frames = model_cfg.frames;
    let input = r.input_size.unwrap_or(model_cfg.clip.vision.image_size as u32);
    let with_segments = |mut p: ClipPipeline| -> Result<ClipPipeline> {
        p.sampling = Sampling::with_seg_length(frames, r.seg_length)?;
        Ok(p)
    };
    let mut train_pipeline = with_segments(ClipPipeline::train(frames, input)?)?;
    if args.demo {
        args.demo_flags.demo().adapt_train_pipeline(&mut train_pipeline);
    }
    let test_pipeline = with_segments(ClipPipeline::test(frames, input)?)?;
    let multi_view = match &args.multi_view {
        Some(spec) => {
            let (clips, crops) = parse_views(spec)?;
            let pipeline = with_segments(ClipPipeline::multi_view(frames, input, clips, crops == 3)?)?;
            Some(loader(test.clone(), pipeline, r, false, device)?)
        }
        None => None,
    };
    Ok(TrainData {
        train: loader(train, train_pipeline, r, true, device)?,
        test: Some(loader(test, test_pipeline, r, false, device)?),
        multi_view,
    })
}

/// `CLIPSxCROPS` (crops 1 or 3).
fn parse_views(spec: &str) -> Result<(usize, usize)> {
    let (c, k) = spec.split_once('x').context("--multi-view takes CLIPSxCROPS, e.g. 4x3")?;
    let (clips, crops): (usize, usize) = (c.parse()?, k.parse()?);
    if crops != 1 && crops != 3 {
        bail!("--multi-view crops must be 1 or 3");
    }
    Ok((clips, crops))
}

fn train_config(r: &Recipe, args: &Args, precision: Precision) -> Result<TrainConfig> {
    let base = TrainConfig {
        optimizer: AdamWConfig { exempt_from_decay: args.no_decay_exempt, ..AdamWConfig::default() },
        accumulate: args.accumulate.unwrap_or(1),
        clip_grad_norm: args.clip_grad,
        freeze: Freeze {
            text: args.freeze_text || (args.demo && args.demo_flags.demo().freeze().text),
            vision: args.freeze_vision,
        },
        precision,
        zero_shot_eval: !args.no_zero_shot,
        ..TrainConfig::default()
    };
    Ok(r.train_config(base)?)
}

fn main() -> Result<()> {
    let args = Args::parse();
    let collective: Rc<dyn Collective> = Rc::from(collective(&args)?);
    let outcome = run(&args, &collective);
    if let (Err(e), true) = (&outcome, collective.world_size() > 1) {
        // Every rank has stopped (the trainer exchanges each rank's status), or this rank failed outside
        // the trainer where the others cannot hear of it: end the whole job either way.
        eprintln!("rank {}: {e:#}", collective.rank());
        collective.abort(1);
    }
    outcome
}

/// Everything after the launch, on every rank.
fn run(args: &Args, collective: &Rc<dyn Collective>) -> Result<()> {
    let recipe = resolve_recipe(args)?;
    let device = collective.device().clone();
    let precision = Precision::parse(args.precision.as_deref().unwrap_or("auto"), &device)?;
    std::fs::create_dir_all(&recipe.output).with_context(|| format!("creating {}", recipe.output.display()))?;
    let datasets = datasets(&recipe, args, &**collective)?;
    let (model_cfg, start) = model(&recipe, args, &**collective)?;
    let data = train_data(&recipe, args, &model_cfg, datasets, &device)?;
    let world_size = collective.world_size();
    let mut trainer = Trainer::new(&model_cfg, start, train_config(&recipe, args, precision)?, &device)?
        .with_collective(collective.clone())?
        .with_run_dir(&recipe.output);
    trainer.set_run_info(
        serde_json::json!({ "settings": recipe, "args": args, "demo": args.demo, "world_size": world_size }),
    );
    let quiet = collective.rank() != 0;
    if recipe.evaluate_only {
        return evaluate_only(&trainer, &data, &recipe.output, TowerWeights::parse(&args.tower_weights)?, quiet);
    }
    if let Some(r) = &recipe.resume {
        trainer.resume(r).with_context(|| format!("resuming from {}", r.display()))?;
    }
    let mut console = Console::new(stop_on_ctrl_c()?, quiet);
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
    if !quiet {
        report(&summary, started, &recipe.output, args.demo);
    }
    Ok(())
}

/// A flag the first Ctrl-C raises (the trainer then saves `last/` and returns); a second one exits at once.
fn stop_on_ctrl_c() -> Result<Arc<AtomicBool>> {
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let presses = AtomicUsize::new(0);
    ctrlc::set_handler(move || {
        if presses.fetch_add(1, Ordering::SeqCst) > 0 {
            eprintln!("\nsecond Ctrl-C: exiting without saving");
            std::process::exit(130);
        }
        eprintln!("\nCtrl-C: finishing the current step, saving last/ (press again to quit at once)");
        flag.store(true, Ordering::SeqCst);
    })?;
    Ok(stop)
}

/// The run's last line; the demo warns when it missed its expected accuracy.
fn report(summary: &RunSummary, started: Instant, output: &Path, demo: bool) {
    println!(
        "{} {} epochs in {:.1} s; best top-1 {} (epoch {}); run directory {}",
        if summary.stopped { "stopped after" } else { "done:" },
        summary.epochs,
        started.elapsed().as_secs_f64(),
        summary.best_top1.map(|t| format!("{:.2}%", 100.0 * t)).unwrap_or("-".into()),
        summary.best_epoch.map(|e| e.to_string()).unwrap_or("-".into()),
        output.display()
    );
    let best = summary.best_top1.unwrap_or(0.0);
    if demo && !summary.stopped && best < 0.9 {
        eprintln!("warning: the demo reached only {:.1}% top-1 (expected >= 90%)", 100.0 * best);
    }
}

/// Scores the starting weights on the test splits with the towers' weights as `format`; a format other
/// than full f32 is compared with f32 on the same clips.
/// Rank 0 alone (`quiet` false) prints and writes the reports.
fn evaluate_only(trainer: &Trainer, data: &TrainData, output: &Path, format: TowerWeights, quiet: bool) -> Result<()> {
    let mut console = Console::new(Arc::new(AtomicBool::new(false)), quiet);
    for (name, loader) in [("test", data.test.as_ref()), ("test_multiview", data.multi_view.as_ref())] {
        let Some(loader) = loader else { continue };
        let report = evaluate_with_bar(&mut console, trainer, loader, format, name != "test")?;
        let full = match format {
            TowerWeights::Full => None,
            _ => Some(evaluate_with_bar(&mut console, trainer, loader, TowerWeights::Full, name != "test")?),
        };
        if quiet {
            continue;
        }
        if let Some(full) = full {
            let agreement = report.top1_agreement(&full).map_or("n/a".into(), |a| format!("{:.2}%", 100.0 * a));
            println!("{name}: f32 weights top-1 {:.2}% ({:.1} s); {format:?} weights agree with f32 on the top-1 class of {agreement} of the clips", 100.0 * full.top1, full.seconds);
        }
        println!(
            "{name}: top-1 {:.2}%  top-5 {:.2}%  mean class {:.2}%  ({} clips, {} views, {:.1} s)",
            100.0 * report.top1,
            100.0 * report.top5,
            100.0 * report.mean_class_accuracy,
            report.samples,
            report.views,
            report.seconds
        );
        let path = output.join(format!("eval_{name}.json"));
        std::fs::write(&path, serde_json::to_string_pretty(&report)?)?;
        let classes = &data.train.dataset().classes;
        actionclip::train::plots::plot_confusion(&report, classes, &output.join(format!("confusion_{name}.png")))?;
    }
    Ok(())
}

fn evaluate_with_bar(
    console: &mut Console,
    trainer: &Trainer,
    loader: &Loader,
    format: TowerWeights,
    multi_view: bool,
) -> Result<EvalReport> {
    console.event(&Event::EvalStarted { epoch: 0, batches: loader.num_batches(), multi_view });
    let bar = console.eval.clone();
    let report = trainer.evaluate_with(format, loader, &mut |done, _| {
        if let Some(b) = &bar {
            b.set_position(done as u64)
        }
    })?;
    if let Some(b) = console.eval.take() {
        b.finish_and_clear();
    }
    Ok(report)
}

/// Progress bars, Ctrl-C and a few printed lines.
struct Console {
    /// Ranks other than 0 of a data-parallel job: no bars, no lines.
    quiet: bool,
    bars: MultiProgress,
    total: ProgressBar,
    epoch: ProgressBar,
    eval: Option<ProgressBar>,
    stop: Arc<AtomicBool>,
    epochs: usize,
    started: Instant,
}

impl Console {
    fn new(stop: Arc<AtomicBool>, quiet: bool) -> Self {
        let bars =
            if quiet { MultiProgress::with_draw_target(ProgressDrawTarget::hidden()) } else { MultiProgress::new() };
        let total = bars.add(ProgressBar::new(0));
        total.set_style(
            ProgressStyle::with_template(
                "{prefix:>8} [{bar:30.cyan/blue}] {pos}/{len} steps  {elapsed_precise} elapsed, ETA {eta_precise}",
            )
            .unwrap()
            .progress_chars("=> "),
        );
        total.set_prefix("run");
        let epoch = bars.add(ProgressBar::new(0));
        epoch.set_style(
            ProgressStyle::with_template("{prefix:>8} [{bar:30.green/white}] {pos}/{len} batches  {msg}")
                .unwrap()
                .progress_chars("=> "),
        );
        Self { quiet, bars, total, epoch, eval: None, stop, epochs: 0, started: Instant::now() }
    }

    fn println(&self, line: String) {
        if self.quiet {
            return;
        }
        if self.bars.is_hidden() {
            println!("{line}");
        } else {
            let _ = self.bars.println(line);
        }
    }

    fn eval_started(&mut self, batches: usize, multi_view: bool) {
        let bar = self.bars.add(ProgressBar::new(batches as u64));
        bar.set_style(
            ProgressStyle::with_template("{prefix:>8} [{bar:30.yellow/white}] {pos}/{len} batches  ETA {eta}")
                .unwrap()
                .progress_chars("=> "),
        );
        bar.set_prefix(if multi_view { "test-mv" } else { "test" });
        self.eval = Some(bar);
    }

    fn evaluated(&mut self, report: &EvalReport, zero_shot: bool) {
        if let Some(b) = self.eval.take() {
            b.finish_and_clear();
            self.bars.remove(&b);
        }
        let what = if zero_shot {
            "starting weights (zero-shot)".to_string()
        } else if report.views > 1 {
            format!("multi-view ({} views)", report.views)
        } else {
            format!("epoch {}", report.epoch)
        };
        let (top1, top5, mean_class) = (100.0 * report.top1, 100.0 * report.top5, 100.0 * report.mean_class_accuracy);
        self.println(format!(
            "{what}: top-1 {top1:.2}%  top-5 {top5:.2}%  mean class {mean_class:.2}%  ({} clips, {:.1} s)",
            report.samples, report.seconds
        ));
    }
}

impl Observer for Console {
    fn event(&mut self, event: &Event<'_>) {
        match event {
            Event::Started {
                epochs,
                start_epoch,
                start_step,
                steps_per_epoch,
                trainable,
                frozen,
                resumed,
                batches_per_epoch,
            } => {
                self.epochs = *epochs;
                self.total.set_length((epochs * steps_per_epoch) as u64);
                self.total.set_position(*start_step as u64);
                self.total.reset_eta();
                let verb = if *resumed { "resuming:" } else { "training:" };
                let from =
                    if *resumed { format!(" (from epoch {start_epoch}, step {start_step})") } else { String::new() };
                let (trainable, frozen) = (*trainable as f64 / 1e6, *frozen as f64 / 1e6);
                self.println(format!("{verb} {epochs} epochs x {batches_per_epoch} batches ({steps_per_epoch} steps each); {trainable:.2} M trainable, {frozen:.2} M frozen parameters{from}"));
            }
            Event::EpochStarted { epoch, batches, done } => {
                self.epoch.set_prefix(format!("ep {}/{}", epoch + 1, self.epochs));
                self.epoch.set_length(*batches as u64);
                self.epoch.set_position(*done as u64);
                self.epoch.reset_eta();
            }
            Event::Batch { done, .. } => self.epoch.set_position(*done as u64),
            Event::Step(s) => {
                self.total.set_position(s.step as u64);
                self.epoch.set_message(format!("loss {:.4}  lr {:.2e}  {:.1} clips/s", s.loss, s.lr, s.clips_per_s));
            }
            Event::LoaderFailures(failures) => {
                for f in failures.iter() {
                    self.println(format!("skipped clip {}: {}", f.path.display(), f.reason));
                }
            }
            Event::EvalStarted { batches, multi_view, .. } => self.eval_started(*batches, *multi_view),
            Event::EvalProgress { done, .. } => {
                if let Some(b) = &self.eval {
                    b.set_position(*done as u64);
                }
            }
            Event::Evaluated(report, log) => self.evaluated(report, log.zero_shot),
            Event::EpochEnded(e) => {
                self.println(format!(
                    "epoch {} done: train loss {:.4}, {:.1} s training, {:.0} s so far",
                    e.epoch,
                    e.train_loss,
                    e.train_seconds,
                    self.started.elapsed().as_secs_f64()
                ));
            }
            Event::CheckpointSaved { path, best: true } => self.println(format!("new best -> {}", path.display())),
            Event::CheckpointSaved { best: false, .. } => {}
            Event::Stopped { epoch, step } => {
                self.println(format!("stopped at epoch {epoch}, step {step}; resume with --resume"))
            }
        }
    }

    fn should_stop(&mut self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }
}
