//! Building blocks shared by every tower: linear layers as one 2-D GEMM, LayerNorm, fused-qkv attention,
//! the QuickGELU MLP and the pre-LN residual block.
//!
//! Every forward takes `train`: `false` uses fused kernels (candle's and [`fused`]'s: fast, no backward),
//! `true` uses differentiable ops so gradients reach every parameter: on f32 CPU tensors fused ops with
//! their own backward (`fused_train`), elsewhere candle's plain ops. With the `cuda` feature,
//! half-precision and f32 CUDA tensors take [`cuda`]'s fused kernels in both modes (they have backward
//! passes).
mod attention;
mod block;
#[cfg(feature = "cuda")]
pub mod cuda;
pub mod fused;
mod fused_train;
pub mod int8;
mod layer_norm;
mod linear;
mod mlp;
pub(crate) mod params;
#[cfg(target_arch = "x86_64")]
mod sgemm;

pub use attention::MultiHeadAttention;
pub use block::ResidualAttentionBlock;
pub(crate) use block::{forward_blocks, forward_blocks_at};
pub use layer_norm::LayerNorm;
pub use linear::{Linear, TowerWeights, WEIGHT_INIT};
pub use mlp::{quick_gelu, Mlp};
pub use params::Params;

/// `x + b` with `b` broadcast over the leading dimensions of `x` (`b`'s shape a suffix of `x`'s):
/// one fused kernel with a coalesced bias gradient on CUDA (candle's strided broadcast and its reduction
/// are slow there), `broadcast_add` elsewhere. Differentiable.
// [..., S] + [S] -> [..., S]
pub(crate) fn add_broadcast(x: &candle_core::Tensor, b: &candle_core::Tensor) -> candle_core::Result<candle_core::Tensor> {
    #[cfg(feature = "cuda")]
    if cuda::handles(x) && b.elem_count() % 8 == 0 && x.elem_count() % b.elem_count().max(1) == 0 {
        let rows = x.elem_count() / b.elem_count().max(1);
        return cuda::bias_add(&x.reshape((rows, b.elem_count()))?, &b.flatten_all()?)?.reshape(x.shape());
    }
    x.broadcast_add(b)
}
