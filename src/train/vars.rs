//! Trainable weights: f32 master variables, an optional half-precision compute copy, frozen towers, and
//! deterministic (seeded, per-name) initialisation of new weights.
use std::collections::HashMap;

use candle_core::{DType, Device, Shape, Tensor, Var};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::{Init, VarBuilder, VarMap};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use super::optimizer::Group;
use crate::{ActionClip, ActionClipConfig, Error, Result};

/// Towers kept fixed during fine-tuning. Frozen weights are handed to the model detached, so backprop
/// neither computes nor keeps their gradients.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Freeze {
    /// Freeze the text tower (token and positional embeddings, blocks, `ln_final`, `text_projection`;
    /// `logit_scale` keeps learning).
    pub text: bool,
    /// Freeze the image tower (`visual.*`; the temporal head keeps learning).
    pub vision: bool,
}

impl Freeze {
    /// Whether the parameter `name` is frozen.
    pub fn is_frozen(&self, name: &str) -> bool {
        match Group::of(name) {
            Group::Visual => self.vision,
            Group::Text => self.text && name != "logit_scale",
            Group::Fusion => false,
        }
    }
}

/// Compute precision. Master weights and optimizer state are always f32; with a half type the forward and
/// backward run on a half copy of the weights that is refreshed after every step.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub enum Precision {
    /// Everything in f32 (the CPU default; parity with PyTorch).
    F32,
    /// bf16 compute (GPU; CPU matmul has no bf16 in candle).
    Bf16,
    /// f16 compute with dynamic loss scaling.
    F16,
}

impl Precision {
    /// The compute dtype.
    pub fn dtype(&self) -> DType {
        match self {
            Precision::F32 => DType::F32,
            Precision::Bf16 => DType::BF16,
            Precision::F16 => DType::F16,
        }
    }

    /// Parses `f32`, `bf16` or `f16` (also `fp32`, `fp16`, `amp`: bf16 on CUDA/Metal, f32 on CPU).
    pub fn parse(s: &str, device: &Device) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "f32" | "fp32" | "float32" => Ok(Precision::F32),
            "bf16" | "bfloat16" => Ok(Precision::Bf16),
            "f16" | "fp16" | "float16" | "half" => Ok(Precision::F16),
            "amp" | "auto" => Ok(if device.is_cpu() { Precision::F32 } else { Precision::Bf16 }),
            other => Err(Error::Config(format!("unknown precision {other:?}; use f32, bf16, f16 or auto"))),
        }
    }
}

/// A 64-bit FNV-1a hash of a name (stable across runs and platforms).
pub(crate) fn name_hash(name: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in name.bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// Values for a new weight drawn from `init` with an RNG keyed by `(seed, name)`.
fn seeded_init(
    shape: &Shape,
    init: Init,
    seed: u64,
    name: &str,
    dtype: DType,
    device: &Device,
) -> candle_core::Result<Tensor> {
    let n = shape.elem_count();
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ name_hash(name));
    let mut normal = |mean: f64, std: f64| -> Vec<f32> {
        (0..n)
            .map(|_| {
                // Box-Muller.
                let u1: f64 = rng.gen::<f64>().max(f64::MIN_POSITIVE);
                let u2: f64 = rng.gen();
                (mean + std * (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()) as f32
            })
            .collect()
    };
    let values: Vec<f32> = match init {
        Init::Const(c) => vec![c as f32; n],
        Init::Randn { mean, stdev } => normal(mean, stdev),
        Init::Uniform { lo, up } => {
            let mut rng = ChaCha8Rng::seed_from_u64(seed ^ name_hash(name));
            (0..n).map(|_| (lo + (up - lo) * rng.gen::<f64>()) as f32).collect()
        }
        Init::Kaiming { dist, fan, non_linearity } => {
            let std = non_linearity.gain() / (fan.for_shape(shape) as f64).sqrt();
            match dist {
                candle_nn::init::NormalOrUniform::Normal => normal(0.0, std),
                candle_nn::init::NormalOrUniform::Uniform => {
                    let bound = 3f64.sqrt() * std;
                    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ name_hash(name));
                    (0..n).map(|_| (-bound + 2.0 * bound * rng.gen::<f64>()) as f32).collect()
                }
            }
        }
    };
    Tensor::from_vec(values, shape.clone(), device)?.to_dtype(dtype)
}

/// A `VarBuilder` backend over a `VarMap`: existing variables are returned (detached when frozen), new ones
/// are created with a seeded initialiser so that a model built from scratch is reproducible.
struct TrainBackend {
    vars: VarMap,
    seed: u64,
    freeze: Freeze,
}

impl SimpleBackend for TrainBackend {
    fn get(&self, s: Shape, name: &str, h: Init, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        let mut data = self.vars.data().lock().unwrap_or_else(|e| e.into_inner());
        let tensor = match data.get(name) {
            Some(var) => {
                if var.shape() != &s {
                    candle_core::bail!(
                        "shape mismatch on {name}: the model needs {s:?}, the weights hold {:?}",
                        var.shape()
                    )
                }
                var.as_tensor().clone()
            }
            None => {
                let var = Var::from_tensor(&seeded_init(&s, h, self.seed, name, dtype, dev)?)?;
                let t = var.as_tensor().clone();
                data.insert(name.to_string(), var);
                t
            }
        };
        Ok(if self.freeze.is_frozen(name) { tensor.detach() } else { tensor })
    }

