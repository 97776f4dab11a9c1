use candle_core::{Module, Tensor};
use candle_nn::VarBuilder;

use super::{
    fused_train,
    linear::{Linear, TowerWeights},
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

    /// The same MLP with its weights held as `format` says.
    pub fn with_weights(&self, format: TowerWeights) -> Result<Self> {
        Ok(Self { c_fc: self.c_fc.with_weights(format)?, c_proj: self.c_proj.with_weights(format)? })
    }

    /// Applies the MLP on differentiable candle ops (training); see [`Mlp::forward_t`].
    // [..., width] -> [..., width]
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let h = quick_gelu(&self.c_fc.forward(x)?)?;
        Ok(self.c_proj.forward(&h)?)
    }

    /// Applies the MLP; `train = false` runs the fused inference kernels (QuickGELU in the `c_fc` GEMM
    /// epilogue, no backward), `train = true` the fused training ops for f32 on the CPU, candle's plain
    /// ops elsewhere.
    // [..., width] -> [..., width]
    pub fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        #[cfg(feature = "cuda")]
        if let Some(h) = self.hidden_cuda(x)? {
            return Ok(self.c_proj.forward_t(&h, train)?);
        }
        if train && fused_train::applies(x) {
            let h = fused_train::quick_gelu(&self.c_fc.forward_t(x, true)?)?;
            return self.c_proj.forward_t(&h, true);
        }
        if train {
            return self.forward(x);
        }
        self.forward_inference(x, None)
    }

    /// The inference forward (fused kernels, no backward), with `residual` [..., width] added to the
    /// output when given: on AVX-512 CPUs one op (the hidden activations in a reused scratch buffer, read
    /// in place by `c_proj`, the residual added in its epilogue).
    // [..., width] -> [..., width]
    pub(super) fn forward_inference(&self, x: &Tensor, residual: Option<&Tensor>) -> Result<Tensor> {
        #[cfg(target_arch = "x86_64")]
        if super::linear::cpu_f32(x) {
            let (x2, out_dims) = self.c_proj.flatten(x)?;
            let fused = self.c_fc.with_gemm_layer(x2.dim(1)?, true, |fc1| {
                self.c_proj.with_gemm_layer(self.c_fc.out_features(), false, |fc2| Ok(super::fused::GemmOp::Mlp(fc1, fc2).apply(&x2, residual)?.reshape(out_dims)?))
            })?;
            if let Some(y) = fused.flatten() {
                return Ok(y);
            }
        }
        // [..., 4 width]
        let h = self.c_fc.forward_inference(x, true, None)?;
        self.c_proj.forward_inference(&h, false, residual)
    }
}

#[cfg(feature = "cuda")]
impl Mlp {
    /// The hidden activations `QuickGELU(c_fc(x))` with bias and activation in one fused CUDA kernel
    /// (differentiable), or `None` where the kernel does not apply.
    // [..., width] -> [..., 4 width]
    fn hidden_cuda(&self, x: &Tensor) -> Result<Option<Tensor>> {
        let Some(bias) = self.c_fc.bias().filter(|_| super::cuda::handles(x) && self.c_fc.out_features() % 8 == 0) else {
            return Ok(None);
        };
        Ok(Some(super::cuda::bias_quick_gelu(&self.c_fc.forward_unbiased(x)?, bias)?))
    }

    /// Whether [`Mlp::forward_unbiased_cuda`] applies: both biases present, a hidden width the fused
    /// kernel takes.
    pub(super) fn fused_cuda_applies(&self) -> bool {
        self.c_fc.bias().is_some() && self.c_proj.bias().is_some() && self.c_fc.out_features() % 8 == 0
    }

    /// The residual-branch output before the `c_proj` bias, and that bias (for fused residual kernels);
    /// `x` on CUDA, see [`Mlp::fused_cuda_applies`].
    // [..., width] -> ([..., width], [width])
    pub(super) fn forward_unbiased_cuda(&self, x: &Tensor) -> Result<(Tensor, Tensor)> {
        match (self.hidden_cuda(x)?, self.c_proj.bias()) {
            (Some(h), Some(b)) => Ok((self.c_proj.forward_unbiased(&h)?, b.clone())),
            _ => Err(candle_core::Error::Msg("fused MLP: needs CUDA input and both biases".into()).into()),
        }
    }
}

impl Params for Mlp {
    fn visit(&self, prefix: &str, f: &mut dyn FnMut(String, &Tensor)) {
        self.c_fc.visit(&join(prefix, "c_fc."), f);
        self.c_proj.visit(&join(prefix, "c_proj."), f);
    }
}
