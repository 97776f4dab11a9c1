use candle_core::{DType, Device, Tensor, D};
use candle_nn::{Init, VarBuilder};

use super::{
    fused, fused_train,
    linear::{Linear, TowerWeights},
    params::{join, Params},
};
use crate::Result;

/// Multi-head self-attention in PyTorch's `nn.MultiheadAttention` layout: one fused `in_proj_weight`
/// [3W, W] (q, k, v stacked), `in_proj_bias` [3W] and `out_proj` [W, W]. Inputs are batch-first.
#[derive(Clone, Debug)]
pub struct MultiHeadAttention {
    in_proj: Linear,
    out_proj: Linear,
    heads: usize,
}

impl MultiHeadAttention {
    /// Reads `in_proj_weight`, `in_proj_bias` and `out_proj.{weight,bias}` under `vb`.
    pub fn new(vb: VarBuilder, width: usize, heads: usize) -> Result<Self> {
        // PyTorch's xavier-uniform for the fused projection.
        let bound = (6.0 / (4 * width) as f64).sqrt();
        let in_proj = Linear::from_tensors(
            vb.get_with_hints((3 * width, width), "in_proj_weight", Init::Uniform { lo: -bound, up: bound })?,
            Some(vb.get_with_hints(3 * width, "in_proj_bias", Init::Const(0.))?),
        );
        let out_proj = Linear::new(vb.pp("out_proj"), width, width)?;
        Ok(Self { in_proj, out_proj, heads })
    }

    /// The same layer with its projection weights held as `format` says.
    pub fn with_weights(&self, format: TowerWeights) -> Result<Self> {
        Ok(Self { in_proj: self.in_proj.with_weights(format)?, out_proj: self.out_proj.with_weights(format)?, heads: self.heads })
    }

    /// Self-attention over `x` [N, L, W], causal (each token sees itself and earlier ones) or not;
    /// `train = false` runs the fused inference kernels.
    // [N, L, W] -> [N, L, W]
    pub fn forward_t(&self, x: &Tensor, causal: bool, train: bool) -> Result<Tensor> {
        let out = self.attend(x, causal, train)?;
        self.out_proj.forward_t(&out, train)
    }

    /// The inference forward (fused kernels, no backward) with `residual` [N, L, W] added to the output
    /// (in the output projection's epilogue on AVX-512 CPUs).
    // [N, L, W] -> [N, L, W]
    pub(super) fn forward_inference(&self, x: &Tensor, causal: bool, residual: &Tensor) -> Result<Tensor> {
        let out = self.attend(x, causal, false)?;
        self.out_proj.forward_inference(&out, false, Some(residual))
    }

    /// The attention output before `out_proj`, heads concatenated per token.
    // [N, L, W] -> [N, L, W]
    pub(super) fn attend(&self, x: &Tensor, causal: bool, train: bool) -> Result<Tensor> {
        let (n, l, w) = x.dims3()?;
        let shape = (n, l, 3, self.heads, w / self.heads);
        #[cfg(feature = "cuda")]
        if let Some(bias) = self.in_proj.bias().filter(|_| super::cuda::attention_fits(x, w / self.heads)) {
            // [N, L, 3W] -> [N, L, 3, H, hd], in_proj bias folded into the fused kernel
            let qkv = self.in_proj.forward_unbiased(x)?.reshape(shape)?;
            return Ok(super::cuda::attention(&qkv, bias, causal, train)?);
        }
        // [N, L, 3W]
        let qkv = self.in_proj.forward_t(x, train)?;
        if train && fused_train::applies(&qkv) {
            return Ok(fused_train::attention(&qkv, self.heads, causal)?);
        }
        // [N, L, 3W] -> [N, L, 3, H, hd] (a view)
        let qkv = qkv.reshape(shape)?;
        let mask = if causal { Some(causal_mask(l, x.dtype(), x.device())?) } else { None };
        // [N, L, W]
        let out = if train { attention_plain(&qkv, mask.as_ref(), true)? } else { fused::attention(&qkv, mask.as_ref())? };
        Ok(out)
    }

    /// Self-attention output at one query token per sequence, `rows` [N] (u32 positions): that token's
    /// query against the keys and values of every token (of every earlier or equal one when `causal`),
    /// through `out_proj`. Equals row `rows[n]` of [`MultiHeadAttention::forward_t`] at a fraction of
    /// its cost: only the keys and values are projected for every token.
    // [N, L, W], [N] -> [N, W]
    pub(super) fn forward_at(&self, x: &Tensor, rows: &Tensor, causal: bool, train: bool) -> Result<Tensor> {
        let (n, l, w) = x.dims3()?;
        let (heads, hd) = (self.heads, w / self.heads);
        let (q_proj, kv_proj) = (self.in_proj.outputs(0, w)?, self.in_proj.outputs(w, 2 * w)?);
        // [N, W]: the query tokens
        let picked = gather_rows(x, rows)?;
        // [N, H, 1, hd]
        let q = (q_proj.forward_t(&picked, train)? * (hd as f64).powf(-0.5))?.reshape((n, heads, 1, hd))?;
        // [N, L, 2W] -> [2, N, H, L, hd]
        let kv = kv_proj.forward_t(x, train)?.reshape((n, l, 2, heads, hd))?.permute((2, 0, 3, 1, 4))?;
        let (k, v) = (kv.get(0)?.contiguous()?, kv.get(1)?.contiguous()?);
        // [N, H, 1, L]
        let scores = q.matmul(&k.transpose(2, 3)?)?;
        let scores = if causal {
            // Key j is visible from query position p when j <= p.
            let keys = Tensor::arange(0u32, l as u32, x.device())?.reshape((1, l))?;
            let hidden = keys.broadcast_gt(&rows.to_dtype(DType::U32)?.reshape((n, 1))?)?;
            let mask = hidden.where_cond(
                &Tensor::full(f32::NEG_INFINITY, (n, l), x.device())?.to_dtype(x.dtype())?,
                &Tensor::zeros((n, l), x.dtype(), x.device())?,
            )?;
            scores.broadcast_add(&mask.reshape((n, 1, 1, l))?)?
        } else {
            scores
        };
        let probs = if train { candle_nn::ops::softmax(&scores, D::Minus1)? } else { candle_nn::ops::softmax_last_dim(&scores)? };
        // [N, H, 1, hd] -> [N, W]
        let out = probs.matmul(&v)?.reshape((n, w))?;
        self.out_proj.forward_t(&out, train)
    }

    /// The output projection.
    #[cfg(feature = "cuda")]
    pub(super) fn out_proj(&self) -> &Linear {
        &self.out_proj
    }
}

/// Row `rows[n]` of every sequence of `x`.
// [N, L, W], [N] u32 -> [N, W]
pub(crate) fn gather_rows(x: &Tensor, rows: &Tensor) -> candle_core::Result<Tensor> {
    let (n, l, w) = x.dims3()?;
    let offsets = (Tensor::arange(0u32, n as u32, x.device())? * l as f64)?;
    let index = (rows.to_dtype(DType::U32)? + offsets)?;
    x.reshape((n * l, w))?.index_select(&index, 0)
}

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
pub(super) fn attention_plain(qkv: &Tensor, mask: Option<&Tensor>, differentiable: bool) -> candle_core::Result<Tensor> {
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

impl Params for MultiHeadAttention {
    fn visit(&self, prefix: &str, f: &mut dyn FnMut(String, &Tensor)) {
        self.in_proj.visit_as(join(prefix, "in_proj_weight"), join(prefix, "in_proj_bias"), f);
        self.out_proj.visit(&join(prefix, "out_proj."), f);
    }
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
