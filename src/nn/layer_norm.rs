use candle_core::{DType, Tensor, D};
use candle_nn::{Init, VarBuilder};

use super::{
    fused_train,
    params::{join, Params},
};
use crate::Result;

/// LayerNorm over the last dimension, computed in f32 whatever the activation dtype (as CLIP does).
#[derive(Clone, Debug)]
pub struct LayerNorm {
    weight: Tensor,
    bias: Tensor,
    eps: f64,
}

impl LayerNorm {
    /// Reads `weight` [dim] and `bias` [dim] under `vb`.
    pub fn new(vb: VarBuilder, dim: usize, eps: f64) -> Result<Self> {
        let weight = vb.get_with_hints(dim, "weight", Init::Const(1.))?;
        let bias = vb.get_with_hints(dim, "bias", Init::Const(0.))?;
        Ok(Self { weight, bias, eps })
    }

    /// Normalises `x` [..., dim]; `train` selects a differentiable path. f32 on the CPU runs one fused
    /// parallel op in both modes (with its own backward when training).
    // [..., dim] -> [..., dim]
    pub fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        #[cfg(feature = "cuda")]
        if super::cuda::handles(x) && super::cuda::layer_norm_fits(self.weight.elem_count()) {
            return Ok(super::cuda::layer_norm(x, &self.weight, &self.bias, self.eps)?);
        }
        if fused_train::applies(x) && self.weight.dtype() == DType::F32 && self.bias.dtype() == DType::F32 {
            return Ok(fused_train::layer_norm(x, &self.weight, &self.bias, self.eps, train)?);
        }
        let dtype = x.dtype();
        let x32 = x.to_dtype(DType::F32)?;
        let (w, b) = (self.weight.to_dtype(DType::F32)?, self.bias.to_dtype(DType::F32)?);
        let y = if train {
            let mean = x32.mean_keepdim(D::Minus1)?;
            let centred = x32.broadcast_sub(&mean)?;
            let var = centred.sqr()?.mean_keepdim(D::Minus1)?;
            centred.broadcast_div(&(var + self.eps)?.sqrt()?)?.broadcast_mul(&w)?.broadcast_add(&b)?
        } else {
            candle_nn::ops::layer_norm(&x32.contiguous()?, &w, &b, self.eps as f32)?
        };
        Ok(y.to_dtype(dtype)?)
    }
}

#[cfg(feature = "cuda")]
impl LayerNorm {
    /// `s = x + d + d_bias` and `LayerNorm(s)` in one fused CUDA pass (inference; `x` on CUDA with a
    /// width [`super::cuda::layer_norm_fits`] takes).
    // [..., dim] -> ([..., dim], [..., dim])
    pub(super) fn residual_forward_cuda(&self, x: &Tensor, d: &Tensor, d_bias: &Tensor) -> Result<(Tensor, Tensor)> {
        Ok(super::cuda::residual_layer_norm(x, d, d_bias, &self.weight, &self.bias, self.eps)?)
    }
}

impl Params for LayerNorm {
    fn visit(&self, prefix: &str, f: &mut dyn FnMut(String, &Tensor)) {
        f(join(prefix, "weight"), &self.weight);
        f(join(prefix, "bias"), &self.bias);
    }
}
