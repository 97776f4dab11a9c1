//! Int8 linear layers for CPU inference: weights quantized once per output channel (symmetric, scale
//! `max |w| / 127`), activations quantized per row (token) at run time, products summed exactly in i32 by
//! the best kernel the CPU has (see [`Kernel`]; every kernel gives the same integers, so the same results):
//! `y[m, n] = (sum_k q[m, k] w[n, k]) * row_scale[m] * weight_scale[n] + bias[n]`.
//!
//! Activation rows quantized to `q` in -127..=127 are stored in the layout of the kernel (see [`RowLayout`]).
use std::{mem::MaybeUninit, ops::Range};

use candle_core::{bail, CpuStorage, CustomOp1, DType, Layout, Shape, Tensor};
use rayon::prelude::*;

use crate::kernels::simd::{multiversion, quick_gelu_value};

/// Output columns per packed panel (four 16-lane i32 vectors).
const PANEL: usize = 64;
/// Rows per micro-tile.
const TILE_ROWS: usize = 6;
/// Rows of activations per parallel work item (a multiple of `TILE_ROWS`; ~100-300 KB of bytes).
const BLOCK_ROWS: usize = 96;
/// The zero point of quantized activations.
const ZERO: i32 = 128;
/// The bias of a layer without one (`PANEL` columns of it at a time).
static NO_BIAS: [f32; PANEL] = [0.0; PANEL];

/// A weight matrix [out, in] quantized to int8 per output channel and packed for the GEMM.
#[derive(Debug)]
pub(crate) struct Int8Weight {
    out_features: usize,
    in_features: usize,
    /// `in_features` rounded up to a multiple of 4 (one `vpdpbusd` lane takes four bytes).
    k_padded: usize,
    /// Panels of `PANEL` columns: for each group of 4 inputs, `PANEL` columns x 4 bytes (zero padded).
    packed: Vec<i8>,
    /// Per output column: `max |w| / 127`.
    scales: Vec<f32>,
    /// Per output column (padded to whole panels with zeros): `ZERO * sum_k q[n, k]`, what the unsigned
    /// activation bytes add to a VNNI product.
    zero_correction: Vec<i32>,
}

impl Int8Weight {
    /// Quantizes `weight` [out, in] (any float dtype and device; read back to the host).
    pub(crate) fn quantize(weight: &Tensor) -> candle_core::Result<Self> {
        let (n, k) = weight.dims2()?;
        let w = weight.to_dtype(DType::F32)?.to_vec2::<f32>()?;
        let k_padded = k.div_ceil(4) * 4;
        let panels = n.div_ceil(PANEL);
        let mut packed = vec![0i8; panels * PANEL * k_padded];
        let mut scales = vec![1f32; n];
        let mut zero_correction = vec![0i32; panels * PANEL];
        for (col, row) in w.iter().enumerate() {
            let max = row.iter().fold(0f32, |m, v| m.max(v.abs()));
            if !max.is_finite() {
                bail!("int8 quantization: output channel {col} of a [{n}, {k}] weight holds a non-finite value")
            }
            let scale = if max > 0.0 { max / 127.0 } else { 1.0 };
            scales[col] = scale;
            let (panel, lane) = (col / PANEL, col % PANEL);
            let mut sum = 0i32;
            for (i, &v) in row.iter().enumerate() {
                let q = (v / scale).round().clamp(-127.0, 127.0) as i8;
                sum += q as i32;
                packed[panel * PANEL * k_padded + (i / 4) * PANEL * 4 + lane * 4 + i % 4] = q;
            }
            zero_correction[col] = ZERO * sum;
        }
        Ok(Self { out_features: n, in_features: k, k_padded, packed, scales, zero_correction })
    }

    /// Output features (rows of the original weight).
    pub(crate) fn out_features(&self) -> usize {
        self.out_features
    }

    /// The weight the layer computes with, `q * scale`, as an f32 tensor [out, in] on the CPU.
    pub(crate) fn dequantize(&self) -> candle_core::Result<Tensor> {
        let (n, k) = (self.out_features, self.in_features);
        let mut w = vec![0f32; n * k];
        for (col, row) in w.chunks_exact_mut(k.max(1)).enumerate().take(n) {
            let (panel, lane) = (col / PANEL, col % PANEL);
            for (i, v) in row.iter_mut().enumerate() {
                *v = self.packed[panel * PANEL * self.k_padded + (i / 4) * PANEL * 4 + lane * 4 + i % 4] as f32
                    * self.scales[col];
            }
        }
        Tensor::from_vec(w, (n, k), &candle_core::Device::Cpu)
    }

