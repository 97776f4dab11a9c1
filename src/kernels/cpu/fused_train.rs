//! Fused f32 CPU ops for training, each a candle custom op with its own backward. Each replaces a chain of
//! small differentiable candle ops, whose backward allocates, zero-fills and accumulates a gradient per
//! node, single-threaded for most of them:
//!
//! - [`linear`]: one multi-threaded GEMM with the bias folded in; backward: `grad @ W` (skipped when the
//!   input needs no gradient, as the video frames do), `grad^T @ x` and a parallel column sum for the bias.
//! - [`layer_norm`]: one parallel pass each way; the backward recomputes the row statistics.
//! - [`quick_gelu`]: one parallel pass each way.
//! - [`attention`]: [`super::fused::attention`]'s kernel from the fused qkv; the backward recomputes each
//!   (sequence, head)'s softmax and writes the q, k and v gradients straight into the qkv layout.
//!
//! Every function takes f32 CPU tensors ([`applies`]); the dispatch runs candle's plain ops otherwise.
use candle_core::{bail, CpuStorage, CustomOp1, CustomOp2, CustomOp3, DType, Layout, Shape, Tensor};
use gemm::{gemm, Parallelism};
use rayon::prelude::*;

use super::fused::{AttentionOp, LinearOp};
use crate::kernels::{
    reference::causal_mask_values,
    simd::{self, bias_quick_gelu, chunk_rows, contiguous_f32, multiversion, softmax_inplace, SendPtr},
};

/// Whether the fused training ops take `x`: an f32 tensor on the CPU.
pub(crate) fn applies(x: &Tensor) -> bool {
    x.device().is_cpu() && x.dtype() == DType::F32
}

/// `x @ weight^T + bias` over the last dimension of `x` [..., in], differentiable: `weight` [out, in] (any
/// strides), `bias` [out]. Takes every leading dimension as rows of one GEMM, without reshape nodes (each
/// would cost the backward a zero-filled gradient and an add).
// [..., in] -> [..., out]
pub(crate) fn linear(x: &Tensor, weight: &Tensor, bias: Option<&Tensor>) -> candle_core::Result<Tensor> {
    let x = x.contiguous()?;
    match bias {
        Some(b) => x.apply_op3(weight, &b.contiguous()?, TrainLinear),
        None => x.apply_op2(weight, TrainLinear),
    }
}

/// LayerNorm over the last dimension of `x` [..., dim] with `weight` and `bias` [dim], differentiable
/// when `train` (inference records no backward).
// [..., dim] -> [..., dim]
pub(crate) fn layer_norm(
    x: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    eps: f64,
    train: bool,
) -> candle_core::Result<Tensor> {
    let (x, weight, bias, op) =
        (x.contiguous()?, weight.contiguous()?, bias.contiguous()?, LayerNormOp { eps: eps as f32 });
    if train {
        x.apply_op3(&weight, &bias, op)
    } else {
        x.apply_op3_no_bwd(&weight, &bias, &op)
    }
}

/// QuickGELU `x * sigmoid(1.702 x)`, differentiable.
// [...] -> [...]
pub(crate) fn quick_gelu(x: &Tensor) -> candle_core::Result<Tensor> {
    x.contiguous()?.apply_op1(QuickGelu)
}

/// Multi-head attention of `heads` heads from the fused qkv [N, L, 3W] (q, k, v of head h at
/// `[n, l, 0|1|2, h, :]` once viewed as [N, L, 3, H, hd]) as [`super::fused::attention`] computes it, causal or
/// not, differentiable.
// [N, L, 3W] -> [N, L, W]
pub(crate) fn attention(qkv: &Tensor, heads: usize, causal: bool) -> candle_core::Result<Tensor> {
    let (_, _, three_w) = qkv.dims3()?;
    if heads == 0 || !three_w.is_multiple_of(3 * heads) {
        bail!("attention: {three_w} qkv features do not split into 3 x {heads} heads")
    }
    qkv.contiguous()?.apply_op1(TrainAttention { heads, causal })
}

