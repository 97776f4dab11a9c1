//! Fused f32 CPU kernels for inference (no backward: use them only when not training).
//!
//! - [`linear`] / [`linear_quick_gelu`]: one multi-threaded GEMM per linear layer reading the weight
//!   through its strides. On AVX-512 and AVX2 + FMA CPUs it is the crate's own kernel ([`super::sgemm`])
//!   with bias and QuickGELU in its epilogue; elsewhere (or with `ACTIONCLIP_CPU_ISA=generic`) the `gemm`
//!   crate's, the bias pre-broadcast into the output (no separate bias pass), or, with QuickGELU, bias +
//!   QuickGELU in one parallel in-place pass right after the GEMM.
//! - [`attention`]: scaled dot-product attention read straight from the fused in_proj output
//!   `[N, L, 3, H, hd]` (no permute copies), parallel over (frame, head), with the mask add folded into the
//!   score GEMM and a vectorisable softmax.
//!
//! On other devices or dtypes every function falls back to plain candle ops computing the same thing.
use candle_core::{bail, CpuStorage, CustomOp1, CustomOp2, CustomOp3, DType, Device, Layout, Shape, Tensor};
use gemm::{gemm, Parallelism};
use rayon::prelude::*;

#[cfg(target_arch = "x86_64")]
use super::sgemm;
use crate::kernels::{
    reference,
    simd::{bias_quick_gelu, check_bounds, chunk_rows, contiguous_f32, softmax_inplace, SendPtr},
};

/// `x @ weight^T + bias`: `x` [rows, in], `weight` [out, in] (PyTorch layout, any strides), `bias` `[out]`.
// [rows, in] -> [rows, out]
pub(crate) fn linear(x: &Tensor, weight: &Tensor, bias: Option<&Tensor>) -> candle_core::Result<Tensor> {
    linear_impl(x, weight, bias, false)
}

/// `quick_gelu(x @ weight^T + bias)` with QuickGELU `v * sigmoid(1.702 v)` fused after the GEMM.
// [rows, in] -> [rows, out]
pub(crate) fn linear_quick_gelu(x: &Tensor, weight: &Tensor, bias: Option<&Tensor>) -> candle_core::Result<Tensor> {
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
        return if gelu { reference::quick_gelu(&y) } else { Ok(y) };
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
pub(crate) fn attention(qkv: &Tensor, mask: Option<&Tensor>) -> candle_core::Result<Tensor> {
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
        return reference::attention(qkv, mask, false);
    }
    let qkv = qkv.contiguous()?;
    match mask {
        Some(m) => qkv.apply_op2_no_bwd(&m.contiguous()?, &AttentionOp),
        None => qkv.apply_op1_no_bwd(&AttentionOp),
    }
}

/// The fused linear kernel: `x @ weight^T (+ bias)`, then QuickGELU when `gelu`.
pub(crate) struct LinearOp {
    /// Whether QuickGELU follows the bias.
    pub(crate) gelu: bool,
}

impl LinearOp {
    /// The kernel on CPU storages: `x` [rows, in] and the weight [out, in] through their layouts.
    pub(crate) fn cpu(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        ws: &CpuStorage,
        wl: &Layout,
        bias: Option<&[f32]>,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (x, w) = (xs.as_slice::<f32>()?, ws.as_slice::<f32>()?);
        let (rows, k) = xl.shape().dims2()?;
        let (n, k2) = wl.shape().dims2()?;
        if k != k2 || bias.is_some_and(|b| b.len() != n) {
            bail!("linear: x {:?}, weight {:?}, bias {:?} do not fit", xl.shape(), wl.shape(), bias.map(|b| b.len()))
        }
        check_bounds(xl, x.len(), "linear x")?;
        check_bounds(wl, w.len(), "linear weight")?;
        #[cfg(target_arch = "x86_64")]
        if let Some(kernel) = sgemm::Kernel::selected().map_err(candle_core::Error::wrap)? {
            let weight = sgemm::WeightOperand::Strided(sgemm::Matrix::of(w, wl));
            return Ok(sgemm_linear(
                kernel,
                rows,
                k,
                sgemm::Matrix::of(x, xl),
                sgemm::Layer {
                    weight,
                    outputs: n,
                    epilogue: sgemm::Epilogue { bias, gelu: self.gelu, residual: None },
                },
            ));
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
                gemm(
                    rows,
                    n,
                    k,
                    dst.as_mut_ptr(),
                    1,
                    n as isize,
                    prefill.is_some(),
                    x,
                    xs1,
                    xs0,
                    w,
                    ws0,
                    ws1,
                    1.0,
                    1.0,
                    false,
                    false,
                    false,
                    threads,
                );
            }
            dst.set_len(len);
        }
        if self.gelu {
            dst.par_chunks_mut(chunk_rows(n) * n)
                .for_each(|c| c.chunks_exact_mut(n).for_each(|r| bias_quick_gelu(r, bias)));
        }
        Ok((CpuStorage::F32(dst), Shape::from((rows, n))))
    }
}

