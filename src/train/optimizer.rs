//! AdamW over ActionCLIP's parameter groups, with PyTorch's `torch.optim.AdamW` numerics (f32), global-norm
//! gradient clipping and moment buffers that can be saved and restored.
//!
//! Groups are told by canonical name: `visual.*` (the image tower) learns at `lr * ratio`,
//! `fusion_model.*` (the temporal head) at `lr * f_ratio`, everything else (the text tower, the token and
//! positional embeddings, `logit_scale`) at `lr`, as the reference's `_optimizer`.
use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Tensor, Var};
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// A parameter group of ActionCLIP's optimizer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Group {
    /// The text tower, embeddings and `logit_scale`: learning rate `lr`.
    Text,
    /// The image tower (`visual.*`): `lr * ratio`.
    Visual,
    /// The temporal head (`fusion_model.*`): `lr * f_ratio`.
    Fusion,
}

impl Group {
    /// All groups, in the reference's order.
    pub const ALL: [Group; 3] = [Group::Text, Group::Visual, Group::Fusion];

    /// The group of a canonical parameter name.
    pub fn of(name: &str) -> Group {
        if name.starts_with("visual.") {
            Group::Visual
        } else if name.starts_with("fusion_model.") {
            Group::Fusion
        } else {
            Group::Text
        }
    }

    /// A short name (`text`, `visual`, `fusion`).
    pub fn name(&self) -> &'static str {
        match self {
            Group::Text => "text",
            Group::Visual => "visual",
            Group::Fusion => "fusion",
        }
    }
}

/// Whether a parameter is a bias, a normalisation weight, an embedding or `logit_scale`: the parameters
/// that [`AdamWConfig::exempt_from_decay`] keeps out of weight decay.
pub(crate) fn is_decay_exempt(name: &str) -> bool {
    const EMBEDDINGS: [&str; 8] = [
        "class_embedding",
        "positional_embedding",
        "token_embedding.weight",
        "frame_position_embeddings.weight",
        "time_embedding",
        "cls_token",
        "pos_embed",
        "logit_scale",
    ];
    let leaf = name.rsplit('.').next().unwrap_or(name);
    let is_norm = name.split('.').any(|part| part.starts_with("ln_") || part.starts_with("norm") || part == "ln_final");
    leaf.contains("bias") || is_norm || EMBEDDINGS.iter().any(|e| name == *e || name.ends_with(&format!(".{e}")))
}

/// AdamW hyper-parameters (the reference's defaults for UCF101).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AdamWConfig {
    /// Base learning rate (text tower, embeddings, logit scale).
    pub lr: f64,
    /// Image tower learning rate = `lr * ratio`.
    pub ratio: f64,
    /// Temporal head learning rate = `lr * f_ratio`.
    pub f_ratio: f64,
    /// Adam's beta1.
    pub beta1: f64,
    /// Adam's beta2.
    pub beta2: f64,
    /// Adam's epsilon.
    pub eps: f64,
    /// Decoupled weight decay (`p -= lr * weight_decay * p` before the Adam update).
    pub weight_decay: f64,
    /// Keep biases, norms, embeddings and `logit_scale` out of weight decay (the reference decays everything).
    pub exempt_from_decay: bool,
}

impl Default for AdamWConfig {
    /// lr 5e-6, ratio 1, f_ratio 10, betas (0.9, 0.98), eps 1e-8, weight decay 0.2 on every parameter.
    fn default() -> Self {
        Self {
            lr: 5e-6,
            ratio: 1.0,
            f_ratio: 10.0,
            beta1: 0.9,
            beta2: 0.98,
            eps: 1e-8,
            weight_decay: 0.2,
            exempt_from_decay: false,
        }
    }
}

impl AdamWConfig {
    /// The base learning rate of a group (before the schedule's factor).
    pub fn group_lr(&self, group: Group) -> f64 {
        match group {
            Group::Text => self.lr,
            Group::Visual => self.lr * self.ratio,
            Group::Fusion => self.lr * self.f_ratio,
        }
    }

