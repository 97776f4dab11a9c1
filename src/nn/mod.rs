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

pub(crate) use attention::MultiHeadAttention;
pub(crate) use block::{forward_blocks, forward_blocks_at, ResidualAttentionBlock};
pub(crate) use layer_norm::LayerNorm;
pub use linear::TowerWeights;
pub(crate) use linear::{Linear, WEIGHT_INIT};
