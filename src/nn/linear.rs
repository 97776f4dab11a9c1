use candle_core::{DType, Tensor};
use candle_nn::{Init, VarBuilder};

use super::params::{Named, Params};
use crate::{
    kernels::{self, Epilogue, LinearParams, LinearWeight},
    Error, Result,
};

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
    /// (CPU and f32 activations only, inference only): a quarter of the memory, the fastest CPU path.
    Int8,
    /// f32, laid out once in the panels the crate's CPU GEMM reads (AVX-512 or AVX2 + FMA; CPU and f32
    /// activations only, inference only): the results of `Full` bit for bit without re-packing every
    /// weight on every call. Where that GEMM does not run (another device, neither AVX-512F nor AVX2 +
    /// FMA, `ACTIONCLIP_CPU_ISA=generic`, or not x86-64) the weights stay as `Full`, so this is the
    /// fastest exact f32 choice anywhere.
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
            other => Err(Error::Config(format!(
                "unknown tower weight format '{other}' (expected full, f16, int8 or packed)"
            ))),
        }
    }
}

impl std::str::FromStr for TowerWeights {
    type Err = Error;

    /// [`TowerWeights::parse`], for command-line parsers.
    fn from_str(name: &str) -> Result<Self> {
        Self::parse(name)
    }
}

/// A linear layer in PyTorch layout (`weight` [out, in], optional `bias` \[out\]) that always runs as one
/// 2-D GEMM over all leading dimensions, its weight held in any [`TowerWeights`] format.
#[derive(Clone, Debug)]
pub struct Linear {
    weight: Named<LinearWeight>,
    bias: Option<Named<Tensor>>,
}

impl Linear {
    /// Reads `weight` [out, in] and `bias` \[out\] under `vb`.
    pub fn new(vb: VarBuilder, in_dim: usize, out_dim: usize) -> Result<Self> {
        let weight = Named::read(&vb, (out_dim, in_dim), "weight", WEIGHT_INIT)?;
        let bias = Named::read(&vb, out_dim, "bias", Init::Const(0.))?;
        Ok(Self::from_named(weight, Some(bias)))
    }

    /// A layer over weights already read under their checkpoint names: `weight` [out, in], `bias` \[out\].
    pub(crate) fn from_named(weight: Named<Tensor>, bias: Option<Named<Tensor>>) -> Self {
        Self { weight: weight.map(LinearWeight::Dense), bias }
    }

    /// The same layer with its weights cast to `dtype` (a no-op, graph included, when already `dtype`;
    /// int8 and packed weights stay as they are).
    pub fn to_dtype(&self, dtype: DType) -> Result<Self> {
        let bias = self.bias.as_ref().map(|b| Ok::<_, Error>(b.with(b.to_dtype(dtype)?))).transpose()?;
        Ok(Self { weight: self.weight.with(self.weight.to_dtype(dtype)?), bias })
    }

    /// The same layer with its weight held as `format` says (see [`TowerWeights`]); int8 needs a CPU
    /// weight. The bias keeps its dtype.
    pub fn with_weights(&self, format: TowerWeights) -> Result<Self> {
        let Some(w) = self.weight.dense() else {
            return Err(Error::Config("this linear layer already holds int8 or packed weights".into()));
        };
        let weight = match format {
            TowerWeights::Full => LinearWeight::Dense(w.clone()),
            TowerWeights::F16 => LinearWeight::Dense(w.to_dtype(DType::F16)?),
            TowerWeights::Int8 if !w.device().is_cpu() => {
                return Err(Error::Config("int8 tower weights run on the CPU only; use f16 on a GPU".into()))
            }
            TowerWeights::Int8 => LinearWeight::int8(w)?,
            TowerWeights::Packed => LinearWeight::packed(w)?,
        };
        Ok(Self { weight: self.weight.with(weight), bias: self.bias.clone() })
    }

    /// The layer restricted to outputs `start..start + len` (views of the weight rows and bias entries;
    /// gradients flow back to the full tensors).
    pub fn outputs(&self, start: usize, len: usize) -> Result<Self> {
        let bias = self.bias.as_ref().map(|b| Ok::<_, Error>(b.with(b.narrow(0, start, len)?))).transpose()?;
        Ok(Self { weight: self.weight.with(self.weight.outputs(start, len)?), bias })
    }

    /// The bias \[out\], if any.
    pub fn bias(&self) -> Option<&Tensor> {
        self.bias.as_deref()
    }

    /// The number of outputs.
    pub fn out_features(&self) -> usize {
        self.weight.out_features()
    }

    /// Applies the layer to `x` [..., in]: `train = false` runs the fused inference kernels (no
    /// backward), `train = true` differentiable ones; see [`crate::nn`].
    // [..., in] -> [..., out]
    pub fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        kernels::linear(x, self.params(), Epilogue::Bias, train)
    }

    /// The parameters as the kernels take them, for layers that run this one with another epilogue.
    pub(crate) fn params(&self) -> LinearParams<'_> {
        LinearParams { weight: &self.weight, bias: self.bias.as_deref() }
    }
}

impl Params for Linear {
    /// The weight as the f32 matrix the layer computes with (int8 dequantized, packed unpacked), then
    /// the bias.
    fn visit(&self, f: &mut dyn FnMut(&str, &Tensor)) {
        if let Ok(w) = self.weight.unpacked() {
            f(self.weight.name(), &w);
        }
        self.bias.visit(f);
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use candle_core::{Device, Tensor};

    use super::*;

    #[test]
    fn packed_views_at_any_output_match_the_dense_layer() -> Result<()> {
        // Width 40: the outputs 40..120 do not start on a panel boundary and run dense; 64.. does.
        let (out, width) = (120, 40);
        let tensors = HashMap::from([
            ("fc.weight".to_string(), Tensor::randn(0f32, 1., (out, width), &Device::Cpu)?),
            ("fc.bias".to_string(), Tensor::randn(0f32, 1., out, &Device::Cpu)?),
        ]);
        let full = Linear::new(VarBuilder::from_tensors(tensors, DType::F32, &Device::Cpu).pp("fc"), width, out)?;
        let packed = full.with_weights(TowerWeights::Packed)?;
        let x = Tensor::randn(0f32, 1., (3, 5, width), &Device::Cpu)?;
        let gelu = |layer: Linear| kernels::linear(&x, layer.params(), Epilogue::BiasQuickGelu, false);
        for (start, len) in [(0, out), (width, 2 * width), (64, 56)] {
            let (want, got) = (gelu(full.outputs(start, len)?)?, gelu(packed.outputs(start, len)?)?);
            assert_eq!(got.dims(), [3, 5, len]);
            assert_eq!((got - want)?.abs()?.max_all()?.to_scalar::<f32>()?, 0.0, "outputs {start}..{}", start + len);
        }
        assert!(packed.outputs(100, 40).is_err());
        let mut seen = Vec::new();
        packed.visit(&mut |name, t| seen.push((name.to_string(), t.dims().to_vec())));
        assert_eq!(seen, [("fc.weight".to_string(), vec![out, width]), ("fc.bias".to_string(), vec![out])]);
        Ok(())
    }
}
