//! The register tile and the panel packer, written once over an instruction set's f32 vector
//! ([`Vector`]): `MR` rows by `NV` vectors of outputs summed in registers over the whole reduction, then
//! the epilogue; rows packed k-major by in-register transposes. [`super::avx512`] and [`super::avx2`]
//! compile them for their instruction sets (everything here is inlined into their entry points).
use std::{
    arch::x86_64::{_mm_prefetch, _MM_HINT_T0},
    mem::MaybeUninit,
};

use super::Epilogue;
use crate::kernels::simd::quick_gelu_value;

/// Reduction steps summed in registers before they join the tile's running sums.
const KC: usize = 128;
/// How far ahead (in k steps) the tile prefetches its packed operands.
const PREFETCH_STEPS: usize = 24;
/// Values per cache line.
const LINE: usize = 16;
/// Most values in a row of a tile (what its QuickGELU pass holds).
const MAX_TILE_COLS: usize = 32;

/// An f32 SIMD vector of one instruction set, as the tile and the packer use it. Every method is inlined
/// into an entry point compiled for the instruction set, except [`Vector::accumulate`].
///
/// # Safety
/// Every method requires the CPU to have the instruction set, and pointers that address the lanes the
/// method reads or writes.
pub(super) trait Vector: Copy {
    /// f32 lanes.
    const LANES: usize;
    /// `LANES` vectors: a square block of values, which [`Vector::transpose`] transposes.
    type Square: AsRef<[Self]> + AsMut<[Self]>;

    /// All lanes 0.
    unsafe fn zero() -> Self;
    /// All lanes `v`.
    unsafe fn splat(v: f32) -> Self;
    /// `LANES` values from `p`.
    unsafe fn load(p: *const f32) -> Self;
    /// Stores the `LANES` lanes at `p`.
    unsafe fn store(p: *mut f32, v: Self);
    /// The first `n` (<= `LANES`) values from `p`, the other lanes 0; nothing past them is read.
    unsafe fn load_first(p: *const f32, n: usize) -> Self;
    /// Stores the first `n` (<= `LANES`) lanes at `p`; nothing past them is written.
    unsafe fn store_first(p: *mut f32, n: usize, v: Self);
    /// `a * b + c`, rounded once.
    unsafe fn mul_add(a: Self, b: Self, c: Self) -> Self;
    /// `a + b`.
    unsafe fn add(a: Self, b: Self) -> Self;
    /// `LANES` vectors of zeros.
    unsafe fn zero_square() -> Self::Square;
    /// Transposes the square (row i in vector i) in place.
    unsafe fn transpose(square: &mut Self::Square);
    /// [`accumulate`] compiled for the instruction set and not inlined, so `sums` stays in memory and
    /// the `MR * NV` accumulators keep their registers.
    unsafe fn accumulate<const MR: usize, const NV: usize, const IN_PLACE: bool>(
        steps: usize,
        a: *const f32,
        row_offsets: &[usize; MR],
        b: *const f32,
        sums: &mut [[MaybeUninit<Self>; NV]; MR],
        first: bool,
    );
}

