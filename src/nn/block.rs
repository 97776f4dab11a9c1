use candle_core::Tensor;
use candle_nn::VarBuilder;

use super::{
    attention::{gather_rows, MultiHeadAttention},
    layer_norm::LayerNorm,
    linear::TowerWeights,
    mlp::Mlp,
    params::Params,
};
use crate::{
    kernels::{self, Epilogue},
    Error, Result,
};

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
        Ok(Self {
            ln_1: self.ln_1.clone(),
            attn: self.attn.with_weights(format)?,
            ln_2: self.ln_2.clone(),
            mlp: self.mlp.with_weights(format)?,
        })
    }

    /// Applies the block to `x` [N, L, W], with causal self-attention or not. In inference the residual
    /// adds happen inside kernels: the output GEMMs' epilogues on the CPU, the LayerNorm kernels on CUDA.
    // [N, L, W] -> [N, L, W]
    pub fn forward_t(&self, x: &Tensor, causal: bool, train: bool) -> Result<Tensor> {
        if !train && self.defers_residual(x)? {
            return forward_deferred(std::slice::from_ref(self), x, causal);
        }
        let attended = self.attn.attend(&self.ln_1.forward_t(x, train)?, causal, train)?;
        let x = kernels::linear(&attended, self.attn.out_proj().params(), Epilogue::BiasResidual(x), train)?;
        let (c_fc, c_proj) = self.mlp.layers();
        kernels::mlp(&self.ln_2.forward_t(&x, train)?, c_fc.params(), c_proj.params(), Some(&x), train)
    }

    /// The block's output at one token per sequence, `rows` \[N\] (u32 positions): row `rows[n]` of
    /// [`ResidualAttentionBlock::forward_t`], with the query, output projection and MLP of that token
    /// alone (keys and values still come from every token). A tower that pools one token runs its last
    /// block this way.
    // [N, L, W], [N] -> [N, W]
    pub fn forward_at(&self, x: &Tensor, rows: &Tensor, causal: bool, train: bool) -> Result<Tensor> {
        let attended = self.attn.forward_at(&self.ln_1.forward_t(x, train)?, rows, causal, train)?;
        let x = (gather_rows(x, rows)? + attended)?;
        Ok((&x + self.mlp.forward_t(&self.ln_2.forward_t(&x, train)?, train)?)?)
    }

    /// Whether inference over `x` defers each residual add into the next kernel ([`forward_deferred`]):
    /// the kernels fuse the residual add with LayerNorm and the `c_fc` bias with QuickGELU for `x`, and
    /// every bias they fold in is there.
    fn defers_residual(&self, x: &Tensor) -> Result<bool> {
        let (c_fc, c_proj) = self.mlp.layers();
        Ok(kernels::fuses_residual_layer_norm(x)?
            && kernels::fuses_bias_quick_gelu(x, c_fc.out_features())
            && self.attn.out_proj().bias().is_some()
            && c_fc.bias().is_some()
            && c_proj.bias().is_some())
    }

    /// One block of [`forward_deferred`]: `pending`, the previous block's MLP output and `c_proj` bias, is
    /// added to `x` inside LayerNorm 1, the attention output and `out_proj` bias inside LayerNorm 2, the
    /// `c_fc` bias inside QuickGELU. Returns the residual stream after attention and this block's MLP
    /// output with its `c_proj` bias, still to be added.
    // [N, L, W] -> ([N, L, W], [N, L, W], [W])
    fn deferred_step(
        &self,
        x: &Tensor,
        pending: Option<&(Tensor, Tensor)>,
        causal: bool,
    ) -> Result<(Tensor, Tensor, Tensor)> {
        let missing =
            |what: &str| Error::Config(format!("a residual block without the {what} bias defers no residual add"));
        let (x, h) = match pending {
            Some((m, m_bias)) => kernels::residual_layer_norm(x, m, m_bias, self.ln_1.params())?,
            None => (x.clone(), self.ln_1.forward_t(x, false)?),
        };
        let out_proj = self.attn.out_proj();
        let attended =
            kernels::linear(&self.attn.attend(&h, causal, false)?, out_proj.params(), Epilogue::None, false)?;
        let out_bias = out_proj.bias().ok_or_else(|| missing("out_proj"))?;
        let (x, h) = kernels::residual_layer_norm(&x, &attended, out_bias, self.ln_2.params())?;
        let (c_fc, c_proj) = self.mlp.layers();
        let hidden = kernels::linear(&h, c_fc.params(), Epilogue::BiasQuickGelu, false)?;
        let m = kernels::linear(&hidden, c_proj.params(), Epilogue::None, false)?;
        Ok((x, m, c_proj.bias().ok_or_else(|| missing("c_proj"))?.clone()))
    }
}