/// The contiguous layout of `l` seen as `dims` (same element count), or an error naming `what`.
fn view(l: &Layout, dims: &[usize], what: &str) -> candle_core::Result<Layout> {
    if !l.is_contiguous() || l.shape().elem_count() != dims.iter().product::<usize>() {
        bail!("{what}: a contiguous {:?} cannot be viewed as {dims:?}", l.shape())
    }
    Ok(Layout::contiguous_with_offset(dims, l.start_offset()))
}

/// `l`'s leading dimensions as rows: ([rows, last] layout, rows, last).
fn as_rows(l: &Layout, what: &str) -> candle_core::Result<(Layout, usize, usize)> {
    let last = l.dims().last().copied().unwrap_or(1);
    let rows = l.shape().elem_count() / last.max(1);
    Ok((view(l, &[rows, last], what)?, rows, last))
}

/// `dims` with the last one replaced by `last`.
fn with_last(dims: &[usize], last: usize) -> Shape {
    let mut dims = dims.to_vec();
    if let Some(d) = dims.last_mut() {
        *d = last;
    }
    Shape::from(dims)
}

/// Sums of `x` [rows, n] over its rows, blocks of rows in parallel, added in a fixed order.
// [rows, n] -> [n]
fn column_sums(x: &Tensor) -> candle_core::Result<Tensor> {
    x.contiguous()?.apply_op1_no_bwd(&ColumnSums)
}

/// [`linear`]'s op: the forward is [`LinearOp`]'s kernel.
struct TrainLinear;

impl TrainLinear {
    /// The forward on CPU storages: `x` [..., in] (contiguous) as rows of one GEMM.
    fn cpu(
        xs: &CpuStorage,
        xl: &Layout,
        ws: &CpuStorage,
        wl: &Layout,
        bias: Option<&[f32]>,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (rows, _, _) = as_rows(xl, "linear input")?;
        let (y, shape) = LinearOp { gelu: false }.cpu(xs, &rows, ws, wl, bias)?;
        Ok((y, with_last(xl.dims(), shape.dims()[1])))
    }

    /// Gradients of `x @ w^T (+ b)` from `grad` [..., out]: `grad @ w` for `x` (none when `x` needs
    /// none), `grad^T @ x` for `w`, column sums for the bias.
    fn grads(
        x: &Tensor,
        w: &Tensor,
        grad: &Tensor,
        bias: bool,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (out, k) = w.dims2()?;
        // [rows, out], [rows, in]
        let grad = grad.contiguous()?.reshape(((), out))?;
        let x2 = x.reshape(((), k))?;
        let dx = if x.track_op() { Some(grad.matmul(&w.contiguous()?)?.reshape(x.shape())?) } else { None };
        let dw = grad.t()?.matmul(&x2)?;
        let db = if bias { Some(column_sums(&grad)?) } else { None };
        Ok((dx, Some(dw), db))
    }
}

impl CustomOp2 for TrainLinear {
    fn name(&self) -> &'static str {
        "train-linear"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        ws: &CpuStorage,
        wl: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        Self::cpu(xs, xl, ws, wl, None)
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let (dx, dw, _) = Self::grads(x, w, grad, false)?;
        Ok((dx, dw))
    }
}

impl CustomOp3 for TrainLinear {
    fn name(&self) -> &'static str {
        "train-linear"
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
        Self::cpu(xs, xl, ws, wl, Some(contiguous_f32(bs, bl, "linear bias")?))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        Self::grads(x, w, grad, true)
    }
}

/// [`column_sums`]' op.
struct ColumnSums;

impl CustomOp1 for ColumnSums {
    fn name(&self) -> &'static str {
        "column-sums"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let (_, n) = l.shape().dims2()?;
        let x = contiguous_f32(s, l, "column sums input")?;
        let mut sums = vec![0f32; n];
        if n > 0 {
            let partials: Vec<Vec<f32>> =
                x.par_chunks(chunk_rows(n) * n).map(|block| column_sums_of(block, n)).collect();
            partials.iter().for_each(|p| add_assign(&mut sums, p));
        }
        Ok((CpuStorage::F32(sums), Shape::from(n)))
    }
}

