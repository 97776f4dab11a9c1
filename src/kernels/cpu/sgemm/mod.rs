//! An f32 GEMM for linear layers on AVX-512 and AVX2 + FMA CPUs: `y = x @ w^T (+ bias)`, QuickGELU and a
//! residual add optionally applied.
//!
//! The `gemm` crate (candle's CPU matmul, and [`super::fused`]'s fallback) runs the same AVX2 kernel on
//! every x86 CPU, its bias and activation in passes of their own. Here an output tile lives in registers
//! over the whole reduction (12 x 32 in 24 zmm accumulators on AVX-512, 6 x 16 in 12 ymm ones on AVX2:
//! see [`Kernel`]), so each output is written once with its bias, activation and residual applied. The
//! activation rows are read in place (packed per call into `MR`-row panels only when rows lie a multiple
//! of 4 KiB apart, which would make them evict one another from the L1); the weight is packed in blocks
//! of 4 tiles' outputs (k-major, zero-padded) by the thread that consumes the block, or once at load
//! ([`PackedWeight`]), and every row panel streams past it. Blocks of outputs, and ranges of rows when
//! there are too few blocks, spread over the rayon pool. [`mlp`] chains two layers through a reused
//! hidden buffer. One driver runs both tiles ([`Microkernel`]); the tile itself is written once over the
//! vector type (`tile`). On a 2-core Zen 4 the four ViT-B/16 layer shapes (1576 rows) run at
//! ~210-220 GFLOP/s on AVX-512 against `gemm`'s ~190 (peak 232).
use std::{cell::RefCell, mem::MaybeUninit, thread::LocalKey};

use rayon::prelude::*;

use crate::kernels::{isa::Isa, simd::SendPtr};
use tile::Tile;

mod avx2;
mod avx512;
mod tile;

/// Tiles of outputs (`NR` wide) packed together into one weight block.
const BLOCK_PANELS: usize = 4;
/// Most activation values packed at once (32 MiB of f32): larger inputs run in row chunks.
const PACK_BUDGET: usize = 8 << 20;
/// Row strides (in values) at which input rows are packed rather than read in place: rows a multiple of
/// 4 KiB apart fall into the same L1 sets and evict one another.
const ALIASING_STRIDE: usize = 1024;

thread_local! {
    /// The calling thread's packed activations, kept between calls (up to `PACK_BUDGET` values).
    static PACKED_ROWS: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
    /// A worker's packed weight block, kept between calls.
    static WEIGHT_BLOCK: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
    /// The calling thread's MLP hidden activations ([`mlp`]), kept between calls.
    static HIDDEN: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// Runs `f` on this thread's scratch buffer `key`, or on a fresh one when an outer call on this thread
/// holds it (a rayon worker may start another GEMM while waiting inside one).
fn with_scratch<R>(key: &'static LocalKey<RefCell<Vec<f32>>>, f: impl FnOnce(&mut Vec<f32>) -> R) -> R {
    key.with(|cell| match cell.try_borrow_mut() {
        Ok(mut buffer) => f(&mut buffer),
        Err(_) => f(&mut Vec::new()),
    })
}

/// The register tile a GEMM runs on, one per instruction set.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kernel {
    /// 12 rows x 32 columns on AVX-512F.
    Avx512,
    /// 6 rows x 16 columns on AVX2 + FMA.
    Avx2,
}

impl Kernel {
    /// The kernel of the selected instruction set ([`Isa::selected`]); `None` where neither runs (the
    /// callers fall back to the `gemm` crate); an error for an invalid `ACTIONCLIP_CPU_ISA`.
    pub(crate) fn selected() -> crate::Result<Option<Self>> {
        Ok(match Isa::selected()? {
            Isa::Avx512 => Some(Self::Avx512),
            Isa::Avx2 => Some(Self::Avx2),
            Isa::Generic => None,
        })
    }

    /// Whether this CPU runs the kernel (its instruction set detected at run time, whatever the cap).
    pub(crate) fn available(self) -> bool {
        Isa::detected() >= self.isa()
    }

    /// The instruction set the kernel needs.
    fn isa(self) -> Isa {
        match self {
            Self::Avx512 => Isa::Avx512,
            Self::Avx2 => Isa::Avx2,
        }
    }

    /// Columns of the register tile: the width of a packed weight panel.
    fn nr(self) -> usize {
        match self {
            Self::Avx512 => avx512::Avx512::NR,
            Self::Avx2 => avx2::Avx2::NR,
        }
    }
}

