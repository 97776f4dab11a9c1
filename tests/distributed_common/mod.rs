//! Data-parallel scenarios that every rank of a world runs with its own [`Collective`] (threads in
//! tests/train_distributed.rs, MPI processes in tests/distributed_mpi.rs), on a tiny model and a tiny
//! synthetic dataset. Where a scenario compares with one process, rank 0 also runs that process.
#![allow(dead_code)] // each test binary runs a subset of the scenarios

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use actionclip::data::synthetic::{write_dataset, SyntheticConfig, SyntheticFormat};
use actionclip::data::{ClipPipeline, Loader, LoaderConfig, Storage, Subset, VideoDataset, VideoSample};
use actionclip::train::distributed::{Collective, DistributedError};
use actionclip::train::{AdamWConfig, Event, Observer, Silent, StartFrom, TrainConfig, TrainData, TrainError, Trainer};
use actionclip::{ActionClipConfig, ClipConfig, PostNetwork, TextConfig, Tokenizer, VisionConfig, VisualPrompt};
use candle_core::{DType, Device, Tensor};

/// One rank's collective, shared by the trainers a scenario makes one after another.
pub type Shared = Rc<dyn Collective>;

/// Loader batch per rank in the scenarios.
pub const BATCH: usize = 2;

pub fn tiny_model() -> ActionClipConfig {
    ActionClipConfig {
        clip: ClipConfig {
            vision: VisionConfig { width: 64, layers: 1, heads: 1, patch_size: 8, image_size: 32 },
            text: TextConfig { width: 64, layers: 1, heads: 1, vocab_size: 49408, context_length: 77 },
            embed_dim: 32,
        },
        frames: 4,
        prompt: VisualPrompt { joint: false, temporal_shift: true, post: PostNetwork::Transformer { layers: 1 } },
    }
}

/// Optimizer steps of two loader batches each, clipped to a norm the tiny model exceeds. Adam's `eps` is
/// 1e-6: with the default 1e-8, the float noise of gradients that are zero in exact arithmetic (the key
/// bias of attention, which softmax ignores) becomes full-size steps whose signs depend on summation order.
pub fn train_config(epochs: usize) -> TrainConfig {
    TrainConfig {
        epochs,
        optimizer: AdamWConfig { lr: 1e-3, ratio: 0.5, f_ratio: 2.0, eps: 1e-6, ..AdamWConfig::default() },
        warmup_epochs: 0.5,
        accumulate: 2,
        clip_grad_norm: Some(0.05),
        seed: 3,
        zero_shot_eval: false,
        eval_every: 0,
        plots: false,
        ..TrainConfig::default()
    }
}

/// 4 classes x 6 training clips (24: three steps of 2 ranks x 2 batches x 2 clips) and 5 test clips, frame
/// folders of 8 frames at 32x32, written once under `root`.
pub fn dataset(root: &Path) -> PathBuf {
    let dir = root.join("data");
    if !dir.join("classInd.txt").exists() {
        let cfg = SyntheticConfig {
            num_classes: 4,
            clips_per_class: 7,
            test_clips_per_class: 1,
            frames: 8,
            width: 32,
            height: 32,
            format: SyntheticFormat::FrameFolders,
            ..Default::default()
        };
        write_dataset(&dir, &cfg).unwrap();
    }
    dir
}

fn loader(ds: VideoDataset, pipeline: ClipPipeline, batch_size: usize, shuffle: bool) -> Loader {
    let cfg = LoaderConfig { batch_size, workers: 0, shuffle, seed: 5, ..LoaderConfig::default() };
    Loader::new(ds, pipeline, cfg).unwrap()
}

/// The training split (loader batch `batch_size`) and a 5-clip test split (4 test clips and a fifth taken
/// from the training clips: an odd count).
pub fn data(root: &Path, batch_size: usize) -> TrainData {
    let dir = dataset(root);
    let train = VideoDataset::ucf101(&dir, 1, Subset::Train, Storage::FrameFolders).unwrap();
    let mut test = VideoDataset::ucf101(&dir, 1, Subset::Test, Storage::FrameFolders).unwrap();
    test.samples.push(train.samples[0].clone());
    TrainData {
        train: loader(train, ClipPipeline::train(4, 32).unwrap(), batch_size, true),
        test: Some(loader(test, ClipPipeline::test(4, 32).unwrap(), 2, false)),
        multi_view: None,
    }
}

