//! An f32 GEMM for linear layers on AVX-512 CPUs: `y = x @ w^T (+ bias)`, QuickGELU and a residual add
//! optionally applied.
//!
//! The `gemm` crate (candle's CPU matmul, and [`super::fused`]'s fallback) runs AVX2 kernels with 16
//! registers even where AVX-512 gives 32. Here a 12 x 32 output tile lives in 24 zmm accumulators over
//! the whole reduction, so each output is written once with its bias, activation and residual applied.
//! The activation rows are read in place (packed per call into 12-row panels only when rows lie a
//! multiple of 4 KiB apart, which would make them evict one another from the L1); the weight is packed
//! in blocks of 4 x 32 outputs (k-major, zero-padded) by the thread that consumes the block, or once at
//! load ([`PackedWeight`]), and every row panel streams past it. Blocks of outputs, and ranges of rows
//! when there are too few blocks, spread over the rayon pool. [`mlp`] chains two layers through a reused
//! hidden buffer. On a 2-core Zen 4 the four ViT-B/16 layer shapes (1576 rows) run at ~210-220 GFLOP/s
//! against `gemm`'s ~190 (peak 232).
use std::{arch::x86_64::*, cell::RefCell, mem::MaybeUninit, thread::LocalKey};

use rayon::prelude::*;

use crate::kernels::simd::{quick_gelu_value, SendPtr};

/// Rows of the register tile.
const MR: usize = 12;
/// Columns of the register tile (two zmm vectors).
const NR: usize = 32;
/// Tiles of outputs (`NR` wide) packed together into one weight block.
const BLOCK_PANELS: usize = 4;
/// Most activation values packed at once (32 MiB of f32): larger inputs run in row chunks.
const PACK_BUDGET: usize = 8 << 20;
/// Reduction steps summed in registers before they join the tile's running sums.
const KC: usize = 128;
/// Row strides (in values) at which input rows are packed rather than read in place: rows a multiple of
/// 4 KiB apart fall into the same L1 sets and evict one another.
const ALIASING_STRIDE: usize = 1024;
/// How far ahead (in k steps) the tile prefetches its packed operands.
const PREFETCH_STEPS: usize = 24;

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

/// Whether this CPU runs the kernel (AVX-512F, detected at run time).
pub(crate) fn available() -> bool {
    is_x86_feature_detected!("avx512f")
}

