//! Fused CUDA kernels (`kernels.cu`, compiled to PTX at build time) as candle custom ops with forward and
//! backward passes:
//!
//! - [`attention`]: flash-style attention straight from the fused in_proj output (bf16/f16, head dim 64
//!   or 128, optional causal mask), in_proj bias folded in; backward on cuBLAS GEMMs in f32.
//! - [`layer_norm`]: LayerNorm with its backward (input, weight and bias gradients).
//! - [`residual_layer_norm`] / [`residual_add`]: `x + d + bias` and, optionally, LayerNorm of the sum
//!   in one pass (inference: no backward).
//! - [`bias_quick_gelu`]: `QuickGELU(x + bias)` in one pass, with its backward.
//! - [`bias_add`]: `x + bias` with a backward whose bias gradient is [`column_sum`] (coalesced, f32
//!   accumulation; candle's reduction over leading dimensions reads one strided column per block).
//!
//! Every function expects tensors on one CUDA device; [`handles`] says whether the kernels take a tensor.
use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::{CudaView, CudaViewMut, DeviceRepr, LaunchConfig, PushKernelArg};
use candle_core::cuda_backend::{CudaDType, WrapErr};
use candle_core::{bail, CpuStorage, CudaDevice, CudaStorage, CustomOp2, CustomOp3, DType, Layout, Shape, Tensor, D};
use half::{bf16, f16};

const PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/actionclip_kernels.ptx"));
const MODULE: &str = "actionclip_kernels";
/// Widest row the LayerNorm kernels take (8 chunks of 32 lanes x 8 values).
const LN_MAX_COLS: usize = 2048;
/// Rows per block of the LayerNorm parameter-gradient kernel.
const LN_PARAM_ROWS: usize = 64;
/// Warps (rows) per block of the row-wise LayerNorm kernels.
const LN_WARPS: usize = 4;

/// Whether the fused kernels take `x`: a CUDA tensor of f32, f16 or bf16.
pub(crate) fn handles(x: &Tensor) -> bool {
    x.device().is_cuda() && matches!(x.dtype(), DType::F32 | DType::F16 | DType::BF16)
}

/// Keeps memory freed on `device` in its stream-ordered pool instead of handing it back to the driver
/// at every synchronisation (the default pool's release threshold is 0), as PyTorch's caching allocator
/// does; otherwise each forward pass after a sync maps its activations afresh. [`crate::ActionClip::new`]
/// calls it for CUDA devices.
pub(crate) fn retain_freed_memory(device: &CudaDevice) -> candle_core::Result<()> {
    use candle_core::cuda_backend::cudarc::driver::{result, sys};
    let cu_device = device.cuda_stream().context().cu_device();
    let mut threshold = u64::MAX;
    // SAFETY: `cu_device` belongs to the live context of `device`; the release threshold is a u64.
    unsafe {
        let pool = result::device::get_default_mem_pool(cu_device).w()?;
        result::mem_pool::set_attribute(
            pool,
            sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_RELEASE_THRESHOLD,
            (&mut threshold as *mut u64).cast(),
        )
        .w()
    }
}

/// Whether the LayerNorm kernels take rows of `cols` values.
pub(crate) fn layer_norm_fits(cols: usize) -> bool {
    cols.is_multiple_of(8) && cols <= LN_MAX_COLS
}

/// Whether [`attention`] takes activations like `x` with heads of `head_dim`: half precision on CUDA,
/// head dim 64 or 128.
pub(crate) fn attention_fits(x: &Tensor, head_dim: usize) -> bool {
    x.device().is_cuda() && matches!(x.dtype(), DType::F16 | DType::BF16) && matches!(head_dim, 64 | 128)
}

/// The tensor itself when contiguous with an offset that keeps 16-byte vector accesses aligned, else a
/// fresh contiguous copy.
fn aligned(t: &Tensor) -> candle_core::Result<Tensor> {
    if t.is_contiguous() && t.layout().start_offset().is_multiple_of(8) {
        Ok(t.clone())
    } else {
        t.force_contiguous()
    }
}

/// The contiguous device view of `s` under `l`, as elements of `T`.
fn view<'a, T: CudaDType + DeviceRepr>(
    s: &'a CudaStorage,
    l: &Layout,
    what: &str,
) -> candle_core::Result<CudaView<'a, T>> {
    match l.contiguous_offsets() {
        Some((a, b)) if a % 8 == 0 => Ok(s.as_cuda_slice::<T>()?.slice(a..b)),
        _ => bail!("{what}: the fused CUDA kernels need a contiguous, 16-byte aligned tensor, got {l:?}"),
    }
}

/// The name of the kernel `name_{bf16,f16,f32}` for `dtype`.
fn kernel_name(name: &str, dtype: DType) -> candle_core::Result<String> {
    let suffix = match dtype {
        DType::BF16 => "bf16",
        DType::F16 => "f16",
        DType::F32 => "f32",
        other => bail!("{name}: no fused CUDA kernel for {other:?}"),
    };
    Ok(format!("{name}_{suffix}"))
}

/// A null device pointer for an absent optional kernel argument.
const NULL: u64 = 0;