/// Sums of the rows of `block` (rows of `n` values).
fn column_sums_of(block: &[f32], n: usize) -> Vec<f32> {
    let mut sums = vec![0f32; n];
    block.chunks_exact(n).for_each(|row| add_assign(&mut sums, row));
    sums
}

multiversion!(add_assign => add_assign_generic(acc: &mut [f32], x: &[f32]));

/// `acc += x` elementwise.
#[inline(always)]
fn add_assign_generic(acc: &mut [f32], x: &[f32]) {
    acc.iter_mut().zip(x).for_each(|(a, v)| *a += v);
}

/// [`layer_norm`]'s op.
struct LayerNormOp {
    eps: f32,
}

impl CustomOp3 for LayerNormOp {
    fn name(&self) -> &'static str {
        "train-layer-norm"
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
        let x = contiguous_f32(xs, xl, "layer norm input")?;
        let (w, b) = (contiguous_f32(ws, wl, "layer norm weight")?, contiguous_f32(bs, bl, "layer norm bias")?);
        let dim = xl.dims().last().copied().unwrap_or(0);
        if w.len() != dim || b.len() != dim {
            bail!("layer norm: input {:?}, weight {:?}, bias {:?}", xl.shape(), wl.shape(), bl.shape())
        }
        let mut y = vec![0f32; x.len()];
        if dim > 0 {
            let chunk = chunk_rows(dim) * dim;
            y.par_chunks_mut(chunk).zip(x.par_chunks(chunk)).for_each(|(y, x)| {
                y.chunks_exact_mut(dim).zip(x.chunks_exact(dim)).for_each(|(y, x)| layer_norm_row(x, w, b, self.eps, y))
            });
        }
        Ok((CpuStorage::F32(y), xl.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (n, dim) = (x.elem_count(), w.elem_count());
        // [n + 2 dim]: dx, then dw, then db
        let packed = x.apply_op3_no_bwd(w, &grad.contiguous()?, &LayerNormBackward { eps: self.eps })?;
        Ok((
            Some(packed.narrow(0, 0, n)?.reshape(x.shape())?),
            Some(packed.narrow(0, n, dim)?),
            Some(packed.narrow(0, n + dim, dim)?),
        ))
    }
}

/// The mean and `1 / sqrt(variance + eps)` of one row.
#[inline(always)]
fn row_statistics(x: &[f32], eps: f32) -> (f32, f32) {
    let n = x.len() as f32;
    let mean = lane_sum(x, |v| v) / n;
    let var = lane_sum(x, |v| (v - mean) * (v - mean)) / n;
    (mean, 1.0 / (var + eps).sqrt())
}

/// The sum of `f(v)` over `x` in 16 independent partial sums (a float sum in order is one chain of
/// dependent adds that does not vectorise), then across them.
#[inline(always)]
fn lane_sum(x: &[f32], f: impl Fn(f32) -> f32) -> f32 {
    const LANES: usize = 16;
    let mut partial = [0f32; LANES];
    let mut chunks = x.chunks_exact(LANES);
    for chunk in &mut chunks {
        for (p, &v) in partial.iter_mut().zip(chunk) {
            *p += f(v);
        }
    }
    partial.iter().sum::<f32>() + chunks.remainder().iter().map(|&v| f(v)).sum::<f32>()
}

multiversion!(layer_norm_row => layer_norm_row_generic(x: &[f32], w: &[f32], b: &[f32], eps: f32, y: &mut [f32]));

/// `y = (x - mean) / sqrt(var + eps) * w + b` for one row.
#[inline(always)]
fn layer_norm_row_generic(x: &[f32], w: &[f32], b: &[f32], eps: f32, y: &mut [f32]) {
    let (mean, rstd) = row_statistics(x, eps);
    for (((y, x), w), b) in y.iter_mut().zip(x).zip(w).zip(b) {
        *y = (x - mean) * rstd * w + b;
    }
}

/// The LayerNorm backward: from (x, weight, grad) to `[dx, dw, db]` packed in one buffer.
struct LayerNormBackward {
    eps: f32,
}

impl CustomOp3 for LayerNormBackward {
    fn name(&self) -> &'static str {
        "train-layer-norm-backward"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        ws: &CpuStorage,
        wl: &Layout,
        gs: &CpuStorage,
        gl: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (x, w, g) = (
            contiguous_f32(xs, xl, "layer norm input")?,
            contiguous_f32(ws, wl, "layer norm weight")?,
            contiguous_f32(gs, gl, "layer norm gradient")?,
        );
        let dim = w.len();
        if dim == 0 || x.len() != g.len() || !x.len().is_multiple_of(dim) {
            bail!("layer norm backward: input {:?}, weight {:?}, gradient {:?}", xl.shape(), wl.shape(), gl.shape())
        }
        let n = x.len();
        let mut out = vec![0f32; n + 2 * dim];
        let (dx, params) = out.split_at_mut(n);
        let chunk = chunk_rows(dim) * dim;
        // Per block of rows: dx, and the block's partial dw and db ([2, dim]).
        let partials: Vec<Vec<f32>> = dx
            .par_chunks_mut(chunk)
            .zip(x.par_chunks(chunk).zip(g.par_chunks(chunk)))
            .map(|(dx, (x, g))| {
                let mut sums = vec![0f32; 2 * dim];
                let (dw, db) = sums.split_at_mut(dim);
                for ((dx, x), g) in dx.chunks_exact_mut(dim).zip(x.chunks_exact(dim)).zip(g.chunks_exact(dim)) {
                    layer_norm_backward_row(x, w, g, self.eps, dx, dw, db);
                }
                sums
            })
            .collect();
        partials.iter().for_each(|p| add_assign(params, p));
        Ok((CpuStorage::F32(out), Shape::from(n + 2 * dim)))
    }
}

