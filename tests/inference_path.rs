//! Inference on clips on disk: `classify_path` is exactly the evaluation's `test_clip` + `classify`,
//! sliding windows agree with it and with each other, and bad input gives typed errors.
mod common;

use std::path::{Path, PathBuf};

use actionclip::{
    data::{self, synthetic, Sampling},
    inference, prompts, Error, Tokenizer, ZeroShotClassifier,
};
use common::tiny_random_model;

/// A 3-class synthetic dataset of 20-frame clips in `format`; returns (classes in words, clips).
fn dataset(root: &Path, format: synthetic::SyntheticFormat) -> (Vec<String>, Vec<PathBuf>) {
    let cfg = synthetic::SyntheticConfig {
        num_classes: 3,
        clips_per_class: 2,
        test_clips_per_class: 1,
        frames: 20,
        format,
        ..Default::default()
    };
    let ds = synthetic::write_dataset(root, &cfg).unwrap();
    let clips = viz_clips(&ds.root);
    (ds.classes.iter().map(|c| prompts::humanize(c)).collect(), clips)
}

fn viz_clips(root: &Path) -> Vec<PathBuf> {
    actionclip::viz::sample_per_class(root, 1, 0).unwrap().into_iter().map(|c| c.path).collect()
}

const TEMPLATES: usize = 2;

#[test]
fn classify_path_is_the_evaluation_and_windows_agree() {
    let tmp = tempfile::tempdir().unwrap();
    let (classes, clips) = dataset(tmp.path(), synthetic::SyntheticFormat::default());
    let model = tiny_random_model();
    let tok = Tokenizer::new();
    let zs = ZeroShotClassifier::new(&model, &tok, &classes, &prompts::ACTIONCLIP_TEMPLATES[..TEMPLATES]).unwrap();
    assert_eq!(clips.len(), 3);
    for clip in &clips {
        // The evaluation: test_clip with the model's frame count and input size, then classify.
        let frames = data::test_clip(clip, 4, 32).unwrap().unsqueeze(0).unwrap();
        let expected = zs.classify(&frames, 3).unwrap().swap_remove(0);
        let got = zs.predict_path(clip, 3).unwrap();
        assert_eq!(got.top, expected, "{}", clip.display());
        assert_eq!(zs.classify_path(clip, 3).unwrap(), expected);
        assert_eq!(got.indices, Sampling::new(4).unwrap().test_indices(20));

        // A window spanning the whole clip samples exactly the evaluation's frames.
        let all = data::decode_frames(clip, &(0..20).collect::<Vec<_>>()).unwrap();
        let whole = zs.predict_windows(&all, 20, 20, 3).unwrap();
        assert_eq!(whole.len(), 1);
        assert_eq!(whole[0].indices, got.indices);
        for ((l1, p1), (l2, p2)) in whole[0].top.iter().zip(&expected) {
            assert_eq!(l1, l2);
            assert!((p1 - p2).abs() < 1e-5, "{p1} vs {p2}");
        }

        // Windows from decoded frames and from the path are the same timeline.
        let from_frames = zs.predict_windows(&all, 8, 4, 2).unwrap();
        let from_path = zs.predict_windows_path(clip, 8, 4, 2).unwrap();
        assert_eq!(
            from_frames.iter().map(|w| (w.start, w.end)).collect::<Vec<_>>(),
            vec![(0, 8), (4, 12), (8, 16), (12, 20)]
        );
        assert_eq!(from_frames.len(), from_path.len());
        for (a, b) in from_frames.iter().zip(&from_path) {
            assert_eq!((a.start, a.end, &a.indices), (b.start, b.end, &b.indices));
            assert_eq!(a.top[0].0, b.top[0].0);
            assert!((a.top[0].1 - b.top[0].1).abs() < 1e-5);
            assert!(a.indices.iter().all(|&i| a.contains(i)) && a.indices.len() == 4);
        }
    }
}

#[test]
fn frame_folders_work_like_videos() {
    let tmp = tempfile::tempdir().unwrap();
    let (classes, clips) = dataset(tmp.path(), synthetic::SyntheticFormat::FrameFolders);
    let model = tiny_random_model();
    let tok = Tokenizer::new();
    let zs = ZeroShotClassifier::new(&model, &tok, &classes, &prompts::ACTIONCLIP_TEMPLATES[..TEMPLATES]).unwrap();
    let clip = &clips[0];
    assert!(clip.is_dir());
    let frames = data::test_clip(clip, 4, 32).unwrap().unsqueeze(0).unwrap();
    assert_eq!(zs.classify_path(clip, 2).unwrap(), zs.classify(&frames, 2).unwrap()[0]);
    assert_eq!(zs.predict_windows_path(clip, 10, 10, 1).unwrap().len(), 2);
}

#[test]
fn bad_input_gives_typed_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tiny_random_model();
    let tok = Tokenizer::new();
    let zs =
        ZeroShotClassifier::new(&model, &tok, &["archery", "bowling"], &prompts::ACTIONCLIP_TEMPLATES[..TEMPLATES])
            .unwrap();

    // A missing file names the path.
    let missing = tmp.path().join("nope.avi");
    let e = zs.classify_path(&missing, 1).unwrap_err();
    assert!(matches!(&e, Error::Io { path, .. } if path == &missing), "{e}");
    assert!(e.to_string().contains("nope.avi"));
    assert!(matches!(zs.predict_windows_path(&missing, 8, 4, 1), Err(Error::Io { .. })));

    // An unreadable video (garbage bytes) is a video error, not a panic.
    let corrupt = tmp.path().join("corrupt.avi");
    std::fs::write(&corrupt, b"RIFF\x10\x00\x00\x00AVI not really a video at all, just bytes").unwrap();
    let e = zs.classify_path(&corrupt, 1).unwrap_err();
    assert!(matches!(&e, Error::Video { path, .. } if path == &corrupt), "{e}");
    // An empty file too.
    let empty = tmp.path().join("empty.mp4");
    std::fs::write(&empty, b"").unwrap();
    assert!(zs.classify_path(&empty, 1).is_err());

    // Empty label lists.
    assert!(matches!(
        ZeroShotClassifier::new(&model, &tok, &Vec::<String>::new(), &prompts::ACTIONCLIP_TEMPLATES),
        Err(Error::Labels(_))
    ));
    assert!(matches!(inference::parse_labels("", true), Err(Error::Labels(_))));
    let empty_file = tmp.path().join("labels.txt");
    std::fs::write(&empty_file, "\n  \n").unwrap();
    assert!(matches!(inference::parse_labels(empty_file.to_str().unwrap(), true), Err(Error::Labels(_))));

    // Duplicate labels: reported by the parser, used once by the classifier.
    let file = tmp.path().join("dups.txt");
    std::fs::write(&file, "Archery\nBowling\narchery\nBowling\n").unwrap();
    let parsed = inference::parse_labels(file.to_str().unwrap(), true).unwrap();
    assert_eq!(parsed.labels, ["archery", "bowling"]);
    assert_eq!(parsed.repeated, ["archery", "bowling"]);
    let dup = ZeroShotClassifier::new(
        &model,
        &tok,
        &["archery", "bowling", "archery"],
        &prompts::ACTIONCLIP_TEMPLATES[..TEMPLATES],
    )
    .unwrap();
    assert_eq!(dup.labels(), ["archery", "bowling"]);

    // Windows need a length and a stride.
    assert!(matches!(zs.predict_windows(&[], 0, 4, 1), Err(Error::Config(_))));
    assert!(zs.predict_windows(&[], 8, 4, 1).unwrap().is_empty());
}
