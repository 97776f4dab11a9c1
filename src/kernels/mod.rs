//! The machinery under the layers of [`crate::nn`]; crate-internal. Imports run one way, down this list:
//!
//! - `dispatch`: one function per operation (linear with an epilogue, the MLP, attention, LayerNorm,
//!   bias add, bias + QuickGELU), each choosing the kernel by device, dtype, weight format and mode;
//!   what this module hands to the layers.
//! - `cpu`: the f32 GEMM (AVX-512 and AVX2), int8 linear layers, fused inference ops and fused training
//!   ops; `cuda` (feature `cuda`): fused CUDA kernels (`kernels.cu`) with their backward passes.
//! - `simd`: helpers every CPU kernel shares; `reference`: the operations on plain candle ops, which
//!   the kernels fall back to and are tested against; `isa`: the instruction set the CPU kernels use
//!   (detected, capped by the environment variable `ACTIONCLIP_CPU_ISA`).
//!
//! Nothing here imports the layers.
mod cpu;
#[cfg(feature = "cuda")]
mod cuda;
mod dispatch;
mod isa;
mod reference;
mod simd;
#[cfg(test)]
pub(crate) mod testing;

#[cfg(feature = "cuda")]
pub(crate) use cuda::retain_freed_memory;
pub(crate) use dispatch::{
    attention::attention,
    elementwise::{bias_add, fuses_bias_quick_gelu},
    linear::{linear, mlp, Epilogue, LinearParams, LinearWeight},
    norm::{fuses_residual_layer_norm, layer_norm, residual_add, residual_layer_norm, NormParams},
};