/// A trainer of the tiny model; one rank of `collective`'s world.
pub fn trainer(cfg: TrainConfig, collective: &Shared) -> Trainer {
    Trainer::new(&tiny_model(), StartFrom::Scratch, cfg, &Device::Cpu)
        .unwrap()
        .with_collective(collective.clone())
        .unwrap()
}

/// Records step losses; asks to stop after `stop_after` steps.
#[derive(Default)]
pub struct Recorder {
    pub losses: Vec<f64>,
    pub grad_norms: Vec<f64>,
    pub stop_after: Option<usize>,
    steps: usize,
}

impl Observer for Recorder {
    fn event(&mut self, event: &Event<'_>) {
        if let Event::Step(s) = event {
            self.losses.push(s.loss);
            self.grad_norms.push(s.grad_norm);
            self.steps = s.step;
        }
    }
    fn should_stop(&mut self) -> bool {
        self.stop_after.is_some_and(|k| self.steps >= k)
    }
}

/// The largest difference between same-named tensors relative to the larger of their scales (max |x|).
pub fn max_relative_diff(a: &HashMap<String, Tensor>, b: &HashMap<String, Tensor>) -> f64 {
    assert_eq!(a.len(), b.len());
    let max_abs = |t: &Tensor| t.abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap();
    a.iter()
        .map(|(k, x)| {
            let y = &b[k];
            let scale = max_abs(x).max(max_abs(y)).max(f32::MIN_POSITIVE);
            (max_abs(&(x - y).unwrap()) / scale) as f64
        })
        .fold(0.0, f64::max)
}

/// 2 ranks x batch 2 for 3 optimizer steps (accumulating 2 batches, clipped) against 1 process x batch 4 on
/// the same clips: the same losses and weights. Returns the largest relative weight difference (rank 0).
pub fn equivalence(collective: &Shared, root: &Path) -> Option<f64> {
    let world = collective.world_size();
    let rank = collective.rank();
    let mut distributed = trainer(train_config(1), collective);
    let mut rec = Recorder::default();
    let summary = distributed.fit(&TrainData { test: None, ..data(root, BATCH) }, &mut rec).unwrap();
    assert_eq!(summary.steps, 3, "rank {rank}");
    assert!(rec.grad_norms.iter().all(|&n| n > 0.05), "clipping is active: {:?}", rec.grad_norms);
    if rank != 0 {
        return None;
    }
    let mut single = Trainer::new(&tiny_model(), StartFrom::Scratch, train_config(1), &Device::Cpu).unwrap();
    let mut reference = Recorder::default();
    single.fit(&TrainData { test: None, ..data(root, BATCH * world) }, &mut reference).unwrap();
    for (a, b) in rec.losses.iter().zip(&reference.losses) {
        assert!((a - b).abs() <= 1e-5 * b.abs(), "losses {:?} vs {:?}", rec.losses, reference.losses);
    }
    assert_eq!(rec.losses.len(), reference.losses.len());
    let diff = max_relative_diff(&distributed.weights(), &single.weights());
    assert!(diff <= 1e-5, "weights differ by {diff:e} of their scale");
    Some(diff)
}

/// Evaluation over a 5-clip split: every clip counted once, the same top-1 and predictions as one process.
pub fn evaluation(collective: &Shared, root: &Path) {
    let rank = collective.rank();
    let t = trainer(train_config(1), collective);
    let test = data(root, BATCH).test.unwrap();
    let report = t.evaluate(&test, &mut |_, _| {}).unwrap();
    assert_eq!(report.samples, 5, "rank {rank}");
    assert_eq!(report.class_counts.iter().sum::<usize>(), 5);
    if rank == 0 {
        let single = Trainer::new(&tiny_model(), StartFrom::Scratch, train_config(1), &Device::Cpu).unwrap();
        let expected = single.evaluate(&test, &mut |_, _| {}).unwrap();
        assert_eq!(report.predictions, expected.predictions);
        assert_eq!((report.top1, report.top5, &report.confusion), (expected.top1, expected.top5, &expected.confusion));
    }
}