/// Runs `f` with the storage's element type bound to `T`.
macro_rules! with_dtype {
    ($dtype:expr, $T:ident => $body:expr) => {
        match $dtype {
            DType::BF16 => {
                type $T = bf16;
                $body
            }
            DType::F16 => {
                type $T = f16;
                $body
            }
            DType::F32 => {
                type $T = f32;
                $body
            }
            other => bail!("no fused CUDA kernel for {other:?}"),
        }
    };
}

/// Rows and columns of a tensor viewed as [rows, last dim].
fn rows_cols(l: &Layout) -> (usize, usize) {
    let cols = l.dims().last().copied().unwrap_or(1);
    (l.shape().elem_count() / cols.max(1), cols)
}

fn cpu_unsupported(name: &str) -> candle_core::Result<(CpuStorage, Shape)> {
    bail!("{name} is a CUDA kernel; CPU tensors take the plain path")
}

// ------------------------------------------------------------------------------------------------
// LayerNorm (+ residual)
// ------------------------------------------------------------------------------------------------

/// Launches `residual_layer_norm`: `s = x + d + d_bias` into `s_out` (when `d` is given) and
/// `y = LayerNorm(s)` into `y` (when `ln` is given), over `rows` rows of `cols` values.
#[allow(clippy::too_many_arguments)]
fn launch_residual_layer_norm<T: CudaDType + DeviceRepr>(
    dev: &CudaDevice,
    x: &CudaView<T>,
    d: Option<(&CudaView<T>, &CudaView<T>, &mut CudaViewMut<T>)>,
    ln: Option<(&CudaView<T>, &CudaView<T>, &mut CudaViewMut<T>)>,
    (rows, cols): (usize, usize),
    eps: f32,
    dtype: DType,
) -> candle_core::Result<()> {
    let func = dev.get_or_load_custom_func(&kernel_name("residual_layer_norm", dtype)?, MODULE, PTX)?;
    let mut b = func.builder();
    b.arg(x);
    let s_out = match d {
        Some((d, d_bias, s_out)) => {
            b.arg(d).arg(d_bias);
            Some(s_out)
        }
        None => {
            b.arg(&NULL).arg(&NULL);
            None
        }
    };
    let y = match ln {
        Some((w, bias, y)) => {
            b.arg(w).arg(bias);
            Some(y)
        }
        None => {
            b.arg(&NULL).arg(&NULL);
            None
        }
    };
    match s_out {
        Some(s) => b.arg(s),
        None => b.arg(&NULL),
    };
    match y {
        Some(y) => b.arg(y),
        None => b.arg(&NULL),
    };
    let (rows_i, cols_i) = (rows as i32, cols as i32);
    b.arg(&rows_i).arg(&cols_i).arg(&eps);
    // SAFETY: argument types and order match the kernel's signature; buffers hold rows * cols values.
    unsafe { b.launch(row_config(rows)) }.w()?;
    Ok(())
}

/// One warp per row, [`LN_WARPS`] rows per block.
fn row_config(rows: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (rows.div_ceil(LN_WARPS) as u32, 1, 1),
        block_dim: (32 * LN_WARPS as u32, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// LayerNorm over the last dimension (`x` [..., C], `weight` and `bias` [C], all one dtype), with backward.
// [..., C] -> [..., C]
pub(crate) fn layer_norm(x: &Tensor, weight: &Tensor, bias: &Tensor, eps: f64) -> candle_core::Result<Tensor> {
    let dtype = x.dtype();
    aligned(x)?.apply_op3(
        &aligned(&weight.to_dtype(dtype)?)?,
        &aligned(&bias.to_dtype(dtype)?)?,
        LayerNormOp { eps: eps as f32 },
    )
}

struct LayerNormOp {
    eps: f32,
}

impl CustomOp3 for LayerNormOp {
    fn name(&self) -> &'static str {
        "actionclip-layer-norm"
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        cpu_unsupported(self.name())
    }

    fn cuda_fwd(
        &self,
        xs: &CudaStorage,
        xl: &Layout,
        ws: &CudaStorage,
        wl: &Layout,
        bs: &CudaStorage,
        bl: &Layout,
    ) -> candle_core::Result<(CudaStorage, Shape)> {
        let dev = xs.device();
        let rc = rows_cols(xl);
        with_dtype!(xs.dtype(), T => {
            let (x, w, b) = (view::<T>(xs, xl, "x")?, view::<T>(ws, wl, "weight")?, view::<T>(bs, bl, "bias")?);
            // SAFETY: every element is written by the kernel.
            let mut y = unsafe { dev.alloc::<T>(rc.0 * rc.1)? };
            launch_residual_layer_norm(dev, &x, None, Some((&w, &b, &mut y.slice_mut(..))), rc, self.eps, xs.dtype())?;
            Ok((CudaStorage::wrap_cuda_slice(y, dev.clone()), xl.shape().clone()))
        })
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _b: &Tensor,
        _y: &Tensor,
        dy: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let dy = aligned(dy)?;
        let dx = x.apply_op3_no_bwd(&dy, w, &LayerNormBwdDx { eps: self.eps })?;
        // [2, blocks, C] f32 partial sums -> [C] each
        let partial = x.apply_op2_no_bwd(&dy, &LayerNormBwdParams { eps: self.eps })?;
        let sums = partial.sum(1)?.to_dtype(w.dtype())?;
        Ok((Some(dx), Some(sums.get(0)?), Some(sums.get(1)?)))
    }
}

/// LayerNorm input gradient: `(x, dy, weight) -> dx`.
struct LayerNormBwdDx {
    eps: f32,
}

impl CustomOp3 for LayerNormBwdDx {
    fn name(&self) -> &'static str {
        "actionclip-layer-norm-bwd-dx"
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        cpu_unsupported(self.name())
    }

    fn cuda_fwd(
        &self,
        xs: &CudaStorage,
        xl: &Layout,
        gs: &CudaStorage,
        gl: &Layout,
        ws: &CudaStorage,
        wl: &Layout,
    ) -> candle_core::Result<(CudaStorage, Shape)> {
        let dev = xs.device();
        let (rows, cols) = rows_cols(xl);
        let func = dev.get_or_load_custom_func(&kernel_name("layer_norm_bwd_dx", xs.dtype())?, MODULE, PTX)?;
        with_dtype!(xs.dtype(), T => {
            let (x, g, w) = (view::<T>(xs, xl, "x")?, view::<T>(gs, gl, "dy")?, view::<T>(ws, wl, "weight")?);
            // SAFETY: every element is written by the kernel.
            let mut dx = unsafe { dev.alloc::<T>(rows * cols)? };
            let mut b = func.builder();
            let (rows_i, cols_i) = (rows as i32, cols as i32);
            b.arg(&x).arg(&g).arg(&w).arg(&mut dx).arg(&rows_i).arg(&cols_i).arg(&self.eps);
            // SAFETY: argument types and order match the kernel.
            unsafe { b.launch(row_config(rows)) }.w()?;
            Ok((CudaStorage::wrap_cuda_slice(dx, dev.clone()), xl.shape().clone()))
        })
    }
}

