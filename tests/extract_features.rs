//! Feature extraction to shards: a run stopped halfway (by the observer, and by SIGKILL of
//! `examples/extract_features`) and restarted ends with every clip in the index exactly once and the
//! features of an uninterrupted run; failed clips are listed; settings cannot be mixed in one folder;
//! multi-view and frame features have their documented shapes; class embeddings are saved.
mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::ops::ControlFlow;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use actionclip::data::synthetic::{write_dataset, SyntheticConfig, SyntheticFormat};
use actionclip::data::{test_clip, VideoDataset};
use actionclip::inference::{extract_features, save_class_features, ExtractConfig, ExtractEvent, ExtractSummary};
use actionclip::{prompts, ActionClip, Error, Tokenizer, ZeroShotClassifier};
use candle_core::{Device, Tensor};
use common::tiny_random_model;

/// 100 frame-folder clips (4 classes x 25) of 8 frames, 32 x 32.
fn hundred_clips(root: &Path) -> VideoDataset {
    let cfg = SyntheticConfig {
        num_classes: 4,
        clips_per_class: 25,
        test_clips_per_class: 5,
        frames: 8,
        width: 32,
        height: 32,
        format: SyntheticFormat::FrameFolders,
        ..Default::default()
    };
    write_dataset(root, &cfg).unwrap();
    let dataset = VideoDataset::scan(root, None).unwrap();
    assert_eq!(dataset.len(), 100);
    dataset
}

fn config() -> ExtractConfig {
    ExtractConfig { shard_size: 16, batch_size: 4, workers: 2, ..Default::default() }
}

fn run(model: &ActionClip, dataset: &VideoDataset, out: &Path, stop_after: Option<usize>) -> ExtractSummary {
    let mut observe = |event: ExtractEvent| match (event, stop_after) {
        (ExtractEvent::Encoded { done, .. }, Some(limit)) if done >= limit => ControlFlow::Break(()),
        _ => ControlFlow::Continue(()),
    };
    extract_features(model, dataset, out, &config(), &mut observe).unwrap()
}

/// `index.csv` rows as (path, label, shard, row).
fn index(out: &Path) -> Vec<(String, String, usize, usize)> {
    let text = std::fs::read_to_string(out.join("index.csv")).unwrap();
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some("path,label,shard,row"));
    lines
        .map(|l| {
            let f: Vec<&str> = l.split(',').collect();
            (f[0].to_string(), f[1].to_string(), f[2].parse().unwrap(), f[3].parse().unwrap())
        })
        .collect()
}

/// Every clip's `video` feature by path, read back from the shards through the index.
fn features(out: &Path) -> BTreeMap<String, Vec<f32>> {
    let mut shards: BTreeMap<usize, Tensor> = BTreeMap::new();
    index(out)
        .into_iter()
        .map(|(path, _, shard, row)| {
            let video = shards.entry(shard).or_insert_with(|| {
                let file = out.join(format!("shard-{shard:05}.safetensors"));
                candle_core::safetensors::load(file, &Device::Cpu).unwrap().remove("video").unwrap()
            });
            (path, video.get(row).unwrap().to_vec1::<f32>().unwrap())
        })
        .collect()
}

fn assert_every_clip_once(dataset: &VideoDataset, out: &Path) {
    let rows = index(out);
    let paths: Vec<&str> = rows.iter().map(|r| r.0.as_str()).collect();
    let unique: BTreeSet<&str> = paths.iter().copied().collect();
    assert_eq!(unique.len(), paths.len(), "a clip appears twice in the index");
    let expected: BTreeSet<String> = dataset.samples.iter().map(|s| s.path.to_string_lossy().into_owned()).collect();
    assert_eq!(unique, expected.iter().map(String::as_str).collect::<BTreeSet<_>>());
}

#[test]
fn a_stopped_run_resumes_and_ends_with_every_clip_once() {
    let dir = tempfile::tempdir().unwrap();
    let dataset = hundred_clips(&dir.path().join("clips"));
    let model = tiny_random_model();
    let whole = dir.path().join("whole");
    let summary = run(&model, &dataset, &whole, None);
    assert_eq!((summary.encoded, summary.resumed, summary.shards, summary.stopped), (100, 0, 7, false));

    let out = dir.path().join("resumed");
    let first = run(&model, &dataset, &out, Some(50));
    assert!(first.stopped);
    assert_eq!(first.shards, 3, "shards 0..3 (48 clips) were complete when the run stopped at 52");
    let second = run(&model, &dataset, &out, None);
    assert_eq!(second.resumed, 48);
    assert_eq!(second.encoded, 52, "only the clips of unfinished shards are encoded again");
    assert_eq!(second.shards, 7);
    assert_every_clip_once(&dataset, &out);
    assert_eq!(features(&out), features(&whole), "resumed features equal an uninterrupted run's");

    // A row is the model's feature of the evaluation's clip.
    let rows = index(&out);
    let (path, label, ..) = &rows[37];
    let clip = test_clip(path, 4, 32).unwrap().unsqueeze(0).unwrap();
    let direct = model.encode_video(&clip).unwrap().squeeze(0).unwrap().to_vec1::<f32>().unwrap();
    let stored = &features(&out)[path];
    let diff = direct.iter().zip(stored).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
    assert!(diff < 1e-5, "stored feature differs from encode_video by {diff}");
    assert_eq!(Path::new(path).parent().unwrap().file_name().unwrap().to_string_lossy(), label.as_str());
}

