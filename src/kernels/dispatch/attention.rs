//! Multi-head self-attention from the input and its fused q, k, v projection.
use candle_core::Tensor;

use super::linear::{linear, Epilogue, LinearParams};
#[cfg(feature = "cuda")]
use crate::kernels::cuda;
use crate::kernels::{
    cpu::{fused, fused_train},
    reference,
};
use crate::Result;

/// Self-attention of `heads` heads over `x` [N, L, W] through `in_proj`, the q, k and v projections
/// stacked ([3W, W], bias [3W]), causal (each token sees itself and earlier ones) or not; returns the
/// heads concatenated per token, before any output projection. Half precision on CUDA with head dim 64
/// or 128 runs one flash-style kernel that folds the projection's bias in (both modes, with backward);
/// f32 on the CPU one fused op (in training with its own backward) reading q, k and v in place; elsewhere
/// candle's plain ops.
// [N, L, W] -> [N, L, W]
pub(crate) fn attention(
    x: &Tensor,
    in_proj: LinearParams<'_>,
    heads: usize,
    causal: bool,
    train: bool,
) -> Result<Tensor> {
    let (n, l, w) = x.dims3()?;
    let shape = (n, l, 3, heads, w / heads);
    #[cfg(feature = "cuda")]
    if let Some(bias) = in_proj.bias.filter(|_| cuda::attention_fits(x, w / heads)) {
        // [N, L, 3W] -> [N, L, 3, H, hd], the bias added inside the kernel
        let qkv = linear(x, in_proj, Epilogue::None, train)?.reshape(shape)?;
        return Ok(cuda::attention(&qkv, bias, causal, train)?);
    }
    // [N, L, 3W]
    let qkv = linear(x, in_proj, Epilogue::Bias, train)?;
    if train && fused_train::applies(&qkv) {
        return Ok(fused_train::attention(&qkv, heads, causal)?);
    }
    // [N, L, 3W] -> [N, L, 3, H, hd] (a view)
    let qkv = qkv.reshape(shape)?;
    let mask = if causal { Some(reference::causal_mask(l, x.dtype(), x.device())?) } else { None };
    Ok(if train { reference::attention(&qkv, mask.as_ref(), true)? } else { fused::attention(&qkv, mask.as_ref())? })
}