/// One instruction set's register tile as the driver runs it: its shape, its packers and its product.
///
/// # Safety
/// Every method requires the CPU to have the tile's instruction set ([`Kernel::available`]).
trait Microkernel {
    /// Rows of the register tile.
    const MR: usize;
    /// Columns of the register tile.
    const NR: usize;

    /// Packs `MR` rows (`row(r)`: the row's values at stride `col_stride`, `None` for a zero row) of `k`
    /// values into `panel` [k][MR], k-major; every row holds `(k - 1) * col_stride + 1` values at least.
    unsafe fn pack_rows<'a>(
        row: impl Fn(usize) -> Option<&'a [f32]>,
        col_stride: usize,
        k: usize,
        panel: &mut [MaybeUninit<f32>],
    );

    /// Packs `NR` weight rows (outputs) into `panel` [k][NR], as [`Microkernel::pack_rows`] does.
    unsafe fn pack_outputs<'a>(
        row: impl Fn(usize) -> Option<&'a [f32]>,
        col_stride: usize,
        k: usize,
        panel: &mut [MaybeUninit<f32>],
    );

    /// One tile over all `k`: `a` the rows (packed [k][MR] when `lda` is 0, else `tile.rows` rows of k
    /// values `lda` apart), `b` packed [k][NR], the result written to the tile's rows and columns of
    /// `out` (row stride `ldo`) with its epilogue; the operands as `tile::product` requires.
    unsafe fn product(k: usize, a: *const f32, lda: usize, b: *const f32, out: *mut f32, ldo: usize, tile: &Tile);
}

/// A strided f32 matrix inside a slice: element (i, j) at `data[i * row_stride + j * col_stride]`.
#[derive(Clone, Copy)]
pub(crate) struct Matrix<'a> {
    /// The values, starting at element (0, 0).
    data: &'a [f32],
    /// Distance between rows.
    row_stride: usize,
    /// Distance between columns.
    col_stride: usize,
}

impl<'a> Matrix<'a> {
    /// The 2-D matrix `layout` addresses in `data`.
    pub(crate) fn of(data: &'a [f32], layout: &candle_core::Layout) -> Self {
        Self { data: &data[layout.start_offset()..], row_stride: layout.stride()[0], col_stride: layout.stride()[1] }
    }

    /// The row-major matrix of `cols` columns in `data`.
    pub(crate) fn row_major(data: &'a [f32], cols: usize) -> Self {
        Self { data, row_stride: cols, col_stride: 1 }
    }
}

/// What follows the product: a bias [n] added per output, then QuickGELU when `gelu`, then a residual
/// [rows, n] added.
#[derive(Clone, Copy, Default)]
pub(crate) struct Epilogue<'a> {
    /// The bias of every output.
    pub(crate) bias: Option<&'a [f32]>,
    /// Whether QuickGELU `v * sigmoid(1.702 v)` follows the bias.
    pub(crate) gelu: bool,
    /// Values added last, one per output element (a residual connection); unit column stride.
    pub(crate) residual: Option<Matrix<'a>>,
}

impl<'a> Epilogue<'a> {
    /// The epilogue of the outputs from row `row` and column `col` on: bias and residual sliced there.
    fn at(&self, row: usize, col: usize) -> Self {
        Self {
            bias: self.bias.map(|b| &b[col..]),
            gelu: self.gelu,
            residual: self.residual.map(|r| Matrix { data: &r.data[row * r.row_stride + col..], ..r }),
        }
    }
}

/// The weight operand of [`linear`]: `n x k` (element (j, c) the weight of output j, input c).
#[derive(Clone, Copy)]
pub(crate) enum WeightOperand<'a> {
    /// A matrix at any strides, packed block by block during the call.
    Strided(Matrix<'a>),
    /// Already in a kernel's layout: `ceil(n / NR)` panels of [k][NR] ([`PackedWeight::outputs_from`]).
    Packed(Kernel, &'a [f32]),
}

/// A linear layer as the kernel runs it: `outputs` outputs, their weight and what follows the product.
#[derive(Clone, Copy)]
pub(crate) struct Layer<'a> {
    /// The weight [outputs, inputs].
    pub(crate) weight: WeightOperand<'a>,
    /// The number of outputs.
    pub(crate) outputs: usize,
    /// Bias and activation.
    pub(crate) epilogue: Epilogue<'a>,
}