multiversion!(layer_norm_backward_row => layer_norm_backward_row_generic(x: &[f32], w: &[f32], g: &[f32], eps: f32, dx: &mut [f32], dw: &mut [f32], db: &mut [f32]));

/// One row of the LayerNorm backward: with `xh = (x - mean) * rstd` and `gw = g * w`,
/// `dx = rstd * (gw - mean(gw) - xh * mean(gw * xh))`; adds `g * xh` to `dw` and `g` to `db`.
#[inline(always)]
fn layer_norm_backward_row_generic(
    x: &[f32],
    w: &[f32],
    g: &[f32],
    eps: f32,
    dx: &mut [f32],
    dw: &mut [f32],
    db: &mut [f32],
) {
    let (mean, rstd) = row_statistics(x, eps);
    let n = x.len() as f32;
    let (mut sum_gw, mut sum_gw_xh) = (0f32, 0f32);
    for ((x, w), g) in x.iter().zip(w).zip(g) {
        let gw = g * w;
        sum_gw += gw;
        sum_gw_xh += gw * (x - mean) * rstd;
    }
    let (mean_gw, mean_gw_xh) = (sum_gw / n, sum_gw_xh / n);
    for (((((dx, x), w), g), dw), db) in dx.iter_mut().zip(x).zip(w).zip(g).zip(dw.iter_mut()).zip(db.iter_mut()) {
        let xh = (x - mean) * rstd;
        *dx = rstd * (g * w - mean_gw - xh * mean_gw_xh);
        *dw += g * xh;
        *db += g;
    }
}

/// [`quick_gelu`]'s op.
struct QuickGelu;

impl CustomOp1 for QuickGelu {
    fn name(&self) -> &'static str {
        "train-quick-gelu"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let mut y = contiguous_f32(s, l, "quick gelu input")?.to_vec();
        y.par_chunks_mut(chunk_rows(1)).for_each(|c| bias_quick_gelu(c, None));
        Ok((CpuStorage::F32(y), l.shape().clone()))
    }

    fn bwd(&self, x: &Tensor, _res: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        Ok(Some(x.apply_op2_no_bwd(&grad.contiguous()?, &QuickGeluBackward)?))
    }
}

/// The QuickGELU backward: from (x, grad) to `grad * d/dx [x sigmoid(1.702 x)]`.
struct QuickGeluBackward;

