//! CPU kernels as candle custom ops: an f32 GEMM for AVX-512 and AVX2 ([`sgemm`]), int8 linear layers ([`int8`]),
//! fused inference ops ([`fused`]) and fused training ops with their own backward ([`fused_train`]).
pub(crate) mod fused;
pub(crate) mod fused_train;
pub(crate) mod int8;
#[cfg(target_arch = "x86_64")]
pub(crate) mod sgemm;