/// `dst = x @ w^T`, then the epilogue, on `kernel`: `x` [rows, k], the layer's weight `w` [n, k], `dst`
/// [rows, n] at row stride `ldo` (>= n), every element of those rows written (the `ldo - n` values
/// after each row left as they are).
///
/// # Panics
/// If `x` or `w` does not hold a `rows x k` / `n x k` matrix, the bias is not `n` long or `dst` is too
/// short, if the weight is packed for another kernel, or if the CPU lacks the kernel's instruction set
/// ([`Kernel::available`]).
pub(crate) fn linear(
    kernel: Kernel,
    rows: usize,
    k: usize,
    x: Matrix,
    layer: Layer,
    dst: &mut [MaybeUninit<f32>],
    ldo: usize,
) {
    match kernel {
        Kernel::Avx512 => linear_on::<avx512::Avx512>(kernel, rows, k, x, layer, dst, ldo),
        Kernel::Avx2 => linear_on::<avx2::Avx2>(kernel, rows, k, x, layer, dst, ldo),
    }
}

/// [`linear`] on the tile `K` (of `kernel`).
fn linear_on<K: Microkernel>(
    kernel: Kernel,
    rows: usize,
    k: usize,
    x: Matrix,
    layer: Layer,
    dst: &mut [MaybeUninit<f32>],
    ldo: usize,
) {
    let Layer { weight: w, outputs: n, epilogue } = layer;
    assert!(kernel.available(), "sgemm::linear: this CPU lacks the instruction set of {kernel:?}");
    assert!(epilogue.bias.is_none_or(|b| b.len() == n), "sgemm::linear: bias of the wrong size");
    if rows == 0 || n == 0 {
        return;
    }
    assert!(ldo >= n && dst.len() >= (rows - 1) * ldo + n, "sgemm::linear: output too short");
    let residual_fits = |r: &Matrix| r.col_stride == 1 && (rows - 1) * r.row_stride + n <= r.data.len();
    assert!(
        epilogue.residual.as_ref().is_none_or(residual_fits),
        "sgemm::linear: residual of the wrong size or strides"
    );
    // Checked here once so the packers and the kernel may index freely: every operand holds its shape.
    let last = |m: &Matrix, r: usize| (r - 1) * m.row_stride + k.saturating_sub(1) * m.col_stride;
    let w_fits = match w {
        WeightOperand::Strided(w) => last(&w, n) < w.data.len(),
        WeightOperand::Packed(packed_for, panels) => {
            assert_eq!(packed_for, kernel, "sgemm::linear: a weight packed for {packed_for:?} run on {kernel:?}");
            panels.len() >= n.div_ceil(K::NR) * k * K::NR
        }
    };
    assert!(k == 0 || (last(&x, rows) < x.data.len() && w_fits), "sgemm::linear: operands shorter than their shapes");
    let out = SendPtr(dst.as_mut_ptr().cast::<f32>());
    if x.col_stride == 1 && !x.row_stride.is_multiple_of(ALIASING_STRIDE) {
        // SAFETY: dst holds rows rows of n values at stride ldo (checked above); x holds its rows x k
        // matrix; the CPU has the kernel's instruction set.
        return unsafe { multiply_chunk::<K>(rows, n, k, Rows::InPlace(x), &w, epilogue, out, ldo) };
    }
    let chunk_rows = (PACK_BUDGET / k.max(1) / K::MR * K::MR).max(K::MR);
    for r0 in (0..rows).step_by(chunk_rows) {
        let m = chunk_rows.min(rows - r0);
        with_scratch(&PACKED_ROWS, |packed_x| {
            pack_rows::<K>(&x, r0, m, k, packed_x);
            // SAFETY: rows r0..r0 + m of dst start at r0 * ldo, inside dst (checked above).
            unsafe {
                multiply_chunk::<K>(
                    m,
                    n,
                    k,
                    Rows::Packed(packed_x),
                    &w,
                    epilogue.at(r0, 0),
                    SendPtr(out.get().add(r0 * ldo)),
                    ldo,
                )
            }
        });
    }
}