/// LayerNorm parameter gradients as per-block partial sums: `(x, dy) -> [2, blocks, C]` f32.
struct LayerNormBwdParams {
    eps: f32,
}

impl CustomOp2 for LayerNormBwdParams {
    fn name(&self) -> &'static str {
        "actionclip-layer-norm-bwd-params"
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        cpu_unsupported(self.name())
    }

    fn cuda_fwd(
        &self,
        xs: &CudaStorage,
        xl: &Layout,
        gs: &CudaStorage,
        gl: &Layout,
    ) -> candle_core::Result<(CudaStorage, Shape)> {
        let dev = xs.device();
        let (rows, cols) = rows_cols(xl);
        let blocks = rows.div_ceil(LN_PARAM_ROWS);
        let func = dev.get_or_load_custom_func(&kernel_name("layer_norm_bwd_params", xs.dtype())?, MODULE, PTX)?;
        with_dtype!(xs.dtype(), T => {
            let (x, g) = (view::<T>(xs, xl, "x")?, view::<T>(gs, gl, "dy")?);
            // SAFETY: every element is written by the kernel.
            let mut partial = unsafe { dev.alloc::<f32>(2 * blocks * cols)? };
            let mut b = func.builder();
            let (rows_i, cols_i, per_block) = (rows as i32, cols as i32, LN_PARAM_ROWS as i32);
            b.arg(&x).arg(&g).arg(&mut partial).arg(&rows_i).arg(&cols_i).arg(&self.eps).arg(&per_block);
            let cfg = LaunchConfig {
                grid_dim: (cols.div_ceil(256) as u32, blocks as u32, 1),
                block_dim: (256, 1, 1),
                shared_mem_bytes: (2 * LN_PARAM_ROWS * std::mem::size_of::<f32>()) as u32,
            };
            // SAFETY: argument types and order match the kernel.
            unsafe { b.launch(cfg) }.w()?;
            Ok((CudaStorage::wrap_cuda_slice(partial, dev.clone()), Shape::from((2, blocks, cols))))
        })
    }
}

/// `s = x + d + d_bias` and `y = LayerNorm(s)` in one pass (inference, no backward); `x`, `d` [..., C],
/// `d_bias`, `weight`, `bias` [C].
// [..., C] -> ([..., C], [..., C])
pub(crate) fn residual_layer_norm(
    x: &Tensor,
    d: &Tensor,
    d_bias: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    eps: f64,
) -> candle_core::Result<(Tensor, Tensor)> {
    let dtype = x.dtype();
    let ln = Some((aligned(&weight.to_dtype(dtype)?)?, aligned(&bias.to_dtype(dtype)?)?));
    let out = aligned(x)?.apply_op3_no_bwd(
        &aligned(d)?,
        &aligned(&d_bias.to_dtype(dtype)?)?,
        &ResidualOp { eps: eps as f32, ln },
    )?;
    Ok((out.get(0)?, out.get(1)?))
}

/// `x + d + d_bias` in one pass (inference, no backward); `x`, `d` [..., C], `d_bias` [C].
// [..., C] -> [..., C]
pub(crate) fn residual_add(x: &Tensor, d: &Tensor, d_bias: &Tensor) -> candle_core::Result<Tensor> {
    let d_bias = aligned(&d_bias.to_dtype(x.dtype())?)?;
    aligned(x)?.apply_op3_no_bwd(&aligned(d)?, &d_bias, &ResidualOp { eps: 0., ln: None })
}

