use candle_core::{Module, Tensor};
use candle_nn::VarBuilder;

use super::{
    linear::Linear,
    params::{join, Params},
};
use crate::Result;

/// QuickGELU, `x * sigmoid(1.702 x)`, the activation of every OpenAI CLIP model.
pub fn quick_gelu(x: &Tensor) -> Result<Tensor> {
    Ok((x * candle_nn::ops::sigmoid(&(x * 1.702)?)?)?)
}

/// The CLIP MLP: `c_fc` (width -> 4 width), QuickGELU, `c_proj` (4 width -> width).
#[derive(Clone, Debug)]
pub struct Mlp {
    c_fc: Linear,
    c_proj: Linear,
}

impl Mlp {
    /// Reads `c_fc` and `c_proj` under `vb`.
    pub fn new(vb: VarBuilder, width: usize) -> Result<Self> {
        Ok(Self { c_fc: Linear::new(vb.pp("c_fc"), width, 4 * width)?, c_proj: Linear::new(vb.pp("c_proj"), 4 * width, width)? })
    }

    /// Applies the MLP on differentiable candle ops (training); see [`Mlp::forward_t`].
    // [..., width] -> [..., width]
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let h = quick_gelu(&self.c_fc.forward(x)?)?;
        Ok(self.c_proj.forward(&h)?)
    }

    /// Applies the MLP; `train = false` runs the fused inference kernels (QuickGELU in the `c_fc` GEMM
    /// epilogue, no backward).
    // [..., width] -> [..., width]
    pub fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        if train {
            return self.forward(x);
        }
        // [..., 4 width]
        let h = self.c_fc.forward_inference(x, true)?;
        self.c_proj.forward_t(&h, false)
    }
}

impl Params for Mlp {
    fn visit(&self, prefix: &str, f: &mut dyn FnMut(String, &Tensor)) {
        self.c_fc.visit(&join(prefix, "c_fc."), f);
        self.c_proj.visit(&join(prefix, "c_proj."), f);
    }
}
