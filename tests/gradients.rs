//! Training mode is differentiable end to end: a forward and backward of the tiny model gives finite,
//! non-zero gradients for every parameter, for every visual prompt variant.
mod common;

use actionclip::{loss, ActionClip, PostNetwork};
use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use common::*;

fn check_variant(joint: bool, shift: bool, post: PostNetwork) {
    let dev = Device::Cpu;
    let io = io();
    // Pretrained weights for the towers and heads, as fine-tuning starts.
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &dev);
    let model = ActionClip::new(vb, &tiny_config(joint, shift, post)).unwrap();
    let weights = weights();
    for (name, var) in varmap.data().lock().unwrap().iter() {
        var.set(&weights[name].to_dtype(DType::F32).unwrap()).unwrap();
    }

    let video = model.encode_video_t(&io["frames"], true).unwrap();
    let text = model.encode_text_t(&io["tokens"].to_dtype(DType::U32).unwrap(), true).unwrap();
    let (v2t, t2v) = model.logits(&video, &text).unwrap();
    let labels = [0u32, 1, 0, 2];
    let l = loss::symmetric_kl_loss(&v2t, &t2v, &labels).unwrap();
    let grads = l.backward().unwrap();

    let params = model.named_tensors();
    assert_eq!(params.len(), varmap.all_vars().len(), "every variable is a model parameter");
    for (name, t) in params {
        let g = grads.get(&t).unwrap_or_else(|| panic!("{name}: no gradient ({joint}, {shift}, {post:?})"));
        let g: Vec<f32> = g.flatten_all().unwrap().to_vec1().unwrap();
        assert!(g.iter().all(|x| x.is_finite()), "{name}: non-finite gradient");
        assert!(g.iter().any(|x| *x != 0.), "{name}: all-zero gradient ({joint}, {shift}, {post:?})");
    }
}

#[test]
fn every_parameter_gets_a_gradient_mean_pool_and_joint() {
    check_variant(false, false, PostNetwork::MeanPool);
    check_variant(true, false, PostNetwork::MeanPool);
}

#[test]
fn every_parameter_gets_a_gradient_conv1d() {
    check_variant(false, false, PostNetwork::Conv1d { reference_reshape: false });
    check_variant(false, false, PostNetwork::Conv1d { reference_reshape: true });
}

#[test]
fn every_parameter_gets_a_gradient_lstm() {
    check_variant(false, false, PostNetwork::Lstm);
}

#[test]
fn every_parameter_gets_a_gradient_transformers() {
    check_variant(false, true, PostNetwork::Transformer { layers: 2 });
    check_variant(false, false, PostNetwork::TransformerCls { layers: 2 });
}

#[test]
fn inference_path_has_no_gradient_through_fused_layer_norm() {
    // The reason training mode exists: candle's fused kernels have no backward.
    let dev = Device::Cpu;
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &dev);
    let model = ActionClip::new(vb, &tiny_config(false, false, PostNetwork::MeanPool)).unwrap();
    let frames = Tensor::randn(0f32, 1., (1, 4, 3, 32, 32), &dev).unwrap();
    let v = model.encode_video_t(&frames, false).unwrap();
    let grads = v.sum_all().unwrap().backward().unwrap();
    let ln_pre = model.named_tensors().into_iter().find(|(n, _)| n == "visual.ln_pre.weight").unwrap().1;
    let zero = grads
        .get(&ln_pre)
        .map(|g| g.abs().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap() == 0.)
        .unwrap_or(true);
    assert!(zero, "the fused path unexpectedly propagated a gradient; training mode may be unnecessary");
}
