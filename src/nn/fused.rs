//! Fused f32 CPU kernels for inference (no backward: use them only when not training).
//!
//! - [`linear`] / [`linear_quick_gelu`]: one multi-threaded GEMM per linear layer reading the weight
//!   through its strides. On AVX-512 CPUs it is the crate's own kernel (`src/nn/sgemm.rs`) with bias and
//!   QuickGELU in its epilogue; elsewhere the `gemm` crate's, the bias pre-broadcast into the output (no
//!   separate bias pass), or, with QuickGELU, bias + QuickGELU in one parallel in-place pass right after
//!   the GEMM.
//! - [`attention`]: scaled dot-product attention read straight from the fused in_proj output
//!   `[N, L, 3, H, hd]` (no permute copies), parallel over (frame, head), with the mask add folded into the
//!   score GEMM and a vectorisable softmax.
//!
//! On other devices or dtypes every function falls back to plain candle ops computing the same thing.
use candle_core::{bail, CpuStorage, CustomOp1, CustomOp2, CustomOp3, DType, Device, Layout, Shape, Tensor};
use gemm::{gemm, Parallelism};
use rayon::prelude::*;

use super::attention::attention_plain;
#[cfg(target_arch = "x86_64")]
use super::sgemm;

/// `x @ weight^T + bias`: `x` [rows, in], `weight` [out, in] (PyTorch layout, any strides), `bias` `[out]`.
// [rows, in] -> [rows, out]
pub fn linear(x: &Tensor, weight: &Tensor, bias: Option<&Tensor>) -> candle_core::Result<Tensor> {
    linear_impl(x, weight, bias, false)
}

/// `quick_gelu(x @ weight^T + bias)` with QuickGELU `v * sigmoid(1.702 v)` fused after the GEMM.
// [rows, in] -> [rows, out]
pub fn linear_quick_gelu(x: &Tensor, weight: &Tensor, bias: Option<&Tensor>) -> candle_core::Result<Tensor> {
    linear_impl(x, weight, bias, true)
}

fn linear_impl(x: &Tensor, weight: &Tensor, bias: Option<&Tensor>, gelu: bool) -> candle_core::Result<Tensor> {
    let fast = matches!(x.device(), Device::Cpu) && x.dtype() == DType::F32 && weight.dtype() == DType::F32;
    if !fast || bias.is_some_and(|b| b.dtype() != DType::F32) {
        let y = x.matmul(&weight.t()?)?;
        let y = match bias {
            Some(b) => y.broadcast_add(b)?,
            None => y,
        };
        return if gelu { &y * candle_nn::ops::sigmoid(&(&y * 1.702)?)? } else { Ok(y) };
    }
    let op = LinearOp { gelu };
    match bias {
        Some(b) => x.apply_op3_no_bwd(weight, &b.contiguous()?, &op),
        None => x.apply_op2_no_bwd(weight, &op),
    }
}

/// Multi-head scaled dot-product attention from the fused in_proj output `qkv` [N, L, 3, H, hd]
/// (q, k, v of head h at `[n, l, 0|1|2, h, :]`), with an optional additive `mask` [L, L] (for example
/// causal, `-inf` above the diagonal). Computes `softmax(q k^T / sqrt(hd) + mask) v` per (n, h) and
/// returns the heads concatenated per token, as PyTorch's `nn.MultiheadAttention` does before `out_proj`.
// [N, L, 3, H, hd] -> [N, L, H*hd]
pub fn attention(qkv: &Tensor, mask: Option<&Tensor>) -> candle_core::Result<Tensor> {
    let (_, l, three, _, _) = qkv.dims5()?;
    if three != 3 {
        bail!("attention: qkv must be [N, L, 3, H, hd], got {:?}", qkv.shape())
    }
    if let Some(m) = mask {
        if m.dims() != [l, l] {
            bail!("attention: mask must be [{l}, {l}], got {:?}", m.shape())
        }
    }
    let fast = matches!(qkv.device(), Device::Cpu)
        && qkv.dtype() == DType::F32
        && mask.is_none_or(|m| m.dtype() == DType::F32);
    if !fast {
        return attention_plain(qkv, mask, false);
    }
    let qkv = qkv.contiguous()?;
    match mask {
        Some(m) => qkv.apply_op2_no_bwd(&m.contiguous()?, &AttentionOp),
        None => qkv.apply_op1_no_bwd(&AttentionOp),
    }
}

