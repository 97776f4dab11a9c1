use candle_core::Tensor;
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

    /// Applies the block to `x` [N, L, W] with an optional additive attention `mask` [L, L].
    // [N, L, W] -> [N, L, W]
    pub fn forward_t(&self, x: &Tensor, mask: Option<&Tensor>, train: bool) -> Result<Tensor> {
        let x = (x + self.attn.forward_t(&self.ln_1.forward_t(x, train)?, mask, train)?)?;
        let x = (&x + self.mlp.forward_t(&self.ln_2.forward_t(&x, train)?, train)?)?;
        Ok(x)
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