/// `dst = fc2(fc1(x))` on `kernel` for `x` [rows, k] (fc1's weight [h, k], fc2's [n, h]), `dst`
/// [rows, n] row-major: two [`linear`] calls with the hidden activations [rows, h] in this thread's
/// scratch buffer (kept between calls), their rows padded when `h` values would be a multiple of 4 KiB
/// so that fc2 reads them in place rather than packing them.
///
/// # Panics
/// As [`linear`] for either layer.
pub(crate) fn mlp(
    kernel: Kernel,
    rows: usize,
    k: usize,
    x: Matrix,
    fc1: Layer,
    fc2: Layer,
    dst: &mut [MaybeUninit<f32>],
) {
    let h = fc1.outputs;
    let ld = if h.is_multiple_of(ALIASING_STRIDE) { h + 16 } else { h };
    with_scratch(&HIDDEN, |hidden| {
        hidden.clear();
        hidden.reserve(rows * ld);
        let buffer = &mut hidden.spare_capacity_mut()[..rows * ld];
        linear(kernel, rows, k, x, fc1, buffer, ld);
        buffer.chunks_exact_mut(ld).for_each(|row| row[h..].iter_mut().for_each(|v| _ = v.write(0.0)));
        // SAFETY: fc1 wrote the first h values of every row and the padding was zeroed just above.
        unsafe { hidden.set_len(rows * ld) };
        linear(kernel, rows, h, Matrix::row_major(hidden, ld), fc2, dst, fc2.outputs);
    })
}

/// The activation rows as the tiles read them.
#[derive(Clone, Copy)]
enum Rows<'a> {
    /// Panels of [k][MR] values ([`pack_rows`]).
    Packed(&'a [f32]),
    /// The input matrix itself (unit column stride): every tile reads its `MR` rows in place.
    InPlace(Matrix<'a>),
}

impl Rows<'_> {
    /// Row panel `rp` (rows `rp * mr..`, `mr` rows a panel) of a `k`-column operand: its first value and
    /// its row stride (0 for a packed panel).
    fn panel(&self, rp: usize, mr: usize, k: usize) -> (*const f32, usize) {
        match self {
            Rows::Packed(panels) => (panels[rp * mr * k..].as_ptr(), 0),
            Rows::InPlace(x) => (x.data[rp * mr * x.row_stride..].as_ptr(), x.row_stride),
        }
    }
}

/// Rows `r0..r0 + m` of `x` into `packed` as `ceil(m / MR)` panels of [k][MR] values (rows past `m` zero).
///
/// # Panics
/// Where the CPU lacks the tile's instruction set (callers check [`Kernel::available`]).
fn pack_rows<K: Microkernel>(x: &Matrix, r0: usize, m: usize, k: usize, packed: &mut Vec<f32>) {
    let mr = K::MR;
    let len = m.div_ceil(mr) * mr * k;
    packed.clear();
    packed.reserve(len);
    packed.spare_capacity_mut()[..len].par_chunks_mut((mr * k).max(1)).enumerate().with_min_len(4).for_each(
        |(p, panel)| {
            let rows = mr.min(m - p * mr);
            let row = |r: usize| (r < rows).then(|| &x.data[(r0 + p * mr + r) * x.row_stride..]);
            // SAFETY: `linear` checked that rows r0..r0 + m of k values lie inside `x.data` and that the CPU
            // has the tile's instruction set.
            unsafe { K::pack_rows(row, x.col_stride, k, panel) }
        },
    );
    // SAFETY: every panel was written whole by `pack_rows`.
    unsafe { packed.set_len(len) };
}

/// Weight rows (outputs) `NR * p0..` for `panels` tiles into `block` as [panels][k][NR] (outputs past
/// `n` zero).
fn pack_weight_block<K: Microkernel>(w: &Matrix, n: usize, k: usize, p0: usize, panels: usize, block: &mut Vec<f32>) {
    let len = panels * k * K::NR;
    block.clear();
    block.reserve(len);
    for (p, panel) in block.spare_capacity_mut()[..len].chunks_mut((k * K::NR).max(1)).enumerate() {
        // SAFETY: `linear` checked the weight's shape and the CPU's instruction set.
        unsafe { pack_weight_panel::<K>(w, n, k, p0 + p, panel) };
    }
    // SAFETY: every panel was written whole by `pack_weight_panel`.
    unsafe { block.set_len(len) };
}

/// Weight rows (outputs) `NR * p..NR * (p + 1)` into `panel` [k][NR] (outputs past `n` zero).
///
/// # Safety
/// The CPU has the tile's instruction set; `w` holds `n` rows of `k` values.
unsafe fn pack_weight_panel<K: Microkernel>(w: &Matrix, n: usize, k: usize, p: usize, panel: &mut [MaybeUninit<f32>]) {
    let row = |c: usize| (p * K::NR + c < n).then(|| &w.data[(p * K::NR + c) * w.row_stride..]);
    // SAFETY: the caller's promises.
    unsafe { K::pack_outputs(row, w.col_stride, k, panel) }
}