#[test]
fn failed_clips_are_listed_and_left_out() {
    let dir = tempfile::tempdir().unwrap();
    let mut dataset = hundred_clips(&dir.path().join("clips"));
    dataset.samples.truncate(10);
    let broken = &dataset.samples[3].path;
    std::fs::write(broken.join("img_00001.jpg"), b"not a jpeg").unwrap();
    let out = dir.path().join("out");
    let summary = run(&tiny_random_model(), &dataset, &out, None);
    assert_eq!(summary.encoded, 9);
    assert_eq!(summary.failed.len(), 1);
    assert_eq!(&summary.failed[0].0, broken);
    let failures = std::fs::read_to_string(out.join("failures.csv")).unwrap();
    assert!(failures.contains(&*broken.to_string_lossy()), "{failures}");
    assert_eq!(index(&out).len(), 9);
    // A second run finds everything done and the failure still listed.
    let again = run(&tiny_random_model(), &dataset, &out, None);
    assert_eq!((again.encoded, again.resumed, again.failed.len()), (0, 10, 1));
}

#[test]
fn another_setting_in_the_same_folder_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut dataset = hundred_clips(&dir.path().join("clips"));
    dataset.samples.truncate(4);
    let model = tiny_random_model();
    let out = dir.path().join("out");
    run(&model, &dataset, &out, None);
    let other = ExtractConfig { temporal_views: 2, ..config() };
    let err = extract_features(&model, &dataset, &out, &other, &mut |_| ControlFlow::Continue(())).unwrap_err();
    assert!(matches!(&err, Error::Config(m) if m.contains("temporal_views") || m.contains("config")), "{err}");
    dataset.samples.pop();
    let err = extract_features(&model, &dataset, &out, &config(), &mut |_| ControlFlow::Continue(())).unwrap_err();
    assert!(matches!(&err, Error::Config(m) if m.contains("clips")), "{err}");
}

#[test]
fn views_and_frame_features_have_their_shapes() {
    let dir = tempfile::tempdir().unwrap();
    let mut dataset = hundred_clips(&dir.path().join("clips"));
    dataset.samples.truncate(5);
    let model = tiny_random_model();
    let out = dir.path().join("out");
    let cfg = ExtractConfig { temporal_views: 2, three_crops: true, frame_features: true, ..config() };
    extract_features(&model, &dataset, &out, &cfg, &mut |_| ControlFlow::Continue(())).unwrap();
    let shard = candle_core::safetensors::load(out.join("shard-00000.safetensors"), &Device::Cpu).unwrap();
    assert_eq!(shard["video"].dims(), [5, 32]);
    assert_eq!(shard["video_views"].dims(), [5, 6, 32]);
    assert_eq!(shard["frames"].dims(), [5, 6, 4, 32]);
    let mean = shard["video_views"].mean(1).unwrap();
    let diff = (mean - &shard["video"]).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
    assert!(diff < 1e-6, "video is the mean over views ({diff})");
}

#[test]
fn class_embeddings_are_saved_with_their_labels() {
    let model = tiny_random_model();
    let tok = Tokenizer::new();
    let labels = ["archery", "bowling", "diving"];
    let zs = ZeroShotClassifier::new(&model, &tok, &labels, &prompts::ACTIONCLIP_TEMPLATES).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("classes.safetensors");
    save_class_features(&zs, &path).unwrap();
    let saved = candle_core::safetensors::load(&path, &Device::Cpu).unwrap();
    assert_eq!(saved["class_features"].dims(), [16, 3, 32]);
    assert_eq!(saved["classes"].dims(), [3, 32]);
    let diff = (&saved["class_features"] - zs.class_features()).unwrap().abs().unwrap().max_all().unwrap();
    assert_eq!(diff.to_scalar::<f32>().unwrap(), 0.0);
    let data = std::fs::read(&path).unwrap();
    let (_, meta) = safetensors::SafeTensors::read_metadata(&data).unwrap();
    let meta = meta.metadata().clone().unwrap();
    assert_eq!(meta["actionclip.labels"], r#"["archery","bowling","diving"]"#);
}

#[test]
fn the_example_killed_halfway_and_restarted_encodes_every_clip_once() {
    let dir = tempfile::tempdir().unwrap();
    let dataset = hundred_clips(&dir.path().join("clips"));
    let weights = dir.path().join("tiny.safetensors");
    tiny_random_model().save_safetensors(&weights).unwrap();
    let out = dir.path().join("out");
    let command = || {
        let mut c = Command::new(common::example("extract_features"));
        c.args(["--weights", weights.to_str().unwrap(), "--videos", dir.path().join("clips").to_str().unwrap()])
            .args(["--output", out.to_str().unwrap(), "--shard-size", "16", "--batch-size", "4"]);
        c
    };
    let mut child = command().stderr(std::process::Stdio::null()).spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    // SIGKILL once three shards are on disk and before the run ends.
    while !out.join("shard-00002.safetensors").is_file() {
        assert!(Instant::now() < deadline, "no third shard after 120 s");
        assert!(child.try_wait().unwrap().is_none(), "the run ended before it could be killed");
        std::thread::sleep(Duration::from_millis(5));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(!out.join("shard-00006.safetensors").is_file(), "killed after the end");
    let status = command().output().unwrap();
    assert!(status.status.success(), "{}", String::from_utf8_lossy(&status.stderr));
    assert_every_clip_once(&dataset, &out);
    let stderr = String::from_utf8_lossy(&status.stderr);
    assert!(!stderr.contains(" 0 from earlier runs"), "the restart reused finished shards: {stderr}");
}
