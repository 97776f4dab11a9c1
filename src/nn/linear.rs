use candle_core::{Module, Tensor};
use candle_nn::{Init, VarBuilder};

use super::{
    fused,
    params::{join, Params},
};
use crate::Result;

/// Initialiser of new linear weights (ActionCLIP: N(0, 0.02)); biases start at 0.
pub const WEIGHT_INIT: Init = Init::Randn { mean: 0., stdev: 0.02 };

/// A linear layer in PyTorch layout (`weight` [out, in], optional `bias` [out]) that always runs as one
/// 2-D GEMM over all leading dimensions (candle turns a 3-D activation times a 2-D weight into many small
/// GEMMs otherwise).
#[derive(Clone, Debug)]
pub struct Linear {
    weight: Tensor,
    bias: Option<Tensor>,
}

impl Linear {
    /// Reads `weight` [out, in] and `bias` [out] under `vb`.
    pub fn new(vb: VarBuilder, in_dim: usize, out_dim: usize) -> Result<Self> {
        let weight = vb.get_with_hints((out_dim, in_dim), "weight", WEIGHT_INIT)?;
        let bias = Some(vb.get_with_hints(out_dim, "bias", Init::Const(0.))?);
        Ok(Self { weight, bias })
    }

    /// Reads `weight` [out, in] only.
    pub fn new_no_bias(vb: VarBuilder, in_dim: usize, out_dim: usize) -> Result<Self> {
        let weight = vb.get_with_hints((out_dim, in_dim), "weight", WEIGHT_INIT)?;
        Ok(Self { weight, bias: None })
    }

    /// Wraps existing tensors (`weight` [out, in], `bias` [out]).
    pub fn from_tensors(weight: Tensor, bias: Option<Tensor>) -> Self {
        Self { weight, bias }
    }

    /// The same layer with its weights cast to `dtype` (a no-op, graph included, when already `dtype`).
    pub fn to_dtype(&self, dtype: candle_core::DType) -> Result<Self> {
        let bias = self.bias.as_ref().map(|b| b.to_dtype(dtype)).transpose()?;
        Ok(Self { weight: self.weight.to_dtype(dtype)?, bias })
    }

    /// The layer restricted to outputs `start..start + len` (views of the weight rows and bias entries;
    /// gradients flow back to the full tensors).
    pub fn outputs(&self, start: usize, len: usize) -> Result<Self> {
        let bias = self.bias.as_ref().map(|b| b.narrow(0, start, len)).transpose()?;
        Ok(Self { weight: self.weight.narrow(0, start, len)?, bias })
    }

    /// The weight [out, in].
    pub fn weight(&self) -> &Tensor {
        &self.weight
    }

    /// The bias [out], if any.
    pub fn bias(&self) -> Option<&Tensor> {
        self.bias.as_ref()
    }
}

impl Linear {
    /// Applies the layer to `x` [..., in]; `train = false` on the CPU runs the fused inference kernel
    /// (one multi-threaded GEMM with the bias folded in, no backward).
    // [..., in] -> [..., out]
    pub fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        // The fused kernel is the CPU's; other devices run the plain forward (bias kernel on CUDA).
        if train || !x.device().is_cpu() {
            Ok(self.forward(x)?)
        } else {
            self.forward_inference(x, false)
        }
    }

    /// The fused inference forward, with QuickGELU applied to the output when `quick_gelu`.
    // [..., in] -> [..., out]
    pub(crate) fn forward_inference(&self, x: &Tensor, quick_gelu: bool) -> Result<Tensor> {
        let (x2, out_dims) = self.flatten(x)?;
        let y = if quick_gelu {
            fused::linear_quick_gelu(&x2, &self.weight, self.bias.as_ref())?
        } else {
            fused::linear(&x2, &self.weight, self.bias.as_ref())?
        };
        Ok(y.reshape(out_dims)?)
    }

    /// `x @ weight^T` without the bias, as one 2-D GEMM (differentiable).
    // [..., in] -> [..., out]
    pub(crate) fn forward_unbiased(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let (x2, out_dims) = self.flatten(x)?;
        x2.matmul(&self.weight.t()?)?.reshape(out_dims)
    }

    /// `x` [..., in] as [rows, in], and the output dims [..., out].
    fn flatten(&self, x: &Tensor) -> candle_core::Result<(Tensor, Vec<usize>)> {
        let dims = x.dims();
        let in_dim = dims.last().copied().unwrap_or(1);
        let rows = x.elem_count() / in_dim.max(1);
        let mut out_dims = dims.to_vec();
        if let Some(last) = out_dims.last_mut() {
            *last = self.weight.dim(0)?;
        }
        Ok((x.reshape((rows, in_dim))?, out_dims))
    }
}

impl Module for Linear {
    /// The differentiable forward on plain candle ops (training); see [`Linear::forward_t`].
    // [..., in] -> [..., out]
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let y = self.forward_unbiased(x)?;
        match &self.bias {
            Some(b) => super::add_broadcast(&y, b),
            None => Ok(y),
        }
    }
}

impl Params for Linear {
    fn visit(&self, prefix: &str, f: &mut dyn FnMut(String, &Tensor)) {
        f(join(prefix, "weight"), &self.weight);
        if let Some(b) = &self.bias {
            f(join(prefix, "bias"), b);
        }
    }
}
