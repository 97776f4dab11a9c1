use std::{ops::Range, sync::Arc};

use candle_core::{DType, Module, Tensor};
use candle_nn::{Init, VarBuilder};

use super::{
    fused, fused_train,
    int8::{Int8Linear, Int8Weight},
    params::{join, Params},
};
#[cfg(target_arch = "x86_64")]
use super::sgemm::{self, PackedWeight};
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
    /// f32, laid out once in the panels the CPU's AVX-512 GEMM reads (CPU and f32 activations only,
    /// inference only): the results of `Full` bit for bit without re-packing every weight on every call.
    /// Where that kernel does not run (another device, no AVX-512F, or not x86-64) the weights stay as
    /// `Full`, so this is the fastest exact f32 choice anywhere.
    Packed,
}

impl TowerWeights {
    /// Parses `full`/`f32`, `f16`, `int8`/`q8` or `packed`/`f32-packed`.
    pub fn parse(name: &str) -> Result<Self> {
        match name.to_ascii_lowercase().as_str() {
            "full" | "f32" => Ok(Self::Full),
            "f16" => Ok(Self::F16),
            "int8" | "q8" => Ok(Self::Int8),
            "packed" | "f32-packed" => Ok(Self::Packed),
            other => Err(crate::Error::Config(format!("unknown tower weight format '{other}' (expected full, f16, int8 or packed)"))),
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
    /// f32 packed for the AVX-512 GEMM (inference only); the layer computes the outputs `cols`, which
    /// start at a multiple of [`PackedWeight::OUTPUT_ALIGN`].
    #[cfg(target_arch = "x86_64")]
    Packed { packed: Arc<PackedWeight>, cols: Range<usize> },
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
    /// int8 and packed weights stay as they are).
    pub fn to_dtype(&self, dtype: candle_core::DType) -> Result<Self> {
        let bias = self.bias.as_ref().map(|b| b.to_dtype(dtype)).transpose()?;
        let weight = match &self.weight {
            Weight::Dense(w) => Weight::Dense(w.to_dtype(dtype)?),
            packed => packed.clone(),
        };
        Ok(Self { weight, bias })
    }

    /// The same layer with its weight held as `format` says (see [`TowerWeights`]); int8 needs a CPU
    /// weight. The bias keeps its dtype.
    pub fn with_weights(&self, format: TowerWeights) -> Result<Self> {
        let Weight::Dense(w) = &self.weight else {
            return Err(crate::Error::Config("this linear layer already holds int8 or packed weights".into()));
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
            TowerWeights::Packed => pack_for_cpu(w)?,
        };
        Ok(Self { weight, bias: self.bias.clone() })
    }

    /// The layer restricted to outputs `start..start + len` (views of the weight rows and bias entries;
    /// gradients flow back to the full tensors).
    pub fn outputs(&self, start: usize, len: usize) -> Result<Self> {
        let bias = self.bias.as_ref().map(|b| b.narrow(0, start, len)).transpose()?;
        let weight = match &self.weight {
            Weight::Dense(w) => Weight::Dense(w.narrow(0, start, len)?),
            Weight::Int8 { packed, cols } => Weight::Int8 { packed: packed.clone(), cols: sub_range(cols, start, len)? },
            #[cfg(target_arch = "x86_64")]
            Weight::Packed { packed, cols } => {
                let cols = sub_range(cols, start, len)?;
                if cols.start % PackedWeight::OUTPUT_ALIGN == 0 {
                    Weight::Packed { packed: packed.clone(), cols }
                } else {
                    // Panels cannot start mid-way: these outputs run as a dense weight.
                    Weight::Dense(unpacked(packed)?.narrow(0, cols.start, cols.len())?)
                }
            }
        };
        Ok(Self { weight, bias })
    }

    /// The weight [out, in], unless it is packed (int8 or [`TowerWeights::Packed`]).
    pub fn weight(&self) -> Option<&Tensor> {
        match &self.weight {
            Weight::Dense(w) => Some(w),
            _ => None,
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
            #[cfg(target_arch = "x86_64")]
            Weight::Packed { cols, .. } => cols.len(),
        }
    }

    /// Reports the weight and bias under the names `weight_key` and `bias_key` (packed weights as the
    /// f32 matrix the layer computes with: int8 dequantized).
    pub(crate) fn visit_as(&self, weight_key: String, bias_key: String, f: &mut dyn FnMut(String, &Tensor)) {
        let unpacked = match &self.weight {
            Weight::Dense(w) => Ok(w.clone()),
            Weight::Int8 { packed, cols } => packed.dequantize().and_then(|w| w.narrow(0, cols.start, cols.len())),
            #[cfg(target_arch = "x86_64")]
            Weight::Packed { packed, cols } => unpacked(packed).and_then(|w| w.narrow(0, cols.start, cols.len())),
        };
        if let Ok(w) = unpacked {
            f(weight_key, &w);
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
            return self.forward_inference(x, false, None);
        }
        match &self.weight {
            Weight::Dense(w) if fused_train::applies(x) && w.dtype() == DType::F32 && self.bias.as_ref().is_none_or(|b| b.dtype() == DType::F32) => {
                Ok(fused_train::linear(x, w, self.bias.as_ref())?)
            }
            _ => Ok(self.forward(x)?),
        }
    }

    /// The fused inference forward, with QuickGELU applied to the output when `quick_gelu`, then
    /// `residual` [..., out] added when given (in the GEMM's epilogue on AVX-512 CPUs).
    // [..., in] -> [..., out]
    pub(crate) fn forward_inference(&self, x: &Tensor, quick_gelu: bool, residual: Option<&Tensor>) -> Result<Tensor> {
        let (x2, out_dims) = self.flatten(x)?;
        #[cfg(target_arch = "x86_64")]
        if cpu_f32(x) {
            let op = |layer: sgemm::Layer| super::fused::GemmOp::Linear(layer).apply(&x2, residual);
            if let Some(y) = self.with_gemm_layer(x2.dim(1)?, quick_gelu, op)? {
                return Ok(y.reshape(out_dims)?);
            }
        }
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
                    return Err(packed_activations_error(x));
                }
                let bias = self.bias.as_ref().map(|b| b.to_dtype(DType::F32)?.to_vec1::<f32>()).transpose()?;
                x2.contiguous()?.apply_op1_no_bwd(&Int8Linear { weight: packed, cols: cols.clone(), bias, quick_gelu })?
            }
            // Packed weights that did not run above: the activations are not f32 on the CPU.
            #[cfg(target_arch = "x86_64")]
            Weight::Packed { .. } => return Err(packed_activations_error(x)),
        };
        let y = y.reshape(out_dims)?;
        Ok(match residual {
            Some(r) => (y + r)?,
            None => y,
        })
    }

    /// `x @ weight^T` without the bias, as one 2-D GEMM (differentiable; dense weights only).
    // [..., in] -> [..., out]
    pub(crate) fn forward_unbiased(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let Weight::Dense(w) = &self.weight else {
            candle_core::bail!("int8 and packed weights are for inference on the CPU (Linear::forward_t with train = false)")
        };
        let (x2, out_dims) = self.flatten(x)?;
        x2.matmul(&w.to_dtype(x.dtype())?.t()?)?.reshape(out_dims)
    }

    /// Runs `f` on this layer as the AVX-512 GEMM takes it (its epilogue with QuickGELU when
    /// `quick_gelu`), for f32 CPU activations of `features` features: f32 weights on the CPU, dense (read
    /// in place from the tensor's storage, held for the call) or packed. `None` where that kernel does
    /// not run; an error when `features` is not this layer's number of inputs.
    #[cfg(target_arch = "x86_64")]
    pub(super) fn with_gemm_layer<R>(&self, features: usize, quick_gelu: bool, f: impl FnOnce(sgemm::Layer) -> Result<R>) -> Result<Option<R>> {
        if !self.bias.as_ref().is_none_or(|b| b.device().is_cpu()) || !sgemm::available() {
            return Ok(None);
        }
        let in_features = match &self.weight {
            Weight::Dense(w) if cpu_f32(w) => w.dims2()?.1,
            Weight::Packed { packed, .. } => packed.in_features(),
            _ => return Ok(None),
        };
        if features != in_features {
            return Err(crate::Error::Config(format!("a linear layer of {in_features} inputs applied to {features} features")));
        }
        let bias = self.bias.as_ref().map(|b| b.to_dtype(DType::F32)?.to_vec1::<f32>()).transpose()?;
        let epilogue = sgemm::Epilogue { bias: bias.as_deref(), gelu: quick_gelu, residual: None };
        let outputs = self.out_features();
        match &self.weight {
            Weight::Packed { packed, cols } => {
                let weight = packed.outputs_from(cols.start).ok_or_else(|| crate::Error::Config(format!("packed outputs {cols:?} do not start on a panel")))?;
                f(sgemm::Layer { weight, outputs, epilogue }).map(Some)
            }
            Weight::Dense(w) => {
                let (storage, layout) = w.storage_and_layout();
                let candle_core::Storage::Cpu(cpu) = &*storage else { return Ok(None) };
                let weight = sgemm::WeightOperand::Strided(sgemm::Matrix::of(cpu.as_slice::<f32>()?, layout));
                f(sgemm::Layer { weight, outputs, epilogue }).map(Some)
            }
            Weight::Int8 { .. } => Ok(None),
        }
    }

    /// `x` [..., in] as [rows, in], and the output dims [..., out].
    pub(super) fn flatten(&self, x: &Tensor) -> candle_core::Result<(Tensor, Vec<usize>)> {
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

/// Whether `t` holds f32 values on the CPU.
#[cfg(target_arch = "x86_64")]
pub(super) fn cpu_f32(t: &Tensor) -> bool {
    t.device().is_cpu() && t.dtype() == DType::F32
}

/// The error of packed (int8 or f32) weights given activations `x` other than f32 on the CPU.
fn packed_activations_error(x: &Tensor) -> crate::Error {
    crate::Error::Config(format!("int8 and packed weights take f32 activations on the CPU, got {:?} on {:?}", x.dtype(), x.device()))
}

/// Outputs `start..start + len` of the outputs `cols`, or an error when they reach past them.
fn sub_range(cols: &Range<usize>, start: usize, len: usize) -> Result<Range<usize>> {
    if start + len > cols.len() {
        return Err(crate::Error::Config(format!("outputs {start}..{} of a layer with {} outputs", start + len, cols.len())));
    }
    Ok(cols.start + start..cols.start + start + len)
}

/// `w` [out, in] as f32 panels for the AVX-512 GEMM, or unchanged where that kernel does not run.
fn pack_for_cpu(w: &Tensor) -> Result<Weight> {
    #[cfg(target_arch = "x86_64")]
    if w.device().is_cpu() && sgemm::available() {
        let (n, k) = w.dims2()?;
        let values = w.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
        let packed = PackedWeight::pack(sgemm::Matrix::row_major(&values, k), n, k);
        return Ok(Weight::Packed { packed: Arc::new(packed), cols: 0..n });
    }
    Ok(Weight::Dense(w.clone()))
}

/// The f32 matrix [out, in] of a packed weight, on the CPU.
#[cfg(target_arch = "x86_64")]
fn unpacked(packed: &PackedWeight) -> candle_core::Result<Tensor> {
    Tensor::from_vec(packed.unpack(), (packed.out_features(), packed.in_features()), &candle_core::Device::Cpu)
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

#[cfg(test)]
mod tests {
    use candle_core::{Device, Tensor};

    use super::*;

    #[test]
    fn packed_views_at_any_output_match_the_dense_layer() -> Result<()> {
        // Width 40: the outputs 40..120 do not start on a panel boundary and run dense; 64.. does.
        let (out, width) = (120, 40);
        let weight = Tensor::randn(0f32, 1., (out, width), &Device::Cpu)?;
        let full = Linear::from_tensors(weight, Some(Tensor::randn(0f32, 1., out, &Device::Cpu)?));
        let packed = full.with_weights(TowerWeights::Packed)?;
        let x = Tensor::randn(0f32, 1., (3, 5, width), &Device::Cpu)?;
        for (start, len) in [(0, out), (width, 2 * width), (64, 56)] {
            let want = full.outputs(start, len)?.forward_inference(&x, true, None)?;
            let got = packed.outputs(start, len)?.forward_inference(&x, true, None)?;
            assert_eq!(got.dims(), [3, 5, len]);
            assert_eq!((got - want)?.abs()?.max_all()?.to_scalar::<f32>()?, 0.0, "outputs {start}..{}", start + len);
        }
        assert!(packed.outputs(100, 40).is_err());
        let mut seen = Vec::new();
        packed.visit_as("w".into(), "b".into(), &mut |name, t| seen.push((name, t.dims().to_vec())));
        assert_eq!(seen, [("w".to_string(), vec![out, width]), ("b".to_string(), vec![out])]);
        Ok(())
    }
}
