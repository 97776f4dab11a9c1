use candle_core::Tensor;
#[cfg(feature = "cuda")]
use candle_core::D;
use candle_nn::VarBuilder;

use super::{
    attention::MultiHeadAttention,
    layer_norm::LayerNorm,
    mlp::Mlp,
    params::{join, Params},
};
use crate::Result;

/// CLIP's pre-LN residual block: `x + attn(ln_1(x))`, then `x + mlp(ln_2(x))`.
#[derive(Clone, Debug)]
pub struct ResidualAttentionBlock {
    ln_1: LayerNorm,
    attn: MultiHeadAttention,
    ln_2: LayerNorm,
    mlp: Mlp,
}

impl ResidualAttentionBlock {
    /// Reads `ln_1`, `attn`, `ln_2`, `mlp` under `vb`; `eps` is the LayerNorm epsilon (1e-5 in CLIP,
    /// 1e-12 in ActionCLIP's temporal transformer).
    pub fn new(vb: VarBuilder, width: usize, heads: usize, eps: f64) -> Result<Self> {
        Ok(Self {
            ln_1: LayerNorm::new(vb.pp("ln_1"), width, eps)?,
            attn: MultiHeadAttention::new(vb.pp("attn"), width, heads)?,
            ln_2: LayerNorm::new(vb.pp("ln_2"), width, eps)?,
            mlp: Mlp::new(vb.pp("mlp"), width)?,
        })
    }

    /// Applies the block to `x` [N, L, W], with causal self-attention or not.
    // [N, L, W] -> [N, L, W]
    pub fn forward_t(&self, x: &Tensor, causal: bool, train: bool) -> Result<Tensor> {
        #[cfg(feature = "cuda")]
        if !train {
            if let Some(y) = self.forward_fused_cuda(x, causal)? {
                return Ok(y);
            }
        }
        let x = (x + self.attn.forward_t(&self.ln_1.forward_t(x, train)?, causal, train)?)?;
        let x = (&x + self.mlp.forward_t(&self.ln_2.forward_t(&x, train)?, train)?)?;
        Ok(x)
    }
}

#[cfg(feature = "cuda")]
impl ResidualAttentionBlock {
    /// Inference with every bias and residual add folded into the fused CUDA kernels: the in_proj bias
    /// into attention, out_proj bias + residual into LayerNorm 2, c_fc bias into QuickGELU, c_proj bias
    /// + residual into one pass. `None` where the kernels do not apply.
    // [N, L, W] -> [N, L, W]
    fn forward_fused_cuda(&self, x: &Tensor, causal: bool) -> Result<Option<Tensor>> {
        let Some(out_bias) = self.attn.out_proj().bias() else { return Ok(None) };
        if !(super::cuda::handles(x) && super::cuda::layer_norm_fits(x.dim(D::Minus1)?)) {
            return Ok(None);
        }
        let attended = self.attn.attend(&self.ln_1.forward_t(x, false)?, causal, false)?;
        let projected = self.attn.out_proj().forward_unbiased(&attended)?;
        let Some((x, h)) = self.ln_2.residual_forward_cuda(x, &projected, out_bias)? else { return Ok(None) };
        let Some((m, m_bias)) = self.mlp.forward_unbiased_cuda(&h)? else { return Ok(None) };
        Ok(Some(super::cuda::residual_add(&x, &m, m_bias)?))
    }
}

impl Params for ResidualAttentionBlock {
    fn visit(&self, prefix: &str, f: &mut dyn FnMut(String, &Tensor)) {
        self.ln_1.visit(&join(prefix, "ln_1."), f);
        self.attn.visit(&join(prefix, "attn."), f);
        self.ln_2.visit(&join(prefix, "ln_2."), f);
        self.mlp.visit(&join(prefix, "mlp."), f);
    }
}