    /// `x @ w^T + bias` for the output columns `cols` (then QuickGELU when `quick_gelu`): `x` holds `rows`
    /// rows of `in_features` values; returns `rows` rows of `cols.len()` values. `bias` covers `cols`.
    pub(crate) fn matmul(
        &self,
        x: &[f32],
        rows: usize,
        cols: Range<usize>,
        bias: Option<&[f32]>,
        quick_gelu: bool,
    ) -> candle_core::Result<Vec<f32>> {
        let k = self.in_features;
        if x.len() != rows * k
            || cols.end > self.out_features
            || cols.start > cols.end
            || bias.is_some_and(|b| b.len() != cols.len())
        {
            bail!(
                "int8 matmul: {} values for {rows} rows of {k}, columns {cols:?} of {}, bias {:?}",
                x.len(),
                self.out_features,
                bias.map(<[f32]>::len)
            )
        }
        let width = cols.len();
        let len = rows * width;
        let mut out = Vec::with_capacity(len);
        if len == 0 {
            return Ok(out);
        }
        let kernel = Kernel::detect();
        let row_bytes = kernel.layout().row_bytes(self.k_padded);
        let (a, row_scales) = quantize_rows(kernel.layout(), x, rows, k, self.k_padded);
        let panels = cols.start / PANEL..cols.end.div_ceil(PANEL);
        // Each block of rows is written (first touched) by the worker that computes it.
        out.spare_capacity_mut()[..len].par_chunks_mut(BLOCK_ROWS * width).enumerate().for_each(|(block, dst)| {
            let first_row = block * BLOCK_ROWS;
            let block_rows = dst.len() / width;
            let mut tile = [[0i32; PANEL]; TILE_ROWS];
            for panel in panels.clone() {
                let b = &self.packed[panel * PANEL * self.k_padded..(panel + 1) * PANEL * self.k_padded];
                let correction = &self.zero_correction[panel * PANEL..(panel + 1) * PANEL];
                let panel_cols = panel * PANEL..((panel + 1) * PANEL).min(self.out_features);
                let (lo, hi) = (panel_cols.start.max(cols.start), panel_cols.end.min(cols.end));
                for t in (0..block_rows).step_by(TILE_ROWS) {
                    let a_tile = &a[(first_row + t) * row_bytes..(first_row + t + TILE_ROWS) * row_bytes];
                    kernel.tile_product(a_tile, b, correction, self.k_padded, &mut tile);
                    let scales = &self.scales[lo..hi];
                    let bias = bias.map_or(&NO_BIAS[..hi - lo], |b| &b[lo - cols.start..hi - cols.start]);
                    for (r, acc) in tile.iter().enumerate().take(block_rows - t) {
                        let y = &mut dst[(t + r) * width + lo - cols.start..(t + r) * width + hi - cols.start];
                        dequantize(
                            y,
                            &acc[lo - panel * PANEL..hi - panel * PANEL],
                            row_scales[first_row + t + r],
                            scales,
                            bias,
                            quick_gelu,
                        );
                    }
                }
            }
        });
        // SAFETY: every element of `out` is written above: each block covers its rows, every row of a
        // block gets a tile row, and the panels' column ranges `lo..hi` tile `cols` without gaps.
        unsafe { out.set_len(len) };
        Ok(out)
    }
}

/// [`Int8Weight::matmul`] as a candle op on an f32 CPU tensor [rows, in] read in place (inference only).
pub(crate) struct Int8Linear<'a> {
    /// The packed weight.
    pub(crate) weight: &'a Int8Weight,
    /// The output columns computed.
    pub(crate) cols: Range<usize>,
    /// The bias of those columns.
    pub(crate) bias: Option<Vec<f32>>,
    /// Whether QuickGELU follows.
    pub(crate) quick_gelu: bool,
}

impl CustomOp1 for Int8Linear<'_> {
    fn name(&self) -> &'static str {
        "int8-linear"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let (rows, _) = l.shape().dims2()?;
        let Some((start, end)) = l.contiguous_offsets() else { bail!("int8 linear: the input must be contiguous") };
        let y = self.weight.matmul(
            &s.as_slice::<f32>()?[start..end],
            rows,
            self.cols.clone(),
            self.bias.as_deref(),
            self.quick_gelu,
        )?;
        Ok((CpuStorage::F32(y), Shape::from((rows, self.cols.len()))))
    }
}