/// Adds the products of `steps` k steps of the rows `a` and the packed weight panel `b` [steps][NR] to
/// `sums` (or writes them there when `first`), summing in registers first. Rows are a packed panel
/// [steps][MR] or, `IN_PLACE`, row i's values at `a + row_offsets[i]` on.
///
/// # Safety
/// The CPU has `V`'s instruction set; `a` holds `steps * MR` values (packed) or `steps` values from every
/// row offset (in place), `b` `steps * NV * V::LANES`; `sums` is initialised unless `first`.
#[inline(always)]
pub(super) unsafe fn accumulate<V: Vector, const MR: usize, const NV: usize, const IN_PLACE: bool>(
    steps: usize,
    a: *const f32,
    row_offsets: &[usize; MR],
    b: *const f32,
    sums: &mut [[MaybeUninit<V>; NV]; MR],
    first: bool,
) {
    let nr = NV * V::LANES;
    let mut acc = [[V::zero(); NV]; MR];
    for step in 0..steps {
        let (a, b) = (a.add(if IN_PLACE { step } else { step * MR }), b.add(step * nr));
        let mut bs = [V::zero(); NV];
        for (v, bv) in bs.iter_mut().enumerate() {
            *bv = V::load(b.add(v * V::LANES));
        }
        // Prefetches past the end of a panel touch no memory they must not (a hint, never a fault).
        for line in (0..nr).step_by(LINE) {
            _mm_prefetch::<_MM_HINT_T0>(b.wrapping_add(PREFETCH_STEPS * nr + line).cast());
        }
        if !IN_PLACE {
            _mm_prefetch::<_MM_HINT_T0>(a.wrapping_add(2 * PREFETCH_STEPS * MR).cast());
        }
        for (i, acc_row) in acc.iter_mut().enumerate() {
            let ai = V::splat(*a.add(if IN_PLACE { row_offsets[i] } else { i }));
            for (acc, &bv) in acc_row.iter_mut().zip(&bs) {
                *acc = V::mul_add(ai, bv, *acc);
            }
        }
    }
    for (sum_row, acc_row) in sums.iter_mut().zip(&acc) {
        for (s, &v) in sum_row.iter_mut().zip(acc_row) {
            s.write(if first { v } else { V::add(s.assume_init(), v) });
        }
    }
}

/// Where a register tile lands and what its epilogue adds.
pub(super) struct Tile<'a> {
    /// Valid rows (<= MR).
    pub(super) rows: usize,
    /// Valid columns (<= NR).
    pub(super) cols: usize,
    /// The epilogue from the tile's first row and column on.
    pub(super) epilogue: Epilogue<'a>,
}

/// One `MR x NV * V::LANES` tile over all `k`: `a` the rows (packed [k][MR] when `lda` is 0, else
/// `tile.rows` rows of k values `lda` apart), `b` packed [k][NR], the result (bias, QuickGELU, residual)
/// written to the tile's rows and columns of `out` (row stride `ldo`). The reduction runs in chunks of
/// `KC` steps whose partial sums add up in memory, as blocked GEMMs do: the rounding error grows with
/// `KC + k / KC` rather than with `k`.
///
/// # Safety
/// The CPU has `V`'s instruction set; `a` holds its rows as described, `b` `k * NR` values; `out`
/// addresses `tile.rows` rows of `tile.cols` writable values at stride `ldo`; the epilogue's bias and
/// residual hold `tile.cols` values (per row) from their start.
#[inline(always)]
pub(super) unsafe fn product<V: Vector, const MR: usize, const NV: usize>(
    k: usize,
    a: *const f32,
    lda: usize,
    b: *const f32,
    out: *mut f32,
    ldo: usize,
    tile: &Tile,
) {
    const { assert!(NV * V::LANES <= MAX_TILE_COLS) };
    let (lanes, nr) = (V::LANES, NV * V::LANES);
    let mut sums = [[MaybeUninit::<V>::uninit(); NV]; MR];
    // Rows past the tile's repeat its last row (read in place, there is nothing beyond); never stored.
    let row_offsets: [usize; MR] = std::array::from_fn(|i| i.min(tile.rows - 1) * lda);
    // Fetch the output lines into the L1 now, so their misses overlap the products instead of the stores.
    for i in 0..tile.rows {
        for line in (0..nr).step_by(LINE) {
            _mm_prefetch::<_MM_HINT_T0>(out.wrapping_add(i * ldo + line).cast());
        }
    }
    for k0 in (0..k).step_by(KC) {
        let (steps, b, first) = (KC.min(k - k0), b.add(k0 * nr), k0 == 0);
        if lda == 0 {
            V::accumulate::<MR, NV, false>(steps, a.add(k0 * MR), &row_offsets, b, &mut sums, first);
        } else {
            V::accumulate::<MR, NV, true>(steps, a.add(k0), &row_offsets, b, &mut sums, first);
        }
    }
    if k == 0 {
        // An empty reduction sums to zero.
        sums = [[MaybeUninit::new(V::zero()); NV]; MR];
    }
    // Valid lanes of each vector of a row.
    let valid: [usize; NV] = std::array::from_fn(|v| tile.cols.saturating_sub(v * lanes).min(lanes));
    let mut bias = [V::zero(); NV];
    if let Some(b) = tile.epilogue.bias {
        for (v, bv) in bias.iter_mut().enumerate() {
            *bv = V::load_first(b.as_ptr().wrapping_add(v * lanes), valid[v]);
        }
    }
    for (i, sum_row) in sums.iter().enumerate().take(tile.rows) {
        let mut row = [V::zero(); NV];
        for ((r, s), &bv) in row.iter_mut().zip(sum_row).zip(&bias) {
            *r = V::add(s.assume_init(), bv);
        }
        if tile.epilogue.gelu {
            // A fixed-length pass over the row so it vectorises whole.
            let mut values = [0f32; MAX_TILE_COLS];
            for (v, &r) in row.iter().enumerate() {
                V::store(values.as_mut_ptr().add(v * lanes), r);
            }
            values[..nr].iter_mut().for_each(|v| *v = quick_gelu_value(*v));
            for (v, r) in row.iter_mut().enumerate() {
                *r = V::load(values.as_ptr().add(v * lanes));
            }
        }
        if let Some(residual) = &tile.epilogue.residual {
            // Row i's `cols` values lie inside (`linear` checked the whole residual); nothing past them is read.
            let values = residual.data.as_ptr().add(i * residual.row_stride);
            for (v, r) in row.iter_mut().enumerate() {
                *r = V::add(*r, V::load_first(values.wrapping_add(v * lanes), valid[v]));
            }
        }
        let dst = out.add(i * ldo);
        for (v, &r) in row.iter().enumerate() {
            V::store_first(dst.wrapping_add(v * lanes), valid[v], r);
        }
    }
}

