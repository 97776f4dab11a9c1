//! The tiny fixture model on a CUDA device (fused CUDA kernels) against the PyTorch reference and the
//! CPU: features on the inference and training paths, and training gradients. Needs a CUDA device:
//! `cargo test --release --features cuda --test cuda_kernels` (the kernels' own tests: `--lib
//! kernels::cuda`).
//!
//! Tolerances are relative to the largest reference magnitude: bf16 2e-2, f16 5e-3 (a few units in the
//! last place of the output type), f32 1e-4.
#![cfg(feature = "cuda")]
mod common;

use actionclip::{loss, ActionClip, PostNetwork};
use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use common::*;

fn gpu() -> Device {
    Device::new_cuda(0).expect("the cuda_kernels tests need a CUDA device")
}

fn tolerance(dtype: DType) -> f32 {
    match dtype {
        DType::BF16 => 2e-2,
        DType::F16 => 5e-3,
        _ => 1e-4,
    }
}

/// max |got - want| / max(1, max |want|), `got` on any device and dtype, `want` f32 on the CPU.
fn relative_error(got: &Tensor, want: &Tensor) -> f32 {
    let got = got.to_device(&Device::Cpu).unwrap().to_dtype(DType::F32).unwrap();
    assert_eq!(got.dims(), want.dims(), "shapes differ");
    let diff = (got - want).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap();
    let scale = want.abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap().max(1.0);
    diff / scale
}

fn check(what: &str, got: &Tensor, want: &Tensor, dtype: DType) {
    let e = relative_error(got, want);
    eprintln!("{what} [{dtype:?}]: relative error {e:.2e}");
    assert!(e <= tolerance(dtype), "{what} [{dtype:?}]: relative error {e:.2e} > {:.0e}", tolerance(dtype));
}

fn tiny_model(dev: &Device, dtype: DType, shift: bool, post: PostNetwork) -> (ActionClip, VarMap) {
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, dtype, dev);
    let model = ActionClip::new(vb, &tiny_config(false, shift, post)).unwrap();
    let weights = weights();
    for (name, var) in varmap.data().lock().unwrap().iter() {
        var.set(&weights[name].to_dtype(dtype).unwrap().to_device(dev).unwrap()).unwrap();
    }
    (model, varmap)
}

/// The tiny fixture model (head dim 64) on the GPU gives the PyTorch reference's features, in f32 within
/// 1e-4 and in bf16/f16 within their tolerance, on the inference (fused) and training paths.
#[test]
fn tiny_model_matches_reference_on_gpu() {
    let dev = gpu();
    let io = io();
    let tokens = io["tokens"].to_dtype(DType::U32).unwrap();
    for dtype in [DType::F32, DType::BF16, DType::F16] {
        for (key, shift, post) in [
            ("video.meanP", false, PostNetwork::MeanPool),
            ("video.tsm_transf", true, PostNetwork::Transformer { layers: 2 }),
            ("video.transf_cls", false, PostNetwork::TransformerCls { layers: 2 }),
        ] {
            let (model, _) = tiny_model(&dev, dtype, shift, post);
            let frames = io["frames"].to_device(&dev).unwrap();
            for train in [false, true] {
                let video = model.encode_video_t(&frames, train).unwrap();
                check(&format!("{key} (train={train})"), &video, &io[key], dtype);
            }
            let text = model.encode_text_t(&tokens.to_device(&dev).unwrap(), false).unwrap();
            check("text_features", &text, &io["text_features"], dtype);
        }
    }
}

/// Gradients of the training loss on the GPU (fused kernels, bf16 and f32) agree with the CPU's f32
/// gradients for every parameter: cosine similarity >= 0.99 (bf16) / 0.9999 (f32).
#[test]
fn tiny_model_gradients_match_cpu() {
    let dev = gpu();
    let io = io();
    let labels = [0u32, 1, 0, 2];
    let grads_of = |dev: &Device, dtype: DType| {
        let (model, _) = tiny_model(dev, dtype, true, PostNetwork::Transformer { layers: 2 });
        let video = model.encode_video_t(&io["frames"].to_device(dev).unwrap(), true).unwrap();
        let text =
            model.encode_text_t(&io["tokens"].to_dtype(DType::U32).unwrap().to_device(dev).unwrap(), true).unwrap();
        let (v2t, t2v) = model.logits(&video, &text).unwrap();
        let grads = loss::symmetric_kl_loss(&v2t, &t2v, &labels).unwrap().backward().unwrap();
        model
            .named_tensors()
            .into_iter()
            .map(|(name, t)| {
                let g = grads.get(&t).unwrap_or_else(|| panic!("{name}: no gradient"));
                (name, g.to_device(&Device::Cpu).unwrap().to_dtype(DType::F32).unwrap().flatten_all().unwrap())
            })
            .collect::<Vec<_>>()
    };
    let reference = grads_of(&Device::Cpu, DType::F32);
    for (dtype, min_cos) in [(DType::F32, 0.9999f32), (DType::BF16, 0.99)] {
        for ((name, g), (_, r)) in grads_of(&dev, dtype).iter().zip(&reference) {
            let dot = (g * r).unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap();
            let norms = g.sqr().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap().sqrt()
                * r.sqr().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap().sqrt();
            let cos = dot / norms.max(f32::MIN_POSITIVE);
            assert!(cos >= min_cos, "{name} [{dtype:?}]: gradient cosine {cos:.5} < {min_cos}");
        }
        eprintln!("gradients [{dtype:?}]: every parameter within cosine {min_cos}");
    }
}
