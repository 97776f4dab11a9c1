//! The linear operation: `x @ W^T` and an [`Epilogue`], over a weight in any stored format
//! ([`LinearWeight`]), on the kernel that the device, dtype, format and mode call for:
//!
//! - CPU inference: fused kernels without backward. f32 activations on AVX-512 and AVX2 + FMA CPUs run
//!   the crate's own GEMM with the whole epilogue in it (dense weights read in place, or packed ones);
//!   int8 weights the integer GEMM; anything else the `gemm` crate's with the bias (and QuickGELU)
//!   folded in.
//! - CPU training with f32 tensors: one GEMM with the bias folded in and its own backward, QuickGELU
//!   likewise.
//! - CUDA: candle's matmul, then the bias (and QuickGELU) in one fused kernel with its backward.
//! - Elsewhere candle's plain ops ([`plain_linear`]).
//!
//! [`mlp`] chains two layers with QuickGELU between them: on the crate's GEMM in inference as one op.
use std::{ops::Range, sync::Arc};

use candle_core::{bail, DType, Tensor};

use super::elementwise::{bias_add, bias_quick_gelu, fuses_bias_quick_gelu};
use crate::kernels::cpu::{
    fused, fused_train,
    int8::{Int8Linear, Int8Weight},
};
#[cfg(target_arch = "x86_64")]
use crate::kernels::cpu::{
    fused::{GemmLayers, GemmOp},
    sgemm::{self, PackedWeight},
};
use crate::{Error, Result};

/// A linear layer's weight [out, in] in the form it is stored in.
#[derive(Clone, Debug)]
pub(crate) enum LinearWeight {
    /// A tensor [out, in]; stored in another dtype than the activations (f16 weights of an f32 model)
    /// it is cast per call.
    Dense(Tensor),
    /// Int8, packed for the CPU GEMM (inference only): the outputs `cols` of the packed matrix.
    Int8 { packed: Arc<Int8Weight>, cols: Range<usize> },
    /// f32 packed for the crate's GEMM (inference only): the outputs `cols`, which start on one of the
    /// packed panels ([`PackedWeight::outputs_from`]).
    #[cfg(target_arch = "x86_64")]
    Packed { packed: Arc<PackedWeight>, cols: Range<usize> },
}

impl LinearWeight {
    /// `w` [out, in] quantized to int8 per output channel (read back to the host).
    pub(crate) fn int8(w: &Tensor) -> Result<Self> {
        let packed = Int8Weight::quantize(w)?;
        let cols = 0..packed.out_features();
        Ok(Self::Int8 { packed: Arc::new(packed), cols })
    }

    /// `w` [out, in] as f32 panels for the crate's GEMM on the selected instruction set, or dense and
    /// unchanged where that GEMM does not run (another device, neither AVX-512F nor AVX2 + FMA, not
    /// x86-64); an error for an invalid `ACTIONCLIP_CPU_ISA`.
    pub(crate) fn packed(w: &Tensor) -> Result<Self> {
        #[cfg(target_arch = "x86_64")]
        if let (true, Some(kernel)) = (w.device().is_cpu(), sgemm::Kernel::selected()?) {
            let (n, k) = w.dims2()?;
            let values = w.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
            let packed = PackedWeight::pack(kernel, sgemm::Matrix::row_major(&values, k), n, k);
            return Ok(Self::Packed { packed: Arc::new(packed), cols: 0..n });
        }
        Ok(Self::Dense(w.clone()))
    }

    /// The weight cast to `dtype` (a no-op, graph included, when already `dtype`); int8 and packed
    /// weights stay as they are.
    pub(crate) fn to_dtype(&self, dtype: DType) -> Result<Self> {
        Ok(match self {
            Self::Dense(w) => Self::Dense(w.to_dtype(dtype)?),
            packed => packed.clone(),
        })
    }

    /// Outputs `start..start + len` (views: gradients flow back to the whole tensor); packed outputs
    /// that do not start on a panel become a dense weight.
    pub(crate) fn outputs(&self, start: usize, len: usize) -> Result<Self> {
        Ok(match self {
            Self::Dense(w) => Self::Dense(w.narrow(0, start, len)?),
            Self::Int8 { packed, cols } => Self::Int8 { packed: packed.clone(), cols: sub_range(cols, start, len)? },
            #[cfg(target_arch = "x86_64")]
            Self::Packed { packed, cols } => {
                let cols = sub_range(cols, start, len)?;
                if packed.outputs_from(cols.start).is_some() {
                    Self::Packed { packed: packed.clone(), cols }
                } else {
                    Self::Dense(unpacked(packed)?.narrow(0, cols.start, cols.len())?)
                }
            }
        })
    }