/// The integer kernel of one tile: `TILE_ROWS` activation rows times one packed panel of `PANEL` columns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kernel {
    /// AVX-512 VNNI: `vpdpbusd` multiplies the unsigned activation bytes by the signed weight bytes, four
    /// at a time; the zero point's surplus is subtracted per column at the end.
    Vnni,
    /// AVX2: `vpmaddubsw` on `|q|` and the weight with `q`'s sign (pairs of products stay below 2^15, so
    /// nothing saturates), then `vpmaddwd` by ones into i32; reads rows stored [`RowLayout::SignSplit`].
    Avx2,
    /// Plain integer code, for other CPUs and as the tests' reference.
    Portable,
}

impl Kernel {
    /// The fastest kernel of the selected instruction set (`kernels::isa`) that this CPU runs.
    fn detect() -> Self {
        #[cfg(target_arch = "x86_64")]
        {
            use crate::kernels::isa::Isa;
            let isa = Isa::selected_or_detected();
            if isa >= Isa::Avx512 && is_x86_feature_detected!("avx512bw") && is_x86_feature_detected!("avx512vnni") {
                return Self::Vnni;
            }
            if isa >= Isa::Avx2 {
                return Self::Avx2;
            }
        }
        Self::Portable
    }

    /// How this kernel reads activation rows.
    fn layout(self) -> RowLayout {
        match self {
            Self::Avx2 => RowLayout::SignSplit,
            Self::Vnni | Self::Portable => RowLayout::Biased,
        }
    }

    /// `tile[r][j] = sum_k q[r, k] * b[j, k]` for `TILE_ROWS` rows of `q` (stored in `a` in this kernel's
    /// [`RowLayout`], `k_padded` inputs each) and one packed panel `b`; `correction` is the panel's
    /// `ZERO * sum_k b[j, k]`.
    fn tile_product(
        self,
        a: &[u8],
        b: &[i8],
        correction: &[i32],
        k_padded: usize,
        tile: &mut [[i32; PANEL]; TILE_ROWS],
    ) {
        let row_bytes = self.layout().row_bytes(k_padded);
        assert!(
            a.len() == TILE_ROWS * row_bytes
                && b.len() == PANEL * k_padded
                && correction.len() == PANEL
                && k_padded.is_multiple_of(4)
        );
        match self {
            // SAFETY: `detect` chose these kernels on a CPU with their features; the lengths they read are
            // asserted above.
            #[cfg(target_arch = "x86_64")]
            Self::Vnni => unsafe { tile_product_vnni(a.as_ptr(), b.as_ptr(), correction.as_ptr(), k_padded, tile) },
            #[cfg(target_arch = "x86_64")]
            Self::Avx2 => unsafe { tile_product_avx2(a.as_ptr(), b.as_ptr(), k_padded, tile) },
            _ => tile_product_portable(a, b, k_padded, tile),
        }
    }
}

/// How a quantized activation row of `k_padded` inputs (`q` in -127..=127, 0 in the padding) is stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum RowLayout {
    /// `q + ZERO` per input, the unsigned bytes `vpdpbusd` multiplies.
    Biased,
    /// `|q|` per input, then `q` per input as signed bytes: the operands of `vpmaddubsw` and `vpsignb`,
    /// ready to broadcast.
    SignSplit,
}

impl RowLayout {
    /// Bytes per row of `k_padded` inputs.
    fn row_bytes(self, k_padded: usize) -> usize {
        match self {
            Self::Biased => k_padded,
            Self::SignSplit => 2 * k_padded,
        }
    }
}

/// Rows of `x` [rows, k] quantized symmetric per row and stored in `layout`, `k_padded` inputs per row, the
/// rows padded to a multiple of `TILE_ROWS` (padding inputs and rows stand for 0); and each row's scale.
fn quantize_rows(layout: RowLayout, x: &[f32], rows: usize, k: usize, k_padded: usize) -> (Vec<u8>, Vec<f32>) {
    let len = rows.div_ceil(TILE_ROWS) * TILE_ROWS * layout.row_bytes(k_padded);
    let mut a = Vec::with_capacity(len);
    let mut scales = Vec::new();
    a.spare_capacity_mut()[..len]
        .par_chunks_mut(layout.row_bytes(k_padded))
        .enumerate()
        .map(|(r, q)| quantize_row(x.get(r * k..(r + 1) * k).unwrap_or_default(), q, layout))
        .collect_into_vec(&mut scales);
    // SAFETY: `quantize_row` wrote every byte of every row, the padding rows (quantized from no values) included.
    unsafe { a.set_len(len) };
    scales.truncate(rows);
    (a, scales)
}

