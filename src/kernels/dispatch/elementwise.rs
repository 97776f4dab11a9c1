//! Elementwise operations with a bias broadcast over rows: `x + bias` and `QuickGELU(x + bias)`.
use candle_core::Tensor;

#[cfg(feature = "cuda")]
use crate::kernels::cuda;
use crate::kernels::{cpu::fused_train, reference};

/// `x + b` with `b` broadcast over the leading dimensions of `x` (`b`'s shape a suffix of `x`'s):
/// one fused kernel with a coalesced bias gradient on CUDA (candle's strided broadcast and its reduction
/// are slow there), `broadcast_add` elsewhere. Differentiable.
// [..., S] + [S] -> [..., S]
pub(crate) fn bias_add(x: &Tensor, b: &Tensor) -> candle_core::Result<Tensor> {
    #[cfg(feature = "cuda")]
    if cuda::handles(x) && b.elem_count().is_multiple_of(8) && x.elem_count().is_multiple_of(b.elem_count().max(1)) {
        let rows = x.elem_count() / b.elem_count().max(1);
        return cuda::bias_add(&x.reshape((rows, b.elem_count()))?, &b.flatten_all()?)?.reshape(x.shape());
    }
    x.broadcast_add(b)
}

/// Whether [`bias_quick_gelu`] runs `x` and a bias of `cols` values as one fused kernel: a CUDA tensor
/// the kernels take and a width divisible by 8.
#[cfg(feature = "cuda")]
pub(crate) fn fuses_bias_quick_gelu(x: &Tensor, cols: usize) -> bool {
    cuda::handles(x) && cols.is_multiple_of(8)
}

/// Whether [`bias_quick_gelu`] runs as one fused kernel: never without the `cuda` feature.
#[cfg(not(feature = "cuda"))]
pub(crate) fn fuses_bias_quick_gelu(_: &Tensor, _: usize) -> bool {
    false
}

/// QuickGELU `u * sigmoid(1.702 u)` of `u = x + bias` (`bias` [C] broadcast over `x` [..., C], or no
/// bias), differentiable: one fused kernel where [`fuses_bias_quick_gelu`] says so, the fused CPU op with
/// its own backward for f32 CPU tensors in training, candle's plain ops elsewhere.
// [..., C] -> [..., C]
pub(crate) fn bias_quick_gelu(x: &Tensor, bias: Option<&Tensor>, train: bool) -> candle_core::Result<Tensor> {
    #[cfg(feature = "cuda")]
    if let Some(b) = bias.filter(|b| fuses_bias_quick_gelu(x, b.elem_count())) {
        return cuda::bias_quick_gelu(x, b);
    }
    let u = match bias {
        Some(b) => bias_add(x, b)?,
        None => x.clone(),
    };
    if train && fused_train::applies(&u) {
        fused_train::quick_gelu(&u)
    } else {
        reference::quick_gelu(&u)
    }
}
