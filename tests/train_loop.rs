//! The training loop on a tiny synthetic dataset: every output file, exact resume, typed errors for bad
//! input, f16 compute with f32 master weights, gradient accumulation and frozen towers. (A NaN loss is a
//! unit test of `train::trainer`, which can reach the weights in the middle of a run.)
mod common;

use std::path::{Path, PathBuf};

use actionclip::data::synthetic::{write_dataset, SyntheticConfig, SyntheticFormat};
use actionclip::data::{ClipPipeline, Loader, LoaderConfig, Storage, Subset, VideoDataset, VideoSample};
use actionclip::train::metrics::{read_records, Record};
use actionclip::train::{
    AdamWConfig, EvalReport, Event, Freeze, LossScaleConfig, Observer, Precision, Silent, StartFrom, TrainConfig,
    TrainData, TrainError, Trainer,
};
use actionclip::{ActionClip, ActionClipConfig, ClipConfig, PostNetwork, TextConfig, VisionConfig, VisualPrompt};
use candle_core::{DType, Device, Tensor};

fn tiny_model() -> ActionClipConfig {
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

fn train_config(epochs: usize) -> TrainConfig {
    TrainConfig {
        epochs,
        optimizer: AdamWConfig { lr: 1e-3, ratio: 0.5, f_ratio: 2.0, ..AdamWConfig::default() },
        warmup_epochs: 0.5,
        seed: 3,
        plots: false,
        ..TrainConfig::default()
    }
}

/// 3 classes x 3 clips (1 test clip each) of 8 frames at 32x32, as frame folders, once per test binary.
fn dataset_root() -> PathBuf {
    static ROOT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    ROOT.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("actionclip_train_loop_{}", std::process::id()));
        let cfg = SyntheticConfig {
            num_classes: 3,
            clips_per_class: 3,
            test_clips_per_class: 1,
            frames: 8,
            width: 32,
            height: 32,
            format: SyntheticFormat::FrameFolders,
            ..Default::default()
        };
        write_dataset(&dir, &cfg).unwrap();
        dir
    })
    .clone()
}

fn loader(ds: VideoDataset, pipeline: ClipPipeline, shuffle: bool) -> Loader {
    let cfg = LoaderConfig { batch_size: 3, workers: 0, shuffle, seed: 5, ..LoaderConfig::default() };
    Loader::new(ds, pipeline, cfg).unwrap()
}

fn data(multi_view: bool) -> TrainData {
    let root = dataset_root();
    let train = VideoDataset::ucf101(&root, 1, Subset::Train, Storage::FrameFolders).unwrap();
    let test = VideoDataset::ucf101(&root, 1, Subset::Test, Storage::FrameFolders).unwrap();
    TrainData {
        train: loader(train, ClipPipeline::train(4, 32).unwrap(), true),
        test: Some(loader(test.clone(), ClipPipeline::test(4, 32).unwrap(), false)),
        multi_view: multi_view.then(|| loader(test, ClipPipeline::multi_view(4, 32, 2, false).unwrap(), false)),
    }
}

fn run_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("actionclip_train_{name}_{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// Records step losses; optionally stops after `stop_after` steps.
#[derive(Default)]
struct Recorder {
    losses: Vec<f64>,
    stop_after: Option<usize>,
    steps: usize,
}

impl Observer for Recorder {
    fn event(&mut self, event: &Event<'_>) {
        if let Event::Step(s) = event {
            self.losses.push(s.loss);
            self.steps = s.step;
        }
    }
    fn should_stop(&mut self) -> bool {
        self.stop_after.is_some_and(|k| self.steps >= k)
    }
}

fn max_diff(a: &std::collections::HashMap<String, Tensor>, b: &std::collections::HashMap<String, Tensor>) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .map(|(k, t)| {
            let d = (t.to_dtype(DType::F32).unwrap() - b[k].to_dtype(DType::F32).unwrap()).unwrap().abs().unwrap();
            d.flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap()
        })
        .fold(0f32, f32::max)
}