impl CustomOp2 for QuickGeluBackward {
    fn name(&self) -> &'static str {
        "train-quick-gelu-backward"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        gs: &CpuStorage,
        gl: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (x, g) = (contiguous_f32(xs, xl, "quick gelu input")?, contiguous_f32(gs, gl, "quick gelu gradient")?);
        if x.len() != g.len() {
            bail!("quick gelu backward: input {:?}, gradient {:?}", xl.shape(), gl.shape())
        }
        let mut dx = vec![0f32; x.len()];
        let chunk = chunk_rows(1);
        dx.par_chunks_mut(chunk)
            .zip(x.par_chunks(chunk).zip(g.par_chunks(chunk)))
            .for_each(|(dx, (x, g))| quick_gelu_backward(x, g, dx));
        Ok((CpuStorage::F32(dx), xl.shape().clone()))
    }
}

multiversion!(quick_gelu_backward => quick_gelu_backward_generic(x: &[f32], g: &[f32], dx: &mut [f32]));

/// `dx = g * (s + 1.702 x s (1 - s))` with `s = sigmoid(1.702 x)`.
#[inline(always)]
fn quick_gelu_backward_generic(x: &[f32], g: &[f32], dx: &mut [f32]) {
    for ((dx, x), g) in dx.iter_mut().zip(x).zip(g) {
        let s = 1.0 / (1.0 + simd::exp(-1.702 * x));
        *dx = g * (s + 1.702 * x * s * (1.0 - s));
    }
}

/// [`attention`]'s op: the forward is [`AttentionOp`]'s kernel.
struct TrainAttention {
    heads: usize,
    causal: bool,
}

impl TrainAttention {
    /// The qkv layout [N, L, 3W] as [N, L, 3, H, hd], with L, and the additive mask of L tokens if causal.
    fn view(&self, l: &Layout) -> candle_core::Result<(Layout, usize, Option<Vec<f32>>)> {
        let (n, len, three_w) = l.shape().dims3()?;
        let five = view(l, &[n, len, 3, self.heads, three_w / (3 * self.heads)], "attention qkv")?;
        Ok((five, len, self.causal.then(|| causal_mask_values(len))))
    }
}

impl CustomOp1 for TrainAttention {
    fn name(&self) -> &'static str {
        "train-attention"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let (five, _, mask) = self.view(l)?;
        AttentionOp.cpu(s, &five, mask.as_deref())
    }

    fn bwd(&self, qkv: &Tensor, _res: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        Ok(Some(qkv.apply_op2_no_bwd(&grad.contiguous()?, &AttentionBackward(TrainAttention { ..*self }))?))
    }
}

/// The attention backward: from (qkv [N, L, 3W], grad [N, L, W]) to the gradient of qkv.
struct AttentionBackward(TrainAttention);

