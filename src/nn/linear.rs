use std::{ops::Range, sync::Arc};

use candle_core::{DType, Module, Tensor};
use candle_nn::{Init, VarBuilder};

use super::{
    fused, fused_train,
    int8::{Int8Linear, Int8Weight},
    params::{join, Params},
};
use crate::Result;

/// Initialiser of new linear weights (ActionCLIP: N(0, 0.02)); biases start at 0.
pub const WEIGHT_INIT: Init = Init::Randn { mean: 0., stdev: 0.02 };

/// How the linear layers of the CLIP towers hold their weights for inference.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum TowerWeights {
    /// Tensors in the model's dtype (trainable).
    #[default]
    Full,
    /// f16 tensors, cast to the activations' dtype per call: half the memory of f32, f16 rounding of
    /// the weights.
    F16,
    /// Int8 per output channel, activations quantized per token at run time, products summed in i32
    /// ([`super::int8`]; CPU and f32 activations only, inference only): a quarter of the memory, the
    /// fastest CPU path.
    Int8,
}

impl TowerWeights {
    /// Parses `full`/`f32`, `f16` or `int8`/`q8`.
    pub fn parse(name: &str) -> Result<Self> {
        match name.to_ascii_lowercase().as_str() {
            "full" | "f32" => Ok(Self::Full),
            "f16" => Ok(Self::F16),
            "int8" | "q8" => Ok(Self::Int8),
            other => Err(crate::Error::Config(format!("unknown tower weight format '{other}' (expected full, f16 or int8)"))),
        }
    }
}

impl std::str::FromStr for TowerWeights {
    type Err = crate::Error;

    /// [`TowerWeights::parse`], for command-line parsers.
    fn from_str(name: &str) -> Result<Self> {
        Self::parse(name)
    }
}

/// How a linear layer holds its weight.
#[derive(Clone, Debug)]
enum Weight {
    /// A tensor [out, in]; stored in another dtype than the activations (f16 weights of an f32 model)
    /// it is cast per call.
    Dense(Tensor),
    /// Int8, packed for the CPU GEMM (inference only); the layer computes the output columns `cols`
    /// of the packed matrix (a view made by [`Linear::outputs`]).
    Int8 { packed: Arc<Int8Weight>, cols: Range<usize> },
}

/// A linear layer in PyTorch layout (`weight` [out, in], optional `bias` [out]) that always runs as one
/// 2-D GEMM over all leading dimensions (candle turns a 3-D activation times a 2-D weight into many small
/// GEMMs otherwise).
#[derive(Clone, Debug)]
pub struct Linear {
    weight: Weight,
    bias: Option<Tensor>,
}

impl Linear {
    /// Reads `weight` [out, in] and `bias` [out] under `vb`.
    pub fn new(vb: VarBuilder, in_dim: usize, out_dim: usize) -> Result<Self> {
        let weight = vb.get_with_hints((out_dim, in_dim), "weight", WEIGHT_INIT)?;
        let bias = Some(vb.get_with_hints(out_dim, "bias", Init::Const(0.))?);
        Ok(Self::from_tensors(weight, bias))
    }

    /// Reads `weight` [out, in] only.
    pub fn new_no_bias(vb: VarBuilder, in_dim: usize, out_dim: usize) -> Result<Self> {
        let weight = vb.get_with_hints((out_dim, in_dim), "weight", WEIGHT_INIT)?;
        Ok(Self::from_tensors(weight, None))
    }

    /// Wraps existing tensors (`weight` [out, in], `bias` [out]).
    pub fn from_tensors(weight: Tensor, bias: Option<Tensor>) -> Self {
        Self { weight: Weight::Dense(weight), bias }
    }

    /// The same layer with its weights cast to `dtype` (a no-op, graph included, when already `dtype`;
    /// int8 weights stay int8).
    pub fn to_dtype(&self, dtype: candle_core::DType) -> Result<Self> {
        let bias = self.bias.as_ref().map(|b| b.to_dtype(dtype)).transpose()?;
        let weight = match &self.weight {
            Weight::Dense(w) => Weight::Dense(w.to_dtype(dtype)?),
            int8 => int8.clone(),
        };
        Ok(Self { weight, bias })
    }

    /// The same layer with its weight held as `format` says (see [`TowerWeights`]); int8 needs a CPU
    /// weight. The bias keeps its dtype.
    pub fn with_weights(&self, format: TowerWeights) -> Result<Self> {
        let Weight::Dense(w) = &self.weight else {
            return Err(crate::Error::Config("this linear layer already holds int8 weights".into()));
        };
        let weight = match format {
            TowerWeights::Full => Weight::Dense(w.clone()),
            TowerWeights::F16 => Weight::Dense(w.to_dtype(DType::F16)?),
            TowerWeights::Int8 if !w.device().is_cpu() => {
                return Err(crate::Error::Config("int8 tower weights run on the CPU only; use f16 on a GPU".into()))
            }
            TowerWeights::Int8 => {
                let packed = Int8Weight::quantize(w)?;
                let cols = 0..packed.out_features();
                Weight::Int8 { packed: Arc::new(packed), cols }
            }
        };
        Ok(Self { weight, bias: self.bias.clone() })
    }

