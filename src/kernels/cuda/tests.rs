//! The fused CUDA kernels against plain candle ops in f32 on the CPU: values and gradients of every
//! kernel in bf16, f16 and f32. Needs a CUDA device:
//! `cargo test --release --features cuda --lib kernels::cuda`.
//!
//! Tolerances are relative to the largest reference magnitude: bf16 2e-2, f16 5e-3 (a few units in the
//! last place of the output type), f32 1e-4.
use candle_core::{DType, Device, Tensor, Var, D};

use super::*;
use crate::kernels::reference;

fn gpu() -> Device {
    Device::new_cuda(0).expect("the CUDA kernel tests need a CUDA device")
}

fn randn(shape: &[usize], std: f64) -> Tensor {
    Tensor::randn(0f32, std as f32, shape, &Device::Cpu).unwrap()
}

fn tolerance(dtype: DType) -> f32 {
    match dtype {
        DType::BF16 => 2e-2,
        DType::F16 => 5e-3,
        _ => 1e-4,
    }
}

/// `t` rounded to `dtype` (as an f32 CPU tensor), and the same values on `dev` in `dtype`.
fn rounded(t: &Tensor, dtype: DType, dev: &Device) -> (Tensor, Tensor) {
    let low = t.to_dtype(dtype).unwrap();
    (low.to_dtype(DType::F32).unwrap(), low.to_device(dev).unwrap())
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

/// A random f32 CPU tensor `r` and `sum(f(x) * r)`: a scalar whose gradient is `r` at the output.
fn weighted_sum(y: &Tensor, r: &Tensor) -> Tensor {
    (y.to_dtype(DType::F32).unwrap() * r.to_device(y.device()).unwrap()).unwrap().sum_all().unwrap()
}

fn layer_norm_ref(x: &Tensor, w: &Tensor, b: &Tensor, eps: f64) -> Tensor {
    let mean = x.mean_keepdim(D::Minus1).unwrap();
    let centred = x.broadcast_sub(&mean).unwrap();
    let var = centred.sqr().unwrap().mean_keepdim(D::Minus1).unwrap();
    centred
        .broadcast_div(&(var + eps).unwrap().sqrt().unwrap())
        .unwrap()
        .broadcast_mul(w)
        .unwrap()
        .broadcast_add(b)
        .unwrap()
}

#[test]
fn layer_norm_values_and_gradients() {
    let dev = gpu();
    for dtype in [DType::BF16, DType::F16, DType::F32] {
        for (rows, cols) in [(300, 768), (77, 512), (5, 64), (3, 2048), (1, 1024)] {
            let what = format!("layer_norm {rows}x{cols}");
            let (x32, x) = rounded(&(randn(&[rows, cols], 2.0) + 0.5).unwrap(), dtype, &dev);
            let (w32, w) = rounded(&(randn(&[cols], 0.2) + 1.0).unwrap(), dtype, &dev);
            let (b32, b) = rounded(&randn(&[cols], 0.2), dtype, &dev);
            let r = randn(&[rows, cols], 1.0);
            let (xv, wv, bv) =
                (Var::from_tensor(&x).unwrap(), Var::from_tensor(&w).unwrap(), Var::from_tensor(&b).unwrap());
            let y = layer_norm(&xv, &wv, &bv, 1e-5).unwrap();
            let grads = weighted_sum(&y, &r).backward().unwrap();
            let (xr, wr, br) =
                (Var::from_tensor(&x32).unwrap(), Var::from_tensor(&w32).unwrap(), Var::from_tensor(&b32).unwrap());
            let yr = layer_norm_ref(&xr, &wr, &br, 1e-5);
            let grads_r = weighted_sum(&yr, &r).backward().unwrap();
            check(&format!("{what} y"), &y, &yr, dtype);
            for (name, v, vr) in [("dx", &xv, &xr), ("dw", &wv, &wr), ("db", &bv, &br)] {
                check(&format!("{what} {name}"), grads.get(v).unwrap(), grads_r.get(vr).unwrap(), dtype);
            }
        }
    }
}

#[test]
fn residual_kernels_match_plain_ops() {
    let dev = gpu();
    for dtype in [DType::BF16, DType::F16, DType::F32] {
        for (rows, cols) in [(197 * 8, 768), (40, 128)] {
            let what = format!("residual {rows}x{cols}");
            let (x32, x) = rounded(&randn(&[rows, cols], 1.0), dtype, &dev);
            let (d32, d) = rounded(&randn(&[rows, cols], 1.0), dtype, &dev);
            let (db32, db) = rounded(&randn(&[cols], 0.5), dtype, &dev);
            let (w32, w) = rounded(&(randn(&[cols], 0.2) + 1.0).unwrap(), dtype, &dev);
            let (b32, b) = rounded(&randn(&[cols], 0.2), dtype, &dev);
            // The sum is rounded to the activation dtype before the LayerNorm, as separate ops would.
            let (s32, _) = rounded(&(&x32 + &d32).unwrap().broadcast_add(&db32).unwrap(), dtype, &dev);
            let (s, y) = residual_layer_norm(&x, &d, &db, &w, &b, 1e-5).unwrap();
            check(&format!("{what} sum"), &s, &s32, dtype);
            check(&format!("{what} layer norm"), &y, &layer_norm_ref(&s32, &w32, &b32, 1e-5), dtype);
            check(&format!("{what} add"), &residual_add(&x, &d, &db).unwrap(), &s32, dtype);
        }
    }
}

#[test]
fn bias_quick_gelu_values_and_gradients() {
    let dev = gpu();
    for dtype in [DType::BF16, DType::F16, DType::F32] {
        for (rows, cols) in [(1576, 3072), (7, 512), (3, 8)] {
            let what = format!("bias_quick_gelu {rows}x{cols}");
            let (x32, x) = rounded(&randn(&[rows, cols], 3.0), dtype, &dev);
            let (b32, b) = rounded(&randn(&[cols], 1.0), dtype, &dev);
            let r = randn(&[rows, cols], 1.0);
            let (xv, bv) = (Var::from_tensor(&x).unwrap(), Var::from_tensor(&b).unwrap());
            let y = bias_quick_gelu(&xv, &bv).unwrap();
            let grads = weighted_sum(&y, &r).backward().unwrap();
            let (xr, br) = (Var::from_tensor(&x32).unwrap(), Var::from_tensor(&b32).unwrap());
            // The pre-activation is rounded to the dtype, as a separate bias add would leave it.
            let u = xr.broadcast_add(&br).unwrap();
            let u = (&u + (rounded(&u.detach(), dtype, &Device::Cpu).0 - u.detach()).unwrap()).unwrap();
            let yr = reference::quick_gelu(&u).unwrap();
            let grads_r = weighted_sum(&yr, &r).backward().unwrap();
            check(&format!("{what} y"), &y, &yr, dtype);
            check(&format!("{what} dx"), grads.get(&xv).unwrap(), grads_r.get(&xr).unwrap(), dtype);
            check(&format!("{what} db"), grads.get(&bv).unwrap(), grads_r.get(&br).unwrap(), dtype);
        }
    }
}

#[test]
fn bias_add_and_column_sum_match_plain_ops() {
    let dev = gpu();
    for dtype in [DType::BF16, DType::F16, DType::F32] {
        for (rows, cols) in [(50432, 768), (197, 2304), (3, 8)] {
            let what = format!("bias_add {rows}x{cols}");
            let (x32, x) = rounded(&randn(&[rows, cols], 1.0), dtype, &dev);
            let (b32, b) = rounded(&randn(&[cols], 1.0), dtype, &dev);
            let r = randn(&[rows, cols], 1.0);
            let (xv, bv) = (Var::from_tensor(&x).unwrap(), Var::from_tensor(&b).unwrap());
            let y = bias_add(&xv, &bv).unwrap();
            let grads = weighted_sum(&y, &r).backward().unwrap();
            let (xr, br) = (Var::from_tensor(&x32).unwrap(), Var::from_tensor(&b32).unwrap());
            let yr = xr.broadcast_add(&br).unwrap();
            let grads_r = weighted_sum(&yr, &r).backward().unwrap();
            check(&format!("{what} y"), &y, &yr, dtype);
            check(&format!("{what} dx"), grads.get(&xv).unwrap(), grads_r.get(&xr).unwrap(), dtype);
            check(&format!("{what} db"), grads.get(&bv).unwrap(), grads_r.get(&br).unwrap(), dtype);
            // Sums of rounded values accumulate in f32, so they match the f32 reference closely.
            check(&format!("column_sum {rows}x{cols}"), &column_sum(&x).unwrap(), &x32.sum(0).unwrap(), DType::F32);
        }
    }
}

/// softmax((q + b_q)(k + b_k)^T / sqrt(hd) [+ causal]) (v + b_v) on plain f32 ops, heads concatenated.
// [N, L, 3, H, hd], [3 H hd] -> [N, L, H hd]
fn attention_ref(qkv: &Tensor, bias: &Tensor, causal: bool) -> Tensor {
    let (n, l, _, h, hd) = qkv.dims5().unwrap();
    let qkv = qkv.broadcast_add(&bias.reshape((3, h, hd)).unwrap()).unwrap();
    let parts = qkv.permute((2, 0, 3, 1, 4)).unwrap().contiguous().unwrap().reshape((3, n * h, l, hd)).unwrap();
    let (q, k, v) = (parts.get(0).unwrap(), parts.get(1).unwrap(), parts.get(2).unwrap());
    let mut s = (q.matmul(&k.t().unwrap()).unwrap() / (hd as f64).sqrt()).unwrap();
    if causal {
        let mask: Vec<f32> =
            (0..l).flat_map(|i| (0..l).map(move |j| if j > i { f32::NEG_INFINITY } else { 0. })).collect();
        s = s.broadcast_add(&Tensor::from_vec(mask, (l, l), &Device::Cpu).unwrap()).unwrap();
    }
    let p = candle_nn::ops::softmax(&s, D::Minus1).unwrap();
    p.matmul(&v).unwrap().reshape((n, h, l, hd)).unwrap().transpose(1, 2).unwrap().reshape((n, l, h * hd)).unwrap()
}

#[test]
fn attention_values_and_gradients() {
    let dev = gpu();
    let cases = [
        (2, 197, 12, 64, false),
        (3, 50, 4, 64, false),
        (2, 77, 8, 64, true),
        (1, 1569, 2, 64, false),
        (2, 5, 1, 64, true),
        (2, 100, 2, 128, false),
        (2, 77, 2, 128, true),
    ];
    for dtype in [DType::BF16, DType::F16] {
        for (n, l, h, hd, causal) in cases {
            let what = format!("attention {n}x{l}x{h}x{hd}{}", if causal { " causal" } else { "" });
            let (qkv32, qkv) = rounded(&randn(&[n, l, 3, h, hd], 1.0), dtype, &dev);
            let (b32, b) = rounded(&randn(&[3 * h * hd], 0.5), dtype, &dev);
            let r = randn(&[n, l, h * hd], 1.0);
            let (qv, bv) = (Var::from_tensor(&qkv).unwrap(), Var::from_tensor(&b).unwrap());
            let y = attention(&qv, &bv, causal, true).unwrap();
            let grads = weighted_sum(&y, &r).backward().unwrap();
            let (qr, br) = (Var::from_tensor(&qkv32).unwrap(), Var::from_tensor(&b32).unwrap());
            let yr = attention_ref(&qr, &br, causal);
            let grads_r = weighted_sum(&yr, &r).backward().unwrap();
            check(&format!("{what} out"), &y, &yr, dtype);
            check(&format!("{what} dqkv"), grads.get(&qv).unwrap(), grads_r.get(&qr).unwrap(), dtype);
            check(&format!("{what} dbias"), grads.get(&bv).unwrap(), grads_r.get(&br).unwrap(), dtype);
        }
    }
}
