//! LayerNorm, alone or after a residual add.
#[cfg(feature = "cuda")]
use candle_core::D;
use candle_core::{DType, Tensor};

#[cfg(feature = "cuda")]
use crate::kernels::cuda;
use crate::kernels::{cpu::fused_train, reference};
use crate::Result;

/// A LayerNorm's parameters as the kernels take them.
#[derive(Clone, Copy, Debug)]
pub(crate) struct NormParams<'a> {
    /// The scale [dim].
    pub(crate) weight: &'a Tensor,
    /// The shift [dim].
    pub(crate) bias: &'a Tensor,
    /// Added to the variance.
    pub(crate) eps: f64,
}

/// LayerNorm over the last dimension of `x` [..., dim], differentiable when `train`: one fused kernel
/// with its backward on CUDA (widths up to 2048, divisible by 8), one fused parallel op for f32 on the
/// CPU (with its own backward when training), candle's ops in f32 elsewhere.
// [..., dim] -> [..., dim]
pub(crate) fn layer_norm(x: &Tensor, norm: NormParams<'_>, train: bool) -> Result<Tensor> {
    let NormParams { weight, bias, eps } = norm;
    #[cfg(feature = "cuda")]
    if cuda::handles(x) && cuda::layer_norm_fits(weight.elem_count()) {
        return Ok(cuda::layer_norm(x, weight, bias, eps)?);
    }
    if fused_train::applies(x) && weight.dtype() == DType::F32 && bias.dtype() == DType::F32 {
        return Ok(fused_train::layer_norm(x, weight, bias, eps, train)?);
    }
    Ok(reference::layer_norm(x, weight, bias, eps, train)?)
}

/// Whether [`residual_layer_norm`] and [`residual_add`] run `x` as one fused kernel each: a CUDA tensor
/// the kernels take, with a width the LayerNorm kernels take.
#[cfg(feature = "cuda")]
pub(crate) fn fuses_residual_layer_norm(x: &Tensor) -> Result<bool> {
    Ok(cuda::handles(x) && cuda::layer_norm_fits(x.dim(D::Minus1)?))
}

/// Whether [`residual_layer_norm`] and [`residual_add`] run as fused kernels: never without the `cuda`
/// feature.
#[cfg(not(feature = "cuda"))]
pub(crate) fn fuses_residual_layer_norm(_: &Tensor) -> Result<bool> {
    Ok(false)
}

/// The residual stream `s = x + d + d_bias` (`x`, `d` [..., dim], `d_bias` [dim]) and `LayerNorm(s)`, for
/// inference (no backward): one kernel where [`fuses_residual_layer_norm`] says so, plain ops elsewhere.
// [..., dim] -> ([..., dim], [..., dim])
pub(crate) fn residual_layer_norm(
    x: &Tensor,
    d: &Tensor,
    d_bias: &Tensor,
    norm: NormParams<'_>,
) -> Result<(Tensor, Tensor)> {
    #[cfg(feature = "cuda")]
    if fuses_residual_layer_norm(x)? {
        return Ok(cuda::residual_layer_norm(x, d, d_bias, norm.weight, norm.bias, norm.eps)?);
    }
    let s = residual_add(x, d, d_bias)?;
    let y = layer_norm(&s, norm, false)?;
    Ok((s, y))
}

/// `x + d + d_bias` (`x`, `d` [..., dim], `d_bias` [dim]) for inference (no backward): one kernel where
/// [`fuses_residual_layer_norm`] says so, plain ops elsewhere.
// [..., dim] -> [..., dim]
pub(crate) fn residual_add(x: &Tensor, d: &Tensor, d_bias: &Tensor) -> Result<Tensor> {
    #[cfg(feature = "cuda")]
    if fuses_residual_layer_norm(x)? {
        return Ok(cuda::residual_add(x, d, d_bias)?);
    }
    Ok((x + d.broadcast_add(d_bias)?)?)
}