    /// The tensor of a dense weight.
    pub(crate) fn dense(&self) -> Option<&Tensor> {
        match self {
            Self::Dense(w) => Some(w),
            _ => None,
        }
    }

    /// The number of outputs.
    pub(crate) fn out_features(&self) -> usize {
        match self {
            Self::Dense(w) => w.dims().first().copied().unwrap_or(0),
            Self::Int8 { cols, .. } => cols.len(),
            #[cfg(target_arch = "x86_64")]
            Self::Packed { cols, .. } => cols.len(),
        }
    }

    /// The matrix [out, in] the layer computes with: a dense weight as it is, packed ones as f32 (int8
    /// dequantized).
    pub(crate) fn unpacked(&self) -> Result<Tensor> {
        Ok(match self {
            Self::Dense(w) => w.clone(),
            Self::Int8 { packed, cols } => packed.dequantize()?.narrow(0, cols.start, cols.len())?,
            #[cfg(target_arch = "x86_64")]
            Self::Packed { packed, cols } => unpacked(packed)?.narrow(0, cols.start, cols.len())?,
        })
    }
}

/// Outputs `start..start + len` of the outputs `cols`, or an error when they reach past them.
fn sub_range(cols: &Range<usize>, start: usize, len: usize) -> Result<Range<usize>> {
    if start + len > cols.len() {
        return Err(Error::Config(format!("outputs {start}..{} of a layer with {} outputs", start + len, cols.len())));
    }
    Ok(cols.start + start..cols.start + start + len)
}

/// The f32 matrix [out, in] of a packed weight, on the CPU.
#[cfg(target_arch = "x86_64")]
fn unpacked(packed: &PackedWeight) -> candle_core::Result<Tensor> {
    Tensor::from_vec(packed.unpack(), (packed.out_features(), packed.in_features()), &candle_core::Device::Cpu)
}

/// A linear layer's parameters as the kernels take them.
#[derive(Clone, Copy, Debug)]
pub(crate) struct LinearParams<'a> {
    /// The weight [out, in].
    pub(crate) weight: &'a LinearWeight,
    /// The bias [out], if any.
    pub(crate) bias: Option<&'a Tensor>,
}

/// What [`linear`] applies after the product `x @ W^T`.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Epilogue<'a> {
    /// Nothing, not even the bias: candle's matmul in every mode (differentiable; dense weights), for
    /// kernels that fold the bias into a later op.
    None,
    /// The bias.
    Bias,
    /// The bias, then QuickGELU `v * sigmoid(1.702 v)`.
    BiasQuickGelu,
    /// The bias, then this residual [..., out] added.
    BiasResidual(&'a Tensor),
}

/// `x @ W^T` and `epilogue` over the last dimension of `x` [..., in], as one 2-D GEMM over every leading
/// dimension (candle turns a 3-D activation times a 2-D weight into many small GEMMs otherwise);
/// `train` picks differentiable kernels. Int8 and packed weights run in inference on the CPU only.
// [..., in] -> [..., out]
pub(crate) fn linear(x: &Tensor, layer: LinearParams<'_>, epilogue: Epilogue<'_>, train: bool) -> Result<Tensor> {
    match epilogue {
        Epilogue::None => Ok(matmul(x, layer.weight)?),
        _ if x.device().is_cpu() && !train => cpu_inference(x, layer, epilogue),
        Epilogue::Bias => biased(x, layer, train),
        Epilogue::BiasQuickGelu => match layer.bias {
            Some(b) if fuses_bias_quick_gelu(x, layer.weight.out_features()) => {
                Ok(bias_quick_gelu(&matmul(x, layer.weight)?, Some(b), train)?)
            }
            _ => Ok(bias_quick_gelu(&biased(x, layer, train)?, None, train)?),
        },
        Epilogue::BiasResidual(residual) => Ok((biased(x, layer, train)? + residual)?),
    }
}