/// Packs `R` rows (`row(r)`: the row's values at stride `col_stride`, `None` for a zero row) of `k`
/// values into `panel` [k][R], k-major: `LANES x LANES` blocks transposed in registers when the rows are
/// contiguous, element by element otherwise.
///
/// # Safety
/// The CPU has `V`'s instruction set; every row `row` returns holds `(k - 1) * col_stride + 1` values at
/// least; `panel` holds `k * R` values.
#[inline(always)]
pub(super) unsafe fn pack_panel<'a, V: Vector, const R: usize>(
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
    let (lanes, out) = (V::LANES, panel.as_mut_ptr().cast::<f32>());
    for k0 in (0..k).step_by(lanes) {
        let steps = lanes.min(k - k0);
        for g in (0..R).step_by(lanes) {
            let width = lanes.min(R - g);
            let mut block = V::zero_square();
            for (v, r) in block.as_mut().iter_mut().zip(&rows[g..g + width]) {
                if let Some(r) = r {
                    *v = V::load_first(r.as_ptr().add(k0), steps);
                }
            }
            V::transpose(&mut block);
            for (s, &v) in block.as_ref().iter().take(steps).enumerate() {
                V::store_first(out.add((k0 + s) * R + g), width, v);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::arch::x86_64::{__m256, __m512};

    use super::*;

    /// Transposes a square of the values 0, 1, 2, ... with `V` and checks every lane.
    fn transposes<V: Vector>() {
        let lanes = V::LANES;
        let values: Vec<f32> = (0..lanes * lanes).map(|i| i as f32).collect();
        let mut out = vec![0f32; lanes * lanes];
        // SAFETY: the callers checked the instruction set; each row reads and writes `lanes` values inside
        // `values` and `out`.
        unsafe {
            let mut square = V::zero_square();
            for (i, v) in square.as_mut().iter_mut().enumerate() {
                *v = V::load(values[lanes * i..].as_ptr());
            }
            V::transpose(&mut square);
            for (i, v) in square.as_ref().iter().enumerate() {
                V::store(out[lanes * i..].as_mut_ptr(), *v);
            }
        }
        for i in 0..lanes {
            for j in 0..lanes {
                assert_eq!(out[lanes * i + j], values[lanes * j + i], "{lanes} lanes");
            }
        }
    }

    #[test]
    fn squares_transpose() {
        if is_x86_feature_detected!("avx512f") {
            transposes::<__m512>();
        }
        if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
            transposes::<__m256>();
        }
    }
}