/// A weight [n, k] laid out once in a kernel's packed form ([`WeightOperand::Packed`]), so inference
/// skips the per-call packing: `ceil(n / NR)` panels of [k][NR], outputs past `n` zero.
#[derive(Debug)]
pub(crate) struct PackedWeight {
    /// The kernel whose layout the panels follow.
    kernel: Kernel,
    /// Outputs.
    n: usize,
    /// Inputs.
    k: usize,
    /// The panels, one after another.
    panels: Vec<f32>,
}

impl PackedWeight {
    /// Packs the `n x k` matrix `w` for `kernel` (in parallel over panels).
    ///
    /// # Panics
    /// If `w` does not hold `n` rows of `k` values, or the CPU lacks the kernel's instruction set
    /// ([`Kernel::available`]).
    pub(crate) fn pack(kernel: Kernel, w: Matrix, n: usize, k: usize) -> Self {
        assert!(kernel.available(), "PackedWeight: this CPU lacks the instruction set of {kernel:?}");
        assert!(
            n == 0 || k == 0 || (n - 1) * w.row_stride + (k - 1) * w.col_stride < w.data.len(),
            "PackedWeight: matrix shorter than {n} x {k}"
        );
        let nr = kernel.nr();
        let len = n.div_ceil(nr) * k * nr;
        let mut panels = Vec::with_capacity(len);
        panels.spare_capacity_mut()[..len].par_chunks_mut((k * nr).max(1)).enumerate().for_each(|(p, panel)| {
            // SAFETY: the shape and the instruction set were checked above.
            unsafe {
                match kernel {
                    Kernel::Avx512 => pack_weight_panel::<avx512::Avx512>(&w, n, k, p, panel),
                    Kernel::Avx2 => pack_weight_panel::<avx2::Avx2>(&w, n, k, p, panel),
                }
            }
        });
        // SAFETY: every panel was written whole by `pack_weight_panel`.
        unsafe { panels.set_len(len) };
        Self { kernel, n, k, panels }
    }

    /// The kernel whose layout the panels follow.
    pub(crate) fn kernel(&self) -> Kernel {
        self.kernel
    }

    /// Outputs (rows of the unpacked matrix).
    pub(crate) fn out_features(&self) -> usize {
        self.n
    }

    /// Inputs (columns of the unpacked matrix).
    pub(crate) fn in_features(&self) -> usize {
        self.k
    }

    /// The weight of outputs `first..` as a [`linear`] operand; `None` where `first` does not start a
    /// panel (a multiple of the kernel's tile width) or lies past the end.
    pub(crate) fn outputs_from(&self, first: usize) -> Option<WeightOperand<'_>> {
        let nr = self.kernel.nr();
        (first.is_multiple_of(nr) && first <= self.n)
            .then(|| WeightOperand::Packed(self.kernel, &self.panels[first / nr * self.k * nr..]))
    }

    /// The matrix [n, k], row-major, as it was packed.
    pub(crate) fn unpack(&self) -> Vec<f32> {
        let (n, k, nr) = (self.n, self.k, self.kernel.nr());
        (0..n)
            .flat_map(|j| (0..k).map(move |c| (j, c)))
            .map(|(j, c)| self.panels[(j / nr * k + c) * nr + j % nr])
            .collect()
    }
}

/// The product of `m` rows with every weight block, written to `out` [m, n] (row stride `ldo`).
///
/// # Safety
/// The CPU has the tile's instruction set; `out` must address `m` rows of `n` writable values `ldo`
/// apart that no one else touches during the call; `x` and `w` hold their `m x k` and `n x k` matrices
/// (`linear` checked).
#[allow(clippy::too_many_arguments)]
unsafe fn multiply_chunk<K: Microkernel>(
    m: usize,
    n: usize,
    k: usize,
    x: Rows,
    w: &WeightOperand,
    epilogue: Epilogue,
    out: SendPtr,
    ldo: usize,
) {
    let (mr, nr) = (K::MR, K::NR);
    let row_panels = m.div_ceil(mr);
    let blocks = n.div_ceil(nr).div_ceil(BLOCK_PANELS);
    // Split the rows too when there are fewer blocks than two per thread, so every thread has work.
    let row_parts = (2 * rayon::current_num_threads()).div_ceil(blocks).clamp(1, row_panels);
    (0..blocks * row_parts).into_par_iter().for_each(|item| {
        let (b, part) = (item / row_parts, item % row_parts);
        let p0 = b * BLOCK_PANELS;
        let panels = BLOCK_PANELS.min(n.div_ceil(nr) - p0);
        // The block's panels [panels][k][NR].
        let multiply_block = |block: &[f32]| {
            for rp in row_panels * part / row_parts..row_panels * (part + 1) / row_parts {
                let rows = mr.min(m - rp * mr);
                let (a, lda) = x.panel(rp, mr, k);
                for p in 0..panels {
                    let col = (p0 + p) * nr;
                    let cols = nr.min(n - col);
                    let tile = Tile { rows, cols, epilogue: epilogue.at(rp * mr, col) };
                    // SAFETY: the tile's rows rp*MR.. and columns col..col+cols lie inside out [m, n]
                    // (rows <= m - rp*MR, cols <= n - col) and belong to this item alone; the row panel
                    // holds `rows` rows of k values (packed: k steps of MR), the weight panel k steps of
                    // NR values; the CPU has the tile's instruction set (`linear` checked).
                    unsafe {
                        K::product(
                            k,
                            a,
                            lda,
                            block[p * k * nr..].as_ptr(),
                            out.get().add(rp * mr * ldo + col),
                            ldo,
                            &tile,
                        )
                    }
                }
            }
        };
        match w {
            WeightOperand::Strided(w) => with_scratch(&WEIGHT_BLOCK, |block| {
                pack_weight_block::<K>(w, n, k, p0, panels, block);
                multiply_block(block)
            }),
            WeightOperand::Packed(_, all) => multiply_block(&all[p0 * k * nr..(p0 + panels) * k * nr]),
        }
    });
}

