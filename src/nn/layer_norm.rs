use candle_core::Tensor;
use candle_nn::{Init, VarBuilder};

use super::params::{Named, Params};
use crate::{
    kernels::{self, NormParams},
    Result,
};

/// LayerNorm over the last dimension, computed in f32 whatever the activation dtype (as CLIP does).
#[derive(Clone, Debug)]
pub struct LayerNorm {
    weight: Named<Tensor>,
    bias: Named<Tensor>,
    eps: f64,
}

impl LayerNorm {
    /// Reads `weight` \[dim\] and `bias` \[dim\] under `vb`.
    pub fn new(vb: VarBuilder, dim: usize, eps: f64) -> Result<Self> {
        let weight = Named::read(&vb, dim, "weight", Init::Const(1.))?;
        let bias = Named::read(&vb, dim, "bias", Init::Const(0.))?;
        Ok(Self { weight, bias, eps })
    }

    /// Normalises `x` [..., dim]; `train` selects a differentiable path.
    // [..., dim] -> [..., dim]
    pub fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        kernels::layer_norm(x, self.params(), train)
    }

    /// The parameters as the kernels take them, for blocks that fold a residual add into the norm.
    pub(crate) fn params(&self) -> NormParams<'_> {
        NormParams { weight: &self.weight, bias: &self.bias, eps: self.eps }
    }
}

impl Params for LayerNorm {
    fn visit(&self, f: &mut dyn FnMut(&str, &Tensor)) {
        self.weight.visit(f);
        self.bias.visit(f);
    }
}