/// Checks that every element `layout` addresses lies inside a buffer of `len` elements.
fn check_bounds(layout: &Layout, len: usize, what: &str) -> candle_core::Result<()> {
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
pub(super) fn contiguous_f32<'a>(s: &'a CpuStorage, l: &Layout, what: &str) -> candle_core::Result<&'a [f32]> {
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&s.as_slice::<f32>()?[a..b]),
        None => bail!("{what} must be contiguous"),
    }
}

/// A `*mut f32` that may cross threads; every user writes a region no other thread touches.
#[derive(Clone, Copy)]
pub(super) struct SendPtr(pub(super) *mut f32);
// SAFETY (both impls): only used for writes to disjoint regions (see the users), the buffer outliving
// the parallel loop.
unsafe impl Send for SendPtr {}
unsafe impl Sync for SendPtr {}

impl SendPtr {
    /// The pointer (a method, so closures capture the whole `Sync` wrapper).
    pub(super) fn get(self) -> *mut f32 {
        self.0
    }
}

/// Rows per parallel chunk of an elementwise pass over rows of `cols` values (~64 KiB per chunk).
pub(super) fn chunk_rows(cols: usize) -> usize {
    (16384 / cols.max(1)).max(1)
}

/// The fused linear kernel: `x @ weight^T (+ bias)`, then QuickGELU when `gelu`.
pub(super) struct LinearOp {
    /// Whether QuickGELU follows the bias.
    pub(super) gelu: bool,
}

impl LinearOp {
    /// The kernel on CPU storages: `x` [rows, in] and the weight [out, in] through their layouts.
    pub(super) fn cpu(&self, xs: &CpuStorage, xl: &Layout, ws: &CpuStorage, wl: &Layout, bias: Option<&[f32]>) -> candle_core::Result<(CpuStorage, Shape)> {
        let (x, w) = (xs.as_slice::<f32>()?, ws.as_slice::<f32>()?);
        let (rows, k) = xl.shape().dims2()?;
        let (n, k2) = wl.shape().dims2()?;
        if k != k2 || bias.is_some_and(|b| b.len() != n) {
            bail!("linear: x {:?}, weight {:?}, bias {:?} do not fit", xl.shape(), wl.shape(), bias.map(|b| b.len()))
        }
        check_bounds(xl, x.len(), "linear x")?;
        check_bounds(wl, w.len(), "linear weight")?;
        #[cfg(target_arch = "x86_64")]
        if sgemm::available() {
            let weight = sgemm::WeightOperand::Strided(sgemm::Matrix::of(w, wl));
            return Ok(sgemm_linear(rows, k, sgemm::Matrix::of(x, xl), sgemm::Layer { weight, outputs: n, epilogue: sgemm::Epilogue { bias, gelu: self.gelu, residual: None } }));
        }
        let len = rows * n;
        // Filled below by the GEMM's worker threads (so its pages are first touched in parallel), not zeroed.
        let mut dst: Vec<f32> = Vec::with_capacity(len);
        if len == 0 {
            return Ok((CpuStorage::F32(dst), Shape::from((rows, n))));
        }
        // Without an epilogue the bias goes into dst before the GEMM accumulates onto it; with QuickGELU
        // it is added in the epilogue pass, which reads every value anyway. An empty product (k = 0) is 0.
        let prefill = bias.filter(|_| !self.gelu);
        let mut fill = |row: &[f32]| {
            let rows_per_chunk = chunk_rows(n);
            dst.spare_capacity_mut()[..len].par_chunks_mut(rows_per_chunk * n).for_each(|c| {
                c.chunks_exact_mut(n).for_each(|r| r.iter_mut().zip(row).for_each(|(d, &v)| _ = d.write(v)))
            })
        };
        match prefill {
            Some(b) => fill(b),
            None if k == 0 => fill(&vec![0f32; n]),
            None => {}
        }
        let (xs0, xs1) = (xl.stride()[0] as isize, xl.stride()[1] as isize);
        let (ws0, ws1) = (wl.stride()[0] as isize, wl.stride()[1] as isize);
        // dst = 1 * dst + 1 * x @ weight^T (dst read only when pre-filled with the bias).
        // SAFETY: dst has capacity for rows*n elements written with row stride n; x is read at
        // start + i*xs0 + c*xs1 for i < rows, c < k and the weight at start + j*ws0 + c*ws1 for j < n,
        // c < k, both inside their buffers by `check_bounds`. rhs (k x n) = weight^T, so its column
        // stride is ws0 and its row stride ws1. Every element of dst is initialised before `set_len`: by
        // the fill above (the bias, or zeros when k = 0) that the GEMM accumulates onto, or by the GEMM
        // alone, which writes every output without reading dst when `read_dst` is false.
        unsafe {
            if k > 0 {
                let (x, w) = (x.as_ptr().add(xl.start_offset()), w.as_ptr().add(wl.start_offset()));
                let threads = Parallelism::Rayon(rayon::current_num_threads());
                gemm(rows, n, k, dst.as_mut_ptr(), 1, n as isize, prefill.is_some(), x, xs1, xs0, w, ws0, ws1, 1.0, 1.0, false, false, false, threads);
            }
            dst.set_len(len);
        }
        if self.gelu {
            dst.par_chunks_mut(chunk_rows(n) * n).for_each(|c| c.chunks_exact_mut(n).for_each(|r| bias_quick_gelu(r, bias)));
        }
        Ok((CpuStorage::F32(dst), Shape::from((rows, n))))
    }
}