#[cfg(test)]
mod tests {
    //! Every kernel this CPU runs (both on an AVX-512 machine), against an f64 product and against
    //! itself through other paths (packed weights, the MLP, the residual epilogue).
    use super::*;

    /// The kernels this CPU runs, whatever `ACTIONCLIP_CPU_ISA` says.
    fn kernels() -> Vec<Kernel> {
        let kernels: Vec<Kernel> = [Kernel::Avx512, Kernel::Avx2].into_iter().filter(|k| k.available()).collect();
        if kernels.is_empty() {
            eprintln!("skipped: neither AVX-512F nor AVX2 + FMA on this CPU");
        }
        kernels
    }

    /// A deterministic pseudo-random value in [-1, 1) for index `i`.
    fn value(i: usize) -> f32 {
        ((i.wrapping_mul(2654435761) >> 7) % 2001) as f32 / 1000.0 - 1.0
    }

    /// `x @ w^T + bias`, QuickGELU'd when `gelu`, summed in f64.
    fn reference(
        rows: usize,
        n: usize,
        k: usize,
        x: &Matrix,
        w: &Matrix,
        bias: Option<&[f32]>,
        gelu: bool,
    ) -> Vec<f32> {
        let at = |m: &Matrix, i: usize, j: usize| m.data[i * m.row_stride + j * m.col_stride] as f64;
        let mut y = Vec::with_capacity(rows * n);
        for i in 0..rows {
            for j in 0..n {
                let v = (0..k).map(|c| at(x, i, c) * at(w, j, c)).sum::<f64>() + bias.map_or(0.0, |b| b[j] as f64);
                y.push(if gelu { (v / (1.0 + (-1.702 * v).exp())) as f32 } else { v as f32 });
            }
        }
        y
    }

    /// Runs `linear` on `kernel` into a fresh output and returns it.
    fn run(kernel: Kernel, rows: usize, k: usize, x: Matrix, layer: Layer) -> Vec<f32> {
        let n = layer.outputs;
        let mut dst = Vec::with_capacity(rows * n);
        linear(kernel, rows, k, x, layer, &mut dst.spare_capacity_mut()[..rows * n], n);
        // SAFETY: `linear` wrote all rows * n values.
        unsafe { dst.set_len(rows * n) };
        dst
    }

    /// A layer of `n` outputs with the weight `w`, the bias and QuickGELU when `gelu`.
    fn layer<'a>(w: WeightOperand<'a>, n: usize, bias: Option<&'a [f32]>, gelu: bool) -> Layer<'a> {
        Layer { weight: w, outputs: n, epilogue: Epilogue { bias, gelu, residual: None } }
    }