/// `(x, d, d_bias) -> x + d + d_bias`, or with `ln` (LayerNorm weight and bias, contiguous [C])
/// `[2, ..., C]`: the sum, then its LayerNorm.
struct ResidualOp {
    eps: f32,
    ln: Option<(Tensor, Tensor)>,
}

impl CustomOp3 for ResidualOp {
    fn name(&self) -> &'static str {
        "actionclip-residual-layer-norm"
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        cpu_unsupported(self.name())
    }

    fn cuda_fwd(
        &self,
        xs: &CudaStorage,
        xl: &Layout,
        ds: &CudaStorage,
        dl: &Layout,
        bs: &CudaStorage,
        bl: &Layout,
    ) -> candle_core::Result<(CudaStorage, Shape)> {
        let dev = xs.device();
        let (rows, cols) = rows_cols(xl);
        if dl.shape() != xl.shape() || bl.shape().elem_count() != cols {
            bail!("{}: x {:?}, d {:?} and d_bias {:?} do not fit", self.name(), xl.shape(), dl.shape(), bl.shape())
        }
        let n = rows * cols;
        let ln = self.ln.as_ref().map(|(w, b)| (w.storage_and_layout(), b.storage_and_layout()));
        with_dtype!(xs.dtype(), T => {
            let (x, d, d_bias) = (view::<T>(xs, xl, "x")?, view::<T>(ds, dl, "d")?, view::<T>(bs, bl, "d_bias")?);
            // SAFETY: every element is written by the kernel.
            let mut out = unsafe { dev.alloc::<T>(if ln.is_some() { 2 * n } else { n })? };
            let (mut s_part, mut y_part) = out.split_at_mut(n); // y_part is empty without a LayerNorm
            let sum = Some((&d, &d_bias, &mut s_part));
            match &ln {
                Some(((wg, wl), (bg, bl))) => {
                    let (w, b) = (view::<T>(cuda_of(wg, "weight")?, wl, "weight")?, view::<T>(cuda_of(bg, "bias")?, bl, "bias")?);
                    launch_residual_layer_norm(dev, &x, sum, Some((&w, &b, &mut y_part)), (rows, cols), self.eps, xs.dtype())?;
                }
                None => launch_residual_layer_norm(dev, &x, sum, None, (rows, cols), self.eps, xs.dtype())?,
            }
            let mut dims = if ln.is_some() { vec![2] } else { vec![] };
            dims.extend_from_slice(xl.dims());
            Ok((CudaStorage::wrap_cuda_slice(out, dev.clone()), Shape::from(dims)))
        })
    }
}

// ------------------------------------------------------------------------------------------------
// Bias + QuickGELU
// ------------------------------------------------------------------------------------------------

/// `QuickGELU(x + bias)` = `u * sigmoid(1.702 u)` in one pass, with backward; `x` [..., C], `bias` [C].
// [..., C] -> [..., C]
pub(crate) fn bias_quick_gelu(x: &Tensor, bias: &Tensor) -> candle_core::Result<Tensor> {
    aligned(x)?.apply_op2(&aligned(&bias.to_dtype(x.dtype())?)?, BiasQuickGelu)
}

/// Launch shape of a grid-stride elementwise kernel over `n` values, `per_thread` per thread.
fn elementwise_config(n: usize, per_thread: usize) -> LaunchConfig {
    let threads = 256;
    let blocks = n.div_ceil(per_thread * threads).clamp(1, 65_535);
    LaunchConfig { grid_dim: (blocks as u32, 1, 1), block_dim: (threads as u32, 1, 1), shared_mem_bytes: 0 }
}

/// Launches `name_{dtype}(x, bias, y, n, cols)`, an elementwise kernel over `x` [..., C] with `bias` [C]
/// broadcast over rows, returning `y` shaped like `x`.
fn launch_bias_elementwise(
    name: &str,
    xs: &CudaStorage,
    xl: &Layout,
    bs: &CudaStorage,
    bl: &Layout,
) -> candle_core::Result<(CudaStorage, Shape)> {
    let dev = xs.device();
    let (rows, cols) = rows_cols(xl);
    if cols % 8 != 0 || bl.shape().elem_count() != cols {
        bail!(
            "{name}: x {:?} needs a last dim divisible by 8 and a bias of that size, got {:?}",
            xl.shape(),
            bl.shape()
        )
    }
    let func = dev.get_or_load_custom_func(&kernel_name(name, xs.dtype())?, MODULE, PTX)?;
    with_dtype!(xs.dtype(), T => {
        let (x, b) = (view::<T>(xs, xl, "x")?, view::<T>(bs, bl, "bias")?);
        let n = rows * cols;
        // SAFETY: every element is written by the kernel.
        let mut y = unsafe { dev.alloc::<T>(n)? };
        let (n_i, cols_i) = (n as i64, cols as i32);
        let mut builder = func.builder();
        builder.arg(&x).arg(&b).arg(&mut y).arg(&n_i).arg(&cols_i);
        // SAFETY: argument types and order match the kernel.
        unsafe { builder.launch(elementwise_config(n, 8)) }.w()?;
        Ok((CudaStorage::wrap_cuda_slice(y, dev.clone()), xl.shape().clone()))
    })
}