/// [`sgemm::linear`] on `kernel` into a new storage [rows, n] (operands checked by the caller).
#[cfg(target_arch = "x86_64")]
fn sgemm_linear(
    kernel: sgemm::Kernel,
    rows: usize,
    k: usize,
    x: sgemm::Matrix,
    layer: sgemm::Layer,
) -> (CpuStorage, Shape) {
    let n = layer.outputs;
    // SAFETY: `sgemm::linear` writes every value of its rows x n output (stride n).
    unsafe { new_output(rows, n, |dst| sgemm::linear(kernel, rows, k, x, layer, dst, n)) }
}

/// A new f32 storage [rows, n] that `fill` writes.
///
/// # Safety
/// `fill` must write all `rows * n` values it is given.
#[cfg(target_arch = "x86_64")]
unsafe fn new_output(
    rows: usize,
    n: usize,
    fill: impl FnOnce(&mut [std::mem::MaybeUninit<f32>]),
) -> (CpuStorage, Shape) {
    // Filled by the GEMM's worker threads (so its pages are first touched in parallel), not zeroed.
    let mut dst: Vec<f32> = Vec::with_capacity(rows * n);
    fill(&mut dst.spare_capacity_mut()[..rows * n]);
    // SAFETY: `fill` wrote all rows * n values (the caller's promise).
    unsafe { dst.set_len(rows * n) };
    (CpuStorage::F32(dst), Shape::from((rows, n)))
}

/// A linear layer, or a whole CLIP MLP (`c_fc`, QuickGELU, `c_proj`), on the crate's GEMM as a candle op
/// on an f32 CPU tensor [rows, in] at any strides (inference only); as a binary op the second tensor
/// [rows, out] (unit column stride) is added to the output in the GEMM's epilogue (a residual
/// connection). The layers borrow their weights: packed ([`sgemm::PackedWeight`], for `kernel`) or read
/// from a tensor's storage held by the caller.
#[cfg(target_arch = "x86_64")]
pub(crate) struct GemmOp<'a> {
    /// The register tile that runs the layers.
    pub(crate) kernel: sgemm::Kernel,
    /// The layers.
    pub(crate) layers: GemmLayers<'a>,
}

/// What a [`GemmOp`] computes.
#[cfg(target_arch = "x86_64")]
pub(crate) enum GemmLayers<'a> {
    /// One layer.
    Linear(sgemm::Layer<'a>),
    /// `c_fc` (its epilogue with QuickGELU) then `c_proj`, the hidden activations never leaving the op.
    Mlp(sgemm::Layer<'a>, sgemm::Layer<'a>),
}

