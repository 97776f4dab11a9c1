use candle_core::Tensor;
#[cfg(feature = "cuda")]
use candle_core::D;
use candle_nn::VarBuilder;

use super::{
    attention::{gather_rows, MultiHeadAttention},
    layer_norm::LayerNorm,
    linear::TowerWeights,
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

    /// The same block with its attention and MLP weights held as `format` says (LayerNorms unchanged).
    pub fn with_weights(&self, format: TowerWeights) -> Result<Self> {
        Ok(Self { ln_1: self.ln_1.clone(), attn: self.attn.with_weights(format)?, ln_2: self.ln_2.clone(), mlp: self.mlp.with_weights(format)? })
    }

    /// Applies the block to `x` [N, L, W], with causal self-attention or not.
    // [N, L, W] -> [N, L, W]
    pub fn forward_t(&self, x: &Tensor, causal: bool, train: bool) -> Result<Tensor> {
        #[cfg(feature = "cuda")]
        if !train && self.fused_cuda_applies(x)? {
            let (x, m, m_bias) = self.fused_cuda_step(x, None, causal)?;
            return Ok(super::cuda::residual_add(&x, &m, &m_bias)?);
        }
        if !train && x.device().is_cpu() {
            // The residual adds happen in the output GEMMs' epilogues.
            let x = self.attn.forward_inference(&self.ln_1.forward_t(x, false)?, causal, x)?;
            return self.mlp.forward_inference(&self.ln_2.forward_t(&x, false)?, Some(&x));
        }
        let x = (x + self.attn.forward_t(&self.ln_1.forward_t(x, train)?, causal, train)?)?;
        let x = (&x + self.mlp.forward_t(&self.ln_2.forward_t(&x, train)?, train)?)?;
        Ok(x)
    }
}

impl ResidualAttentionBlock {
    /// The block's output at one token per sequence, `rows` [N] (u32 positions): row `rows[n]` of
    /// [`ResidualAttentionBlock::forward_t`], with the query, output projection and MLP of that token
    /// alone (keys and values still come from every token). A tower that pools one token runs its last
    /// block this way.
    // [N, L, W], [N] -> [N, W]
    pub fn forward_at(&self, x: &Tensor, rows: &Tensor, causal: bool, train: bool) -> Result<Tensor> {
        let attended = self.attn.forward_at(&self.ln_1.forward_t(x, train)?, rows, causal, train)?;
        let x = (gather_rows(x, rows)? + attended)?;
        Ok((&x + self.mlp.forward_t(&self.ln_2.forward_t(&x, train)?, train)?)?)
    }
}

/// Runs `blocks` over `x` [N, L, W] as [`forward_blocks`] does and returns the output at one token per
/// sequence, `rows` [N] (u32 positions), the last block computing that token alone
/// ([`ResidualAttentionBlock::forward_at`]).
// [N, L, W], [N] -> [N, W]
pub(crate) fn forward_blocks_at(blocks: &[ResidualAttentionBlock], x: &Tensor, rows: &Tensor, causal: bool, train: bool) -> Result<Tensor> {
    match blocks.split_last() {
        Some((last, body)) => last.forward_at(&forward_blocks(body, x, causal, train)?, rows, causal, train),
        None => Ok(gather_rows(x, rows)?),
    }
}

/// Runs `blocks` over `x` [N, L, W] in order, as their [`ResidualAttentionBlock::forward_t`] would; in
/// inference on CUDA each block's last residual add (with the c_proj bias) happens inside the next
/// block's first LayerNorm kernel.
// [N, L, W] -> [N, L, W]
pub(crate) fn forward_blocks(blocks: &[ResidualAttentionBlock], x: &Tensor, causal: bool, train: bool) -> Result<Tensor> {
    #[cfg(feature = "cuda")]
    if !train && !blocks.is_empty() && blocks.iter().map(|b| b.fused_cuda_applies(x)).collect::<Result<Vec<_>>>()?.iter().all(|&ok| ok) {
        let mut x = x.clone();
        let mut pending = None;
        for block in blocks {
            let (next, m, m_bias) = block.fused_cuda_step(&x, pending.as_ref(), causal)?;
            x = next;
            pending = Some((m, m_bias));
        }
        if let Some((m, m_bias)) = pending {
            return Ok(super::cuda::residual_add(&x, &m, &m_bias)?);
        }
    }
    let mut x = x.clone();
    for block in blocks {
        x = block.forward_t(&x, causal, train)?;
    }
    Ok(x)
}

#[cfg(feature = "cuda")]
impl ResidualAttentionBlock {
    /// Whether the fused CUDA inference path takes `x` through this block: a tensor the kernels handle,
    /// a LayerNorm width they take and every bias the fusion folds in.
    fn fused_cuda_applies(&self, x: &Tensor) -> Result<bool> {
        Ok(super::cuda::handles(x)
            && super::cuda::layer_norm_fits(x.dim(D::Minus1)?)
            && self.attn.out_proj().bias().is_some()
            && self.mlp.fused_cuda_applies())
    }

    /// One block of the fused CUDA inference path, every bias and residual add folded into a kernel: the
    /// in_proj bias into attention, the out_proj bias and residual into LayerNorm 2, the c_fc bias into
    /// QuickGELU. `pending` is the previous block's MLP output and c_proj bias, still to be added to `x`
    /// (inside LayerNorm 1). Returns the residual stream after attention and this block's MLP output
    /// with its c_proj bias, still to be added.
    // [N, L, W] -> ([N, L, W], [N, L, W], [W])
    fn fused_cuda_step(&self, x: &Tensor, pending: Option<&(Tensor, Tensor)>, causal: bool) -> Result<(Tensor, Tensor, Tensor)> {
        let (x, h) = match pending {
            Some((m, m_bias)) => self.ln_1.residual_forward_cuda(x, m, m_bias)?,
            None => (x.clone(), self.ln_1.forward_t(x, false)?),
        };
        let attended = self.attn.attend(&h, causal, false)?;
        let out_proj = self.attn.out_proj();
        let out_bias = out_proj.bias().ok_or_else(|| candle_core::Error::Msg("fused block: out_proj has no bias".into()))?;
        let (x, h) = self.ln_2.residual_forward_cuda(&x, &out_proj.forward_unbiased(&attended)?, out_bias)?;
        let (m, m_bias) = self.mlp.forward_unbiased_cuda(&h)?;
        Ok((x, m, m_bias))
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
