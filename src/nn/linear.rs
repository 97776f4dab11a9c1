use candle_core::{Module, Tensor};
use candle_nn::{Init, VarBuilder};

use super::params::{join, Params};
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

    /// The weight [out, in].
    pub fn weight(&self) -> &Tensor {
        &self.weight
    }

    /// The bias [out], if any.
    pub fn bias(&self) -> Option<&Tensor> {
        self.bias.as_ref()
    }
}

impl Module for Linear {
    // [..., in] -> [..., out]
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let dims = x.dims();
        let in_dim = dims[dims.len() - 1];
        let rows = x.elem_count() / in_dim.max(1);
        let y = x.reshape((rows, in_dim))?.matmul(&self.weight.t()?)?;
        let y = match &self.bias {
            Some(b) => y.broadcast_add(b)?,
            None => y,
        };
        let mut out_dims = dims.to_vec();
        let last = out_dims.len() - 1;
        out_dims[last] = self.weight.dim(0)?;
        y.reshape(out_dims)
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