    /// Checks the values.
    pub fn validate(&self) -> Result<()> {
        let finite_nonneg = |x: f64| x.is_finite() && x >= 0.0;
        if !(finite_nonneg(self.lr) && finite_nonneg(self.ratio) && finite_nonneg(self.f_ratio)) {
            return Err(Error::Config(format!(
                "learning rates must be finite and >= 0 (lr {}, ratio {}, f_ratio {})",
                self.lr, self.ratio, self.f_ratio
            )));
        }
        if !((0.0..1.0).contains(&self.beta1) && (0.0..1.0).contains(&self.beta2)) {
            return Err(Error::Config(format!("AdamW betas must lie in [0, 1), got ({}, {})", self.beta1, self.beta2)));
        }
        if !(self.eps.is_finite() && self.eps > 0.0 && finite_nonneg(self.weight_decay)) {
            return Err(Error::Config(format!(
                "AdamW eps must be > 0 and weight decay >= 0 (eps {}, weight_decay {})",
                self.eps, self.weight_decay
            )));
        }
        Ok(())
    }
}

/// One optimised parameter: its canonical name, its (f32 master) variable, group and moments.
#[derive(Debug)]
pub struct Param {
    /// Canonical checkpoint name.
    pub name: String,
    /// The variable the optimizer updates.
    pub var: Var,
    /// Its group.
    pub group: Group,
    /// Whether weight decay applies.
    pub decay: bool,
    exp_avg: Tensor,
    exp_avg_sq: Tensor,
}

/// One parameter's AdamW update with this step's constants (f32 arithmetic in PyTorch's order).
struct Update {
    /// `1 - lr * weight_decay`, when the parameter decays.
    decay: Option<f64>,
    beta1: f64,
    beta2: f64,
    /// `lr / (1 - beta1^t)`.
    step_size: f64,
    /// `1 / sqrt(1 - beta2^t)`.
    inv_bias_correction2_sqrt: f64,
    eps: f64,
}

impl Update {
    /// The updated weight, first and second moments on candle ops (any device).
    fn plain(&self, w: &Tensor, g: &Tensor, exp_avg: &Tensor, exp_avg_sq: &Tensor) -> Result<(Tensor, Tensor, Tensor)> {
        let w = match self.decay {
            Some(factor) => w.affine(factor, 0.0)?,
            None => w.clone(),
        };
        // exp_avg.lerp_(grad, 1 - beta1)
        let exp_avg = (exp_avg + (g - exp_avg)?.affine(1.0 - self.beta1, 0.0)?)?;
        // exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value = 1 - beta2)
        let exp_avg_sq = (exp_avg_sq.affine(self.beta2, 0.0)? + (g.affine(1.0 - self.beta2, 0.0)? * g)?)?;
        let denom = exp_avg_sq.sqrt()?.affine(self.inv_bias_correction2_sqrt, self.eps)?;
        let w = (w - (&exp_avg / denom)?.affine(self.step_size, 0.0)?)?;
        Ok((w, exp_avg, exp_avg_sq))
    }

    /// [`Update::plain`] in one parallel pass over contiguous f32 CPU tensors, with the same f32
    /// operations in the same order (so the same values); `None` for other tensors.
    fn fused(
        &self,
        w: &Tensor,
        g: &Tensor,
        exp_avg: &Tensor,
        exp_avg_sq: &Tensor,
    ) -> Result<Option<(Tensor, Tensor, Tensor)>> {
        use candle_core::{Storage, Storage::Cpu};
        use rayon::prelude::*;
        /// The values of a contiguous f32 CPU storage.
        fn values<'a>(storage: &'a Storage, layout: &candle_core::Layout) -> Option<&'a [f32]> {
            let (Cpu(cpu), Some((start, end))) = (storage, layout.contiguous_offsets()) else { return None };
            cpu.as_slice::<f32>().ok().map(|v| &v[start..end])
        }
        let tensors = [w, g, exp_avg, exp_avg_sq];
        let guards: Vec<_> = tensors.iter().map(|t| t.storage_and_layout()).collect();
        let Some(slices) = guards.iter().map(|(s, l)| values(s, l)).collect::<Option<Vec<_>>>() else {
            return Ok(None);
        };
        let [w0, g, m0, v0] = slices[..] else { return Ok(None) };
        if [g.len(), m0.len(), v0.len()].iter().any(|&n| n != w0.len()) {
            return Ok(None);
        }
        let f = |x: f64| x as f32;
        let (decay, b1, b2) = (self.decay.map(f), f(1.0 - self.beta1), (f(self.beta2), f(1.0 - self.beta2)));
        let (step_size, inv_bc2, eps) = (f(self.step_size), f(self.inv_bias_correction2_sqrt), f(self.eps));
        let n = w0.len();
        let (mut w, mut m, mut v) = (vec![0f32; n], vec![0f32; n], vec![0f32; n]);
        const CHUNK: usize = 1 << 14;
        w.par_chunks_mut(CHUNK).zip(m.par_chunks_mut(CHUNK)).zip(v.par_chunks_mut(CHUNK)).enumerate().for_each(
            |(c, ((w, m), v))| {
                let range = c * CHUNK..(c * CHUNK + w.len());
                let inputs = w0[range.clone()].iter().zip(&g[range.clone()]).zip(&m0[range.clone()]).zip(&v0[range]);
                for (((w, m), v), (((&w0, &g), &m0), &v0)) in
                    w.iter_mut().zip(m.iter_mut()).zip(v.iter_mut()).zip(inputs)
                {
                    let decayed = decay.map_or(w0, |d| w0 * d);
                    *m = m0 + (g - m0) * b1;
                    *v = v0 * b2.0 + g * b2.1 * g;
                    *w = decayed - *m / (v.sqrt() * inv_bc2 + eps) * step_size;
                }
            },
        );
        drop(guards);
        let shape = tensors[0].shape().clone();
        let device = &candle_core::Device::Cpu;
        Ok(Some((
            Tensor::from_vec(w, shape.clone(), device)?,
            Tensor::from_vec(m, shape.clone(), device)?,
            Tensor::from_vec(v, shape, device)?,
        )))
    }
}