    /// The layer restricted to outputs `start..start + len` (views of the weight rows and bias entries;
    /// gradients flow back to the full tensors).
    pub fn outputs(&self, start: usize, len: usize) -> Result<Self> {
        let bias = self.bias.as_ref().map(|b| b.narrow(0, start, len)).transpose()?;
        let weight = match &self.weight {
            Weight::Dense(w) => Weight::Dense(w.narrow(0, start, len)?),
            Weight::Int8 { packed, cols } => {
                if start + len > cols.len() {
                    return Err(crate::Error::Config(format!("outputs {start}..{} of a layer with {} outputs", start + len, cols.len())));
                }
                Weight::Int8 { packed: packed.clone(), cols: cols.start + start..cols.start + start + len }
            }
        };
        Ok(Self { weight, bias })
    }

    /// The weight [out, in], unless it is packed as int8.
    pub fn weight(&self) -> Option<&Tensor> {
        match &self.weight {
            Weight::Dense(w) => Some(w),
            Weight::Int8 { .. } => None,
        }
    }

    /// The bias [out], if any.
    pub fn bias(&self) -> Option<&Tensor> {
        self.bias.as_ref()
    }

    /// The number of outputs.
    pub fn out_features(&self) -> usize {
        match &self.weight {
            Weight::Dense(w) => w.dims().first().copied().unwrap_or(0),
            Weight::Int8 { cols, .. } => cols.len(),
        }
    }

    /// Reports the weight and bias under the names `weight_key` and `bias_key` (int8 weights
    /// dequantized to f32: the values the layer computes with).
    pub(crate) fn visit_as(&self, weight_key: String, bias_key: String, f: &mut dyn FnMut(String, &Tensor)) {
        match &self.weight {
            Weight::Dense(w) => f(weight_key, w),
            Weight::Int8 { packed, cols } => {
                if let Ok(w) = packed.dequantize().and_then(|w| w.narrow(0, cols.start, cols.len())) {
                    f(weight_key, &w);
                }
            }
        }
        if let Some(b) = &self.bias {
            f(bias_key, b);
        }
    }
}

impl Linear {
    /// Applies the layer to `x` [..., in]. On the CPU both modes run one multi-threaded GEMM with the bias
    /// folded in: `train = false` the inference kernel (no backward), `train = true` with f32 tensors the
    /// differentiable one ([`fused_train::linear`]).
    // [..., in] -> [..., out]
    pub fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        // The fused kernels are the CPU's; other devices run the plain forward (bias kernel on CUDA).
        if !x.device().is_cpu() {
            return Ok(self.forward(x)?);
        }
        if !train {
            return self.forward_inference(x, false);
        }
        match &self.weight {
            Weight::Dense(w) if fused_train::applies(x) && w.dtype() == DType::F32 && self.bias.as_ref().is_none_or(|b| b.dtype() == DType::F32) => {
                Ok(fused_train::linear(x, w, self.bias.as_ref())?)
            }
            _ => Ok(self.forward(x)?),
        }
    }

    /// The fused inference forward, with QuickGELU applied to the output when `quick_gelu`.
    // [..., in] -> [..., out]
    pub(crate) fn forward_inference(&self, x: &Tensor, quick_gelu: bool) -> Result<Tensor> {
        let (x2, out_dims) = self.flatten(x)?;
        let y = match &self.weight {
            Weight::Dense(w) => {
                let w = w.to_dtype(x.dtype())?;
                if quick_gelu {
                    fused::linear_quick_gelu(&x2, &w, self.bias.as_ref())?
                } else {
                    fused::linear(&x2, &w, self.bias.as_ref())?
                }
            }
            Weight::Int8 { packed, cols } => {
                if !x.device().is_cpu() || x.dtype() != DType::F32 {
                    return Err(crate::Error::Config(format!("int8 weights take f32 activations on the CPU, got {:?} on {:?}", x.dtype(), x.device())));
                }
                let bias = self.bias.as_ref().map(|b| b.to_dtype(DType::F32)?.to_vec1::<f32>()).transpose()?;
                x2.contiguous()?.apply_op1_no_bwd(&Int8Linear { weight: packed, cols: cols.clone(), bias, quick_gelu })?
            }
        };
        Ok(y.reshape(out_dims)?)
    }

    /// `x @ weight^T` without the bias, as one 2-D GEMM (differentiable; dense weights only).
    // [..., in] -> [..., out]
    pub(crate) fn forward_unbiased(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let Weight::Dense(w) = &self.weight else {
            candle_core::bail!("int8 weights are for inference on the CPU (Linear::forward_t with train = false)")
        };
        let (x2, out_dims) = self.flatten(x)?;
        x2.matmul(&w.to_dtype(x.dtype())?.t()?)?.reshape(out_dims)
    }

    /// `x` [..., in] as [rows, in], and the output dims [..., out].
    fn flatten(&self, x: &Tensor) -> candle_core::Result<(Tensor, Vec<usize>)> {
        let dims = x.dims();
        let in_dim = dims.last().copied().unwrap_or(1);
        let rows = x.elem_count() / in_dim.max(1);
        let mut out_dims = dims.to_vec();
        if let Some(last) = out_dims.last_mut() {
            *last = self.out_features();
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
        self.visit_as(join(prefix, "weight"), join(prefix, "bias"), f);
    }
}