/// A clip of NaNs on rank 1 at the second step: rank 1 stops with its NaN-loss error, every other rank with
/// rank 1's error, and `last/` (saved after the first step) stays whole.
pub fn nan_on_one_rank(collective: &Shared, run: &Path) {
    let rank = collective.rank();
    let mut t = trainer(train_config(1), collective).with_run_dir(run);
    let frames = Tensor::rand(0f32, 1.0, (BATCH, 4, 3, 32, 32), &Device::Cpu).unwrap();
    let tokens = Tokenizer::new().encode_batch(&["a video of archery", "a video of bowling"], &Device::Cpu).unwrap();
    t.accumulate(&frames, &tokens, &[0, 1]).unwrap();
    t.apply_step().unwrap();
    t.save_checkpoint(run.join("last")).unwrap();
    let frames = if rank == 1 { frames.affine(f64::NAN, 0.0).unwrap() } else { frames };
    let err = t.accumulate(&frames, &tokens, &[0, 1]).unwrap_err();
    match (rank, &err) {
        (1, TrainError::NonFiniteLoss { step: 1, last_good: Some(p), .. }) => assert_eq!(p, &run.join("last")),
        (0, TrainError::Distributed(DistributedError::PeerFailed { rank: 1, reason })) => {
            assert!(reason.contains("the loss is NaN"), "{reason}")
        }
        _ => panic!("rank {rank}: unexpected {err}"),
    }
    let state = actionclip::train::checkpoint::read_state(&run.join("last")).unwrap();
    assert_eq!(state.step, 1);
    actionclip::ActionClip::load(run.join("last"), &Device::Cpu, DType::F32).unwrap();
}

/// A training split whose first label is outside the class list on rank 1 only: `fit` stops on every rank
/// before training, with rank 1's typed error.
pub fn bad_data_on_one_rank(collective: &Shared, root: &Path) {
    let rank = collective.rank();
    let mut t = trainer(train_config(1), collective);
    let mut data = data(root, BATCH);
    if rank == 1 {
        let ds = data.train.dataset();
        let mut samples = ds.samples.clone();
        samples[0] = VideoSample { label: 9, ..samples[0].clone() };
        let bad = VideoDataset { samples, classes: ds.classes.clone() };
        data.train = loader(bad, ClipPipeline::train(4, 32).unwrap(), BATCH, true);
    }
    let err = t.fit(&data, &mut Silent).unwrap_err();
    match (rank, &err) {
        (1, TrainError::LabelOutOfRange { label: 9, .. }) => {}
        (0, TrainError::Distributed(DistributedError::PeerFailed { rank: 1, reason })) => {
            assert!(reason.contains("label index 9"), "{reason}")
        }
        _ => panic!("rank {rank}: unexpected {err}"),
    }
}

/// Two epochs stopped by rank 1's observer after step 2 (mid-epoch) then resumed on every rank: the same
/// weights as two uninterrupted epochs (compared on rank 0).
pub fn resume(collective: &Shared, root: &Path, run: &Path) {
    let rank = collective.rank();
    let mut whole = trainer(train_config(2), collective);
    whole.fit(&data(root, BATCH), &mut Silent).unwrap();
    let mut first = trainer(train_config(2), collective).with_run_dir(run);
    let mut stopper = Recorder { stop_after: (rank == 1).then_some(2), ..Recorder::default() };
    let summary = first.fit(&data(root, BATCH), &mut stopper).unwrap();
    assert!(summary.stopped && summary.steps == 2, "rank {rank}: {summary:?}");
    let mut resumed = trainer(train_config(2), collective).with_run_dir(run);
    resumed.resume(run).unwrap();
    let summary = resumed.fit(&data(root, BATCH), &mut Silent).unwrap();
    assert_eq!((summary.steps, summary.stopped), (6, false));
    let diff = max_relative_diff(&whole.weights(), &resumed.weights());
    assert!(diff <= 1e-6, "rank {rank}: resumed weights differ by {diff:e}");
}
