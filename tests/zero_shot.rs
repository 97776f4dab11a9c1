//! The zero-shot classifier through the real tokenizer: template ensemble over labels, label editing
//! without touching the video side, and bad labels.
mod common;

use actionclip::{
    prompts::{self, ACTIONCLIP_TEMPLATES},
    Error, Tokenizer, ZeroShotClassifier,
};
use candle_core::{Device, Tensor};
use common::tiny_random_model;

fn frames() -> Tensor {
    Tensor::randn(0f32, 1., (3, 4, 3, 32, 32), &Device::Cpu).unwrap()
}

#[test]
fn classify_returns_sorted_probabilities_over_the_labels() {
    let model = tiny_random_model();
    let tok = Tokenizer::new();
    let labels: Vec<String> =
        ["ApplyEyeMakeup", "Archery", "brush_hair", "YoYo"].iter().map(|l| prompts::humanize(l)).collect();
    let zs = ZeroShotClassifier::new(&model, &tok, &labels, &ACTIONCLIP_TEMPLATES).unwrap();
    let top = zs.classify(&frames(), 3).unwrap();
    assert_eq!(top.len(), 3);
    for video in &top {
        assert_eq!(video.len(), 3);
        assert!(video.windows(2).all(|w| w[0].1 >= w[1].1), "sorted: {video:?}");
        assert!(video.iter().all(|(l, p)| labels.contains(l) && (0.0..=1.0).contains(p)));
    }
    let probs = zs.probabilities(&model.encode_video(&frames()).unwrap()).unwrap();
    for row in probs.to_vec2::<f32>().unwrap() {
        assert!((row.iter().sum::<f32>() - 1.0).abs() < 1e-5, "ensemble rows sum to 1");
    }
}

#[test]
fn adding_labels_equals_building_with_all_labels() {
    let model = tiny_random_model();
    let tok = Tokenizer::new();
    let templates = &ACTIONCLIP_TEMPLATES[..4];
    let video = model.encode_video(&frames()).unwrap();
    let mut zs = ZeroShotClassifier::new(&model, &tok, &["archery", "bowling"], templates).unwrap();
    zs.add_labels(&["surfing", "archery"]).unwrap();
    assert_eq!(zs.labels(), ["archery", "bowling", "surfing"], "repeats are kept once");
    let all = ZeroShotClassifier::new(&model, &tok, &["archery", "bowling", "surfing"], templates).unwrap();
    let (a, b) = (zs.probabilities(&video).unwrap(), all.probabilities(&video).unwrap());
    let d = (a - b).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
    assert!(d < 1e-6, "{d}");
    zs.set_labels(&["diving"]).unwrap();
    assert_eq!(zs.classify_features(&video, 5).unwrap()[0], vec![("diving".to_string(), 1.0)]);
}

#[test]
fn bad_labels_are_typed_errors() {
    let model = tiny_random_model();
    let tok = Tokenizer::new();
    let empty: [&str; 0] = [];
    assert!(matches!(ZeroShotClassifier::new(&model, &tok, &empty, &ACTIONCLIP_TEMPLATES), Err(Error::Labels(_))));
    assert!(matches!(
        ZeroShotClassifier::new(&model, &tok, &["ok", "  "], &ACTIONCLIP_TEMPLATES),
        Err(Error::Labels(_))
    ));
    assert!(matches!(ZeroShotClassifier::new(&model, &tok, &["ok"], &[]), Err(Error::Labels(_))));
    let long = "very ".repeat(80);
    match ZeroShotClassifier::new(&model, &tok, &[long.as_str()], &ACTIONCLIP_TEMPLATES) {
        Err(Error::TextTooLong { text, .. }) => assert!(text.contains("very very")),
        other => panic!("expected TextTooLong, got {:?}", other.err()),
    }
}