/// [`sgemm::linear`] into a new storage [rows, n] (operands checked by the caller).
#[cfg(target_arch = "x86_64")]
fn sgemm_linear(rows: usize, k: usize, x: sgemm::Matrix, layer: sgemm::Layer) -> (CpuStorage, Shape) {
    let n = layer.outputs;
    // SAFETY: `sgemm::linear` writes every value of its rows x n output (stride n).
    unsafe { new_output(rows, n, |dst| sgemm::linear(rows, k, x, layer, dst, n)) }
}

/// A new f32 storage [rows, n] that `fill` writes.
///
/// # Safety
/// `fill` must write all `rows * n` values it is given.
#[cfg(target_arch = "x86_64")]
unsafe fn new_output(rows: usize, n: usize, fill: impl FnOnce(&mut [std::mem::MaybeUninit<f32>])) -> (CpuStorage, Shape) {
    // Filled by the GEMM's worker threads (so its pages are first touched in parallel), not zeroed.
    let mut dst: Vec<f32> = Vec::with_capacity(rows * n);
    fill(&mut dst.spare_capacity_mut()[..rows * n]);
    // SAFETY: `fill` wrote all rows * n values (the caller's promise).
    unsafe { dst.set_len(rows * n) };
    (CpuStorage::F32(dst), Shape::from((rows, n)))
}

/// A linear layer, or a whole CLIP MLP (`c_fc`, QuickGELU, `c_proj`), on the AVX-512 GEMM as a candle op
/// on an f32 CPU tensor [rows, in] at any strides (inference only); as a binary op the second tensor
/// [rows, out] (unit column stride) is added to the output in the GEMM's epilogue (a residual
/// connection). The layers borrow their weights: packed ([`sgemm::PackedWeight`]) or read from a
/// tensor's storage held by the caller.
#[cfg(target_arch = "x86_64")]
pub(super) enum GemmOp<'a> {
    /// One layer.
    Linear(sgemm::Layer<'a>),
    /// `c_fc` (its epilogue with QuickGELU) then `c_proj`, the hidden activations never leaving the op.
    Mlp(sgemm::Layer<'a>, sgemm::Layer<'a>),
}

