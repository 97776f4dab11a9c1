//! The AVX2 + FMA register tile: 6 rows x 16 columns in 12 of the 16 ymm registers (two for the weight
//! vectors, one for the broadcast activation), packing by 8 x 8 transposes in registers, partial vectors
//! through `vmaskmovps`.
use std::{arch::x86_64::*, mem::MaybeUninit};

use super::{
    tile::{self, Tile, Vector},
    Microkernel,
};

/// Rows of the register tile.
const MR: usize = 6;
/// Vectors per row of the register tile.
const NV: usize = 2;

/// The AVX2 + FMA register tile.
pub(super) struct Avx2;

impl Microkernel for Avx2 {
    const MR: usize = MR;
    const NR: usize = NV * 8;

    #[target_feature(enable = "avx2,fma")]
    unsafe fn pack_rows<'a>(
        row: impl Fn(usize) -> Option<&'a [f32]>,
        col_stride: usize,
        k: usize,
        panel: &mut [MaybeUninit<f32>],
    ) {
        tile::pack_panel::<__m256, MR>(row, col_stride, k, panel)
    }

    #[target_feature(enable = "avx2,fma")]
    unsafe fn pack_outputs<'a>(
        row: impl Fn(usize) -> Option<&'a [f32]>,
        col_stride: usize,
        k: usize,
        panel: &mut [MaybeUninit<f32>],
    ) {
        tile::pack_panel::<__m256, { NV * 8 }>(row, col_stride, k, panel)
    }

    #[target_feature(enable = "avx2,fma")]
    unsafe fn product(k: usize, a: *const f32, lda: usize, b: *const f32, out: *mut f32, ldo: usize, tile: &Tile) {
        tile::product::<__m256, MR, NV>(k, a, lda, b, out, ldo, tile)
    }
}

/// The `vmaskmovps` mask of the first `n` (< 8) lanes: their sign bits set.
#[inline(always)]
unsafe fn first_lanes(n: usize) -> __m256i {
    _mm256_cmpgt_epi32(_mm256_set1_epi32(n as i32), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7))
}

impl Vector for __m256 {
    const LANES: usize = 8;
    type Square = [__m256; 8];

    #[inline(always)]
    unsafe fn zero() -> Self {
        _mm256_setzero_ps()
    }

    #[inline(always)]
    unsafe fn splat(v: f32) -> Self {
        _mm256_set1_ps(v)
    }

    #[inline(always)]
    unsafe fn load(p: *const f32) -> Self {
        _mm256_loadu_ps(p)
    }

    #[inline(always)]
    unsafe fn store(p: *mut f32, v: Self) {
        _mm256_storeu_ps(p, v)
    }

    #[inline(always)]
    unsafe fn load_first(p: *const f32, n: usize) -> Self {
        // Whole vectors as plain loads: masked moves cost several times more on some CPUs (AMD's).
        if n == 8 {
            _mm256_loadu_ps(p)
        } else {
            _mm256_maskload_ps(p, first_lanes(n))
        }
    }

    #[inline(always)]
    unsafe fn store_first(p: *mut f32, n: usize, v: Self) {
        if n == 8 {
            _mm256_storeu_ps(p, v)
        } else {
            _mm256_maskstore_ps(p, first_lanes(n), v)
        }
    }

    #[inline(always)]
    unsafe fn mul_add(a: Self, b: Self, c: Self) -> Self {
        _mm256_fmadd_ps(a, b, c)
    }

    #[inline(always)]
    unsafe fn add(a: Self, b: Self) -> Self {
        _mm256_add_ps(a, b)
    }

    #[inline(always)]
    unsafe fn zero_square() -> Self::Square {
        [_mm256_setzero_ps(); 8]
    }

    #[inline(always)]
    unsafe fn transpose(square: &mut Self::Square) {
        transpose8(square)
    }

    #[target_feature(enable = "avx2,fma")]
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

/// Transposes the 8 x 8 matrix held in 8 vectors (row i in `m[i]`) in place.
#[target_feature(enable = "avx2,fma")]
fn transpose8(m: &mut [__m256; 8]) {
    // t[2i], t[2i+1]: rows 2i and 2i+1 interleaved (low / high halves of each 128-bit lane).
    let mut t = [_mm256_setzero_ps(); 8];
    for i in 0..4 {
        t[2 * i] = _mm256_unpacklo_ps(m[2 * i], m[2 * i + 1]);
        t[2 * i + 1] = _mm256_unpackhi_ps(m[2 * i], m[2 * i + 1]);
    }
    // u[4i + j]: columns j and j + 4 of rows 4i..4i+4, one per 128-bit lane.
    let mut u = [_mm256_setzero_ps(); 8];
    for i in 0..2 {
        u[4 * i] = _mm256_shuffle_ps::<0x44>(t[4 * i], t[4 * i + 2]);
        u[4 * i + 1] = _mm256_shuffle_ps::<0xEE>(t[4 * i], t[4 * i + 2]);
        u[4 * i + 2] = _mm256_shuffle_ps::<0x44>(t[4 * i + 1], t[4 * i + 3]);
        u[4 * i + 3] = _mm256_shuffle_ps::<0xEE>(t[4 * i + 1], t[4 * i + 3]);
    }
    // Column j from the low lanes of rows 0..4 and 4..8, column j + 4 from the high lanes.
    for j in 0..4 {
        m[j] = _mm256_permute2f128_ps::<0x20>(u[j], u[j + 4]);
        m[j + 4] = _mm256_permute2f128_ps::<0x31>(u[j], u[j + 4]);
    }
}
