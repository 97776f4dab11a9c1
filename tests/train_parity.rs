//! Training parity with PyTorch: three AdamW steps of ActionCLIP's recipe (three parameter groups at different
//! rates, weight decay 0.2, warmup-cosine per iteration, symmetric KL loss with a repeated label) from the tiny
//! model's weights reproduce PyTorch's losses and final weights within 1e-5 relative (f32, CPU).
//! Fixture: tools/make_train_fixture.py -> tests/fixtures/train/parity.safetensors.
mod common;

use std::collections::HashMap;

use actionclip::train::{AdamWConfig, LrSchedule, StartFrom, TrainConfig, Trainer};
use actionclip::PostNetwork;
use candle_core::{DType, Device, Tensor};
use common::*;

fn fixture() -> HashMap<String, Tensor> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/train/parity.safetensors");
    candle_core::safetensors::load(path, &Device::Cpu).expect("tests/fixtures/train/parity.safetensors")
}

#[test]
fn three_steps_match_pytorch_adamw() {
    let dev = Device::Cpu;
    let fx = fixture();
    let hyper = fx["hyper"].to_vec1::<f64>().unwrap();
    let (lr, ratio, f_ratio, wd) = (hyper[0], hyper[1], hyper[2], hyper[3]);
    let (warmup, total, stride, steps) = (hyper[4] as usize, hyper[5] as usize, hyper[6] as usize, hyper[7] as usize);

    let cfg = tiny_config(false, false, PostNetwork::Transformer { layers: 2 });
    let train = TrainConfig {
        optimizer: AdamWConfig { lr, ratio, f_ratio, weight_decay: wd, ..AdamWConfig::default() },
        ..TrainConfig::default()
    };
    let weights = actionclip::weights::load(tiny("weights.safetensors")).unwrap();
    let start_weights: HashMap<String, Tensor> =
        weights.tensors.iter().map(|(k, v)| (k.clone(), v.to_dtype(DType::F32).unwrap())).collect();
    let mut trainer = Trainer::new(&cfg, StartFrom::Weights(Box::new(weights)), train, &dev).unwrap();
    trainer.set_schedule(LrSchedule::WarmupCosine { warmup, total }).unwrap();

    let golden_losses = fx["losses"].to_vec1::<f64>().unwrap();
    let golden_lr = fx["lr"].to_vec1::<f64>().unwrap();
    for step in 0..steps {
        let frames = fx[&format!("frames.{step}")].to_dtype(DType::F32).unwrap();
        let tokens = fx[&format!("tokens.{step}")].to_dtype(DType::U32).unwrap();
        let labels: Vec<u32> =
            fx[&format!("labels.{step}")].to_vec1::<i64>().unwrap().into_iter().map(|l| l as u32).collect();
        let out = trainer.train_step(&frames, &tokens, &labels).unwrap();
        let rel = (out.loss - golden_losses[step]).abs() / golden_losses[step].abs();
        eprintln!(
            "step {step}: loss {:.8} (PyTorch {:.8}, rel {rel:.2e}), lr factor {}",
            out.loss, golden_losses[step], out.lr_factor
        );
        assert!(rel <= 1e-5, "step {step}: loss {} vs {}", out.loss, golden_losses[step]);
        assert!((out.lr_factor * lr - golden_lr[step]).abs() <= 1e-12 * lr.max(1.0));
    }

    let ours = trainer.weights();
    let mut checked = 0;
    let mut key_bias_skipped = 0;
    let mut worst = (0f64, String::new());
    for (key, golden) in &fx {
        let Some(name) = key.strip_prefix("final.") else { continue };
        let w = ours.get(name).unwrap_or_else(|| panic!("{name}: not a trained weight"));
        let flat = w.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let sample: Vec<f32> =
            if flat.len() <= 4096 { flat.clone() } else { flat.iter().step_by(stride).copied().collect() };
        let mut golden = golden.to_vec1::<f32>().unwrap();
        assert_eq!(sample.len(), golden.len(), "{name}");
        let mut sample = sample;
        let mut flat = flat;
        if name.ends_with("attn.in_proj_bias") {
            // The key bias adds the same q.b_k to every logit of a query, which the softmax ignores: its exact
            // gradient is 0, and what both frameworks compute is rounding noise that Adam's normalisation
            // turns into updates of size ~lr. Those values are compared to the step size only.
            let w = golden.len() / 3;
            let start: Vec<f32> = start_weights[name].flatten_all().unwrap().to_vec1::<f32>().unwrap();
            for i in w..2 * w {
                let bound = (steps as f64 * 1.1 * lr * ratio.max(f_ratio).max(1.0)) as f32 + 1e-6;
                assert!((sample[i] - start[i]).abs() <= bound, "{name}[{i}] moved more than the step size");
                assert!((golden[i] - start[i]).abs() <= bound, "{name}[{i}] (PyTorch) moved more than the step size");
                sample[i] = 0.0;
                golden[i] = 0.0;
                flat[i] = start[i];
            }
            key_bias_skipped += w;
        }
        let scale = golden.iter().fold(0f32, |m, x| m.max(x.abs())).max(1e-6);
        let diff = sample.iter().zip(&golden).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
        let rel = (diff / scale) as f64;
        if rel > worst.0 {
            worst = (rel, name.to_string());
        }
        assert!(rel <= 1e-5, "{name}: max |ours - PyTorch| = {diff:e}, {rel:e} of the tensor's largest value");
        // Whole-tensor statistics cover the values the sample skips.
        let stats = fx[&format!("stats.{name}")].to_vec1::<f64>().unwrap();
        let sum_sq: f64 = flat.iter().map(|&x| (x as f64) * (x as f64)).sum();
        if !name.ends_with("attn.in_proj_bias") {
            assert!(
                (sum_sq - stats[1]).abs() <= 1e-5 * stats[1].abs().max(1e-12),
                "{name}: sum of squares {sum_sq} vs {}",
                stats[1]
            );
        }
        checked += 1;
    }
    eprintln!("{checked} tensors checked; worst relative difference {:.2e} ({}); {key_bias_skipped} key-bias values compared to the step size only", worst.0, worst.1);
    assert_eq!(checked, ours.len(), "every trained weight is in the fixture");
}
