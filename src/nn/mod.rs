//! Building blocks shared by every tower: linear layers as one 2-D GEMM in any weight format, LayerNorm,
//! fused-qkv attention, the QuickGELU MLP and the pre-LN residual block.
//!
//! Each layer has one forward taking `train`: `false` runs fused inference kernels (no backward),
//! `true` differentiable ones, so gradients reach every parameter. Which kernel runs for a device, dtype
//! and weight format is the kernel layer's choice (`crate::kernels`): on f32 CPU tensors fused ops (with
//! their own backward when training), with the `cuda` feature fused CUDA kernels with backward passes,
//! elsewhere candle's plain ops.
mod attention;
mod block;
mod layer_norm;
mod linear;
mod mlp;
pub(crate) mod params;

pub use attention::MultiHeadAttention;
pub use block::ResidualAttentionBlock;
pub(crate) use block::{forward_blocks, forward_blocks_at};
pub use layer_norm::LayerNorm;
pub use linear::{Linear, TowerWeights, WEIGHT_INIT};
pub use mlp::Mlp;
pub use params::Params;