#[test]
fn end_to_end_run_writes_every_output() {
    let dir = run_dir("e2e");
    let cfg = TrainConfig { plots: true, ..train_config(2) };
    let mut trainer = Trainer::new(&tiny_model(), StartFrom::Scratch, cfg, &Device::Cpu).unwrap().with_run_dir(&dir);
    let mut rec = Recorder::default();
    let summary = trainer.fit(&data(true), &mut rec).unwrap();
    assert_eq!((summary.epochs, summary.steps, summary.stopped), (2, 4, false));
    assert_eq!(rec.losses.len(), 4);
    assert!(summary.zero_shot.is_some() && summary.multi_view.as_ref().is_some_and(|m| m.views == 2 && m.samples == 3));

    for f in [
        "metrics.jsonl",
        "config.json",
        "curves.png",
        "confusion.png",
        "summary.md",
        "summary.json",
        "eval_zero_shot.json",
        "eval_last.json",
    ] {
        assert!(dir.join(f).is_file(), "{f} missing");
    }
    for ck in ["last", "best"] {
        for f in ["model.safetensors", "optimizer.safetensors", "trainer_state.json"] {
            assert!(dir.join(ck).join(f).is_file(), "{ck}/{f} missing");
        }
    }
    for png in ["curves.png", "confusion.png"] {
        let img = image::open(dir.join(png)).unwrap();
        assert!(img.width() > 200 && img.height() > 200, "{png}");
    }
    let records = read_records(&dir.join("metrics.jsonl")).unwrap();
    let steps = records.iter().filter(|r| matches!(r, Record::Step(_))).count();
    let evals: Vec<_> = records.iter().filter_map(|r| if let Record::Eval(e) = r { Some(e) } else { None }).collect();
    let epochs = records.iter().filter(|r| matches!(r, Record::Epoch(_))).count();
    assert_eq!((steps, epochs), (4, 2));
    assert_eq!(evals.len(), 4, "zero-shot, two epochs, multi-view");
    assert!(evals[0].zero_shot && evals[0].epoch == 0);
    for e in &evals {
        assert!((0.0..=1.0).contains(&e.top1) && (0.0..=1.0).contains(&e.top5) && e.top5 >= e.top1);
        assert_eq!(e.samples, 3, "every test clip is scored");
    }
    let last: EvalReport = serde_json::from_str(&std::fs::read_to_string(dir.join("eval_last.json")).unwrap()).unwrap();
    assert_eq!(last.predictions.len(), last.samples, "one top-1 class per scored clip");
    assert_eq!(last.predictions.iter().filter(|&&p| p < last.confusion.len()).count(), last.samples);
    // Raw JSON lines carry top1/top5 fields on evaluation lines.
    let text = std::fs::read_to_string(dir.join("metrics.jsonl")).unwrap();
    assert!(text
        .lines()
        .filter(|l| l.contains("\"type\":\"eval\""))
        .all(|l| l.contains("\"top1\":") && l.contains("\"top5\":")));

    // The checkpoints load as models; last/ holds the final weights exactly.
    let (best, cfg) = ActionClip::load(dir.join("best"), &Device::Cpu, DType::F32).unwrap();
    assert_eq!(cfg, tiny_model());
    assert_eq!(best.named_tensors().len(), trainer.weights().len());
    let (last, _) = ActionClip::load(dir.join("last"), &Device::Cpu, DType::F32).unwrap();
    let last: std::collections::HashMap<String, Tensor> = last.named_tensors().into_iter().collect();
    assert_eq!(max_diff(&last, &trainer.weights()), 0.0);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn resume_gives_the_same_losses_and_weights() {
    let data = data(false);
    let full_dir = run_dir("resume_full");
    let mut full =
        Trainer::new(&tiny_model(), StartFrom::Scratch, train_config(2), &Device::Cpu).unwrap().with_run_dir(&full_dir);
    let mut rec_full = Recorder::default();
    full.fit(&data, &mut rec_full).unwrap();

    // Stop after 3 of 4 steps (in the middle of epoch 2), then resume in a new trainer.
    let dir = run_dir("resume_part");
    let mut first =
        Trainer::new(&tiny_model(), StartFrom::Scratch, train_config(2), &Device::Cpu).unwrap().with_run_dir(&dir);
    let mut rec1 = Recorder { stop_after: Some(3), ..Default::default() };
    let s1 = first.fit(&data, &mut rec1).unwrap();
    assert!(s1.stopped && s1.steps == 3);
    assert_eq!(first.state().batch_in_epoch, 1);
    drop(first);
    let mut second =
        Trainer::new(&tiny_model(), StartFrom::Scratch, train_config(2), &Device::Cpu).unwrap().with_run_dir(&dir);
    second.resume(&dir).unwrap();
    let mut rec2 = Recorder::default();
    let s2 = second.fit(&data, &mut rec2).unwrap();
    assert_eq!((s2.epochs, s2.steps), (2, 4));

    let resumed: Vec<f64> = rec1.losses.iter().chain(&rec2.losses).copied().collect();
    assert_eq!(resumed, rec_full.losses, "same losses step by step");
    let d = max_diff(&second.weights(), &full.weights());
    assert!(d <= 1e-6, "weights differ by {d}");
    // The resumed run's metrics describe one history, identical in its steps.
    let steps = |dir: &Path| -> Vec<(usize, f64)> {
        read_records(&dir.join("metrics.jsonl"))
            .unwrap()
            .into_iter()
            .filter_map(|r| if let Record::Step(s) = r { Some((s.step, s.loss)) } else { None })
            .collect()
    };
    assert_eq!(steps(&dir), steps(&full_dir));
    for d in [dir, full_dir] {
        let _ = std::fs::remove_dir_all(d);
    }
}

#[test]
fn bad_input_gives_typed_errors() {
    let dev = Device::Cpu;
    let good = data(false);
    let classes = good.train.dataset().classes.clone();

    // An empty training split.
    let empty = VideoDataset { samples: vec![], classes: classes.clone() };
    let bad = TrainData { train: loader(empty, ClipPipeline::train(4, 32).unwrap(), true), ..good.clone() };
    let mut t = Trainer::new(&tiny_model(), StartFrom::Scratch, train_config(1), &dev).unwrap();
    let err = t.fit(&bad, &mut Silent).unwrap_err();
    assert!(matches!(&err, TrainError::EmptySplit { split } if split == "train"), "{err}");
    eprintln!("empty split: {err}");

    // A label outside the class list (in the test split).
    let mut samples = good.test.as_ref().unwrap().dataset().samples.clone();
    samples[0] = VideoSample { label: 7, ..samples[0].clone() };
    let bad_test = VideoDataset { samples, classes: classes.clone() };
    let bad = TrainData { test: Some(loader(bad_test, ClipPipeline::test(4, 32).unwrap(), false)), ..good.clone() };
    let err = t.fit(&bad, &mut Silent).unwrap_err();
    assert!(matches!(&err, TrainError::LabelOutOfRange { label: 7, classes: 3, .. }), "{err}");
    eprintln!("label out of range: {err}");

    // A checkpoint of a different architecture: resuming, and starting from its weights.
    let dir = run_dir("other_architecture");
    Trainer::new(&tiny_model(), StartFrom::Scratch, train_config(1), &dev)
        .unwrap()
        .save_checkpoint(dir.join("last"))
        .unwrap();
    let state = actionclip::train::checkpoint::read_state(&dir.join("last")).unwrap();
    assert_eq!((state.epoch, state.step, &state.model_config), (0, 0, &tiny_model()));
    let mut other = tiny_model();
    other.clip.vision.width = 128;
    other.clip.vision.heads = 2;
    let mut t = Trainer::new(&other, StartFrom::Scratch, train_config(1), &dev).unwrap();
    let err = t.resume(&dir).unwrap_err();
    assert!(matches!(err, TrainError::ArchitectureMismatch { .. }), "{err}");
    eprintln!("different architecture (resume): {err}");
    let weights = actionclip::weights::load(dir.join("last")).unwrap();
    let err =
        Trainer::new(&other, StartFrom::Weights(Box::new(weights)), train_config(1), &dev).err().expect("an error");
    assert!(matches!(err, TrainError::ArchitectureMismatch { .. }), "{err}");
    eprintln!("different architecture (weights): {err}");
    let _ = std::fs::remove_dir_all(&dir);
}

fn fixed_batch(dev: &Device) -> (Tensor, Tensor, Vec<u32>) {
    let d = data(false);
    let batch = d.train.epoch(0).next().unwrap().unwrap();
    let labels = batch.labels.to_vec1::<u32>().unwrap();
    let tok = actionclip::Tokenizer::new();
    let words: Vec<String> = labels
        .iter()
        .map(|&l| format!("a video of {}", actionclip::prompts::humanize(&d.train.dataset().classes[l as usize])))
        .collect();
    (batch.frames.to_device(dev).unwrap(), tok.encode_batch(&words, dev).unwrap(), labels)
}

#[test]
fn f16_compute_keeps_f32_master_weights_and_scales_the_loss() {
    let dev = Device::Cpu;
    let (frames, tokens, labels) = fixed_batch(&dev);
    let mut f32t = Trainer::new(&tiny_model(), StartFrom::Scratch, train_config(1), &dev).unwrap();
    let reference = f32t.train_step(&frames, &tokens, &labels).unwrap();

    let cfg = TrainConfig {
        precision: Precision::F16,
        loss_scale: LossScaleConfig { init: 2f64.powi(30), growth_interval: 2, growth: 2.0, backoff: 1.0 / 64.0 },
        ..train_config(1)
    };
    let mut t = Trainer::new(&tiny_model(), StartFrom::Scratch, cfg, &dev).unwrap();
    assert_eq!(t.model().dtype(), DType::F16);
    assert!(t.weights().values().all(|w| w.dtype() == DType::F32));
    let start = t.weights();
    t.set_schedule(actionclip::train::LrSchedule::Constant).unwrap();
    let mut outs = Vec::new();
    for _ in 0..6 {
        outs.push(t.train_step(&frames, &tokens, &labels).unwrap());
        if outs.iter().filter(|o| !o.skipped).count() >= 3 {
            break;
        }
    }
    eprintln!(
        "f16 steps: {:?}; loss scale now {}",
        outs.iter().map(|o| (o.loss, o.skipped)).collect::<Vec<_>>(),
        t.state().loss_scale
    );
    // Same initial weights, so the first loss matches f32 up to half precision.
    assert!((outs[0].loss - reference.loss).abs() / reference.loss < 2e-2, "{} vs {}", outs[0].loss, reference.loss);
    assert!(outs[0].skipped, "2^30 overflows f16 gradients: the step is skipped");
    assert!(outs.iter().any(|o| !o.skipped), "after backing off, steps are applied");
    assert!(t.state().loss_scale < 2f64.powi(30));
    assert_eq!(t.optimizer().step_count() as usize, outs.iter().filter(|o| !o.skipped).count());
    // The master weights moved, stay f32, and the compute copy follows them.
    assert!(max_diff(&t.weights(), &start) > 0.0);
    let compute: std::collections::HashMap<String, Tensor> = t.model().named_tensors().into_iter().collect();
    let master = t.weights();
    for (name, c) in &compute {
        assert_eq!(c.dtype(), DType::F16);
        let expect = master[name].to_dtype(DType::F16).unwrap();
        let d = (c.to_dtype(DType::F32).unwrap() - expect.to_dtype(DType::F32).unwrap())
            .unwrap()
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert_eq!(d, 0.0, "{name}: the compute copy is the master rounded to f16");
    }
}

#[test]
fn accumulation_and_freezing() {
    let dev = Device::Cpu;
    let (frames, tokens, labels) = fixed_batch(&dev);
    // Accumulating the same batch twice averages to its own gradient.
    let mut one =
        Trainer::new(&tiny_model(), StartFrom::Scratch, TrainConfig { warmup_epochs: 0.0, ..train_config(1) }, &dev)
            .unwrap();
    one.set_schedule(actionclip::train::LrSchedule::Constant).unwrap();
    one.train_step(&frames, &tokens, &labels).unwrap();
    let mut two =
        Trainer::new(&tiny_model(), StartFrom::Scratch, TrainConfig { accumulate: 2, ..train_config(1) }, &dev)
            .unwrap();
    two.set_schedule(actionclip::train::LrSchedule::Constant).unwrap();
    two.accumulate(&frames, &tokens, &labels).unwrap();
    two.accumulate(&frames, &tokens, &labels).unwrap();
    let out = two.apply_step().unwrap();
    assert!(out.grad_norm > 0.0);
    let d = max_diff(&one.weights(), &two.weights());
    assert!(d <= 1e-5, "accumulated step differs by {d}");

    // A frozen image tower: not optimised, unchanged; the rest moves.
    let cfg = TrainConfig { freeze: Freeze { text: false, vision: true }, ..train_config(1) };
    let mut t = Trainer::new(&tiny_model(), StartFrom::Scratch, cfg, &dev).unwrap();
    t.set_schedule(actionclip::train::LrSchedule::Constant).unwrap();
    assert!(t.optimizer().params().iter().all(|p| !p.name.starts_with("visual.")));
    let before = t.weights();
    t.train_step(&frames, &tokens, &labels).unwrap();
    let after = t.weights();
    for (name, w) in &after {
        let same = common::max_abs_diff(w, &before[name]) == 0.0;
        if name.starts_with("visual.") {
            assert!(same, "{name} is frozen but moved");
        } else if name == "text_projection" || name.starts_with("fusion_model.") {
            assert!(!same, "{name} should have moved");
        }
    }
}

/// Bytes free on the file system holding `dir` (`df`).
fn free_bytes(dir: &Path) -> u64 {
    let out = std::process::Command::new("df").args(["--output=avail", "-B1"]).arg(dir).output().unwrap();
    String::from_utf8(out.stdout).unwrap().lines().nth(1).and_then(|l| l.trim().parse().ok()).expect("df output")
}

/// Fills the file system holding `dir` until `leave` bytes are free.
fn fill_disk(dir: &Path, leave: u64) {
    use std::io::Write;
    let mut file = std::fs::File::create(dir.join("filler")).unwrap();
    let chunk = vec![1u8; 1 << 16];
    while free_bytes(dir) > leave + chunk.len() as u64 {
        file.write_all(&chunk).unwrap();
        file.sync_all().unwrap();
    }
}

/// A full disk while `last/` is rewritten, then a read-only run directory: each gives a typed I/O error
/// naming the file, and the previous `last/` stays whole and loadable. The run directory is a small tmpfs
/// mounted in a user namespace (`unshare -rm`, no root needed where user namespaces are enabled): the
/// test re-runs itself there with `ACTIONCLIP_SMALL_FS` naming the mount.
#[test]
fn a_full_disk_or_a_read_only_run_dir_keeps_the_previous_checkpoint() {
    const TEST: &str = "a_full_disk_or_a_read_only_run_dir_keeps_the_previous_checkpoint";
    let Some(mount) = std::env::var_os("ACTIONCLIP_SMALL_FS").map(PathBuf::from) else {
        let mount = tempfile::tempdir().unwrap();
        let status = std::process::Command::new("unshare")
            .args(["-rm", "sh", "-c", r#"mount -t tmpfs -o size=64m tmpfs "$0" && exec "$@""#])
            .arg(mount.path())
            .arg(std::env::current_exe().unwrap())
            .args(["--exact", TEST, "--nocapture", "--test-threads=1"])
            .env("ACTIONCLIP_SMALL_FS", mount.path())
            .status()
            .expect("`unshare` (util-linux) runs this test in a user namespace");
        assert!(status.success(), "the test failed inside its namespace (output above)");
        return;
    };
    let dir = mount.join("run");
    let data = data(false);
    let mut trainer =
        Trainer::new(&tiny_model(), StartFrom::Scratch, train_config(2), &Device::Cpu).unwrap().with_run_dir(&dir);
    let stopped = trainer.fit(&data, &mut Recorder { stop_after: Some(2), ..Default::default() }).unwrap();
    assert!(stopped.stopped);
    let saved = trainer.weights();
    let checkpoint_bytes: u64 =
        std::fs::read_dir(dir.join("last")).unwrap().map(|e| e.unwrap().metadata().unwrap().len()).sum();

    // Resumes the run, expects it to fail with an I/O error of `kind` inside the run directory, and checks that
    // `last/` still holds the weights saved above.
    let resume_fails_keeping_last = |kind: std::io::ErrorKind| {
        let mut resumed =
            Trainer::new(&tiny_model(), StartFrom::Scratch, train_config(2), &Device::Cpu).unwrap().with_run_dir(&dir);
        resumed.resume(&dir).unwrap();
        let err = resumed.fit(&data, &mut Silent).unwrap_err();
        eprintln!("{kind:?}: {err}");
        assert!(
            matches!(&err, TrainError::Model(actionclip::Error::Io { path, source })
                if source.kind() == kind && path.starts_with(&dir)),
            "{err:?}"
        );
        let (last, _) = ActionClip::load(dir.join("last"), &Device::Cpu, DType::F32).unwrap();
        assert_eq!(max_diff(&last.named_tensors().into_iter().collect(), &saved), 0.0, "last/ is the previous one");
    };

    // Room for half a checkpoint: the swap's temporary copy cannot be written.
    fill_disk(&mount, checkpoint_bytes / 2);
    resume_fails_keeping_last(std::io::ErrorKind::StorageFull);
    assert!(!dir.join(".last.tmp").exists() && !dir.join(".best.tmp").exists(), "the partial checkpoint is removed");

    std::fs::remove_file(mount.join("filler")).unwrap();
    let remount = std::process::Command::new("mount").args(["-o", "remount,ro"]).arg(&mount).status().unwrap();
    assert!(remount.success());
    resume_fails_keeping_last(std::io::ErrorKind::ReadOnlyFilesystem);
}
