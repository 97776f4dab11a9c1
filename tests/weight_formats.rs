//! Tower weight formats (`ActionClip::with_tower_weights`): f16, int8 and packed f32 weights of the tiny
//! golden model against its f32 outputs for every visual prompt and the text tower, a full-size ViT-B/16
//! with random weights, saving a converted model, and the errors for uses int8 and packed weights do not
//! support.
mod common;

use actionclip::{ActionClip, ActionClipConfig, ClipConfig, Error, PostNetwork, TowerWeights, VisualPrompt};
use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use common::*;

/// The smallest cosine similarity between matching rows of `a` and `b` [N, D].
fn min_row_cosine(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims());
    let dot = (a * b).unwrap().sum(1).unwrap();
    let norms =
        (a.sqr().unwrap().sum(1).unwrap().sqrt().unwrap() * b.sqr().unwrap().sum(1).unwrap().sqrt().unwrap()).unwrap();
    (dot / norms).unwrap().to_vec1::<f32>().unwrap().into_iter().fold(f32::INFINITY, f32::min)
}

/// Whether [`TowerWeights::Packed`] takes effect on this CPU (the crate's AVX-512 or AVX2 + FMA GEMM
/// runs, `ACTIONCLIP_CPU_ISA=generic` not turning it off).
fn packing_applies() -> bool {
    let generic = std::env::var("ACTIONCLIP_CPU_ISA").is_ok_and(|isa| isa.trim().eq_ignore_ascii_case("generic"));
    #[cfg(target_arch = "x86_64")]
    return !generic
        && (std::arch::is_x86_feature_detected!("avx512f")
            || std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma"));
    #[cfg(not(target_arch = "x86_64"))]
    false
}

fn golden_model(joint: bool, shift: bool, post: PostNetwork) -> ActionClip {
    ActionClip::new(VarBuilder::from_tensors(weights(), DType::F32, &Device::Cpu), &tiny_config(joint, shift, post))
        .unwrap()
}

#[test]
fn f16_int8_and_packed_towers_stay_close_to_f32_on_the_golden_model() {
    let io = io();
    let tokens = io["tokens"].to_dtype(DType::U32).unwrap();
    let variants = [
        (false, false, PostNetwork::MeanPool),
        (false, false, PostNetwork::Transformer { layers: 2 }),
        (false, true, PostNetwork::MeanPool),
        (true, false, PostNetwork::MeanPool),
    ];
    for (joint, shift, post) in variants {
        let full = golden_model(joint, shift, post);
        let video = full.encode_video(&io["frames"]).unwrap();
        let text = full.encode_text(&tokens).unwrap();
        for (format, bound) in
            [(TowerWeights::F16, 0.99999), (TowerWeights::Int8, 0.999), (TowerWeights::Packed, 1.0 - 1e-6)]
        {
            let m = full.with_tower_weights(format).unwrap();
            let (v, t) = (m.encode_video(&io["frames"]).unwrap(), m.encode_text(&tokens).unwrap());
            let (cv, ct) = (min_row_cosine(&v, &video), min_row_cosine(&t, &text));
            eprintln!(
                "joint={joint} shift={shift} {post:?} {format:?}: video cosine >= {cv:.6}, text cosine >= {ct:.6}"
            );
            assert!(cv >= bound && ct >= bound, "{format:?}: cosine {cv} / {ct} < {bound}");
            // The golden weights are f16-exact, so only int8 changes them; packed f32 runs the same sums.
            assert_eq!(max_abs_diff(&v, &video) > 0.0, format == TowerWeights::Int8);
            assert_eq!(max_abs_diff(&t, &text) > 0.0, format == TowerWeights::Int8);
        }
    }
}

#[test]
fn f16_towers_round_only_the_weights() {
    // Random weights that f16 does not hold exactly.
    let full = tiny_random_model();
    let frames = Tensor::randn(0f32, 1., (2, 4, 3, 32, 32), &Device::Cpu).unwrap();
    let want = full.encode_video(&frames).unwrap();
    let got = full.with_tower_weights(TowerWeights::F16).unwrap().encode_video(&frames).unwrap();
    let (cos, diff) = (min_row_cosine(&got, &want), max_abs_diff(&got, &want));
    eprintln!("tiny random model, f16 tower weights: cosine {cos:.7}, max abs diff {diff:.2e}");
    assert!(cos >= 0.99999 && diff > 0.0, "cosine {cos}, max abs diff {diff}");
}

#[test]
fn int8_towers_of_a_full_size_vit_b16_keep_video_features() {
    let cfg = ActionClipConfig {
        clip: ClipConfig::vit_b16(),
        frames: 8,
        prompt: VisualPrompt { joint: false, temporal_shift: false, post: PostNetwork::MeanPool },
    };
    let full = ActionClip::new(VarBuilder::from_varmap(&VarMap::new(), DType::F32, &Device::Cpu), &cfg).unwrap();
    let frames = Tensor::randn(0f32, 1., (1, 8, 3, 224, 224), &Device::Cpu).unwrap();
    let want = full.encode_video(&frames).unwrap();
    let got = full.with_tower_weights(TowerWeights::Int8).unwrap().encode_video(&frames).unwrap();
    let cos = min_row_cosine(&got, &want);
    eprintln!("ViT-B/16 int8 vs f32 video features: cosine {cos:.6}");
    assert!(cos >= 0.99, "cosine {cos}");
}

#[test]
fn converted_models_save_the_weights_they_compute_with() {
    let dir = tempfile::tempdir().unwrap();
    let io = io();
    for format in [TowerWeights::F16, TowerWeights::Int8, TowerWeights::Packed] {
        let m = golden_model(false, false, PostNetwork::MeanPool).with_tower_weights(format).unwrap();
        let path = dir.path().join(format!("{format:?}.safetensors"));
        m.save_safetensors(&path).unwrap();
        // Loaded back in f32, the dequantized weights give the converted model's outputs (int8 up to its
        // activation rounding, which the f32 model does not do).
        let (back, _) = ActionClip::load(&path, &Device::Cpu, DType::F32).unwrap();
        let (want, got) = (m.encode_video(&io["frames"]).unwrap(), back.encode_video(&io["frames"]).unwrap());
        let cos = min_row_cosine(&got, &want);
        assert!(cos >= 0.999, "{format:?} saved and reloaded: cosine {cos}");
        assert_eq!(back.named_tensors().len(), m.named_tensors().len());
    }
}

#[test]
fn int8_and_packed_refuse_training_and_double_conversion() {
    let io = io();
    for format in [TowerWeights::Int8, TowerWeights::Packed] {
        let m = golden_model(false, false, PostNetwork::MeanPool).with_tower_weights(format).unwrap();
        if format == TowerWeights::Packed && !packing_applies() {
            // Without the crate's GEMM packed weights stay plain f32 (trainable).
            continue;
        }
        let err = m.encode_video_t(&io["frames"], true).unwrap_err();
        assert!(err.to_string().contains("int8 and packed"), "{format:?}: {err}");
        assert!(matches!(m.with_tower_weights(TowerWeights::F16), Err(Error::Config(_))), "{format:?}");
    }
    assert!(matches!(TowerWeights::parse("int4"), Err(Error::Config(_))));
    assert_eq!(TowerWeights::parse("Q8").unwrap(), TowerWeights::Int8);
    assert_eq!(TowerWeights::parse("f32-Packed").unwrap(), TowerWeights::Packed);
}
