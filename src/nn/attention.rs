use candle_core::{DType, Tensor, D};
use candle_nn::{Init, VarBuilder};

use super::{
    linear::{Linear, TowerWeights},
    params::{Named, Params},
};
use crate::{kernels, Result};

/// Multi-head self-attention in PyTorch's `nn.MultiheadAttention` layout: one fused `in_proj_weight`
/// [3W, W] (q, k, v stacked), `in_proj_bias` \[3W\] and `out_proj` [W, W]. Inputs are batch-first.
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
        let in_proj = Linear::from_named(
            Named::read(&vb, (3 * width, width), "in_proj_weight", Init::Uniform { lo: -bound, up: bound })?,
            Some(Named::read(&vb, 3 * width, "in_proj_bias", Init::Const(0.))?),
        );
        let out_proj = Linear::new(vb.pp("out_proj"), width, width)?;
        Ok(Self { in_proj, out_proj, heads })
    }

    /// The same layer with its projection weights held as `format` says.
    pub fn with_weights(&self, format: TowerWeights) -> Result<Self> {
        Ok(Self {
            in_proj: self.in_proj.with_weights(format)?,
            out_proj: self.out_proj.with_weights(format)?,
            heads: self.heads,
        })
    }

    /// Self-attention over `x` [N, L, W], causal (each token sees itself and earlier ones) or not;
    /// `train = false` runs the fused inference kernels.
    // [N, L, W] -> [N, L, W]
    pub fn forward_t(&self, x: &Tensor, causal: bool, train: bool) -> Result<Tensor> {
        self.out_proj.forward_t(&self.attend(x, causal, train)?, train)
    }

    /// The attention output before `out_proj`, heads concatenated per token.
    // [N, L, W] -> [N, L, W]
    pub(super) fn attend(&self, x: &Tensor, causal: bool, train: bool) -> Result<Tensor> {
        kernels::attention(x, self.in_proj.params(), self.heads, causal, train)
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
        let probs = if train {
            candle_nn::ops::softmax(&scores, D::Minus1)?
        } else {
            candle_nn::ops::softmax_last_dim(&scores)?
        };
        // [N, H, 1, hd] -> [N, W]
        let out = probs.matmul(&v)?.reshape((n, w))?;
        self.out_proj.forward_t(&out, train)
    }

    /// The output projection.
    pub(super) fn out_proj(&self) -> &Linear {
        &self.out_proj
    }
}

/// Row `rows[n]` of every sequence of `x`.
// [N, L, W], [N] u32 -> [N, W]
pub(super) fn gather_rows(x: &Tensor, rows: &Tensor) -> candle_core::Result<Tensor> {
    let (n, l, w) = x.dims3()?;
    let offsets = (Tensor::arange(0u32, n as u32, x.device())? * l as f64)?;
    let index = (rows.to_dtype(DType::U32)? + offsets)?;
    x.reshape((n * l, w))?.index_select(&index, 0)
}

impl Params for MultiHeadAttention {
    fn visit(&self, f: &mut dyn FnMut(&str, &Tensor)) {
        self.in_proj.visit(f);
        self.out_proj.visit(f);
    }
}