/// The CLIP MLP `c_proj(QuickGELU(c_fc(x)))`, with `residual` [..., out] added when given: in inference
/// on the crate's GEMM with f32 activations one op (the hidden activations in a reused scratch buffer,
/// read in place by `c_proj`, the residual added in its epilogue), else two [`linear`] calls.
// [..., in] -> [..., out]
pub(crate) fn mlp(
    x: &Tensor,
    c_fc: LinearParams<'_>,
    c_proj: LinearParams<'_>,
    residual: Option<&Tensor>,
    train: bool,
) -> Result<Tensor> {
    #[cfg(target_arch = "x86_64")]
    if let Some(kernel) = gemm_kernel(x, train)? {
        let (x2, out_dims) = flatten(x, c_proj.weight.out_features())?;
        let fused = gemm_layer(kernel, c_fc, x2.dim(1)?, true, |fc1| {
            gemm_layer(kernel, c_proj, c_fc.weight.out_features(), false, |fc2| {
                let op = GemmOp { kernel, layers: GemmLayers::Mlp(fc1, fc2) };
                Ok(op.apply(&x2, residual)?.reshape(out_dims)?)
            })
        })?;
        if let Some(y) = fused.flatten() {
            return Ok(y);
        }
    }
    let hidden = linear(x, c_fc, Epilogue::BiasQuickGelu, train)?;
    linear(&hidden, c_proj, residual.map_or(Epilogue::Bias, Epilogue::BiasResidual), train)
}

/// `x @ W^T + bias` on candle's own ops (one 2-D GEMM, then the bias add), differentiable on every
/// device and dtype; dense weights only.
// [..., in] -> [..., out]
fn plain_linear(x: &Tensor, layer: LinearParams<'_>) -> candle_core::Result<Tensor> {
    let y = matmul(x, layer.weight)?;
    match layer.bias {
        Some(b) => bias_add(&y, b),
        None => Ok(y),
    }
}

/// `x @ W^T + bias`, differentiable: the fused op with its own backward for f32 CPU tensors and weights
/// in training, [`plain_linear`] elsewhere.
// [..., in] -> [..., out]
fn biased(x: &Tensor, layer: LinearParams<'_>, train: bool) -> Result<Tensor> {
    let f32_bias = layer.bias.is_none_or(|b| b.dtype() == DType::F32);
    match layer.weight {
        LinearWeight::Dense(w) if train && fused_train::applies(x) && w.dtype() == DType::F32 && f32_bias => {
            Ok(fused_train::linear(x, w, layer.bias)?)
        }
        _ => Ok(plain_linear(x, layer)?),
    }
}

/// `x @ W^T` as one 2-D GEMM on candle's matmul, the weight cast to the activations' dtype
/// (differentiable; dense weights only).
// [..., in] -> [..., out]
fn matmul(x: &Tensor, weight: &LinearWeight) -> candle_core::Result<Tensor> {
    let LinearWeight::Dense(w) = weight else {
        bail!("int8 and packed weights are for inference on the CPU (Linear::forward_t with train = false)")
    };
    let (x2, out_dims) = flatten(x, weight.out_features())?;
    x2.matmul(&w.to_dtype(x.dtype())?.t()?)?.reshape(out_dims)
}

/// The inference forward on the CPU (no backward): one GEMM with the whole epilogue where the crate's
/// GEMM runs; else the bias (and QuickGELU) inside the kernel and the residual added after it.
// [..., in] -> [..., out]
fn cpu_inference(x: &Tensor, layer: LinearParams<'_>, epilogue: Epilogue<'_>) -> Result<Tensor> {
    let (gelu, residual) = match epilogue {
        Epilogue::BiasQuickGelu => (true, None),
        Epilogue::BiasResidual(r) => (false, Some(r)),
        Epilogue::None | Epilogue::Bias => (false, None),
    };
    let (x2, out_dims) = flatten(x, layer.weight.out_features())?;
    #[cfg(target_arch = "x86_64")]
    if let Some(kernel) = gemm_kernel(x, false)? {
        let op = |gemm: sgemm::Layer| GemmOp { kernel, layers: GemmLayers::Linear(gemm) }.apply(&x2, residual);
        if let Some(y) = gemm_layer(kernel, layer, x2.dim(1)?, gelu, op)? {
            return Ok(y.reshape(out_dims)?);
        }
    }
    let y = match layer.weight {
        LinearWeight::Dense(w) => {
            let w = w.to_dtype(x.dtype())?;
            if gelu {
                fused::linear_quick_gelu(&x2, &w, layer.bias)?
            } else {
                fused::linear(&x2, &w, layer.bias)?
            }
        }
        LinearWeight::Int8 { packed, cols } => {
            if x.dtype() != DType::F32 {
                return Err(packed_activations_error(x));
            }
            let bias = layer.bias.map(|b| b.to_dtype(DType::F32)?.to_vec1::<f32>()).transpose()?;
            x2.contiguous()?.apply_op1_no_bwd(&Int8Linear {
                weight: packed,
                cols: cols.clone(),
                bias,
                quick_gelu: gelu,
            })?
        }
        // Packed weights that did not run above: the activations are not f32.
        #[cfg(target_arch = "x86_64")]
        LinearWeight::Packed { .. } => return Err(packed_activations_error(x)),
    };
    let y = y.reshape(out_dims)?;
    Ok(match residual {
        Some(r) => (y + r)?,
        None => y,
    })
}