#[test]
fn one_classifier_serves_eight_threads_with_identical_results() {
    fn shareable<T: Send + Sync>() {}
    shareable::<actionclip::ActionClip>();
    shareable::<ZeroShotClassifier>();
    shareable::<Tokenizer>();
    let model = tiny_random_model().with_tower_weights(actionclip::TowerWeights::Packed).unwrap();
    let tok = Tokenizer::new();
    let labels = ["archery", "bowling", "diving", "surfing"];
    let zs = ZeroShotClassifier::new(&model, &tok, &labels, &ACTIONCLIP_TEMPLATES).unwrap();
    let inputs: Vec<Tensor> = (0..8)
        .map(|i| (Tensor::randn(0f32, 1., (2, 4, 3, 32, 32), &Device::Cpu).unwrap() * (1.0 + i as f64)).unwrap())
        .collect();
    let alone: Vec<_> = inputs.iter().map(|x| zs.classify(x, 4).unwrap()).collect();
    let together: Vec<_> = std::thread::scope(|scope| {
        let handles: Vec<_> = inputs.iter().map(|x| scope.spawn(|| zs.classify(x, 4).unwrap())).collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(together, alone, "concurrent classification must equal one call at a time, bit for bit");
}

#[test]
fn class_embeddings_are_cached_per_weights_labels_and_templates() {
    let model = tiny_random_model();
    let tok = Tokenizer::new();
    let dir = tempfile::tempdir().unwrap();
    let files = || std::fs::read_dir(dir.path()).unwrap().count();
    let labels = ["archery", "bowling", "diving"];
    let fresh = ZeroShotClassifier::new(&model, &tok, &labels, &ACTIONCLIP_TEMPLATES).unwrap();
    let first = ZeroShotClassifier::new_cached(&model, &tok, &labels, &ACTIONCLIP_TEMPLATES, dir.path()).unwrap();
    assert_eq!(files(), 1);
    let again = ZeroShotClassifier::new_cached(&model, &tok, &labels, &ACTIONCLIP_TEMPLATES, dir.path()).unwrap();
    assert_eq!(files(), 1, "the second classifier reads the cache");
    for zs in [&first, &again] {
        let diff = (zs.class_features() - fresh.class_features()).unwrap().abs().unwrap().max_all().unwrap();
        assert_eq!(diff.to_scalar::<f32>().unwrap(), 0.0);
        assert_eq!(zs.labels(), fresh.labels());
    }
    // Other labels, other templates, other tower weights: other entries.
    ZeroShotClassifier::new_cached(&model, &tok, &labels[..2], &ACTIONCLIP_TEMPLATES, dir.path()).unwrap();
    ZeroShotClassifier::new_cached(&model, &tok, &labels, &ACTIONCLIP_TEMPLATES[..3], dir.path()).unwrap();
    let int8 = model.with_tower_weights(actionclip::TowerWeights::Int8).unwrap();
    ZeroShotClassifier::new_cached(&int8, &tok, &labels, &ACTIONCLIP_TEMPLATES, dir.path()).unwrap();
    assert_eq!(files(), 4);
    // A damaged entry is recomputed and replaced.
    for entry in std::fs::read_dir(dir.path()).unwrap() {
        std::fs::write(entry.unwrap().path(), b"damaged").unwrap();
    }
    let repaired = ZeroShotClassifier::new_cached(&model, &tok, &labels, &ACTIONCLIP_TEMPLATES, dir.path()).unwrap();
    let diff = (repaired.class_features() - fresh.class_features()).unwrap().abs().unwrap().max_all().unwrap();
    assert_eq!(diff.to_scalar::<f32>().unwrap(), 0.0);
    let wrong = Tensor::zeros((2, 3, 32), candle_core::DType::F32, &Device::Cpu).unwrap();
    let err = ZeroShotClassifier::from_class_features(&model, &tok, &labels, &ACTIONCLIP_TEMPLATES, wrong);
    assert!(matches!(err, Err(actionclip::Error::InputShape { .. })));
}