#[cfg(target_arch = "x86_64")]
impl GemmOp<'_> {
    /// Applies the op to `x` [rows, in], adding `residual` [..., out] (as [rows, out]) when given.
    // [rows, in] -> [rows, out]
    pub(super) fn apply(&self, x: &Tensor, residual: Option<&Tensor>) -> crate::Result<Tensor> {
        Ok(match residual {
            Some(r) => x.apply_op2_no_bwd(&r.reshape((x.dim(0)?, self.last_layer().outputs))?, self)?,
            None => x.apply_op1_no_bwd(self)?,
        })
    }

    /// The op on `x` [rows, in], with `residual` added to the output when given.
    fn run(&self, xs: &CpuStorage, xl: &Layout, residual: Option<(&CpuStorage, &Layout)>) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = xs.as_slice::<f32>()?;
        let (rows, k) = xl.shape().dims2()?;
        check_bounds(xl, x.len(), "sgemm input")?;
        if !sgemm::available() {
            bail!("sgemm: this CPU lacks AVX-512F")
        }
        let (mut last, x) = (self.last_layer(), sgemm::Matrix::of(x, xl));
        if let Some((rs, rl)) = residual {
            let r = rs.as_slice::<f32>()?;
            if rl.shape().dims2()? != (rows, last.outputs) || rl.stride()[1] != 1 {
                bail!("sgemm: residual {:?} (strides {:?}) is not [{rows}, {}] with unit column stride", rl.shape(), rl.stride(), last.outputs)
            }
            check_bounds(rl, r.len(), "sgemm residual")?;
            last.epilogue.residual = Some(sgemm::Matrix::of(r, rl));
        }
        Ok(match *self {
            GemmOp::Linear(_) => sgemm_linear(rows, k, x, last),
            // SAFETY: `sgemm::mlp` writes every value of its rows x n output.
            GemmOp::Mlp(fc1, _) => unsafe { new_output(rows, last.outputs, |dst| sgemm::mlp(rows, k, x, fc1, last, dst)) },
        })
    }

    /// The layer that produces the output.
    fn last_layer(&self) -> sgemm::Layer<'_> {
        match *self {
            GemmOp::Linear(layer) | GemmOp::Mlp(_, layer) => layer,
        }
    }
}

#[cfg(target_arch = "x86_64")]
impl CustomOp1 for GemmOp<'_> {
    fn name(&self) -> &'static str {
        "sgemm"
    }

    fn cpu_fwd(&self, xs: &CpuStorage, xl: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        self.run(xs, xl, None)
    }
}

#[cfg(target_arch = "x86_64")]
impl CustomOp2 for GemmOp<'_> {
    fn name(&self) -> &'static str {
        "sgemm-residual"
    }

    fn cpu_fwd(&self, xs: &CpuStorage, xl: &Layout, rs: &CpuStorage, rl: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        self.run(xs, xl, Some((rs, rl)))
    }
}

impl CustomOp2 for LinearOp {
    fn name(&self) -> &'static str {
        "fused-linear"
    }

    fn cpu_fwd(&self, xs: &CpuStorage, xl: &Layout, ws: &CpuStorage, wl: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        self.cpu(xs, xl, ws, wl, None)
    }
}

impl CustomOp3 for LinearOp {
    fn name(&self) -> &'static str {
        "fused-linear"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        ws: &CpuStorage,
        wl: &Layout,
        bs: &CpuStorage,
        bl: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        self.cpu(xs, xl, ws, wl, Some(contiguous_f32(bs, bl, "linear bias")?))
    }
}

/// The fused attention kernel (see [`attention`]).
pub(super) struct AttentionOp;