multiversion!(quantize_row => quantize_row_generic(row: &[f32], q: &mut [MaybeUninit<u8>], layout: RowLayout) -> f32);
multiversion!(dequantize => dequantize_generic(y: &mut [MaybeUninit<f32>], acc: &[i32], row_scale: f32, scales: &[f32], bias: &[f32], quick_gelu: bool));

/// Quantizes `row` symmetric to -127..=127 with the scale `max |x| / 127` (1 for an all-zero or empty row)
/// and stores it in `q` (one row of `layout`, at least as many inputs as `row`), the inputs past `row` (the
/// padding) as 0; returns the scale.
#[inline(always)]
fn quantize_row_generic(row: &[f32], q: &mut [MaybeUninit<u8>], layout: RowLayout) -> f32 {
    let max = row.iter().fold(0f32, |m, v| m.max(v.abs()));
    let scale = if max > 0.0 && max.is_finite() { max / 127.0 } else { 1.0 };
    let inv = 1.0 / scale;
    let biased = row.iter().map(|&v| {
        // `b` is a whole number in 1..=255, or NaN (for NaN in `row`), stored as `b as u8` would store it (NaN as
        // 0) but vectorisable: `b + 2^23` holds `b` exactly in its low mantissa bits.
        let b = (v * inv).round().clamp(-127.0, 127.0) + ZERO as f32;
        if b.is_nan() {
            0
        } else {
            (b + 8_388_608.0).to_bits() as u8
        }
    });
    match layout {
        RowLayout::Biased => {
            let (values, padding) = q.split_at_mut(row.len());
            values.iter_mut().zip(biased).for_each(|(q, b)| {
                q.write(b);
            });
            padding.fill(MaybeUninit::new(ZERO as u8));
        }
        RowLayout::SignSplit => {
            let (magnitudes, signed) = q.split_at_mut(q.len() / 2);
            magnitudes.iter_mut().zip(signed.iter_mut()).zip(biased).for_each(|((m, s), b)| {
                // `q + ZERO` xor 0x80 is `q` as a signed byte.
                let q = (b ^ ZERO as u8) as i8;
                m.write(q.unsigned_abs());
                s.write(q as u8);
            });
            magnitudes[row.len()..].fill(MaybeUninit::new(0));
            signed[row.len()..].fill(MaybeUninit::new(0));
        }
    }
    scale
}

/// The epilogue of one row of a tile: `y[j] = acc[j] * row_scale * scales[j] + bias[j]` (then QuickGELU
/// `v * sigmoid(1.702 v)` when `quick_gelu`); all slices as long as `y`.
#[inline(always)]
fn dequantize_generic(
    y: &mut [MaybeUninit<f32>],
    acc: &[i32],
    row_scale: f32,
    scales: &[f32],
    bias: &[f32],
    quick_gelu: bool,
) {
    let values = acc.iter().zip(scales).zip(bias).map(|((&a, &s), &b)| a as f32 * row_scale * s + b);
    if quick_gelu {
        y.iter_mut().zip(values).for_each(|(y, v)| {
            y.write(quick_gelu_value(v));
        });
    } else {
        y.iter_mut().zip(values).for_each(|(y, v)| {
            y.write(v);
        });
    }
}

/// [`Kernel::tile_product`] in plain integer code, on rows stored [`RowLayout::Biased`].
fn tile_product_portable(a: &[u8], b: &[i8], k_padded: usize, tile: &mut [[i32; PANEL]; TILE_ROWS]) {
    for (r, acc) in tile.iter_mut().enumerate() {
        acc.fill(0);
        let row = &a[r * k_padded..(r + 1) * k_padded];
        for (g, quad) in row.chunks_exact(4).enumerate() {
            let group = &b[g * PANEL * 4..(g + 1) * PANEL * 4];
            for (j, v) in acc.iter_mut().enumerate() {
                let w = &group[j * 4..j * 4 + 4];
                *v += (0..4).map(|i| (quad[i] as i32 - ZERO) * w[i] as i32).sum::<i32>();
            }
        }
    }
}