/// AdamW with parameter groups, as `torch.optim.AdamW` (single-tensor path): per step and parameter
/// `p *= 1 - lr*wd`, `m = lerp(m, g, 1-beta1)`, `v = beta2*v + (1-beta2)*g*g`,
/// `p -= lr/(1-beta1^t) * m / (sqrt(v)/sqrt(1-beta2^t) + eps)`.
#[derive(Debug)]
pub struct AdamW {
    cfg: AdamWConfig,
    params: Vec<Param>,
    step: u64,
}

impl AdamW {
    /// An optimizer over `params` (canonical name, variable), each put in its [`Group`]. Moments start at 0.
    pub fn new(params: Vec<(String, Var)>, cfg: AdamWConfig) -> Result<Self> {
        cfg.validate()?;
        let params = params
            .into_iter()
            .map(|(name, var)| {
                let zeros = var.as_tensor().zeros_like()?.to_dtype(DType::F32)?;
                let decay = !(cfg.exempt_from_decay && is_decay_exempt(&name));
                Ok(Param { group: Group::of(&name), decay, exp_avg: zeros.clone(), exp_avg_sq: zeros, var, name })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self { cfg, params, step: 0 })
    }

    /// The hyper-parameters.
    pub fn config(&self) -> &AdamWConfig {
        &self.cfg
    }

    /// The parameters, in optimizer order.
    pub fn params(&self) -> &[Param] {
        &self.params
    }

    /// Updates applied so far (the `t` of the bias correction).
    pub fn step_count(&self) -> u64 {
        self.step
    }

    /// Number of scalar values per group.
    pub fn group_sizes(&self) -> HashMap<Group, usize> {
        let mut out = HashMap::new();
        for p in &self.params {
            *out.entry(p.group).or_insert(0) += p.var.elem_count();
        }
        out
    }

    /// One update. `grads[i]` is the gradient of `params()[i]` (any float dtype; `None`: the parameter is
    /// skipped entirely, as PyTorch skips parameters without a gradient); `lr_factor` scales every group's
    /// learning rate (the schedule).
    pub fn step(&mut self, grads: &[Option<Tensor>], lr_factor: f64) -> Result<()> {
        if grads.len() != self.params.len() {
            return Err(Error::Config(format!("{} gradients for {} parameters", grads.len(), self.params.len())));
        }
        self.step += 1;
        let t = self.step as i32;
        let (b1, b2) = (self.cfg.beta1, self.cfg.beta2);
        let bias_correction1 = 1.0 - b1.powi(t);
        let bias_correction2_sqrt = (1.0 - b2.powi(t)).sqrt();
        for (p, g) in self.params.iter_mut().zip(grads) {
            let Some(g) = g else { continue };
            let lr = self.cfg.group_lr(p.group) * lr_factor;
            // Detached: gradients can carry backprop links to the step's graph, and the moments must not
            // chain them from step to step.
            let g = g.detach().to_dtype(DType::F32)?;
            let w = p.var.as_tensor().detach().to_dtype(DType::F32)?;
            let update = Update {
                decay: if p.decay && self.cfg.weight_decay != 0.0 {
                    Some(1.0 - lr * self.cfg.weight_decay)
                } else {
                    None
                },
                beta1: b1,
                beta2: b2,
                step_size: lr / bias_correction1,
                inv_bias_correction2_sqrt: 1.0 / bias_correction2_sqrt,
                eps: self.cfg.eps,
            };
            let (w, exp_avg, exp_avg_sq) = match update.fused(&w, &g, &p.exp_avg, &p.exp_avg_sq)? {
                Some(updated) => updated,
                None => update.plain(&w, &g, &p.exp_avg, &p.exp_avg_sq)?,
            };
            (p.exp_avg, p.exp_avg_sq) = (exp_avg, exp_avg_sq);
            p.var.set(&w.to_dtype(p.var.dtype())?)?;
        }
        Ok(())
    }

    /// The moment buffers as `exp_avg.{name}` and `exp_avg_sq.{name}` (f32).
    pub fn state_tensors(&self) -> HashMap<String, Tensor> {
        let mut out = HashMap::new();
        for p in &self.params {
            out.insert(format!("exp_avg.{}", p.name), p.exp_avg.clone());
            out.insert(format!("exp_avg_sq.{}", p.name), p.exp_avg_sq.clone());
        }
        out
    }

    /// Writes the moment buffers as safetensors (the step count belongs to the trainer state).
    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        crate::weights::save_safetensors(&self.state_tensors(), None, path)
    }

