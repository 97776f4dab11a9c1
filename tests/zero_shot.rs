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
