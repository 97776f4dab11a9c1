//! Building blocks shared by every tower: linear layers as one 2-D GEMM, LayerNorm, fused-qkv attention,
//! the QuickGELU MLP and the pre-LN residual block.
//!
//! Every forward takes `train`: `false` uses fused kernels (candle's and [`fused`]'s: fast, no backward),
//! `true` uses only differentiable ops so gradients reach every parameter. With the `cuda` feature,
//! half-precision and f32 CUDA tensors take [`cuda`]'s fused kernels in both modes (they have backward
//! passes).
mod attention;
mod block;
#[cfg(feature = "cuda")]
pub mod cuda;
pub mod fused;
mod layer_norm;
mod linear;
mod mlp;
pub(crate) mod params;

pub use attention::MultiHeadAttention;
pub use block::ResidualAttentionBlock;
pub use layer_norm::LayerNorm;
pub use linear::{Linear, WEIGHT_INIT};
pub use mlp::{quick_gelu, Mlp};
pub use params::Params;