    /// Restores moments written by [`AdamW::save`] and the step count. Every parameter's two buffers must be
    /// present with its shape.
    pub fn load(&mut self, path: impl AsRef<Path>, step: u64) -> Result<()> {
        let path = path.as_ref();
        let tensors = candle_core::safetensors::load(path, &candle_core::Device::Cpu).map_err(|e| {
            Error::Checkpoint { path: path.to_path_buf(), reason: format!("cannot read the optimizer state: {e}") }
        })?;
        let mut restored = Vec::with_capacity(self.params.len());
        for p in &self.params {
            let buffer = |kind: &str| -> Result<Tensor> {
                let key = format!("{kind}.{}", p.name);
                let t = tensors.get(&key).ok_or_else(|| Error::Checkpoint {
                    path: path.to_path_buf(),
                    reason: format!(
                        "the optimizer state has no {key}; was it saved for another model or with other frozen towers?"
                    ),
                })?;
                if t.dims() != p.var.dims() {
                    return Err(Error::KeyShape { key, found: t.dims().to_vec(), expected: p.var.dims().to_vec() });
                }
                Ok(t.to_dtype(DType::F32)?.to_device(p.var.device())?)
            };
            restored.push((buffer("exp_avg")?, buffer("exp_avg_sq")?));
        }
        for (p, (exp_avg, exp_avg_sq)) in self.params.iter_mut().zip(restored) {
            p.exp_avg = exp_avg;
            p.exp_avg_sq = exp_avg_sq;
        }
        self.step = step;
        Ok(())
    }
}

/// The global L2 norm of all gradients (f64 accumulation of per-tensor f32 norms, as
/// `torch.nn.utils.clip_grad_norm_`).
pub(crate) fn global_grad_norm(grads: &[Option<Tensor>]) -> Result<f64> {
    let mut total = 0f64;
    for g in grads.iter().flatten() {
        let n = g.to_dtype(DType::F32)?.sqr()?.sum_all()?.sqrt()?.to_scalar::<f32>()? as f64;
        total += n * n;
    }
    Ok(total.sqrt())
}

/// Scales the gradients so that their global norm is at most `max_norm` (PyTorch's
/// `clip_grad_norm_`: factor `max_norm / (norm + 1e-6)` when below 1). Returns the norm before clipping.
pub fn clip_grad_norm(grads: &mut [Option<Tensor>], max_norm: f64) -> Result<f64> {
    let norm = global_grad_norm(grads)?;
    clip_to_norm(grads, norm, max_norm)?;
    Ok(norm)
}