    fn get_unchecked(&self, name: &str, _dtype: DType, _dev: &Device) -> candle_core::Result<Tensor> {
        let data = self.vars.data().lock().unwrap_or_else(|e| e.into_inner());
        match data.get(name) {
            Some(var) => {
                Ok(if self.freeze.is_frozen(name) { var.as_tensor().detach() } else { var.as_tensor().clone() })
            }
            None => candle_core::bail!("no variable {name}"),
        }
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.vars.data().lock().unwrap_or_else(|e| e.into_inner()).contains_key(name)
    }
}

/// Builds `ActionClip` over `vars` (creating missing variables with seeded initialisers).
pub(crate) fn build_model(
    vars: &VarMap,
    cfg: &ActionClipConfig,
    seed: u64,
    freeze: Freeze,
    dtype: DType,
    device: &Device,
) -> Result<ActionClip> {
    let backend: Box<dyn SimpleBackend> = Box::new(TrainBackend { vars: vars.clone(), seed, freeze });
    let vb = VarBuilder::from_backend(backend, dtype, device.clone());
    ActionClip::new(vb, cfg)
}

/// The model's trainable state: f32 master variables (what the optimizer updates and checkpoints hold) and,
/// for half precision, a compute copy the model runs on.
pub(crate) struct ModelVars {
    /// Master variables (f32), by canonical name.
    pub(crate) master: VarMap,
    /// Half-precision compute variables (same names), when the precision is not f32.
    pub(crate) compute: Option<VarMap>,
    /// The model used for forward and backward (over `compute`, or over `master` in f32).
    pub(crate) model: ActionClip,
    /// Trainable parameters in a fixed order: name, master variable, compute tensor (what gradients are
    /// keyed by).
    pub(crate) trainable: Vec<(String, Var, Tensor)>,
}

impl ModelVars {
    /// Builds the model for `cfg`. Weights already in `master` are used; missing ones are initialised from
    /// `seed`. With a half precision a compute copy is made.
    pub(crate) fn new(
        master: VarMap,
        cfg: &ActionClipConfig,
        seed: u64,
        freeze: Freeze,
        precision: Precision,
        device: &Device,
    ) -> Result<Self> {
        let master_model = build_model(&master, cfg, seed, freeze, DType::F32, device)?;
        let (model, compute) = match precision {
            Precision::F32 => (master_model, None),
            half => {
                let compute = VarMap::new();
                {
                    let src = master.data().lock().unwrap_or_else(|e| e.into_inner());
                    let mut dst = compute.data().lock().unwrap_or_else(|e| e.into_inner());
                    for (name, var) in src.iter() {
                        dst.insert(name.clone(), Var::from_tensor(&var.as_tensor().to_dtype(half.dtype())?)?);
                    }
                }
                (build_model(&compute, cfg, seed, freeze, half.dtype(), device)?, Some(compute))
            }
        };
        let compute_tensors: HashMap<String, Tensor> = model.named_tensors().into_iter().collect();
        let mut trainable = Vec::new();
        {
            let data = master.data().lock().unwrap_or_else(|e| e.into_inner());
            let mut names: Vec<&String> = data.keys().collect();
            names.sort();
            for name in names {
                if freeze.is_frozen(name) {
                    continue;
                }
                let t = compute_tensors
                    .get(name)
                    .ok_or_else(|| Error::Config(format!("variable {name} is not a model parameter")))?;
                trainable.push((name.clone(), data[name].clone(), t.clone()));
            }
        }
        Ok(Self { master, compute, model, trainable })
    }

    /// Copies the master weights into the compute copy (after an optimizer step or a restore).
    pub(crate) fn sync_compute(&self) -> Result<()> {
        let Some(compute) = &self.compute else { return Ok(()) };
        let src = self.master.data().lock().unwrap_or_else(|e| e.into_inner());
        let dst = compute.data().lock().unwrap_or_else(|e| e.into_inner());
        for (name, var) in src.iter() {
            if let Some(c) = dst.get(name) {
                c.set(&var.as_tensor().to_dtype(c.dtype())?)?;
            }
        }
        Ok(())
    }

    /// A copy of the master weights by canonical name (f32); later steps do not change it.
    pub(crate) fn master_tensors(&self) -> Result<HashMap<String, Tensor>> {
        let data = self.master.data().lock().unwrap_or_else(|e| e.into_inner());
        data.iter().map(|(k, v)| Ok((k.clone(), v.as_tensor().copy()?.detach()))).collect()
    }

    /// Overwrites master weights from `tensors` (names must exist with the same shapes), then refreshes the
    /// compute copy.
    pub(crate) fn load_master(&self, tensors: &HashMap<String, Tensor>) -> Result<()> {
        {
            let data = self.master.data().lock().unwrap_or_else(|e| e.into_inner());
            for (name, var) in data.iter() {
                let t = tensors.get(name).ok_or_else(|| Error::MissingKey { key: name.clone(), hint: None })?;
                if t.dims() != var.dims() {
                    return Err(Error::KeyShape {
                        key: name.clone(),
                        found: t.dims().to_vec(),
                        expected: var.dims().to_vec(),
                    });
                }
                var.set(&t.to_device(var.device())?.to_dtype(var.dtype())?)?;
            }
        }
        self.sync_compute()
    }

    /// Number of trainable and frozen scalars.
    pub(crate) fn counts(&self) -> (usize, usize) {
        let data = self.master.data().lock().unwrap_or_else(|e| e.into_inner());
        let total: usize = data.values().map(|v| v.elem_count()).sum();
        let trainable: usize = self.trainable.iter().map(|(_, v, _)| v.elem_count()).sum();
        (trainable, total - trainable)
    }
}