/// The kernel of the crate's GEMM for an inference forward (`train` false) of `x`: f32 activations on
/// the CPU and a kernel for the selected instruction set; `None` otherwise.
#[cfg(target_arch = "x86_64")]
fn gemm_kernel(x: &Tensor, train: bool) -> Result<Option<sgemm::Kernel>> {
    if train || !cpu_f32(x) {
        return Ok(None);
    }
    sgemm::Kernel::selected()
}

/// Runs `f` on `layer` as the GEMM on `kernel` takes it (its epilogue with QuickGELU when `gelu`), for
/// f32 CPU activations of `features` features: f32 weights on the CPU, dense (read in place from the
/// tensor's storage, held for the call) or packed for `kernel`. `None` where the GEMM does not run; an
/// error when `features` is not the layer's number of inputs or the weight is packed for another kernel.
#[cfg(target_arch = "x86_64")]
fn gemm_layer<R>(
    kernel: sgemm::Kernel,
    layer: LinearParams<'_>,
    features: usize,
    gelu: bool,
    f: impl FnOnce(sgemm::Layer) -> Result<R>,
) -> Result<Option<R>> {
    if !layer.bias.is_none_or(|b| b.device().is_cpu()) {
        return Ok(None);
    }
    let in_features = match layer.weight {
        LinearWeight::Dense(w) if cpu_f32(w) => w.dims2()?.1,
        LinearWeight::Packed { packed, .. } => packed.in_features(),
        _ => return Ok(None),
    };
    if features != in_features {
        return Err(Error::Config(format!("a linear layer of {in_features} inputs applied to {features} features")));
    }
    let bias = layer.bias.map(|b| b.to_dtype(DType::F32)?.to_vec1::<f32>()).transpose()?;
    let epilogue = sgemm::Epilogue { bias: bias.as_deref(), gelu, residual: None };
    let outputs = layer.weight.out_features();
    match layer.weight {
        LinearWeight::Packed { packed, .. } if packed.kernel() != kernel => Err(Error::Config(format!(
            "a weight packed for the {:?} GEMM run where the {kernel:?} one is selected",
            packed.kernel()
        ))),
        LinearWeight::Packed { packed, cols } => {
            let weight = packed
                .outputs_from(cols.start)
                .ok_or_else(|| Error::Config(format!("packed outputs {cols:?} do not start on a panel")))?;
            f(sgemm::Layer { weight, outputs, epilogue }).map(Some)
        }
        LinearWeight::Dense(w) => {
            let (storage, layout) = w.storage_and_layout();
            let candle_core::Storage::Cpu(cpu) = &*storage else { return Ok(None) };
            let weight = sgemm::WeightOperand::Strided(sgemm::Matrix::of(cpu.as_slice::<f32>()?, layout));
            f(sgemm::Layer { weight, outputs, epilogue }).map(Some)
        }
        LinearWeight::Int8 { .. } => Ok(None),
    }
}

/// `x` [..., in] as [rows, in], and the output dims [..., out].
fn flatten(x: &Tensor, out: usize) -> candle_core::Result<(Tensor, Vec<usize>)> {
    let dims = x.dims();
    let in_dim = dims.last().copied().unwrap_or(1);
    let rows = x.elem_count() / in_dim.max(1);
    let mut out_dims = dims.to_vec();
    if let Some(last) = out_dims.last_mut() {
        *last = out;
    }
    Ok((x.reshape((rows, in_dim))?, out_dims))
}

/// Whether `t` holds f32 values on the CPU.
#[cfg(target_arch = "x86_64")]
fn cpu_f32(t: &Tensor) -> bool {
    t.device().is_cpu() && t.dtype() == DType::F32
}

/// The error of packed (int8 or f32) weights given activations `x` other than f32 on the CPU.
fn packed_activations_error(x: &Tensor) -> Error {
    Error::Config(format!(
        "int8 and packed weights take f32 activations on the CPU, got {:?} on {:?}",
        x.dtype(),
        x.device()
    ))
}