struct BiasQuickGelu;

impl CustomOp2 for BiasQuickGelu {
    fn name(&self) -> &'static str {
        "actionclip-bias-quick-gelu"
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        cpu_unsupported(self.name())
    }

    fn cuda_fwd(
        &self,
        xs: &CudaStorage,
        xl: &Layout,
        bs: &CudaStorage,
        bl: &Layout,
    ) -> candle_core::Result<(CudaStorage, Shape)> {
        launch_bias_elementwise("bias_quick_gelu_fwd", xs, xl, bs, bl)
    }

    fn bwd(
        &self,
        x: &Tensor,
        bias: &Tensor,
        _y: &Tensor,
        dy: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        // [..., C]
        let du = x.apply_op3_no_bwd(bias, &aligned(dy)?, &BiasQuickGeluBwd)?;
        let db = column_sum(&du)?.to_dtype(bias.dtype())?;
        Ok((Some(du), Some(db)))
    }
}

/// The gradient of [`BiasQuickGelu`] with respect to its pre-activation: `(x, bias, dy) -> du`.
struct BiasQuickGeluBwd;

impl CustomOp3 for BiasQuickGeluBwd {
    fn name(&self) -> &'static str {
        "actionclip-bias-quick-gelu-bwd"
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        cpu_unsupported(self.name())
    }

    fn cuda_fwd(
        &self,
        xs: &CudaStorage,
        xl: &Layout,
        bs: &CudaStorage,
        bl: &Layout,
        gs: &CudaStorage,
        gl: &Layout,
    ) -> candle_core::Result<(CudaStorage, Shape)> {
        let dev = xs.device();
        let (rows, cols) = rows_cols(xl);
        let func = dev.get_or_load_custom_func(&kernel_name("bias_quick_gelu_bwd", xs.dtype())?, MODULE, PTX)?;
        with_dtype!(xs.dtype(), T => {
            let (x, b, g) = (view::<T>(xs, xl, "x")?, view::<T>(bs, bl, "bias")?, view::<T>(gs, gl, "dy")?);
            let n = rows * cols;
            // SAFETY: every element is written by the kernel.
            let mut du = unsafe { dev.alloc::<T>(n)? };
            let (n_i, cols_i) = (n as i64, cols as i32);
            let mut builder = func.builder();
            builder.arg(&x).arg(&b).arg(&g).arg(&mut du).arg(&n_i).arg(&cols_i);
            // SAFETY: argument types and order match the kernel.
            unsafe { builder.launch(elementwise_config(n, 8)) }.w()?;
            Ok((CudaStorage::wrap_cuda_slice(du, dev.clone()), xl.shape().clone()))
        })
    }
}

// ------------------------------------------------------------------------------------------------
// Bias add and column sums
// ------------------------------------------------------------------------------------------------

/// `x + bias` with `bias` [C] broadcast over the rows of `x` [..., C] (C divisible by 8), with backward.
// [..., C] -> [..., C]
pub(crate) fn bias_add(x: &Tensor, bias: &Tensor) -> candle_core::Result<Tensor> {
    aligned(x)?.apply_op2(&aligned(&bias.to_dtype(x.dtype())?)?, BiasAdd)
}

struct BiasAdd;

impl CustomOp2 for BiasAdd {
    fn name(&self) -> &'static str {
        "actionclip-bias-add"
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        cpu_unsupported(self.name())
    }

    fn cuda_fwd(
        &self,
        xs: &CudaStorage,
        xl: &Layout,
        bs: &CudaStorage,
        bl: &Layout,
    ) -> candle_core::Result<(CudaStorage, Shape)> {
        launch_bias_elementwise("bias_add", xs, xl, bs, bl)
    }

    fn bwd(
        &self,
        _x: &Tensor,
        bias: &Tensor,
        _y: &Tensor,
        dy: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        Ok((Some(dy.clone()), Some(column_sum(dy)?.to_dtype(bias.dtype())?)))
    }
}

/// Rows summed per block in the first pass of [`column_sum`].
const COLUMN_SUM_ROWS: usize = 64;

/// Sums of `x` [..., C] over every leading dimension, accumulated in f32 (no backward).
// [..., C] -> [C] f32
pub(crate) fn column_sum(x: &Tensor) -> candle_core::Result<Tensor> {
    let x = aligned(x)?;
    // [R, C] -> [ceil(R / 64), C] -> [1, C]
    let partial = x.apply_op1_no_bwd(&ColumnSum { rows_per_block: COLUMN_SUM_ROWS })?;
    let rows = partial.dim(0)?;
    partial.apply_op1_no_bwd(&ColumnSum { rows_per_block: rows.max(1) })?.squeeze(0)
}

/// Column sums over blocks of `rows_per_block` rows: `[..., C] -> [blocks, C]` f32.
struct ColumnSum {
    rows_per_block: usize,
}