/// [`Kernel::tile_product`] with AVX-512 VNNI on rows stored [`RowLayout::Biased`]: 6 rows x 64 columns
/// of i32 accumulators in 24 registers, one `vpdpbusd` per (row, 16 columns, 4 inputs).
///
/// # Safety
/// The CPU must have AVX-512F, AVX-512BW and AVX-512VNNI; `a` must hold `TILE_ROWS * k_padded` bytes, `b`
/// `PANEL * k_padded` and `correction` `PANEL` values.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn tile_product_vnni(
    a: *const u8,
    b: *const i8,
    correction: *const i32,
    k_padded: usize,
    tile: &mut [[i32; PANEL]; TILE_ROWS],
) {
    use std::arch::x86_64::*;
    let mut acc = [[_mm512_setzero_si512(); 4]; TILE_ROWS];
    for g in 0..k_padded / 4 {
        let group = b.add(g * PANEL * 4);
        let w = [
            _mm512_loadu_si512(group as *const _),
            _mm512_loadu_si512(group.add(64) as *const _),
            _mm512_loadu_si512(group.add(128) as *const _),
            _mm512_loadu_si512(group.add(192) as *const _),
        ];
        for (r, acc_row) in acc.iter_mut().enumerate() {
            let x = _mm512_set1_epi32((a.add(r * k_padded + 4 * g) as *const i32).read_unaligned());
            for (acc_v, w_v) in acc_row.iter_mut().zip(&w) {
                *acc_v = _mm512_dpbusd_epi32(*acc_v, x, *w_v);
            }
        }
    }
    for (acc_row, out) in acc.iter().zip(tile.iter_mut()) {
        for (i, v) in acc_row.iter().enumerate() {
            let surplus = _mm512_loadu_si512(correction.add(16 * i) as *const _);
            _mm512_storeu_si512(out.as_mut_ptr().add(16 * i) as *mut _, _mm512_sub_epi32(*v, surplus));
        }
    }
}