impl AttentionOp {
    /// The kernel on a contiguous qkv storage [N, L, 3, H, hd] with an optional additive mask [L, L].
    pub(super) fn cpu(&self, s: &CpuStorage, l: &Layout, mask: Option<&[f32]>) -> candle_core::Result<(CpuStorage, Shape)> {
        let qkv = contiguous_f32(s, l, "attention qkv")?;
        let (n, len, _, heads, hd) = l.shape().dims5()?;
        let w = heads * hd;
        if mask.is_some_and(|m| m.len() != len * len) {
            bail!("attention: mask must hold {len}x{len} values")
        }
        // Written below, block by block, by the parallel items (not zeroed first).
        let mut out: Vec<f32> = Vec::with_capacity(n * len * w);
        if n * len * w == 0 {
            return Ok((CpuStorage::F32(out), Shape::from((n, len, w))));
        }
        let scale = (hd as f32).powf(-0.5);
        let dst = SendPtr(out.as_mut_ptr());
        (0..n * heads).into_par_iter().for_each_init(
            || vec![0f32; len * len],
            |scores, item| {
                let (b, h) = (item / heads, item % heads);
                // q, k, v of (b, h): row i at base + i*3w (+ w for k, + 2w for v).
                let base = b * len * 3 * w + h * hd;
                if let Some(m) = mask {
                    scores.copy_from_slice(m);
                }
                let rs = (3 * w) as isize;
                // scores = mask + scale * q @ k^T (k^T read through k's strides).
                // SAFETY: q/k rows i < len read hd values at base + i*3w (+w), the largest index being
                // b*len*3w + (len-1)*3w + w + h*hd + hd - 1 < (b+1)*len*3w <= qkv.len(); scores holds
                // len*len values written with row stride len.
                unsafe {
                    let q = qkv.as_ptr().add(base);
                    gemm(len, len, hd, scores.as_mut_ptr(), 1, len as isize, mask.is_some(), q, 1, rs, q.add(w), rs, 1, 1.0, scale, false, false, false, Parallelism::None)
                }
                scores.chunks_exact_mut(len).for_each(softmax_inplace);
                // out[rows of b, columns of h] = scores @ v.
                // SAFETY: v rows are read at base + 2w + i*3w + c (c < hd), inside qkv as above. The
                // output of (b, h) is rows b*len..(b+1)*len, columns h*hd..(h+1)*hd of out [n*len, w]:
                // largest index (b*len + len-1)*w + h*hd + hd-1 < n*len*w, and no other item writes there.
                unsafe {
                    let v = qkv.as_ptr().add(base + 2 * w);
                    let o = dst.get().add(b * len * w + h * hd);
                    gemm(len, hd, len, o, 1, w as isize, false, scores.as_ptr(), 1, len as isize, v, 1, rs, 0.0, 1.0, false, false, false, Parallelism::None)
                }
            },
        );
        // SAFETY: the items (b, h) for b < n, h < heads each wrote their rows b*len..(b+1)*len, columns
        // h*hd..(h+1)*hd of out [n*len, w] (the second gemm, which does not read dst): every element.
        unsafe { out.set_len(n * len * w) };
        Ok((CpuStorage::F32(out), Shape::from((n, len, w))))
    }
}

impl CustomOp1 for AttentionOp {
    fn name(&self) -> &'static str {
        "fused-attention"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        self.cpu(s, l, None)
    }
}

impl CustomOp2 for AttentionOp {
    fn name(&self) -> &'static str {
        "fused-attention"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout, ms: &CpuStorage, ml: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        self.cpu(s, l, Some(contiguous_f32(ms, ml, "attention mask")?))
    }
}

/// `e^x` for f32 without branches (Cephes `expf` polynomial, ~1 ulp), so loops over it vectorise;
/// 0 below -87.3 (including -inf), +inf above 88.7, NaN for NaN.
#[inline(always)]
pub(super) fn exp(x: f32) -> f32 {
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

/// Defines `fn $name($args)` running `$generic($args)` compiled for AVX-512F or AVX2 when the CPU has
/// them (checked at run time), so the loops in `$generic` vectorise wider than the baseline target.
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
                if is_x86_feature_detected!("avx512f") {
                    // SAFETY: the CPU has AVX-512F, checked just above.
                    return unsafe { avx512($($arg),*) };
                }
                if is_x86_feature_detected!("avx2") {
                    // SAFETY: the CPU has AVX2, checked just above.
                    return unsafe { avx2($($arg),*) };
                }
            }
            $generic($($arg),*)
        }
    };
}
pub(super) use multiversion;

multiversion!(pub(super) bias_quick_gelu => bias_quick_gelu_generic(row: &mut [f32], bias: Option<&[f32]>));
multiversion!(pub(super) softmax_inplace => softmax_generic(row: &mut [f32]));

/// QuickGELU `v * sigmoid(1.702 v)` of `row + bias` in place (`bias` as long as `row`).
#[inline(always)]
fn bias_quick_gelu_generic(row: &mut [f32], bias: Option<&[f32]>) {
    match bias {
        Some(b) => row.iter_mut().zip(b).for_each(|(v, b)| *v = quick_gelu_value(*v + b)),
        None => row.iter_mut().for_each(|v| *v = quick_gelu_value(*v)),
    }
}

/// QuickGELU `v * sigmoid(1.702 v)` of one value, as `v / (1 + e^(-1.702 v))` with the vectorisable [`exp`].
#[inline(always)]
pub(super) fn quick_gelu_value(v: f32) -> f32 {
    v / (1.0 + exp(-1.702 * v))
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