impl candle_core::CustomOp1 for ColumnSum {
    fn name(&self) -> &'static str {
        "actionclip-column-sum"
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        cpu_unsupported(self.name())
    }

    fn cuda_fwd(&self, xs: &CudaStorage, xl: &Layout) -> candle_core::Result<(CudaStorage, Shape)> {
        let dev = xs.device();
        let (rows, cols) = rows_cols(xl);
        let blocks = rows.div_ceil(self.rows_per_block).max(1);
        let func = dev.get_or_load_custom_func(&kernel_name("column_sum", xs.dtype())?, MODULE, PTX)?;
        with_dtype!(xs.dtype(), T => {
            let x = view::<T>(xs, xl, "x")?;
            // SAFETY: every element is written by the kernel.
            let mut partial = unsafe { dev.alloc::<f32>(blocks * cols)? };
            let (rows_i, cols_i, per_block) = (rows as i32, cols as i32, self.rows_per_block as i32);
            let mut builder = func.builder();
            builder.arg(&x).arg(&mut partial).arg(&rows_i).arg(&cols_i).arg(&per_block);
            let cfg = LaunchConfig { grid_dim: (cols.div_ceil(256) as u32, blocks as u32, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 };
            // SAFETY: argument types and order match the kernel.
            unsafe { builder.launch(cfg) }.w()?;
            Ok((CudaStorage::wrap_cuda_slice(partial, dev.clone()), Shape::from((blocks, cols))))
        })
    }
}

// ------------------------------------------------------------------------------------------------
// Attention
// ------------------------------------------------------------------------------------------------

/// Query rows per attention block (4 warps of 16).
const ATTENTION_ROWS: usize = 64;

/// Multi-head attention from the fused in_proj output without its bias, `qkv` [N, L, 3, H, hd], and that
/// bias `in_bias` [3 H hd]: `softmax((q + b_q)(k + b_k)^T / sqrt(hd) [+ causal mask]) (v + b_v)` per
/// (sequence, head), heads concatenated per token. Half precision, head dim 64 or 128 (see
/// [`attention_fits`]); differentiable. With `train` the forward keeps each row's log-sum-exp for the
/// fused backward (head dim 64; head dim 128 recomputes the probabilities on cuBLAS in f32).
// [N, L, 3, H, hd] -> [N, L, H*hd]
pub(crate) fn attention(qkv: &Tensor, in_bias: &Tensor, causal: bool, train: bool) -> candle_core::Result<Tensor> {
    let op = AttentionOp { causal, keep_lse: train, lse: std::sync::Mutex::new(None) };
    aligned(qkv)?.apply_op2(&aligned(&in_bias.to_dtype(qkv.dtype())?)?, op)
}

struct AttentionOp {
    causal: bool,
    /// Whether the forward writes the log-sum-exp rows for the backward.
    keep_lse: bool,
    /// [N*H, L] f32 log2-sum-exp2 of each row's scaled scores, from the forward.
    lse: std::sync::Mutex<Option<Tensor>>,
}

