//! The AVX-512 register tile: 12 rows x 32 columns in 24 of the 32 zmm registers, packing by 16 x 16
//! transposes in registers, partial vectors through lane masks.
use std::{arch::x86_64::*, mem::MaybeUninit};

use super::{
    tile::{self, Tile, Vector},
    Microkernel,
};

/// Rows of the register tile.
const MR: usize = 12;
/// Vectors per row of the register tile.
const NV: usize = 2;

/// The AVX-512F register tile.
pub(super) struct Avx512;

impl Microkernel for Avx512 {
    const MR: usize = MR;
    const NR: usize = NV * 16;

    #[target_feature(enable = "avx512f")]
    unsafe fn pack_rows<'a>(
        row: impl Fn(usize) -> Option<&'a [f32]>,
        col_stride: usize,
        k: usize,
        panel: &mut [MaybeUninit<f32>],
    ) {
        tile::pack_panel::<__m512, MR>(row, col_stride, k, panel)
    }

    #[target_feature(enable = "avx512f")]
    unsafe fn pack_outputs<'a>(
        row: impl Fn(usize) -> Option<&'a [f32]>,
        col_stride: usize,
        k: usize,
        panel: &mut [MaybeUninit<f32>],
    ) {
        tile::pack_panel::<__m512, { NV * 16 }>(row, col_stride, k, panel)
    }

    #[target_feature(enable = "avx512f")]
    unsafe fn product(k: usize, a: *const f32, lda: usize, b: *const f32, out: *mut f32, ldo: usize, tile: &Tile) {
        tile::product::<__m512, MR, NV>(k, a, lda, b, out, ldo, tile)
    }
}

/// The mask of the first `n` (<= 16) lanes.
#[inline(always)]
fn first_lanes(n: usize) -> __mmask16 {
    ((1u32 << n) - 1) as __mmask16
}

impl Vector for __m512 {
    const LANES: usize = 16;
    type Square = [__m512; 16];

    #[inline(always)]
    unsafe fn zero() -> Self {
        _mm512_setzero_ps()
    }

    #[inline(always)]
    unsafe fn splat(v: f32) -> Self {
        _mm512_set1_ps(v)
    }

    #[inline(always)]
    unsafe fn load(p: *const f32) -> Self {
        _mm512_loadu_ps(p)
    }

    #[inline(always)]
    unsafe fn store(p: *mut f32, v: Self) {
        _mm512_storeu_ps(p, v)
    }

    #[inline(always)]
    unsafe fn load_first(p: *const f32, n: usize) -> Self {
        _mm512_maskz_loadu_ps(first_lanes(n), p)
    }

    #[inline(always)]
    unsafe fn store_first(p: *mut f32, n: usize, v: Self) {
        _mm512_mask_storeu_ps(p, first_lanes(n), v)
    }

    #[inline(always)]
    unsafe fn mul_add(a: Self, b: Self, c: Self) -> Self {
        _mm512_fmadd_ps(a, b, c)
    }

    #[inline(always)]
    unsafe fn add(a: Self, b: Self) -> Self {
        _mm512_add_ps(a, b)
    }

    #[inline(always)]
    unsafe fn zero_square() -> Self::Square {
        [_mm512_setzero_ps(); 16]
    }

    #[inline(always)]
    unsafe fn transpose(square: &mut Self::Square) {
        transpose16(square)
    }

    #[target_feature(enable = "avx512f")]
    #[inline(never)]
    unsafe fn accumulate<const ROWS: usize, const VECTORS: usize, const IN_PLACE: bool>(
        steps: usize,
        a: *const f32,
        row_offsets: &[usize; ROWS],
        b: *const f32,
        sums: &mut [[MaybeUninit<Self>; VECTORS]; ROWS],
        first: bool,
    ) {
        tile::accumulate::<Self, ROWS, VECTORS, IN_PLACE>(steps, a, row_offsets, b, sums, first)
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