/// Runs `blocks` over `x` [N, L, W] in order, as their [`ResidualAttentionBlock::forward_t`] would; in
/// inference, where every block defers its residual adds, each block's last residual add (with the
/// `c_proj` bias) happens inside the next block's first LayerNorm kernel.
// [N, L, W] -> [N, L, W]
pub(crate) fn forward_blocks(
    blocks: &[ResidualAttentionBlock],
    x: &Tensor,
    causal: bool,
    train: bool,
) -> Result<Tensor> {
    if !train
        && !blocks.is_empty()
        && blocks.iter().map(|b| b.defers_residual(x)).collect::<Result<Vec<_>>>()?.into_iter().all(|d| d)
    {
        return forward_deferred(blocks, x, causal);
    }
    blocks.iter().try_fold(x.clone(), |x, block| block.forward_t(&x, causal, train))
}

/// Runs `blocks` over `x` [N, L, W] in inference with every residual add inside a kernel
/// ([`ResidualAttentionBlock::deferred_step`]), the last block's MLP output added by one residual-add
/// kernel. Every block must defer its residual adds for `x`.
// [N, L, W] -> [N, L, W]
fn forward_deferred(blocks: &[ResidualAttentionBlock], x: &Tensor, causal: bool) -> Result<Tensor> {
    let mut x = x.clone();
    let mut pending = None;
    for block in blocks {
        let (next, m, m_bias) = block.deferred_step(&x, pending.as_ref(), causal)?;
        x = next;
        pending = Some((m, m_bias));
    }
    match pending {
        Some((m, m_bias)) => kernels::residual_add(&x, &m, &m_bias),
        None => Ok(x),
    }
}

/// Runs `blocks` over `x` [N, L, W] as [`forward_blocks`] does and returns the output at one token per
/// sequence, `rows` [N] (u32 positions), the last block computing that token alone
/// ([`ResidualAttentionBlock::forward_at`]).
// [N, L, W], [N] -> [N, W]
pub(crate) fn forward_blocks_at(
    blocks: &[ResidualAttentionBlock],
    x: &Tensor,
    rows: &Tensor,
    causal: bool,
    train: bool,
) -> Result<Tensor> {
    match blocks.split_last() {
        Some((last, body)) => last.forward_at(&forward_blocks(body, x, causal, train)?, rows, causal, train),
        None => Ok(gather_rows(x, rows)?),
    }
}

impl Params for ResidualAttentionBlock {
    fn visit(&self, f: &mut dyn FnMut(&str, &Tensor)) {
        self.ln_1.visit(f);
        self.attn.visit(f);
        self.ln_2.visit(f);
        self.mlp.visit(f);
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{DType, Device, Tensor};
    use candle_nn::{VarBuilder, VarMap};

    use super::super::{mlp::Mlp, MultiHeadAttention, ResidualAttentionBlock};
    use crate::kernels::testing::assert_close;

    fn randn(shape: &[usize], seed_scale: f64) -> Tensor {
        Tensor::randn(0f32, seed_scale as f32, shape, &Device::Cpu).unwrap()
    }

    #[test]
    fn inference_blocks_match_training_blocks() {
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
        let attn = MultiHeadAttention::new(vb.pp("attn"), 96, 3).unwrap();
        let mlp = Mlp::new(vb.pp("mlp"), 96).unwrap();
        let x = randn(&[3, 77, 96], 1.);
        for causal in [false, true] {
            let (fast, slow) = (attn.forward_t(&x, causal, false).unwrap(), attn.forward_t(&x, causal, true).unwrap());
            assert_close("MultiHeadAttention", &fast, &slow);
        }
        assert_close("Mlp", &mlp.forward_t(&x, false).unwrap(), &mlp.forward_t(&x, true).unwrap());
        // Width 256: the MLP's 1024 hidden values per row are padded in the fused inference op; the block adds
        // its residuals in the output GEMMs' epilogues.
        let block = ResidualAttentionBlock::new(vb.pp("block"), 256, 4, 1e-5).unwrap();
        let x = randn(&[2, 50, 256], 1.);
        for causal in [false, true] {
            let (fast, slow) =
                (block.forward_t(&x, causal, false).unwrap(), block.forward_t(&x, causal, true).unwrap());
            assert_close("ResidualAttentionBlock", &fast, &slow);
        }
    }
}