/// [`Kernel::tile_product`] with AVX2 on rows stored [`RowLayout::SignSplit`], 32 columns by 2 rows at a
/// time (8 accumulators): per (row, 4 inputs) `|q|` and `q` are broadcast once for four vectors; per 8
/// columns `vpmaddubsw(|q|, sign(w, q))` gives pairs `q w` in i16 (at most 2 x 128 x 127 in magnitude,
/// below i16's limit) and `vpmaddwd` by ones adds the pairs into the i32 accumulators.
///
/// # Safety
/// The CPU must have AVX2; `a` must hold `TILE_ROWS * 2 * k_padded` bytes and `b` `PANEL * k_padded`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn tile_product_avx2(a: *const u8, b: *const i8, k_padded: usize, tile: &mut [[i32; PANEL]; TILE_ROWS]) {
    use std::arch::x86_64::*;
    const COLS: usize = 32;
    const ROWS: usize = 2;
    let ones = _mm256_set1_epi16(1);
    for block in 0..PANEL / COLS {
        for first_row in (0..TILE_ROWS).step_by(ROWS) {
            let mut acc = [[_mm256_setzero_si256(); COLS / 8]; ROWS];
            for g in 0..k_padded / 4 {
                let group = b.add(g * PANEL * 4 + block * COLS * 4);
                let w: [__m256i; COLS / 8] = std::array::from_fn(|i| _mm256_loadu_si256(group.add(32 * i) as *const _));
                for (r, acc_row) in acc.iter_mut().enumerate() {
                    let magnitudes = a.add((first_row + r) * 2 * k_padded + 4 * g);
                    let q_abs = _mm256_set1_epi32((magnitudes as *const i32).read_unaligned());
                    let q = _mm256_set1_epi32((magnitudes.add(k_padded) as *const i32).read_unaligned());
                    for (acc_v, w_v) in acc_row.iter_mut().zip(&w) {
                        let pairs = _mm256_maddubs_epi16(q_abs, _mm256_sign_epi8(*w_v, q));
                        *acc_v = _mm256_add_epi32(*acc_v, _mm256_madd_epi16(pairs, ones));
                    }
                }
            }
            for (r, acc_row) in acc.iter().enumerate() {
                for (i, v) in acc_row.iter().enumerate() {
                    _mm256_storeu_si256(tile[first_row + r].as_mut_ptr().add(block * COLS + 8 * i) as *mut _, *v);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn random(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed;
        (0..n)
            .map(|_| {
                s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
            })
            .collect()
    }

    /// Every kernel this CPU runs gives the portable kernel's integers from the rows quantized in its own
    /// layout, the extremes -127 and 127 and the padding of `k` to `k_padded` included.
    #[test]
    fn kernels_agree() {
        let (k, k_padded) = (38, 40);
        // Whole numbers with 127 in every row quantize with scale 1 to themselves.
        let mut x: Vec<f32> = random(TILE_ROWS * k, 1).iter().map(|v| (v * 127.0).round()).collect();
        x.chunks_exact_mut(k).for_each(|row| row[k - 1] = 127.0);
        x[..8].copy_from_slice(&[-127.0, 127.0, -127.0, 127.0, 127.0, 127.0, -127.0, -127.0]);
        let mut b: Vec<i8> = random(PANEL * k_padded, 2).iter().map(|v| (v * 127.0).round() as i8).collect();
        b[..8].copy_from_slice(&[-127, 127, 127, -127, 127, 127, -127, -127]);
        let mut correction = [0i32; PANEL];
        for (j, c) in correction.iter_mut().enumerate() {
            *c = ZERO * (0..k_padded).map(|k| b[(k / 4) * PANEL * 4 + j * 4 + k % 4] as i32).sum::<i32>();
        }
        let product = |kernel: Kernel| {
            let (a, scales) = quantize_rows(kernel.layout(), &x, TILE_ROWS, k, k_padded);
            assert_eq!(scales, [1.0; TILE_ROWS]);
            let mut tile = [[0i32; PANEL]; TILE_ROWS];
            kernel.tile_product(&a, &b, &correction, k_padded, &mut tile);
            tile
        };
        let portable = product(Kernel::Portable);
        assert_eq!(portable[0][0], (0..k).map(|i| x[i] as i32 * b[(i / 4) * PANEL * 4 + i % 4] as i32).sum::<i32>());
        #[cfg(target_arch = "x86_64")]
        for (kernel, present) in
            [(Kernel::Vnni, Kernel::detect() == Kernel::Vnni), (Kernel::Avx2, is_x86_feature_detected!("avx2"))]
        {
            if present {
                assert_eq!(product(kernel), portable, "{kernel:?}");
            }
        }
    }

    /// Rows quantize to the nearest integer, ties away from zero, in both layouts (NaN as -128, as ever).
    #[test]
    fn quantize_row_layouts() {
        let row = [127.0, 0.5, -0.5, 1.5, -2.5, f32::NAN];
        let q = [127i8, 1, -1, 2, -3, -128, 0, 0];
        for (layout, want) in [
            (RowLayout::Biased, q.iter().map(|&q| (q as i32 + ZERO) as u8).collect::<Vec<_>>()),
            (RowLayout::SignSplit, q.iter().map(|q| q.unsigned_abs()).chain(q.iter().map(|&q| q as u8)).collect()),
        ] {
            let (a, scales) = quantize_rows(layout, &row, 1, row.len(), q.len());
            assert_eq!(scales, [1.0]);
            assert_eq!(a[..want.len()], want, "{layout:?}");
        }
    }

    /// Int8 products stay within quantization error of f32, for odd sizes, column ranges and GELU.
    #[test]
    fn close_to_f32() -> candle_core::Result<()> {
        let (rows, n, k) = (13, 150, 70);
        let x = random(rows * k, 3);
        let w = Tensor::from_vec(random(n * k, 4), (n, k), &Device::Cpu)?;
        let bias = random(n, 5);
        let q = Int8Weight::quantize(&w)?;
        let reference = Tensor::from_vec(x.clone(), (rows, k), &Device::Cpu)?
            .matmul(&w.t()?)?
            .broadcast_add(&Tensor::new(bias.as_slice(), &Device::Cpu)?)?;
        let reference = reference.to_vec2::<f32>()?;
        let mut max_err = 0f32;
        let cols = 37..141;
        let y = q.matmul(&x, rows, cols.clone(), Some(&bias[cols.clone()]), false)?;
        let g = q.matmul(&x, rows, cols.clone(), Some(&bias[cols.clone()]), true)?;
        for r in 0..rows {
            for (j, c) in cols.clone().enumerate() {
                let (want, got) = (reference[r][c], y[r * cols.len() + j]);
                max_err = max_err.max((want - got).abs());
                let gelu = got / (1.0 + (-1.702 * got).exp());
                assert!((g[r * cols.len() + j] - gelu).abs() < 1e-4);
            }
        }
        assert!(max_err < 0.06, "int8 vs f32: max abs error {max_err}");
        // Quantizing the dequantized weight gives the same integers and scales.
        let again = Int8Weight::quantize(&q.dequantize()?)?;
        assert_eq!(again.packed, q.packed);
        assert_eq!(again.zero_correction, q.zero_correction);
        Ok(())
    }
}