#[cfg(target_arch = "x86_64")]
impl GemmOp<'_> {
    /// Applies the op to `x` [rows, in], adding `residual` [..., out] (as [rows, out]) when given.
    // [rows, in] -> [rows, out]
    pub(crate) fn apply(&self, x: &Tensor, residual: Option<&Tensor>) -> crate::Result<Tensor> {
        Ok(match residual {
            Some(r) => x.apply_op2_no_bwd(&r.reshape((x.dim(0)?, self.last_layer().outputs))?, self)?,
            None => x.apply_op1_no_bwd(self)?,
        })
    }

    /// The op on `x` [rows, in], with `residual` added to the output when given.
    fn run(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        residual: Option<(&CpuStorage, &Layout)>,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = xs.as_slice::<f32>()?;
        let (rows, k) = xl.shape().dims2()?;
        check_bounds(xl, x.len(), "sgemm input")?;
        if !self.kernel.available() {
            bail!("sgemm: this CPU lacks the instruction set of {:?}", self.kernel)
        }
        let (mut last, x) = (self.last_layer(), sgemm::Matrix::of(x, xl));
        if let Some((rs, rl)) = residual {
            let r = rs.as_slice::<f32>()?;
            if rl.shape().dims2()? != (rows, last.outputs) || rl.stride()[1] != 1 {
                bail!(
                    "sgemm: residual {:?} (strides {:?}) is not [{rows}, {}] with unit column stride",
                    rl.shape(),
                    rl.stride(),
                    last.outputs
                )
            }
            check_bounds(rl, r.len(), "sgemm residual")?;
            last.epilogue.residual = Some(sgemm::Matrix::of(r, rl));
        }
        let kernel = self.kernel;
        Ok(match self.layers {
            GemmLayers::Linear(_) => sgemm_linear(kernel, rows, k, x, last),
            // SAFETY: `sgemm::mlp` writes every value of its rows x n output.
            GemmLayers::Mlp(fc1, _) => unsafe {
                new_output(rows, last.outputs, |dst| sgemm::mlp(kernel, rows, k, x, fc1, last, dst))
            },
        })
    }

    /// The layer that produces the output.
    fn last_layer(&self) -> sgemm::Layer<'_> {
        match self.layers {
            GemmLayers::Linear(layer) | GemmLayers::Mlp(_, layer) => layer,
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

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        rs: &CpuStorage,
        rl: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        self.run(xs, xl, Some((rs, rl)))
    }
}

impl CustomOp2 for LinearOp {
    fn name(&self) -> &'static str {
        "fused-linear"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        ws: &CpuStorage,
        wl: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
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
pub(crate) struct AttentionOp;

impl AttentionOp {
    /// The kernel on a contiguous qkv storage [N, L, 3, H, hd] with an optional additive mask [L, L].
    pub(crate) fn cpu(
        &self,
        s: &CpuStorage,
        l: &Layout,
        mask: Option<&[f32]>,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
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
                    gemm(
                        len,
                        len,
                        hd,
                        scores.as_mut_ptr(),
                        1,
                        len as isize,
                        mask.is_some(),
                        q,
                        1,
                        rs,
                        q.add(w),
                        rs,
                        1,
                        1.0,
                        scale,
                        false,
                        false,
                        false,
                        Parallelism::None,
                    )
                }
                scores.chunks_exact_mut(len).for_each(softmax_inplace);
                // out[rows of b, columns of h] = scores @ v.
                // SAFETY: v rows are read at base + 2w + i*3w + c (c < hd), inside qkv as above. The
                // output of (b, h) is rows b*len..(b+1)*len, columns h*hd..(h+1)*hd of out [n*len, w]:
                // largest index (b*len + len-1)*w + h*hd + hd-1 < n*len*w, and no other item writes there.
                unsafe {
                    let v = qkv.as_ptr().add(base + 2 * w);
                    let o = dst.get().add(b * len * w + h * hd);
                    gemm(
                        len,
                        hd,
                        len,
                        o,
                        1,
                        w as isize,
                        false,
                        scores.as_ptr(),
                        1,
                        len as isize,
                        v,
                        1,
                        rs,
                        0.0,
                        1.0,
                        false,
                        false,
                        false,
                        Parallelism::None,
                    )
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

    fn cpu_fwd(
        &self,
        s: &CpuStorage,
        l: &Layout,
        ms: &CpuStorage,
        ml: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        self.cpu(s, l, Some(contiguous_f32(ms, ml, "attention mask")?))
    }
}

#[cfg(test)]
mod tests {
    //! The kernels against plain candle ops on random inputs: odd sizes, strided weights, causal and
    //! random masks, and the fallback for other dtypes.
    use candle_core::{IndexOp, D};

    use super::*;
    use crate::kernels::testing::assert_close;