    #[test]
    fn matches_the_f64_product_on_ragged_shapes_and_strides() {
        // Shapes cover partial row panels and output tiles of both kernels (6 x 16 and 12 x 32), partial
        // blocks, n < 16, k = 1, k not a multiple of 8 or 16, k = 0, (with 200 rows x 40 outputs) several
        // row parts per block, and rows read in place or (k = 1024, rows 4 KiB apart; and the strided
        // views below) packed.
        let shapes = [
            (1, 1, 1),
            (13, 33, 17),
            (12, 32, 16),
            (7, 15, 1),
            (5, 9, 11),
            (25, 100, 48),
            (7, 129, 0),
            (200, 40, 70),
            (3, 5, 300),
            (14, 40, 1024),
        ];
        for kernel in kernels() {
            for (case, &(rows, n, k)) in shapes.iter().enumerate() {
                let xs: Vec<f32> = (0..rows * k * 2 + 1).map(|i| value(i + 7 * case)).collect();
                let ws: Vec<f32> = (0..n * k * 2 + 1).map(|i| value(i + 1000 + case)).collect();
                let bias: Vec<f32> = (0..n).map(|i| value(i + 99)).collect();
                // Row-major, transposed views (column stride > 1: the element-wise packing path), and
                // views with an offset and padded rows.
                let views = [
                    (
                        Matrix { data: &xs, row_stride: k, col_stride: 1 },
                        Matrix { data: &ws, row_stride: k, col_stride: 1 },
                    ),
                    (
                        Matrix { data: &xs, row_stride: 1, col_stride: rows },
                        Matrix { data: &ws, row_stride: 1, col_stride: n },
                    ),
                    (
                        Matrix { data: &xs[1..], row_stride: 2 * k + 1, col_stride: 1 },
                        Matrix { data: &ws, row_stride: 2 * k, col_stride: 2 },
                    ),
                ];
                for (x, w) in views {
                    if rows > 1 && x.row_stride == 2 * k + 1 && (rows - 1) * x.row_stride + k > x.data.len() {
                        continue;
                    }
                    for (b, gelu) in [(None, false), (Some(bias.as_slice()), false), (Some(bias.as_slice()), true)] {
                        let got = run(kernel, rows, k, x, layer(WeightOperand::Strided(w), n, b, gelu));
                        let want = reference(rows, n, k, &x, &w, b, gelu);
                        for (i, (g, e)) in got.iter().zip(&want).enumerate() {
                            assert!(
                                (g - e).abs() <= 1e-5 * (1.0 + e.abs()) * (k as f32).sqrt().max(1.0),
                                "{kernel:?} {rows}x{n}x{k} gelu {gelu} at {i}: {g} vs {e}"
                            );
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn the_kernels_agree_bit_for_bit() {
        // Every output sums its products in the same order on every tile (one FMA per k step, chunks of
        // 128 steps added in turn) and its epilogue is the same scalar arithmetic.
        let kernels = kernels();
        let (rows, n, k) = (37, 70, 300);
        let xs: Vec<f32> = (0..rows * k).map(value).collect();
        let ws: Vec<f32> = (0..n * k).map(|i| value(i + 3)).collect();
        let bias: Vec<f32> = (0..n).map(|i| value(i + 5)).collect();
        let (x, w) = (Matrix::row_major(&xs, k), WeightOperand::Strided(Matrix::row_major(&ws, k)));
        let outputs: Vec<Vec<f32>> =
            kernels.iter().map(|&kernel| run(kernel, rows, k, x, layer(w, n, Some(&bias), true))).collect();
        for (kernel, out) in kernels.iter().zip(&outputs) {
            assert_eq!(out, &outputs[0], "{kernel:?} against {:?}", kernels[0]);
        }
    }

    #[test]
    fn packed_weights_give_the_strided_results_bit_for_bit() {
        for kernel in kernels() {
            for (case, &(rows, n, k)) in [(13, 100, 70), (30, 64, 0), (5, 200, 300), (4, 7, 1)].iter().enumerate() {
                let xs: Vec<f32> = (0..rows * k).map(|i| value(i + case)).collect();
                // Transposed storage: the packing reads through the strides.
                let ws: Vec<f32> = (0..n * k).map(|i| value(i + 500 + case)).collect();
                let bias: Vec<f32> = (0..n).map(|i| value(i + 9)).collect();
                let (x, w) = (
                    Matrix { data: &xs, row_stride: k, col_stride: 1 },
                    Matrix { data: &ws, row_stride: 1, col_stride: n },
                );
                let packed = PackedWeight::pack(kernel, w, n, k);
                assert_eq!((packed.kernel(), packed.out_features(), packed.in_features()), (kernel, n, k));
                let unpacked = packed.unpack();
                assert!((0..n * k).all(|i| unpacked[i] == ws[i % k * n + i / k]), "unpack inverts pack");
                let strided = run(kernel, rows, k, x, layer(WeightOperand::Strided(w), n, Some(&bias), true));
                let whole = packed.outputs_from(0).expect("aligned");
                assert_eq!(run(kernel, rows, k, x, layer(whole, n, Some(&bias), true)), strided, "{kernel:?}");
                // A view from the second panel on equals those columns of the whole product.
                let from = kernel.nr();
                if let Some(tail) = packed.outputs_from(from) {
                    let got = run(kernel, rows, k, x, layer(tail, n - from, Some(&bias[from..]), true));
                    let want: Vec<f32> = strided.chunks(n).flat_map(|r| r[from..].to_vec()).collect();
                    assert_eq!(got, want, "{kernel:?}");
                }
            }
            let packed = PackedWeight::pack(kernel, Matrix { data: &[0.0; 6], row_stride: 3, col_stride: 1 }, 2, 3);
            assert!(packed.outputs_from(1).is_none() && packed.outputs_from(64).is_none());
        }
    }

    #[test]
    fn a_weight_packed_for_another_kernel_is_refused() {
        if !Kernel::Avx512.available() || !Kernel::Avx2.available() {
            return;
        }
        let ws = [1f32; 4];
        let packed = PackedWeight::pack(Kernel::Avx512, Matrix::row_major(&ws, 2), 2, 2);
        let weight = packed.outputs_from(0).expect("aligned");
        let refused = std::panic::catch_unwind(|| {
            run(Kernel::Avx2, 1, 2, Matrix::row_major(&ws, 2), layer(weight, 2, None, false))
        });
        assert!(refused.is_err());
    }

    #[test]
    fn mlp_equals_its_two_layers_bit_for_bit() {
        for kernel in kernels() {
            // h = 1024: hidden rows padded (read in place); h = 100: not padded.
            for (rows, k, h, n) in [(30, 48, 1024, 40), (13, 70, 100, 33)] {
                let xs: Vec<f32> = (0..rows * k).map(value).collect();
                let (w1, w2): (Vec<f32>, Vec<f32>) =
                    ((0..h * k).map(|i| value(i + 3)).collect(), (0..n * h).map(|i| value(i + 5)).collect());
                let (b1, b2): (Vec<f32>, Vec<f32>) =
                    ((0..h).map(|i| value(i + 7)).collect(), (0..n).map(|i| value(i + 11)).collect());
                let (x, w1, w2) = (Matrix::row_major(&xs, k), Matrix::row_major(&w1, k), Matrix::row_major(&w2, h));
                let fc1 = layer(WeightOperand::Strided(w1), h, Some(&b1), true);
                let fc2 = layer(WeightOperand::Strided(w2), n, Some(&b2), false);
                let hidden = run(kernel, rows, k, x, fc1);
                let want = run(kernel, rows, h, Matrix::row_major(&hidden, h), fc2);
                let mut got = Vec::with_capacity(rows * n);
                mlp(kernel, rows, k, x, fc1, fc2, &mut got.spare_capacity_mut()[..rows * n]);
                // SAFETY: `mlp` wrote all rows * n values.
                unsafe { got.set_len(rows * n) };
                assert_eq!(got, want, "{kernel:?} {rows}x{k} -> {h} -> {n}");
            }
        }
    }

    #[test]
    fn residual_adds_last() {
        for kernel in kernels() {
            // 30 rows, k = 1024: packed rows in chunks would offset the residual too; the others read in
            // place, n = 45 and 7 ending in partial vectors of both kernels.
            for (rows, n, k) in [(30, 45, 1024), (13, 70, 20), (5, 7, 3)] {
                let xs: Vec<f32> = (0..rows * k).map(value).collect();
                let ws: Vec<f32> = (0..n * k).map(|i| value(i + 1)).collect();
                let bias: Vec<f32> = (0..n).map(|i| value(i + 2)).collect();
                // The residual's rows 3 values longer than the output's.
                let residual: Vec<f32> = (0..rows * (n + 3)).map(|i| value(i + 4)).collect();
                let (x, w) = (Matrix::row_major(&xs, k), WeightOperand::Strided(Matrix::row_major(&ws, k)));
                for gelu in [false, true] {
                    let plain = run(kernel, rows, k, x, layer(w, n, Some(&bias), gelu));
                    let mut with_residual = layer(w, n, Some(&bias), gelu);
                    with_residual.epilogue.residual = Some(Matrix::row_major(&residual, n + 3));
                    let got = run(kernel, rows, k, x, with_residual);
                    let want: Vec<f32> =
                        plain.iter().enumerate().map(|(i, v)| v + residual[i / n * (n + 3) + i % n]).collect();
                    assert_eq!(got, want, "{kernel:?} {rows}x{n}x{k} gelu {gelu}");
                }
            }
        }
    }
}