impl CustomOp2 for AttentionOp {
    fn name(&self) -> &'static str {
        "actionclip-flash-attention"
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        cpu_unsupported(self.name())
    }

    fn cuda_fwd(
        &self,
        qs: &CudaStorage,
        ql: &Layout,
        bs: &CudaStorage,
        bl: &Layout,
    ) -> candle_core::Result<(CudaStorage, Shape)> {
        let dev = qs.device();
        let &[n, l, three, heads, hd] = ql.dims() else {
            bail!("{}: qkv must be [N, L, 3, H, hd], got {:?}", self.name(), ql.shape())
        };
        if three != 3 || bl.shape().elem_count() != 3 * heads * hd {
            bail!("{}: qkv {:?} with in_proj bias {:?}", self.name(), ql.shape(), bl.shape())
        }
        let name = match (qs.dtype(), hd) {
            (DType::BF16, 64) => "attention_fwd_bf16_hd64",
            (DType::F16, 64) => "attention_fwd_f16_hd64",
            (DType::BF16, 128) => "attention_fwd_bf16_hd128",
            (DType::F16, 128) => "attention_fwd_f16_hd128",
            (dtype, hd) => bail!("{}: no kernel for {dtype:?} with head dim {hd}", self.name()),
        };
        let func = dev.get_or_load_custom_func(name, MODULE, PTX)?;
        let scale_log2 = std::f32::consts::LOG2_E / (hd as f32).sqrt();
        let cfg = LaunchConfig {
            grid_dim: (l.div_ceil(ATTENTION_ROWS) as u32, (n * heads) as u32, 1),
            block_dim: (128, 1, 1),
            shared_mem_bytes: 0,
        };
        let (l_i, h_i, causal_i) = (l as i32, heads as i32, self.causal as i32);
        // SAFETY: the kernel writes every row's value.
        let mut lse = if self.keep_lse { Some(unsafe { dev.alloc::<f32>(n * heads * l)? }) } else { None };
        macro_rules! launch {
            ($T:ty) => {{
                let (q, b) = (view::<$T>(qs, ql, "qkv")?, view::<$T>(bs, bl, "in_proj bias")?);
                // SAFETY: every element is written by the kernel.
                let mut out = unsafe { dev.alloc::<$T>(n * l * heads * hd)? };
                let mut builder = func.builder();
                builder.arg(&q).arg(&b).arg(&mut out);
                match lse.as_mut() {
                    Some(lse) => builder.arg(lse),
                    None => builder.arg(&NULL),
                };
                builder.arg(&l_i).arg(&h_i).arg(&scale_log2).arg(&causal_i);
                // SAFETY: argument types and order match the kernel.
                unsafe { builder.launch(cfg) }.w()?;
                CudaStorage::wrap_cuda_slice(out, dev.clone())
            }};
        }
        let out = if qs.dtype() == DType::BF16 { launch!(bf16) } else { launch!(f16) };
        if let Some(lse) = lse {
            let storage = candle_core::Storage::Cuda(CudaStorage::wrap_cuda_slice(lse, dev.clone()));
            let lse = Tensor::from_storage(storage, (n * heads, l), candle_core::op::BackpropOp::none(), false);
            *self.lse.lock().map_err(|_| candle_core::Error::Msg("attention: poisoned lse lock".into()))? = Some(lse);
        }
        Ok((out, Shape::from((n, l, heads * hd))))
    }

    /// The gradients of the fused qkv and of the in_proj bias: the fused kernel for head dim 64 when the
    /// forward kept its log-sum-exp rows, else the probabilities recomputed on cuBLAS GEMMs in f32.
    fn bwd(
        &self,
        qkv: &Tensor,
        in_bias: &Tensor,
        out: &Tensor,
        d_out: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let (n, l, _, heads, hd) = qkv.dims5()?;
        let lse = self.lse.lock().map_err(|_| candle_core::Error::Msg("attention: poisoned lse lock".into()))?.take();
        if let Some(lse) = lse.filter(|_| hd == 64) {
            let d_out = aligned(d_out)?;
            // [N*H, L] f32
            let delta = out.apply_op3_no_bwd(&d_out, in_bias, &AttentionDelta { heads })?;
            let bwd = AttentionBwd { causal: self.causal, bias: in_bias.clone(), lse, delta };
            let d_qkv = qkv.apply_op2_no_bwd(&d_out, &bwd)?;
            // b_q's gradient sums dQ, b_v's sums dV (= dO summed over rows); b_k's (dK summed) is 0.
            let d_bias = column_sum(&d_qkv.reshape((n * l, 3 * heads * hd))?)?.to_dtype(in_bias.dtype())?;
            return Ok((Some(d_qkv), Some(d_bias)));
        }
        let scale = (hd as f64).powf(-0.5);
        // [3, N*H, L, hd] in f32, biases added
        let qkv32 = qkv
            .detach()
            .to_dtype(DType::F32)?
            .broadcast_add(&in_bias.detach().to_dtype(DType::F32)?.reshape((3, heads, hd))?)?;
        let parts = qkv32.permute((2, 0, 3, 1, 4))?.contiguous()?.reshape((3, n * heads, l, hd))?;
        let (q, k, v) = (parts.get(0)?, parts.get(1)?, parts.get(2)?);
        // [N*H, L, L]
        let mut scores = (q.matmul(&k.t()?)? * scale)?;
        if self.causal {
            scores = scores.broadcast_add(&crate::kernels::reference::causal_mask(l, DType::F32, qkv.device())?)?;
        }
        let p = candle_nn::ops::softmax_last_dim(&scores)?;
        // [N*H, L, hd]
        let d_o = d_out
            .detach()
            .to_dtype(DType::F32)?
            .reshape((n, l, heads, hd))?
            .transpose(1, 2)?
            .contiguous()?
            .reshape((n * heads, l, hd))?;
        let d_v = p.t()?.matmul(&d_o)?;
        let d_p = d_o.matmul(&v.t()?)?;
        let d_s = (p.clone() * d_p.broadcast_sub(&(&d_p * &p)?.sum_keepdim(D::Minus1)?)?)?;
        let d_q = (d_s.matmul(&k)? * scale)?;
        let d_k = (d_s.t()?.matmul(&q)? * scale)?;
        // [3, N, H, L, hd] -> [N, L, 3, H, hd]
        let d_qkv = Tensor::stack(&[d_q, d_k, d_v], 0)?
            .reshape((3, n, heads, l, hd))?
            .permute((1, 3, 0, 2, 4))?
            .contiguous()?;
        let d_bias = column_sum(&d_qkv.reshape((n * l, 3 * heads * hd))?)?.to_dtype(in_bias.dtype())?;
        Ok((Some(d_qkv.to_dtype(qkv.dtype())?), Some(d_bias)))
    }
}

/// `delta[n, h, l] = dO[n, l, h, :] . (O[n, l, h, :] - b_v[h, :])`: `(out, d_out, in_bias)` -> [N*H, L] f32.
struct AttentionDelta {
    heads: usize,
}