    /// Asserts `a` equals `b` within 1e-5 of `b`'s scale, max(1, max |b|). For GEMM outputs: each is a sum of
    /// k products and another blocking of that sum (the AVX-512 kernel's against candle's `gemm`) moves it by
    /// ~sqrt(k) f32 roundings of the partial sums, whatever its own size; an element near 0 in a row of
    /// 20s differs by ~3e-5 at k = 768 (candle's matmul itself is off the f64 product by as much there).
    fn assert_close_to_scale(what: &str, a: &Tensor, b: &Tensor) {
        assert_eq!(a.dims(), b.dims());
        let values = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let (a, b) = (values(a), values(b));
        let scale = b.iter().fold(1f32, |m, v| m.max(v.abs()));
        let diff = |x: f32, y: f32| {
            if x == y {
                0.
            } else if (x - y).is_finite() {
                (x - y).abs()
            } else {
                f32::INFINITY
            }
        };
        let d = a.iter().zip(&b).fold(0f32, |m, (&x, &y)| m.max(diff(x, y))) / scale;
        assert!(d <= 1e-5, "{what}: max difference {d} of the scale {scale}");
    }

    fn randn(shape: &[usize], seed_scale: f64) -> Tensor {
        Tensor::randn(0f32, seed_scale as f32, shape, &Device::Cpu).unwrap()
    }

    fn linear_ref(x: &Tensor, w: &Tensor, b: Option<&Tensor>) -> Tensor {
        let y = x.matmul(&w.t().unwrap()).unwrap();
        match b {
            Some(b) => y.broadcast_add(b).unwrap(),
            None => y,
        }
    }

    #[test]
    fn linear_matches_matmul_plus_bias() {
        for (rows, k, n) in [(394, 96, 200), (13, 7, 5), (1, 64, 33), (37, 128, 512), (197, 768, 77), (0, 8, 4)] {
            let x = randn(&[rows, k], 1.);
            let w = randn(&[n, k], 0.5);
            let b = randn(&[n], 1.);
            let want = linear_ref(&x, &w, Some(&b));
            assert_close_to_scale(&format!("linear {rows}x{k}x{n}"), &linear(&x, &w, Some(&b)).unwrap(), &want);
            let want = reference::quick_gelu(&want).unwrap();
            assert_close_to_scale(
                &format!("linear+gelu {rows}x{k}x{n}"),
                &linear_quick_gelu(&x, &w, Some(&b)).unwrap(),
                &want,
            );
            let want = linear_ref(&x, &w, None);
            assert_close_to_scale(&format!("linear no bias {rows}x{k}x{n}"), &linear(&x, &w, None).unwrap(), &want);
        }
    }

    #[test]
    fn linear_reads_strided_inputs() {
        // A weight stored transposed ([in, out] viewed as [out, in]) and x as a column slice with an offset.
        let (rows, k, n) = (45, 70, 31);
        let wt = randn(&[k, n], 0.5);
        let w = wt.t().unwrap();
        let wide = randn(&[rows + 2, k + 9], 1.);
        let x = wide.i((1..rows + 1, 3..k + 3)).unwrap();
        assert!(!w.is_contiguous() && !x.is_contiguous());
        let b = randn(&[n], 1.);
        let want = linear_ref(&x.contiguous().unwrap(), &w.contiguous().unwrap(), Some(&b));
        assert_close_to_scale("strided linear", &linear(&x, &w, Some(&b)).unwrap(), &want);
    }

    #[test]
    fn quick_gelu_epilogue_handles_extremes() {
        let x = Tensor::new(&[[-200f32, -90., -20., -1e-3, 0., 1e-3, 1., 20., 90., 200.]], &Device::Cpu).unwrap();
        let w = Tensor::eye(10, DType::F32, &Device::Cpu).unwrap();
        let got = linear_quick_gelu(&x, &w, None).unwrap();
        assert_close("gelu extremes", &got, &reference::quick_gelu(&x).unwrap());
    }