impl CustomOp2 for AttentionBackward {
    fn name(&self) -> &'static str {
        "train-attention-backward"
    }

    fn cpu_fwd(
        &self,
        s: &CpuStorage,
        l: &Layout,
        gs: &CpuStorage,
        gl: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (qkv, d_out) = (contiguous_f32(s, l, "attention qkv")?, contiguous_f32(gs, gl, "attention gradient")?);
        let (five, _, mask) = self.0.view(l)?;
        let (n, len, _, heads, hd) = five.shape().dims5()?;
        let w = heads * hd;
        if gl.dims() != [n, len, w] {
            bail!("attention backward: qkv {:?}, gradient {:?}", l.shape(), gl.shape())
        }
        let mut d_qkv = vec![0f32; qkv.len()];
        let dst = SendPtr(d_qkv.as_mut_ptr());
        let scale = (hd as f32).powf(-0.5);
        let rs = (3 * w) as isize;
        (0..n * heads).into_par_iter().for_each_init(
            || (vec![0f32; len * len], vec![0f32; len * len]),
            |(p, ds), item| {
                let (b, h) = (item / heads, item % heads);
                // q, k, v of (b, h): row i at base + i*3w (+ w for k, + 2w for v); its output gradient row i
                // at out_base + i*w.
                let (base, out_base) = (b * len * 3 * w + h * hd, b * len * w + h * hd);
                if let Some(m) = &mask {
                    p.copy_from_slice(m);
                }
                // SAFETY (every gemm below): q/k/v and their gradient rows i < len span hd values at
                // base + i*3w (+w, +2w), the largest index (b*len + len-1)*3w + 2w + h*hd + hd-1 being
                // below n*len*3w = qkv.len() = d_qkv.len(); output gradient rows span hd values at
                // out_base + i*w < n*len*w = d_out.len(); p and ds hold len*len values with row stride
                // len. Item (b, h) writes only the q, k, v columns of head h in the rows of sequence b:
                // no other item writes there.
                unsafe {
                    let (q, k, v) =
                        (qkv.as_ptr().add(base), qkv.as_ptr().add(base + w), qkv.as_ptr().add(base + 2 * w));
                    let d_o = d_out.as_ptr().add(out_base);
                    let (dq, dk, dv) = (dst.get().add(base), dst.get().add(base + w), dst.get().add(base + 2 * w));
                    // p = softmax(mask + scale q k^T), recomputed.
                    gemm(
                        len,
                        len,
                        hd,
                        p.as_mut_ptr(),
                        1,
                        len as isize,
                        mask.is_some(),
                        q,
                        1,
                        rs,
                        k,
                        rs,
                        1,
                        1.0,
                        scale,
                        false,
                        false,
                        false,
                        Parallelism::None,
                    );
                    p.chunks_exact_mut(len).for_each(softmax_inplace);
                    // dv = p^T d_o
                    gemm(
                        len,
                        hd,
                        len,
                        dv,
                        1,
                        rs,
                        false,
                        p.as_ptr(),
                        len as isize,
                        1,
                        d_o,
                        1,
                        w as isize,
                        0.0,
                        1.0,
                        false,
                        false,
                        false,
                        Parallelism::None,
                    );
                    // ds = d_o v^T, then ds = p * (ds - rowsum(p * ds)): the softmax backward.
                    gemm(
                        len,
                        len,
                        hd,
                        ds.as_mut_ptr(),
                        1,
                        len as isize,
                        false,
                        d_o,
                        1,
                        w as isize,
                        v,
                        rs,
                        1,
                        0.0,
                        1.0,
                        false,
                        false,
                        false,
                        Parallelism::None,
                    );
                    p.chunks_exact(len).zip(ds.chunks_exact_mut(len)).for_each(|(p, ds)| softmax_backward_row(p, ds));
                    // dq = scale ds k, dk = scale ds^T q
                    gemm(
                        len,
                        hd,
                        len,
                        dq,
                        1,
                        rs,
                        false,
                        ds.as_ptr(),
                        1,
                        len as isize,
                        k,
                        1,
                        rs,
                        0.0,
                        scale,
                        false,
                        false,
                        false,
                        Parallelism::None,
                    );
                    gemm(
                        len,
                        hd,
                        len,
                        dk,
                        1,
                        rs,
                        false,
                        ds.as_ptr(),
                        len as isize,
                        1,
                        q,
                        1,
                        rs,
                        0.0,
                        scale,
                        false,
                        false,
                        false,
                        Parallelism::None,
                    );
                }
            },
        );
        Ok((CpuStorage::F32(d_qkv), l.shape().clone()))
    }
}