/// The weight operand of [`linear`]: `n x k` (element (j, c) the weight of output j, input c).
#[derive(Clone, Copy)]
pub(crate) enum WeightOperand<'a> {
    /// A matrix at any strides, packed block by block during the call.
    Strided(Matrix<'a>),
    /// Already in the kernel's layout: `ceil(n / NR)` panels of [k][NR] ([`PackedWeight::outputs_from`]).
    Packed(&'a [f32]),
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

/// `dst = x @ w^T`, then the epilogue: `x` [rows, k], the layer's weight `w` [n, k], `dst` [rows, n] at
/// row stride `ldo` (>= n), every element of those rows written (the `ldo - n` values after each row
/// left as they are).
///
/// # Panics
/// If `x` or `w` does not hold a `rows x k` / `n x k` matrix, the bias is not `n` long or `dst` is too
/// short, or if the CPU lacks AVX-512F ([`available`]).
pub(crate) fn linear(rows: usize, k: usize, x: Matrix, layer: Layer, dst: &mut [MaybeUninit<f32>], ldo: usize) {
    let Layer { weight: w, outputs: n, epilogue } = layer;
    assert!(available(), "sgemm::linear needs AVX-512F");
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
        WeightOperand::Packed(panels) => panels.len() >= n.div_ceil(NR) * k * NR,
    };
    assert!(k == 0 || (last(&x, rows) < x.data.len() && w_fits), "sgemm::linear: operands shorter than their shapes");
    let out = SendPtr(dst.as_mut_ptr().cast::<f32>());
    if x.col_stride == 1 && !x.row_stride.is_multiple_of(ALIASING_STRIDE) {
        // SAFETY: dst holds rows rows of n values at stride ldo (checked above); x holds its rows x k matrix.
        return unsafe { multiply_chunk(rows, n, k, Rows::InPlace(x), &w, epilogue, out, ldo) };
    }
    let chunk_rows = (PACK_BUDGET / k.max(1) / MR * MR).max(MR);
    for r0 in (0..rows).step_by(chunk_rows) {
        let m = chunk_rows.min(rows - r0);
        with_scratch(&PACKED_ROWS, |packed_x| {
            pack_rows(&x, r0, m, k, packed_x);
            // SAFETY: rows r0..r0 + m of dst start at r0 * ldo, inside dst (checked above).
            unsafe {
                multiply_chunk(
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

/// `dst = fc2(fc1(x))` for `x` [rows, k] (fc1's weight [h, k], fc2's [n, h]), `dst` [rows, n]
/// row-major: two [`linear`] calls with the hidden activations [rows, h] in this thread's scratch buffer
/// (kept between calls), their rows padded when `h` values would be a multiple of 4 KiB so that fc2
/// reads them in place rather than packing them.
///
/// # Panics
/// As [`linear`] for either layer.
pub(crate) fn mlp(rows: usize, k: usize, x: Matrix, fc1: Layer, fc2: Layer, dst: &mut [MaybeUninit<f32>]) {
    let h = fc1.outputs;
    let ld = if h.is_multiple_of(ALIASING_STRIDE) { h + 16 } else { h };
    with_scratch(&HIDDEN, |hidden| {
        hidden.clear();
        hidden.reserve(rows * ld);
        let buffer = &mut hidden.spare_capacity_mut()[..rows * ld];
        linear(rows, k, x, fc1, buffer, ld);
        buffer.chunks_exact_mut(ld).for_each(|row| row[h..].iter_mut().for_each(|v| _ = v.write(0.0)));
        // SAFETY: fc1 wrote the first h values of every row and the padding was zeroed just above.
        unsafe { hidden.set_len(rows * ld) };
        linear(rows, h, Matrix::row_major(hidden, ld), fc2, dst, fc2.outputs);
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
    /// Row panel `rp` (rows `rp * MR..`) of a `k`-column operand: its first value and its row stride
    /// (0 for a packed panel).
    fn panel(&self, rp: usize, k: usize) -> (*const f32, usize) {
        match self {
            Rows::Packed(panels) => (panels[rp * MR * k..].as_ptr(), 0),
            Rows::InPlace(x) => (x.data[rp * MR * x.row_stride..].as_ptr(), x.row_stride),
        }
    }
}

/// Rows `r0..r0 + m` of `x` into `packed` as `ceil(m / MR)` panels of [k][MR] values (rows past `m` zero).
fn pack_rows(x: &Matrix, r0: usize, m: usize, k: usize, packed: &mut Vec<f32>) {
    let len = m.div_ceil(MR) * MR * k;
    packed.clear();
    packed.reserve(len);
    packed.spare_capacity_mut()[..len].par_chunks_mut((MR * k).max(1)).enumerate().with_min_len(4).for_each(
        |(p, panel)| {
            let rows = MR.min(m - p * MR);
            let row = |r: usize| (r < rows).then(|| &x.data[(r0 + p * MR + r) * x.row_stride..]);
            // SAFETY: `linear` checked that rows r0..r0 + m of k values lie inside `x.data` and the CPU has AVX-512F.
            unsafe { pack_panel::<MR>(row, x.col_stride, k, panel) }
        },
    );
    // SAFETY: every panel was written whole by `pack_panel`.
    unsafe { packed.set_len(len) };
}

/// Weight rows (outputs) `NR * p0..` for `panels` tiles into `block` as [panels][k][NR] (outputs past
/// `n` zero).
fn pack_weight_block(w: &Matrix, n: usize, k: usize, p0: usize, panels: usize, block: &mut Vec<f32>) {
    let len = panels * k * NR;
    block.clear();
    block.reserve(len);
    for (p, panel) in block.spare_capacity_mut()[..len].chunks_mut((k * NR).max(1)).enumerate() {
        pack_weight_panel(w, n, k, p0 + p, panel);
    }
    // SAFETY: every panel was written whole by `pack_weight_panel`.
    unsafe { block.set_len(len) };
}

/// Weight rows (outputs) `NR * p..NR * (p + 1)` into `panel` [k][NR] (outputs past `n` zero).
///
/// # Panics
/// Where the CPU lacks AVX-512F (callers check [`available`]); `w` must hold `n` rows of `k` values.
fn pack_weight_panel(w: &Matrix, n: usize, k: usize, p: usize, panel: &mut [MaybeUninit<f32>]) {
    assert!(available(), "sgemm: packing needs AVX-512F");
    let row = |c: usize| (p * NR + c < n).then(|| &w.data[(p * NR + c) * w.row_stride..]);
    // SAFETY: the callers checked that the n weight rows of k values lie inside `w.data`; AVX-512F present.
    unsafe { pack_panel::<NR>(row, w.col_stride, k, panel) }
}

/// A weight [n, k] laid out once in the kernel's packed form ([`WeightOperand::Packed`]), so inference
/// skips the per-call packing: `ceil(n / NR)` panels of [k][NR], outputs past `n` zero.
#[derive(Debug)]
pub(crate) struct PackedWeight {
    /// Outputs.
    n: usize,
    /// Inputs.
    k: usize,
    /// The panels, one after another.
    panels: Vec<f32>,
}

impl PackedWeight {
    /// Outputs a view may start at: whole panels.
    pub(crate) const OUTPUT_ALIGN: usize = NR;

    /// Packs the `n x k` matrix `w` (in parallel over panels).
    ///
    /// # Panics
    /// If `w` does not hold `n` rows of `k` values, or the CPU lacks AVX-512F ([`available`]).
    pub(crate) fn pack(w: Matrix, n: usize, k: usize) -> Self {
        assert!(
            n == 0 || k == 0 || (n - 1) * w.row_stride + (k - 1) * w.col_stride < w.data.len(),
            "PackedWeight: matrix shorter than {n} x {k}"
        );
        let len = n.div_ceil(NR) * k * NR;
        let mut panels = Vec::with_capacity(len);
        panels.spare_capacity_mut()[..len]
            .par_chunks_mut((k * NR).max(1))
            .enumerate()
            .for_each(|(p, panel)| pack_weight_panel(&w, n, k, p, panel));
        // SAFETY: every panel was written whole by `pack_weight_panel`.
        unsafe { panels.set_len(len) };
        Self { n, k, panels }
    }

    /// Outputs (rows of the unpacked matrix).
    pub(crate) fn out_features(&self) -> usize {
        self.n
    }

    /// Inputs (columns of the unpacked matrix).
    pub(crate) fn in_features(&self) -> usize {
        self.k
    }

    /// The weight of outputs `first..` as a [`linear`] operand; `first` must be a multiple of
    /// [`Self::OUTPUT_ALIGN`] (`None` otherwise, or past the end).
    pub(crate) fn outputs_from(&self, first: usize) -> Option<WeightOperand<'_>> {
        (first.is_multiple_of(NR) && first <= self.n)
            .then(|| WeightOperand::Packed(&self.panels[first / NR * self.k * NR..]))
    }

    /// The matrix [n, k], row-major, as it was packed.
    pub(crate) fn unpack(&self) -> Vec<f32> {
        let (n, k) = (self.n, self.k);
        (0..n)
            .flat_map(|j| (0..k).map(move |c| (j, c)))
            .map(|(j, c)| self.panels[(j / NR * k + c) * NR + j % NR])
            .collect()
    }
}

/// Packs `R` rows (`row(r)`: the row's values at stride `col_stride`, `None` for a zero row) of `k`
/// values into `panel` [k][R], k-major: 16 x 16 blocks transposed in registers when the rows are
/// contiguous, element by element otherwise.
///
/// # Safety
/// Every row `row` returns holds `(k - 1) * col_stride + 1` values at least; the CPU has AVX-512F.
#[target_feature(enable = "avx512f")]
unsafe fn pack_panel<'a, const R: usize>(
    row: impl Fn(usize) -> Option<&'a [f32]>,
    col_stride: usize,
    k: usize,
    panel: &mut [MaybeUninit<f32>],
) {
    let rows: [Option<&[f32]>; R] = std::array::from_fn(row);
    if col_stride != 1 {
        for (c, step) in panel.chunks_exact_mut(R).enumerate() {
            for (d, row) in step.iter_mut().zip(&rows) {
                d.write(row.map_or(0.0, |r| r[c * col_stride]));
            }
        }
        return;
    }
    let out = panel.as_mut_ptr().cast::<f32>();
    for k0 in (0..k).step_by(16) {
        let steps = 16.min(k - k0);
        let lanes: __mmask16 = ((1u32 << steps) - 1) as __mmask16;
        for g in (0..R).step_by(16) {
            let width = 16.min(R - g);
            let mut block = [_mm512_setzero_ps(); 16];
            for (v, r) in block.iter_mut().zip(&rows[g..g + width]) {
                if let Some(r) = r {
                    *v = _mm512_maskz_loadu_ps(lanes, r.as_ptr().add(k0));
                }
            }
            transpose16(&mut block);
            let keep: __mmask16 = ((1u32 << width) - 1) as __mmask16;
            for (s, v) in block.iter().take(steps).enumerate() {
                _mm512_mask_storeu_ps(out.add((k0 + s) * R + g), keep, *v);
            }
        }
    }
}

/// Transposes the 16 x 16 matrix held in 16 vectors (row i in `m[i]`) in place.
#[target_feature(enable = "avx512f")]
fn transpose16(m: &mut [__m512; 16]) {
    let mut t = [_mm512_setzero_ps(); 16];
    // t[2i], t[2i+1]: rows 2i and 2i+1 interleaved (low / high halves of each 128-bit lane).
    for i in 0..8 {
        t[2 * i] = _mm512_unpacklo_ps(m[2 * i], m[2 * i + 1]);
        t[2 * i + 1] = _mm512_unpackhi_ps(m[2 * i], m[2 * i + 1]);
    }
    // m[4i + j]: column j (mod 4) of rows 4i..4i+4, one column group per 128-bit lane.
    for i in 0..4 {
        m[4 * i] = _mm512_shuffle_ps::<0x44>(t[4 * i], t[4 * i + 2]);
        m[4 * i + 1] = _mm512_shuffle_ps::<0xEE>(t[4 * i], t[4 * i + 2]);
        m[4 * i + 2] = _mm512_shuffle_ps::<0x44>(t[4 * i + 1], t[4 * i + 3]);
        m[4 * i + 3] = _mm512_shuffle_ps::<0xEE>(t[4 * i + 1], t[4 * i + 3]);
    }
    // Gather the 128-bit lanes: first across row groups (0, 1) and (2, 3), then across the pairs.
    for i in 0..4 {
        t[i] = _mm512_shuffle_f32x4::<0x88>(m[i], m[i + 4]);
        t[i + 4] = _mm512_shuffle_f32x4::<0xDD>(m[i], m[i + 4]);
        t[i + 8] = _mm512_shuffle_f32x4::<0x88>(m[i + 8], m[i + 12]);
        t[i + 12] = _mm512_shuffle_f32x4::<0xDD>(m[i + 8], m[i + 12]);
    }
    for i in 0..8 {
        m[i] = _mm512_shuffle_f32x4::<0x88>(t[i], t[i + 8]);
        m[i + 8] = _mm512_shuffle_f32x4::<0xDD>(t[i], t[i + 8]);
    }
}

/// The product of `m` rows with every weight block, written to `out` [m, n] (row stride `ldo`).
///
/// # Safety
/// `out` must address `m` rows of `n` writable values `ldo` apart that no one else touches during the
/// call; `x` and `w` hold their `m x k` and `n x k` matrices (`linear` checked).
#[allow(clippy::too_many_arguments)]
unsafe fn multiply_chunk(
    m: usize,
    n: usize,
    k: usize,
    x: Rows,
    w: &WeightOperand,
    epilogue: Epilogue,
    out: SendPtr,
    ldo: usize,
) {
    let row_panels = m.div_ceil(MR);
    let blocks = n.div_ceil(NR).div_ceil(BLOCK_PANELS);
    // Split the rows too when there are fewer blocks than two per thread, so every thread has work.
    let row_parts = (2 * rayon::current_num_threads()).div_ceil(blocks).clamp(1, row_panels);
    (0..blocks * row_parts).into_par_iter().for_each(|item| {
        let (b, part) = (item / row_parts, item % row_parts);
        let p0 = b * BLOCK_PANELS;
        let panels = BLOCK_PANELS.min(n.div_ceil(NR) - p0);
        // The block's panels [panels][k][NR].
        let multiply_block = |block: &[f32]| {
            for rp in row_panels * part / row_parts..row_panels * (part + 1) / row_parts {
                let rows = MR.min(m - rp * MR);
                let (a, lda) = x.panel(rp, k);
                for p in 0..panels {
                    let col = (p0 + p) * NR;
                    let cols = NR.min(n - col);
                    let tile = Tile { rows, cols, epilogue: epilogue.at(rp * MR, col) };
                    // SAFETY: the tile's rows rp*MR.. and columns col..col+cols lie inside out [m, n]
                    // (rows <= m - rp*MR, cols <= n - col) and belong to this item alone; the row panel
                    // holds `rows` rows of k values (packed: k steps of MR), the weight panel k steps of
                    // NR values; the CPU has AVX-512F (`linear` checked).
                    unsafe {
                        tile_avx512(
                            k,
                            a,
                            lda,
                            block[p * k * NR..].as_ptr(),
                            out.get().add(rp * MR * ldo + col),
                            ldo,
                            &tile,
                        )
                    }
                }
            }
        };
        match w {
            WeightOperand::Strided(w) => with_scratch(&WEIGHT_BLOCK, |block| {
                pack_weight_block(w, n, k, p0, panels, block);
                multiply_block(block)
            }),
            WeightOperand::Packed(all) => multiply_block(&all[p0 * k * NR..(p0 + panels) * k * NR]),
        }
    });
}

/// Adds the products of `steps` k steps of the rows `a` and the packed weight panel `b` [steps][NR] to
/// `sums` (or writes them there when `first`), summing in registers first. Rows are a packed panel
/// [steps][MR] or, `IN_PLACE`, row i's values at `a + row_offsets[i]` on. Not inlined, so `sums` stays in
/// memory and the 24 accumulators keep their registers.
///
/// # Safety
/// The CPU has AVX-512F; `a` holds `steps * MR` values (packed) or `steps` values from every row offset
/// (in place), `b` `steps * NR`; `sums` is initialised unless `first`.
#[target_feature(enable = "avx512f")]
#[inline(never)]
unsafe fn accumulate_chunk<const IN_PLACE: bool>(
    steps: usize,
    a: *const f32,
    row_offsets: &[usize; MR],
    b: *const f32,
    sums: &mut [MaybeUninit<__m512>; 2 * MR],
    first: bool,
) {
    let mut acc = [_mm512_setzero_ps(); 2 * MR];
    for step in 0..steps {
        let (a, b) = (a.add(if IN_PLACE { step } else { step * MR }), b.add(step * NR));
        let (b0, b1) = (_mm512_loadu_ps(b), _mm512_loadu_ps(b.add(16)));
        // Prefetches past the end of a panel touch no memory they must not (a hint, never a fault).
        _mm_prefetch::<_MM_HINT_T0>(b.wrapping_add(PREFETCH_STEPS * NR).cast());
        _mm_prefetch::<_MM_HINT_T0>(b.wrapping_add(PREFETCH_STEPS * NR + 16).cast());
        if !IN_PLACE {
            _mm_prefetch::<_MM_HINT_T0>(a.wrapping_add(2 * PREFETCH_STEPS * MR).cast());
        }
        for i in 0..MR {
            let ai = _mm512_set1_ps(*a.add(if IN_PLACE { row_offsets[i] } else { i }));
            acc[2 * i] = _mm512_fmadd_ps(ai, b0, acc[2 * i]);
            acc[2 * i + 1] = _mm512_fmadd_ps(ai, b1, acc[2 * i + 1]);
        }
    }
    for (s, v) in sums.iter_mut().zip(acc) {
        s.write(if first { v } else { _mm512_add_ps(s.assume_init(), v) });
    }
}

/// Where a register tile lands and what its epilogue adds.
struct Tile<'a> {
    /// Valid rows (<= MR).
    rows: usize,
    /// Valid columns (<= NR).
    cols: usize,
    /// The epilogue from the tile's first row and column on.
    epilogue: Epilogue<'a>,
}

/// One 12 x 32 tile over all `k`: `a` the rows (packed [k][MR] when `lda` is 0, else `tile.rows` rows
/// of k values `lda` apart), `b` packed [k][NR], the result (bias, QuickGELU) written to the tile's rows
/// and columns of `out` (row stride `ldo`). The reduction runs in chunks of `KC` steps whose partial sums
/// add up in memory, as blocked GEMMs do: the rounding error grows with `KC + k / KC` rather than with `k`.
///
/// # Safety
/// The CPU has AVX-512F; `a` holds its rows as described, `b` `k * NR` values; `out` addresses
/// `tile.rows` rows of `tile.cols` writable values at stride `ldo`.
#[target_feature(enable = "avx512f")]
unsafe fn tile_avx512(k: usize, a: *const f32, lda: usize, b: *const f32, out: *mut f32, ldo: usize, tile: &Tile) {
    let mut sums = [MaybeUninit::<__m512>::uninit(); 2 * MR];
    // Rows past the tile's repeat its last row (read in place, there is nothing beyond); never stored.
    let row_offsets: [usize; MR] = std::array::from_fn(|i| i.min(tile.rows - 1) * lda);
    // Fetch the output lines into the L1 now, so their misses overlap the products instead of the stores.
    for i in 0..tile.rows {
        _mm_prefetch::<_MM_HINT_T0>(out.wrapping_add(i * ldo).cast());
        _mm_prefetch::<_MM_HINT_T0>(out.wrapping_add(i * ldo + 16).cast());
    }
    for k0 in (0..k).step_by(KC) {
        let (steps, b, first) = (KC.min(k - k0), b.add(k0 * NR), k0 == 0);
        if lda == 0 {
            accumulate_chunk::<false>(steps, a.add(k0 * MR), &row_offsets, b, &mut sums, first);
        } else {
            accumulate_chunk::<true>(steps, a.add(k0), &row_offsets, b, &mut sums, first);
        }
    }
    if k == 0 {
        // An empty reduction sums to zero.
        sums = [MaybeUninit::new(_mm512_setzero_ps()); 2 * MR];
    }
    // Lanes of the two vectors that hold valid columns.
    let mask = |half: usize| -> __mmask16 {
        (((1u32 << tile.cols.saturating_sub(16 * half).min(16)) - 1) & 0xffff) as __mmask16
    };
    let (m0, m1) = (mask(0), mask(1));
    let (bias0, bias1) = match tile.epilogue.bias {
        Some(bias) => {
            (_mm512_maskz_loadu_ps(m0, bias.as_ptr()), _mm512_maskz_loadu_ps(m1, bias.as_ptr().wrapping_add(16)))
        }
        None => (_mm512_setzero_ps(), _mm512_setzero_ps()),
    };
    for i in 0..MR {
        if i == tile.rows {
            break;
        }
        // Read in place: a `map` over the array is not inlined here and copied it through the stack.
        let (mut v0, mut v1) =
            (_mm512_add_ps(sums[2 * i].assume_init(), bias0), _mm512_add_ps(sums[2 * i + 1].assume_init(), bias1));
        if tile.epilogue.gelu {
            // A fixed-length pass over the row so it vectorises whole.
            let mut values = [0f32; NR];
            _mm512_storeu_ps(values.as_mut_ptr(), v0);
            _mm512_storeu_ps(values.as_mut_ptr().add(16), v1);
            values.iter_mut().for_each(|v| *v = quick_gelu_value(*v));
            (v0, v1) = (_mm512_loadu_ps(values.as_ptr()), _mm512_loadu_ps(values.as_ptr().add(16)));
        }
        if let Some(residual) = &tile.epilogue.residual {
            // Row i's `cols` values lie inside (`linear` checked the whole residual); masked lanes read nothing.
            let row = residual.data.as_ptr().add(i * residual.row_stride);
            v0 = _mm512_add_ps(v0, _mm512_maskz_loadu_ps(m0, row));
            v1 = _mm512_add_ps(v1, _mm512_maskz_loadu_ps(m1, row.wrapping_add(16)));
        }
        let row = out.add(i * ldo);
        _mm512_mask_storeu_ps(row, m0, v0);
        _mm512_mask_storeu_ps(row.wrapping_add(16), m1, v1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

    /// Runs `linear` on a fresh output and returns it.
    fn run(rows: usize, n: usize, k: usize, x: Matrix, w: WeightOperand, bias: Option<&[f32]>, gelu: bool) -> Vec<f32> {
        let mut dst = Vec::with_capacity(rows * n);
        linear(
            rows,
            k,
            x,
            Layer { weight: w, outputs: n, epilogue: Epilogue { bias, gelu, residual: None } },
            &mut dst.spare_capacity_mut()[..rows * n],
            n,
        );
        // SAFETY: `linear` wrote all rows * n values.
        unsafe { dst.set_len(rows * n) };
        dst
    }

    #[test]
    fn matches_the_f64_product_on_ragged_shapes_and_strides() {
        if !available() {
            eprintln!("skipped: no AVX-512F on this CPU");
            return;
        }
        // Shapes cover partial row panels, partial output tiles and blocks, k not a multiple of 16, k = 0,
        // (with 200 rows x 40 outputs) several row parts per block, and rows read in place or (k = 1024,
        // rows 4 KiB apart; and the strided views below) packed.
        let shapes = [
            (1, 1, 1),
            (13, 33, 17),
            (12, 32, 16),
            (25, 100, 48),
            (7, 129, 0),
            (200, 40, 70),
            (3, 5, 300),
            (14, 40, 1024),
        ];
        for (case, &(rows, n, k)) in shapes.iter().enumerate() {
            let xs: Vec<f32> = (0..rows * k * 2 + 1).map(|i| value(i + 7 * case)).collect();
            let ws: Vec<f32> = (0..n * k * 2 + 1).map(|i| value(i + 1000 + case)).collect();
            let bias: Vec<f32> = (0..n).map(|i| value(i + 99)).collect();
            // Row-major, and transposed views (column stride > 1: the element-wise packing path).
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
                    let got = run(rows, n, k, x, WeightOperand::Strided(w), b, gelu);
                    let want = reference(rows, n, k, &x, &w, b, gelu);
                    for (i, (g, e)) in got.iter().zip(&want).enumerate() {
                        assert!(
                            (g - e).abs() <= 1e-5 * (1.0 + e.abs()) * (k as f32).sqrt().max(1.0),
                            "{rows}x{n}x{k} gelu {gelu} at {i}: {g} vs {e}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn packed_weights_give_the_strided_results_bit_for_bit() {
        if !available() {
            return;
        }
        for (case, &(rows, n, k)) in [(13, 100, 70), (30, 64, 0), (5, 200, 300)].iter().enumerate() {
            let xs: Vec<f32> = (0..rows * k).map(|i| value(i + case)).collect();
            // Transposed storage: the packing reads through the strides.
            let ws: Vec<f32> = (0..n * k).map(|i| value(i + 500 + case)).collect();
            let bias: Vec<f32> = (0..n).map(|i| value(i + 9)).collect();
            let (x, w) = (
                Matrix { data: &xs, row_stride: k, col_stride: 1 },
                Matrix { data: &ws, row_stride: 1, col_stride: n },
            );
            let packed = PackedWeight::pack(w, n, k);
            assert_eq!((packed.out_features(), packed.in_features()), (n, k));
            let unpacked = packed.unpack();
            assert!((0..n * k).all(|i| unpacked[i] == ws[i % k * n + i / k]), "unpack inverts pack");
            let strided = run(rows, n, k, x, WeightOperand::Strided(w), Some(&bias), true);
            let whole = packed.outputs_from(0).expect("aligned");
            assert_eq!(run(rows, n, k, x, whole, Some(&bias), true), strided);
            // A view from output 32 on equals the columns 32.. of the whole product.
            let tail = packed.outputs_from(32).expect("aligned");
            let got = run(rows, n - 32, k, x, tail, Some(&bias[32..]), true);
            let want: Vec<f32> = strided.chunks(n).flat_map(|r| r[32..].to_vec()).collect();
            assert_eq!(got, want);
        }
        let packed = PackedWeight::pack(Matrix { data: &[0.0; 6], row_stride: 3, col_stride: 1 }, 2, 3);
        assert!(packed.outputs_from(1).is_none() && packed.outputs_from(64).is_none());
    }

    #[test]
    fn mlp_equals_its_two_layers_bit_for_bit() {
        if !available() {
            return;
        }
        // h = 1024: hidden rows padded (read in place); h = 100: not padded.
        for (rows, k, h, n) in [(30, 48, 1024, 40), (13, 70, 100, 33)] {
            let xs: Vec<f32> = (0..rows * k).map(value).collect();
            let (w1, w2): (Vec<f32>, Vec<f32>) =
                ((0..h * k).map(|i| value(i + 3)).collect(), (0..n * h).map(|i| value(i + 5)).collect());
            let (b1, b2): (Vec<f32>, Vec<f32>) =
                ((0..h).map(|i| value(i + 7)).collect(), (0..n).map(|i| value(i + 11)).collect());
            let (x, w1, w2) = (Matrix::row_major(&xs, k), Matrix::row_major(&w1, k), Matrix::row_major(&w2, h));
            let hidden = run(rows, h, k, x, WeightOperand::Strided(w1), Some(&b1), true);
            let want = run(rows, n, h, Matrix::row_major(&hidden, h), WeightOperand::Strided(w2), Some(&b2), false);
            let fc1 = Layer {
                weight: WeightOperand::Strided(w1),
                outputs: h,
                epilogue: Epilogue { bias: Some(&b1), gelu: true, residual: None },
            };
            let fc2 = Layer {
                weight: WeightOperand::Strided(w2),
                outputs: n,
                epilogue: Epilogue { bias: Some(&b2), ..Default::default() },
            };
            let mut got = Vec::with_capacity(rows * n);
            mlp(rows, k, x, fc1, fc2, &mut got.spare_capacity_mut()[..rows * n]);
            // SAFETY: `mlp` wrote all rows * n values.
            unsafe { got.set_len(rows * n) };
            assert_eq!(got, want, "{rows}x{k} -> {h} -> {n}");
        }
    }

    #[test]
    fn residual_adds_last() {
        if !available() {
            return;
        }
        // 30 rows, k = 1024: packed rows in chunks would offset the residual too; 13 x 70 reads in place.
        for (rows, n, k) in [(30, 45, 1024), (13, 70, 20)] {
            let xs: Vec<f32> = (0..rows * k).map(value).collect();
            let ws: Vec<f32> = (0..n * k).map(|i| value(i + 1)).collect();
            let bias: Vec<f32> = (0..n).map(|i| value(i + 2)).collect();
            // The residual's rows 3 values longer than the output's.
            let residual: Vec<f32> = (0..rows * (n + 3)).map(|i| value(i + 4)).collect();
            let (x, w) = (Matrix::row_major(&xs, k), WeightOperand::Strided(Matrix::row_major(&ws, k)));
            let plain = run(rows, n, k, x, w, Some(&bias), false);
            let epilogue =
                Epilogue { bias: Some(&bias), gelu: false, residual: Some(Matrix::row_major(&residual, n + 3)) };
            let mut got = Vec::with_capacity(rows * n);
            linear(rows, k, x, Layer { weight: w, outputs: n, epilogue }, &mut got.spare_capacity_mut()[..rows * n], n);
            // SAFETY: `linear` wrote all rows * n values.
            unsafe { got.set_len(rows * n) };
            let want: Vec<f32> = plain.iter().enumerate().map(|(i, v)| v + residual[i / n * (n + 3) + i % n]).collect();
            assert_eq!(got, want, "{rows}x{n}x{k}");
        }
    }

    #[test]
    fn transpose16_transposes() {
        if !available() {
            return;
        }
        let values: Vec<f32> = (0..256).map(|i| i as f32).collect();
        // SAFETY: AVX-512F checked above; each row reads 16 values inside `values`.
        let out = unsafe {
            let mut m: [__m512; 16] = std::array::from_fn(|i| _mm512_loadu_ps(values[16 * i..].as_ptr()));
            transpose16(&mut m);
            let mut out = vec![0f32; 256];
            m.iter().enumerate().for_each(|(i, v)| _mm512_storeu_ps(out[16 * i..].as_mut_ptr(), *v));
            out
        };
        for i in 0..16 {
            for j in 0..16 {
                assert_eq!(out[16 * i + j], values[16 * j + i]);
            }
        }
    }
}
