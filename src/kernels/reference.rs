//! Plain candle-op versions of the operations, at the bottom of the kernel layer: what every fused kernel
//! computes, the fallback where none applies, and the reference the kernel tests compare against.
use candle_core::{DType, Device, Tensor, D};

/// Additive causal mask: 0 on and below the diagonal, -inf above.
// -> [L, L]
pub(crate) fn causal_mask(l: usize, dtype: DType, device: &Device) -> candle_core::Result<Tensor> {
    Tensor::from_vec(causal_mask_values(l), (l, l), device)?.to_dtype(dtype)
}

/// The values of [`causal_mask`], row-major.
// -> [L * L]
pub(crate) fn causal_mask_values(l: usize) -> Vec<f32> {
    (0..l).flat_map(|i| (0..l).map(move |j| if j > i { f32::NEG_INFINITY } else { 0. })).collect()
}

/// Scaled dot-product attention on plain candle ops from `qkv` [N, L, 3, H, hd] with an optional additive
/// `mask` [L, L]; `differentiable` picks candle's differentiable softmax over its fused kernel.
// [N, L, 3, H, hd] -> [N, L, H*hd]
pub(crate) fn attention(qkv: &Tensor, mask: Option<&Tensor>, differentiable: bool) -> candle_core::Result<Tensor> {
    let (n, l, _, heads, hd) = qkv.dims5()?;
    // [3, N, H, L, hd]
    let qkv = qkv.permute((2, 0, 3, 1, 4))?;
    let q = (qkv.get(0)?.contiguous()? * (hd as f64).powf(-0.5))?.reshape((n * heads, l, hd))?;
    let k = qkv.get(1)?.contiguous()?.reshape((n * heads, l, hd))?;
    let v = qkv.get(2)?.contiguous()?.reshape((n * heads, l, hd))?;
    // [N*H, L, L]
    let scores = q.matmul(&k.t()?)?;
    let scores = match mask {
        Some(m) => scores.broadcast_add(m)?,
        None => scores,
    };
    let probs = if differentiable {
        candle_nn::ops::softmax(&scores, D::Minus1)?
    } else {
        candle_nn::ops::softmax_last_dim(&scores)?
    };
    // [N*H, L, hd] -> [N, L, H*hd]
    probs.matmul(&v)?.reshape((n, heads, l, hd))?.transpose(1, 2)?.reshape((n, l, heads * hd))
}

/// QuickGELU, `x * sigmoid(1.702 x)`, differentiable.
// [...] -> [...]
pub(crate) fn quick_gelu(x: &Tensor) -> candle_core::Result<Tensor> {
    x * candle_nn::ops::sigmoid(&(x * 1.702)?)?
}

/// LayerNorm over the last dimension of `x` [..., dim] with `weight` and `bias` [dim], computed in f32
/// whatever the dtype: `differentiable` on elementary ops, else candle's fused kernel (no backward).
// [..., dim] -> [..., dim]
pub(crate) fn layer_norm(
    x: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    eps: f64,
    differentiable: bool,
) -> candle_core::Result<Tensor> {
    let dtype = x.dtype();
    let x32 = x.to_dtype(DType::F32)?;
    let (w, b) = (weight.to_dtype(DType::F32)?, bias.to_dtype(DType::F32)?);
    let y = if differentiable {
        let mean = x32.mean_keepdim(D::Minus1)?;
        let centred = x32.broadcast_sub(&mean)?;
        let var = centred.sqr()?.mean_keepdim(D::Minus1)?;
        centred.broadcast_div(&(var + eps)?.sqrt()?)?.broadcast_mul(&w)?.broadcast_add(&b)?
    } else {
        candle_nn::ops::layer_norm(&x32.contiguous()?, &w, &b, eps as f32)?
    };
    y.to_dtype(dtype)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn causal_mask_blocks_the_future() {
        let m = causal_mask(3, DType::F32, &Device::Cpu).unwrap().to_vec2::<f32>().unwrap();
        assert_eq!(m[0][0], 0.);
        assert!(m[0][1].is_infinite());
        assert_eq!(m[2][1], 0.);
    }
}