/// Scales gradients whose global norm is `norm` by `max_norm / (norm + 1e-6)` when that is below 1.
pub(crate) fn clip_to_norm(grads: &mut [Option<Tensor>], norm: f64, max_norm: f64) -> Result<()> {
    let coef = max_norm / (norm + 1e-6);
    if coef < 1.0 {
        scale_grads(grads, coef)?;
    }
    Ok(())
}

/// Multiplies every gradient by `factor`.
pub(crate) fn scale_grads(grads: &mut [Option<Tensor>], factor: f64) -> Result<()> {
    for g in grads.iter_mut().flatten() {
        *g = g.affine(factor, 0.0)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn groups_and_exemptions_follow_names() {
        assert_eq!(Group::of("visual.conv1.weight"), Group::Visual);
        assert_eq!(Group::of("fusion_model.transformer.resblocks.0.attn.in_proj_weight"), Group::Fusion);
        assert_eq!(Group::of("transformer.resblocks.0.mlp.c_fc.weight"), Group::Text);
        assert_eq!(Group::of("logit_scale"), Group::Text);
        for exempt in [
            "logit_scale",
            "visual.ln_pre.weight",
            "transformer.resblocks.1.ln_2.bias",
            "token_embedding.weight",
            "visual.class_embedding",
            "fusion_model.frame_position_embeddings.weight",
            "fusion_model.transformer.transformer_enc.layers.0.norm1.weight",
            "visual.transformer.resblocks.0.attn.in_proj_bias",
        ] {
            assert!(is_decay_exempt(exempt), "{exempt}");
        }
        for decayed in [
            "visual.proj",
            "text_projection",
            "visual.transformer.resblocks.0.attn.in_proj_weight",
            "fusion_model.lstm_visual.weight_ih_l0",
        ] {
            assert!(!is_decay_exempt(decayed), "{decayed}");
        }
    }

    /// The fused CPU pass gives exactly the plain candle ops' values, with and without weight decay.
    #[test]
    fn fused_update_equals_plain() {
        let values = |seed: u32| {
            Tensor::from_vec(
                (0..40_000u32).map(|i| ((i * 7919 + seed) % 1000) as f32 / 250.0 - 2.0).collect::<Vec<_>>(),
                (200, 200),
                &Device::Cpu,
            )
            .unwrap()
        };
        let (w, g, m, v) = (values(1), values(2), values(3), values(4).abs().unwrap());
        for decay in [None, Some(0.998)] {
            let update =
                Update { decay, beta1: 0.9, beta2: 0.999, step_size: 0.013, inv_bias_correction2_sqrt: 1.7, eps: 1e-8 };
            let fused = update.fused(&w, &g, &m, &v).unwrap().expect("f32 CPU tensors take the fused pass");
            let plain = update.plain(&w, &g, &m, &v).unwrap();
            for (a, b) in [(&fused.0, &plain.0), (&fused.1, &plain.1), (&fused.2, &plain.2)] {
                assert_eq!(
                    a.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                    b.flatten_all().unwrap().to_vec1::<f32>().unwrap()
                );
            }
        }
    }

    #[test]
    fn one_step_matches_the_formula() {
        let dev = Device::Cpu;
        let var = Var::from_vec(vec![1.0f32, -2.0], 2, &dev).unwrap();
        let cfg = AdamWConfig { lr: 0.1, ..Default::default() };
        let mut opt = AdamW::new(vec![("visual.x".into(), var.clone())], cfg).unwrap();
        let g = Tensor::new(&[0.5f32, -1.0], &dev).unwrap();
        opt.step(&[Some(g)], 1.0).unwrap();
        // visual lr = 0.1; p *= 1 - 0.02; first step moves by lr * sign(g) (up to eps).
        let w = var.as_tensor().to_vec1::<f32>().unwrap();
        assert!((w[0] - (0.98 - 0.1)).abs() < 1e-6 && (w[1] - (-1.96 + 0.1)).abs() < 1e-6, "{w:?}");
    }

    #[test]
    fn clipping_scales_to_max_norm() {
        let dev = Device::Cpu;
        let mut g = vec![Some(Tensor::new(&[3.0f32, 4.0], &dev).unwrap()), None];
        let n = clip_grad_norm(&mut g, 1.0).unwrap();
        assert!((n - 5.0).abs() < 1e-9);
        let v = g[0].as_ref().unwrap().to_vec1::<f32>().unwrap();
        assert!((v[0] - 0.6).abs() < 1e-5 && (v[1] - 0.8).abs() < 1e-5);
    }
}