    /// softmax(q k^T / sqrt(hd) + mask) v from `qkv` [N, L, 3, H, hd], on plain candle ops.
    fn attention_ref(qkv: &Tensor, mask: Option<&Tensor>) -> Tensor {
        let (n, l, _, h, hd) = qkv.dims5().unwrap();
        let part = |i: usize| qkv.i((.., .., i)).unwrap().transpose(1, 2).unwrap().contiguous().unwrap();
        let (q, k, v) = (part(0), part(1), part(2));
        let s = (q.matmul(&k.t().unwrap()).unwrap() / (hd as f64).sqrt()).unwrap();
        let s = match mask {
            Some(m) => s.broadcast_add(m).unwrap(),
            None => s,
        };
        let p = candle_nn::ops::softmax(&s, D::Minus1).unwrap();
        p.matmul(&v).unwrap().transpose(1, 2).unwrap().reshape((n, l, h * hd)).unwrap()
    }

    fn causal(l: usize) -> Tensor {
        let m: Vec<f32> =
            (0..l).flat_map(|i| (0..l).map(move |j| if j > i { f32::NEG_INFINITY } else { 0. })).collect();
        Tensor::from_vec(m, (l, l), &Device::Cpu).unwrap()
    }

    #[test]
    fn attention_matches_plain_ops() {
        // (N, L, H, hd): L = 197 (ViT-B/16), N*H odd, tiny and single-token cases.
        for (n, l, h, hd) in [(3, 197, 5, 64), (1, 5, 3, 7), (2, 50, 12, 64), (1, 1, 1, 4), (7, 9, 1, 16)] {
            let qkv = randn(&[n, l, 3, h, hd], 1.);
            assert_close(
                &format!("attention {n}x{l}x{h}x{hd}"),
                &attention(&qkv, None).unwrap(),
                &attention_ref(&qkv, None),
            );
            let mask = randn(&[l, l], 2.);
            let what = format!("attention, random mask {n}x{l}x{h}x{hd}");
            assert_close(&what, &attention(&qkv, Some(&mask)).unwrap(), &attention_ref(&qkv, Some(&mask)));
        }
    }

    #[test]
    fn attention_with_causal_mask() {
        for (n, l, h, hd) in [(5, 77, 8, 64), (3, 77, 3, 32), (2, 16, 2, 8)] {
            let qkv = randn(&[n, l, 3, h, hd], 2.);
            let m = causal(l);
            assert_close(
                &format!("causal attention {n}x{l}x{h}x{hd}"),
                &attention(&qkv, Some(&m)).unwrap(),
                &attention_ref(&qkv, Some(&m)),
            );
        }
    }

    #[test]
    fn attention_rejects_bad_shapes() {
        let qkv = randn(&[2, 4, 3, 2, 8], 1.);
        assert!(attention(&qkv, Some(&randn(&[4, 5], 1.))).is_err());
        assert!(attention(&randn(&[2, 4, 2, 2, 8], 1.), None).is_err());
        assert!(attention(&randn(&[2, 4, 48], 1.), None).is_err());
        assert!(linear(&randn(&[3, 4], 1.), &randn(&[5, 6], 1.), None).is_err());
        assert!(linear(&randn(&[3, 4], 1.), &randn(&[5, 4], 1.), Some(&randn(&[6], 1.))).is_err());
    }

    #[test]
    fn other_dtypes_fall_back_to_plain_ops() {
        let x = randn(&[9, 12], 1.).to_dtype(DType::F64).unwrap();
        let w = randn(&[5, 12], 1.).to_dtype(DType::F64).unwrap();
        let b = randn(&[5], 1.).to_dtype(DType::F64).unwrap();
        let got = linear_quick_gelu(&x, &w, Some(&b)).unwrap();
        assert_eq!(got.dtype(), DType::F64);
        assert_close("f64 linear", &got, &reference::quick_gelu(&linear_ref(&x, &w, Some(&b))).unwrap());
        let qkv = randn(&[2, 6, 3, 2, 4], 1.).to_dtype(DType::F64).unwrap();
        let m = causal(6).to_dtype(DType::F64).unwrap();
        let got = attention(&qkv, Some(&m)).unwrap();
        assert_eq!(got.dtype(), DType::F64);
        assert_close("f64 attention", &got, &attention_ref(&qkv, Some(&m)));
    }
}