impl CustomOp3 for AttentionDelta {
    fn name(&self) -> &'static str {
        "actionclip-attention-delta"
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        cpu_unsupported(self.name())
    }

    fn cuda_fwd(
        &self,
        os: &CudaStorage,
        ol: &Layout,
        gs: &CudaStorage,
        gl: &Layout,
        bs: &CudaStorage,
        bl: &Layout,
    ) -> candle_core::Result<(CudaStorage, Shape)> {
        let dev = os.device();
        let &[n, l, w] = ol.dims() else { bail!("{}: out must be [N, L, W], got {:?}", self.name(), ol.shape()) };
        let hd = w / self.heads;
        let func = dev.get_or_load_custom_func(&kernel_name("attention_bwd_delta", os.dtype())?, MODULE, PTX)?;
        with_dtype!(os.dtype(), T => {
            let (o, g, b) = (view::<T>(os, ol, "out")?, view::<T>(gs, gl, "d_out")?, view::<T>(bs, bl, "in_proj bias")?);
            // SAFETY: every element is written by the kernel.
            let mut delta = unsafe { dev.alloc::<f32>(n * self.heads * l)? };
            let (tokens, l_i, h_i, hd_i) = ((n * l) as i32, l as i32, self.heads as i32, hd as i32);
            let mut builder = func.builder();
            builder.arg(&o).arg(&g).arg(&b).arg(&mut delta).arg(&tokens).arg(&l_i).arg(&h_i).arg(&hd_i);
            let warps = n * l * self.heads;
            let cfg = LaunchConfig { grid_dim: (warps.div_ceil(8) as u32, 1, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 };
            // SAFETY: argument types and order match the kernel.
            unsafe { builder.launch(cfg) }.w()?;
            Ok((CudaStorage::wrap_cuda_slice(delta, dev.clone()), Shape::from((n * self.heads, l))))
        })
    }
}

/// The fused attention backward (head dim 64): `(qkv, d_out)` -> `d_qkv` [N, L, 3, H, 64], with the
/// forward's in_proj bias, log-sum-exp rows and [`AttentionDelta`]'s rows.
struct AttentionBwd {
    causal: bool,
    bias: Tensor,
    lse: Tensor,
    delta: Tensor,
}

/// The CUDA storage of `guard` (a tensor's storage, for a kernel argument that is not an op input).
fn cuda_of<'a>(guard: &'a candle_core::StorageRef<'_>, what: &str) -> candle_core::Result<&'a CudaStorage> {
    match &**guard {
        candle_core::Storage::Cuda(c) => Ok(c),
        _ => bail!("{what}: expected a CUDA tensor"),
    }
}

impl CustomOp2 for AttentionBwd {
    fn name(&self) -> &'static str {
        "actionclip-flash-attention-bwd"
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        cpu_unsupported(self.name())
    }

    fn cuda_fwd(
        &self,
        qs: &CudaStorage,
        ql: &Layout,
        gs: &CudaStorage,
        gl: &Layout,
    ) -> candle_core::Result<(CudaStorage, Shape)> {
        let dev = qs.device();
        let &[n, l, _, heads, hd] = ql.dims() else {
            bail!("{}: qkv must be [N, L, 3, H, hd], got {:?}", self.name(), ql.shape())
        };
        if hd != 64 {
            bail!("{}: the fused backward takes head dim 64, got {hd}", self.name())
        }
        let ((bias_g, bias_l), (lse_g, lse_l), (delta_g, delta_l)) =
            (self.bias.storage_and_layout(), self.lse.storage_and_layout(), self.delta.storage_and_layout());
        let bias_c = cuda_of(&bias_g, "in_proj bias")?;
        let (lse, delta) = (
            view::<f32>(cuda_of(&lse_g, "lse")?, lse_l, "lse")?,
            view::<f32>(cuda_of(&delta_g, "delta")?, delta_l, "delta")?,
        );
        let mut dq = dev.alloc_zeros::<f32>(n * l * heads * hd)?;
        let (l_i, h_i, causal_i) = (l as i32, heads as i32, self.causal as i32);
        let scale = (hd as f32).powf(-0.5);
        let scale_log2 = std::f32::consts::LOG2_E * scale;
        let main =
            dev.get_or_load_custom_func(&format!("{}_hd64", kernel_name("attention_bwd", qs.dtype())?), MODULE, PTX)?;
        let to_q = dev.get_or_load_custom_func(&kernel_name("attention_bwd_dq", qs.dtype())?, MODULE, PTX)?;
        with_dtype!(qs.dtype(), T => {
            let (q, g, b) = (view::<T>(qs, ql, "qkv")?, view::<T>(gs, gl, "d_out")?, view::<T>(bias_c, bias_l, "in_proj bias")?);
            // SAFETY: the main kernel writes every k and v slot, the conversion every q slot.
            let mut d_qkv = unsafe { dev.alloc::<T>(n * l * 3 * heads * hd)? };
            let mut builder = main.builder();
            builder.arg(&q).arg(&b).arg(&g).arg(&lse).arg(&delta).arg(&mut d_qkv).arg(&mut dq);
            builder.arg(&l_i).arg(&h_i).arg(&scale_log2).arg(&scale).arg(&causal_i);
            let cfg = LaunchConfig { grid_dim: (l.div_ceil(ATTENTION_ROWS) as u32, (n * heads) as u32, 1), block_dim: (128, 1, 1), shared_mem_bytes: 0 };
            // SAFETY: argument types and order match the kernel.
            unsafe { builder.launch(cfg) }.w()?;
            let (tokens, width) = ((n * l) as i64, (heads * hd) as i32);
            let mut builder = to_q.builder();
            builder.arg(&dq).arg(&mut d_qkv).arg(&tokens).arg(&width);
            // SAFETY: argument types and order match the kernel.
            unsafe { builder.launch(elementwise_config(n * l * heads * hd, 1)) }.w()?;
            Ok((CudaStorage::wrap_cuda_slice(d_qkv, dev.clone()), ql.shape().clone()))
        })
    }
}

#[cfg(test)]
mod tests;