/// The softmax backward of one row in place: `ds = p * (ds - sum(p * ds))` (`ds` holds the gradient of
/// the probabilities `p` on entry, of the scores on return).
fn softmax_backward_row(p: &[f32], ds: &mut [f32]) {
    let dot: f32 = p.iter().zip(ds.iter()).map(|(p, d)| p * d).sum();
    ds.iter_mut().zip(p).for_each(|(d, p)| *d = p * (*d - dot));
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Var};

    use super::*;
    use crate::kernels::reference::{self, causal_mask};

    /// Deterministic values in [-1, 1).
    fn random(shape: &[usize], seed: u64) -> Tensor {
        let n = shape.iter().product();
        let mut s = seed;
        let v: Vec<f32> = (0..n)
            .map(|_| {
                s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
            })
            .collect();
        Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
    }

    /// Checks that `fused` and `plain` give the same output and the same gradients of every input (within
    /// 1e-5) for the loss `sum(output * r)`, `r` random.
    fn same_gradients(
        inputs: &[Tensor],
        fused: impl Fn(&[Tensor]) -> candle_core::Result<Tensor>,
        plain: impl Fn(&[Tensor]) -> candle_core::Result<Tensor>,
    ) {
        let vars: Vec<Var> = inputs.iter().map(|t| Var::from_tensor(t).unwrap()).collect();
        let tensors: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
        let (a, b) = (fused(&tensors).unwrap(), plain(&tensors).unwrap());
        assert_eq!(a.dims(), b.dims());
        let r = random(a.dims(), 99);
        let max_diff = |x: &Tensor, y: &Tensor| {
            (x - y).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap()
        };
        assert!(max_diff(&a, &b) < 1e-5, "outputs differ by {}", max_diff(&a, &b));
        let (ga, gb) = (
            (a * &r).unwrap().sum_all().unwrap().backward().unwrap(),
            (b * &r).unwrap().sum_all().unwrap().backward().unwrap(),
        );
        for (i, t) in tensors.iter().enumerate() {
            let (x, y) = (ga.get(t).expect("fused gradient"), gb.get(t).expect("plain gradient"));
            assert!(max_diff(x, y) < 1e-5, "gradients of input {i} differ by {}", max_diff(x, y));
        }
    }

    #[test]
    fn linear_gradients() {
        let inputs = [random(&[37, 20], 1), random(&[11, 20], 2), random(&[11], 3)];
        same_gradients(
            &inputs,
            |t| linear(&t[0], &t[1], Some(&t[2])),
            |t| t[0].matmul(&t[1].t()?)?.broadcast_add(&t[2]),
        );
        same_gradients(&inputs[..2], |t| linear(&t[0], &t[1], None), |t| t[0].matmul(&t[1].t()?));
        // Leading dimensions as rows; a strided weight (a transposed view).
        let inputs = [random(&[3, 5, 20], 4), random(&[20, 11], 5)];
        same_gradients(&inputs, |t| linear(&t[0], &t[1].t()?, None), |t| t[0].broadcast_matmul(&t[1]));
    }

    #[test]
    fn linear_skips_the_gradient_of_a_constant_input() {
        let (x, w) = (random(&[5, 4], 1), Var::from_tensor(&random(&[3, 4], 2)).unwrap());
        let grads = linear(&x, w.as_tensor(), None).unwrap().sum_all().unwrap().backward().unwrap();
        assert!(grads.get(&x).is_none() && grads.get(w.as_tensor()).is_some());
    }

    #[test]
    fn layer_norm_gradients() {
        let inputs = [(random(&[3, 70, 24], 4) * 3.0).unwrap(), random(&[24], 5), random(&[24], 6)];
        same_gradients(
            &inputs,
            |t| layer_norm(&t[0], &t[1], &t[2], 1e-5, true),
            |t| {
                let centred = t[0].broadcast_sub(&t[0].mean_keepdim(2)?)?;
                let var = centred.sqr()?.mean_keepdim(2)?;
                centred.broadcast_div(&(var + 1e-5)?.sqrt()?)?.broadcast_mul(&t[1])?.broadcast_add(&t[2])
            },
        );
    }

    #[test]
    fn quick_gelu_gradients() {
        let inputs = [(random(&[9, 1000], 7) * 6.0).unwrap()];
        same_gradients(&inputs, |t| quick_gelu(&t[0]), |t| &t[0] * candle_nn::ops::sigmoid(&(&t[0] * 1.702)?)?);
    }

    #[test]
    fn attention_gradients() {
        let inputs = [random(&[2, 13, 3, 3, 8], 8)];
        for causal in [false, true] {
            let mask = causal.then(|| causal_mask(13, DType::F32, &Device::Cpu).unwrap());
            same_gradients(
                &inputs,
                |t| attention(&t[0].reshape((2, 13, 72))?, 3, causal),
                |t| reference::attention(&t[0], mask.as_ref(), true),
            );
        }
    }
}
