use candle_core::Tensor;
use candle_nn::VarBuilder;

use super::{
    linear::{Linear, TowerWeights},
    params::Params,
};
use crate::{kernels, Result};

/// The CLIP MLP: `c_fc` (width -> 4 width), QuickGELU `x * sigmoid(1.702 x)`, `c_proj` (4 width ->
/// width).
#[derive(Clone, Debug)]
pub struct Mlp {
    c_fc: Linear,
    c_proj: Linear,
}

impl Mlp {
    /// Reads `c_fc` and `c_proj` under `vb`.
    pub fn new(vb: VarBuilder, width: usize) -> Result<Self> {
        Ok(Self {
            c_fc: Linear::new(vb.pp("c_fc"), width, 4 * width)?,
            c_proj: Linear::new(vb.pp("c_proj"), 4 * width, width)?,
        })
    }

    /// The same MLP with its weights held as `format` says.
    pub fn with_weights(&self, format: TowerWeights) -> Result<Self> {
        Ok(Self { c_fc: self.c_fc.with_weights(format)?, c_proj: self.c_proj.with_weights(format)? })
    }

    /// Applies the MLP; `train = false` runs the fused inference kernels (QuickGELU in the `c_fc` GEMM,
    /// no backward), `train = true` differentiable ones.
    // [..., width] -> [..., width]
    pub fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        kernels::mlp(x, self.c_fc.params(), self.c_proj.params(), None, train)
    }

    /// The two layers, `c_fc` and `c_proj`, for blocks that add a residual in the MLP's kernels.
    pub(super) fn layers(&self) -> (&Linear, &Linear) {
        (&self.c_fc, &self.c_proj)
    }
}

impl Params for Mlp {
    fn visit(&self, f: &mut dyn FnMut(&str, &Tensor)) {
        self.c_fc.visit(f);
        self.c_proj.visit(f);
    }
}
