//! Helpers every CPU kernel shares, at the bottom of the kernel layer: run-time multiversioning
//! ([`multiversion!`]), a pointer that parallel loops may share ([`SendPtr`]), branch-free math whose loops
//! vectorise ([`exp`], [`quick_gelu_value`], row passes for softmax and bias + QuickGELU), and checked views
//! of candle's CPU storages.
use candle_core::{bail, CpuStorage, Layout};

/// Defines `fn $name($args)` running `$generic($args)` compiled for AVX-512F or AVX2 when the selected
/// instruction set ([`Isa`](crate::kernels::isa::Isa)) has them, so the loops in `$generic` vectorise
/// wider than the baseline target.
macro_rules! multiversion {
    ($vis:vis $name:ident => $generic:ident($($arg:ident: $ty:ty),*) $(-> $ret:ty)?) => {
        $vis fn $name($($arg: $ty),*) $(-> $ret)? {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f")]
                fn avx512($($arg: $ty),*) $(-> $ret)? {
                    $generic($($arg),*)
                }
                #[target_feature(enable = "avx2")]
                fn avx2($($arg: $ty),*) $(-> $ret)? {
                    $generic($($arg),*)
                }
                match $crate::kernels::isa::Isa::selected_or_detected() {
                    // SAFETY: the selected instruction set never exceeds the CPU's: it has AVX-512F.
                    $crate::kernels::isa::Isa::Avx512 => return unsafe { avx512($($arg),*) },
                    // SAFETY: as above, the CPU has AVX2.
                    $crate::kernels::isa::Isa::Avx2 => return unsafe { avx2($($arg),*) },
                    $crate::kernels::isa::Isa::Generic => {}
                }
            }
            $generic($($arg),*)
        }
    };
}
pub(crate) use multiversion;

/// A `*mut f32` that may cross threads; every user writes a region no other thread touches.
#[derive(Clone, Copy)]
pub(crate) struct SendPtr(pub(crate) *mut f32);
// SAFETY (both impls): only used for writes to disjoint regions (see the users), the buffer outliving
// the parallel loop.
unsafe impl Send for SendPtr {}
unsafe impl Sync for SendPtr {}

impl SendPtr {
    /// The pointer (a method, so closures capture the whole `Sync` wrapper).
    pub(crate) fn get(self) -> *mut f32 {
        self.0
    }
}

/// Rows per parallel chunk of an elementwise pass over rows of `cols` values (~64 KiB per chunk).
pub(crate) fn chunk_rows(cols: usize) -> usize {
    (16384 / cols.max(1)).max(1)
}

/// Checks that every element `layout` addresses lies inside a buffer of `len` elements.
pub(crate) fn check_bounds(layout: &Layout, len: usize, what: &str) -> candle_core::Result<()> {
    let dims = layout.dims();
    if dims.contains(&0) {
        return Ok(());
    }
    let last = layout.start_offset() + dims.iter().zip(layout.stride()).map(|(d, s)| (d - 1) * s).sum::<usize>();
    if last >= len {
        bail!("{what}: layout {layout:?} reaches past its buffer of {len} elements")
    }
    Ok(())
}

/// A contiguous f32 view of a storage, or an error naming `what`.
pub(crate) fn contiguous_f32<'a>(s: &'a CpuStorage, l: &Layout, what: &str) -> candle_core::Result<&'a [f32]> {
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&s.as_slice::<f32>()?[a..b]),
        None => bail!("{what} must be contiguous"),
    }
}

/// `e^x` for f32 without branches (Cephes `expf` polynomial, ~1 ulp), so loops over it vectorise;
/// 0 below -87.3 (including -inf), +inf above 88.7, NaN for NaN.
#[inline(always)]
pub(crate) fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const ROUND: f32 = 12582912.0; // 1.5 * 2^23: adding it rounds to an integer held in the low mantissa bits
    let xc = x.clamp(-87.3, 88.7);
    let t = xc * LOG2E + ROUND;
    let nf = t - ROUND;
    let r = xc - nf * 0.693_359_4 - nf * -2.121_944_4e-4;
    let mut p = 1.987_569_1e-4_f32;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 1.666_666_5e-1;
    p = p * r + 0.5;
    let y = p * r * r + r + 1.0;
    let pow2 = f32::from_bits(((t.to_bits() as i32 - 0x4B40_0000 + 127) << 23) as u32);
    let e = y * pow2;
    if x < -87.3 {
        0.0
    } else if x > 88.7 {
        f32::INFINITY
    } else {
        e
    }
}

/// QuickGELU `v * sigmoid(1.702 v)` of one value, as `v / (1 + e^(-1.702 v))` with the vectorisable [`exp`].
#[inline(always)]
pub(crate) fn quick_gelu_value(v: f32) -> f32 {
    v / (1.0 + exp(-1.702 * v))
}

multiversion!(pub(crate) bias_quick_gelu => bias_quick_gelu_generic(row: &mut [f32], bias: Option<&[f32]>));
multiversion!(pub(crate) softmax_inplace => softmax_generic(row: &mut [f32]));

/// QuickGELU `v * sigmoid(1.702 v)` of `row + bias` in place (`bias` as long as `row`).
#[inline(always)]
fn bias_quick_gelu_generic(row: &mut [f32], bias: Option<&[f32]>) {
    match bias {
        Some(b) => row.iter_mut().zip(b).for_each(|(v, b)| *v = quick_gelu_value(*v + b)),
        None => row.iter_mut().for_each(|v| *v = quick_gelu_value(*v)),
    }
}

/// Softmax of one row in place: max-subtracted, f32 accumulation.
#[inline(always)]
fn softmax_generic(row: &mut [f32]) {
    const LANES: usize = 16;
    let mut m = [f32::NEG_INFINITY; LANES];
    let mut chunks = row.chunks_exact(LANES);
    for c in &mut chunks {
        for i in 0..LANES {
            m[i] = m[i].max(c[i]);
        }
    }
    let max = chunks.remainder().iter().fold(m.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b)), |a, &b| a.max(b));
    let max = if max == f32::NEG_INFINITY { 0.0 } else { max };
    let mut s = [0f32; LANES];
    let mut chunks = row.chunks_exact_mut(LANES);
    for c in &mut chunks {
        for i in 0..LANES {
            c[i] = exp(c[i] - max);
            s[i] += c[i];
        }
    }
    let mut sum: f32 = s.iter().sum();
    for v in chunks.into_remainder() {
        *v = exp(*v - max);
        sum += *v;
    }
    let inv = 1.0 / sum;
    row.iter_mut().for_each(|v| *v *= inv);
}
