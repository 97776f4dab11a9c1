use candle_core::{Module, Tensor, D};
use candle_nn::{Init, VarBuilder};

use super::{
    linear::Linear,
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

    /// Self-attention over `x` [N, L, W] with an optional additive `mask` [L, L] (for example causal).
    // [N, L, W] -> [N, L, W]
    pub fn forward_t(&self, x: &Tensor, mask: Option<&Tensor>, train: bool) -> Result<Tensor> {
        let (n, l, w) = x.dims3()?;
        let hd = w / self.heads;
        // [N, L, 3W] -> [3, N, H, L, hd]
        let qkv = self.in_proj.forward(x)?.reshape((n, l, 3, self.heads, hd))?.permute((2, 0, 3, 1, 4))?;
        let q = (qkv.get(0)?.contiguous()? * (hd as f64).powf(-0.5))?.reshape((n * self.heads, l, hd))?;
        let k = qkv.get(1)?.contiguous()?.reshape((n * self.heads, l, hd))?;
        let v = qkv.get(2)?.contiguous()?.reshape((n * self.heads, l, hd))?;
        // [N*H, L, L]
        let scores = q.matmul(&k.t()?)?;
        let scores = match mask {
            Some(m) => scores.broadcast_add(m)?,
            None => scores,
        };
        let probs = if train {
            candle_nn::ops::softmax(&scores, D::Minus1)?
        } else {
            candle_nn::ops::softmax_last_dim(&scores)?
        };
        // [N*H, L, hd] -> [N, L, W]
        let out = probs.matmul(&v)?.reshape((n, self.heads, l, hd))?.transpose(1, 2)?.reshape((n, l, w))?;
        Ok(self.out_proj.forward(&out)?)
    }
}

impl Params for MultiHeadAttention {
    fn visit(&self, prefix: &str, f: &mut dyn FnMut(String, &Tensor)) {
        f(join(prefix, "in_proj_weight"), self.in_proj.weight());
        if let Some(b) = self.in_proj.bias() {
            f(join(prefix, "in_proj_bias"), b);
        }
        self.out_proj.visit(&join(prefix, "out_proj."), f);
    }
}
