//! The maths of one optimizer step. Per loader batch: forward in training mode, the symmetric KL loss over
//! the global batch (every rank's clips in a data-parallel job), backward of the loss times
//! `loss_scale / accumulate`, gradients summed in a [`GradAccumulator`]. Per optimizer step: the sums
//! summed over the ranks, divided by the loss scale, the global norm measured, an overflow either skipped
//! with a lower loss scale (f16) or reported (f32, bf16), the norm clipped; after an applied update the f16
//! loss scale grows every `growth_interval` good steps (as `torch.cuda.amp.GradScaler`).
use candle_core::backprop::GradStore;
use candle_core::{DType, Tensor, Var};

use super::checkpoint::TrainerState;
use super::config::TrainConfig;
use super::distributed::{gather_labels, global_logits, row_counts, Collective};
use super::error::{TrainError, TrainResult};
use super::optimizer::{clip_to_norm, global_grad_norm, scale_grads};
use super::vars::Precision;
use crate::{loss, ActionClip, Result};

/// This rank's clips of a batch, encoded in training mode.
pub(crate) struct Encoded {
    /// Video embeddings `[b, D]`.
    video: Tensor,
    /// Text embeddings `[b, D]`.
    text: Tensor,
    /// One label per clip.
    labels: Vec<u32>,
}

impl Encoded {
    /// Encodes a batch with the model in training mode.
    // frames [b, T, 3, H, W], tokens [b, 77] u32, b labels -> [b, D] twice
    pub(crate) fn new(model: &ActionClip, frames: &Tensor, tokens: &Tensor, labels: &[u32]) -> Result<Self> {
        let video = model.encode_video_t(frames, true)?;
        let text = model.encode_text_t(tokens, true)?;
        Ok(Self { video, text, labels: labels.to_vec() })
    }

    /// No clips: what a rank without a batch brings to the global batch (`dim` wide, in `model`'s dtype).
    pub(crate) fn empty(model: &ActionClip, dim: usize) -> Result<Self> {
        let empty = Tensor::zeros((0, dim), model.dtype(), model.device())?;
        Ok(Self { video: empty.clone(), text: empty, labels: Vec::new() })
    }

    /// Clips encoded.
    pub(crate) fn clips(&self) -> usize {
        self.labels.len()
    }

    /// Whether every embedding is finite (a NaN clip is caught on its own rank, before the gather spreads
    /// it to every rank's loss).
    pub(crate) fn is_finite(&self) -> Result<bool> {
        if self.labels.is_empty() {
            return Ok(true);
        }
        let total = (self.video.to_dtype(DType::F32)?.sum_all()? + self.text.to_dtype(DType::F32)?.sum_all()?)?;
        Ok(total.to_scalar::<f32>()?.is_finite())
    }
}

/// The symmetric KL loss over the global batch: every rank's clips in rank order, gradients flowing
/// through this rank's embeddings (see [`global_logits`]). `None` when no rank had a clip.
// b_rank clips per rank -> scalar over B = sum(b_rank)
pub(crate) fn global_batch_loss(
    model: &ActionClip,
    local: &Encoded,
    collective: &dyn Collective,
) -> TrainResult<Option<Tensor>> {
    let counts = row_counts(collective, local.clips())?;
    if counts.iter().sum::<usize>() == 0 {
        return Ok(None);
    }
    let (v2t, t2v) = global_logits(collective, &local.video, &local.text, &model.logit_scale().exp()?, &counts)?;
    let labels = gather_labels(collective, &local.labels, &counts)?;
    Ok(Some(loss::symmetric_kl_loss(&v2t, &t2v, &labels)?))
}

/// Gradients of `loss * weight` (the loss scale over the batches per step).
pub(crate) fn weighted_backward(loss: &Tensor, weight: f64) -> Result<GradStore> {
    let scaled = if weight == 1.0 { loss.clone() } else { loss.affine(weight, 0.0)? };
    Ok(scaled.backward()?)
}

/// What the loader batches of one optimizer step added up to.
pub(crate) struct Accumulated {
    /// Summed f32 gradients, one slot per trainable parameter (`None`: no gradient reached it).
    pub grads: Vec<Option<Tensor>>,
    /// Mean loss over the batches (NaN without batches).
    pub loss: f64,
}

/// Sums gradients, losses and clip counts over the loader batches of one optimizer step.
pub(crate) struct GradAccumulator {
    grads: Vec<Option<Tensor>>,
    batches: usize,
    loss_sum: f64,
    clips: usize,
}

impl GradAccumulator {
    /// Empty sums for `params` trainable parameters.
    pub(crate) fn new(params: usize) -> Self {
        Self { grads: vec![None; params], batches: 0, loss_sum: 0.0, clips: 0 }
    }

    /// Adds the gradients of the trainable parameters (`(name, master, compute tensor)` in the order of the
    /// slots) and a batch of `clips` clips with loss `loss`.
    pub(crate) fn add(
        &mut self,
        grads: &GradStore,
        trainable: &[(String, Var, Tensor)],
        loss: f64,
        clips: usize,
    ) -> Result<()> {
        for (slot, (_, _, t)) in self.grads.iter_mut().zip(trainable) {
            if let Some(g) = grads.get(t) {
                let g = g.detach().to_dtype(DType::F32)?;
                *slot = Some(match slot.take() {
                    Some(acc) => (acc + g)?,
                    None => g,
                });
            }
        }
        self.batches += 1;
        self.loss_sum += loss;
        self.clips += clips;
        Ok(())
    }

    /// Loader batches summed so far.
    pub(crate) fn batches(&self) -> usize {
        self.batches
    }

    /// Clips summed so far.
    pub(crate) fn clips(&self) -> usize {
        self.clips
    }

    /// Drops everything summed so far.
    pub(crate) fn clear(&mut self) {
        self.take();
    }

    /// Takes the sums out, leaving the accumulator empty.
    pub(crate) fn take(&mut self) -> Accumulated {
        let grads = self.grads.iter_mut().map(Option::take).collect();
        let loss = if self.batches > 0 { self.loss_sum / self.batches as f64 } else { f64::NAN };
        self.batches = 0;
        self.loss_sum = 0.0;
        self.clips = 0;
        Accumulated { grads, loss }
    }
}

/// Readies summed gradients for the optimizer: divided by the loss scale, the global norm measured, then
/// clipped. Returns the norm before clipping and whether the step is skipped (a non-finite norm in f16,
/// which also backs the loss scale off); a non-finite norm in f32 or bf16 is an error.
pub(crate) fn unscale_and_clip(
    grads: &mut [Option<Tensor>],
    state: &mut TrainerState,
    cfg: &TrainConfig,
) -> TrainResult<(f64, bool)> {
    if state.loss_scale != 1.0 {
        scale_grads(grads, 1.0 / state.loss_scale)?;
    }
    let norm = global_grad_norm(grads)?;
    if !norm.is_finite() {
        if cfg.precision != Precision::F16 {
            return Err(TrainError::NonFiniteGradient { epoch: state.epoch, step: state.step });
        }
        state.loss_scale *= cfg.loss_scale.backoff;
        state.scale_good_steps = 0;
        return Ok((norm, true));
    }
    if let Some(max) = cfg.clip_grad_norm {
        clip_to_norm(grads, norm, max)?;
    }
    Ok((norm, false))
}

/// Counts an applied f16 update and grows the loss scale after `growth_interval` of them in a row.
pub(crate) fn grow_loss_scale(state: &mut TrainerState, cfg: &TrainConfig) {
    if cfg.precision != Precision::F16 {
        return;
    }
    state.scale_good_steps += 1;
    if state.scale_good_steps >= cfg.loss_scale.growth_interval {
        state.loss_scale *= cfg.loss_scale.growth;
        state.scale_good_steps = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ActionClipConfig;
    use candle_core::Device;

    fn state(cfg: &TrainConfig) -> TrainerState {
        TrainerState::new(
            cfg,
            &ActionClipConfig { clip: crate::ClipConfig::tiny(), frames: 2, prompt: Default::default() },
        )
    }

    fn grads(values: &[f32]) -> Vec<Option<Tensor>> {
        vec![Some(Tensor::new(values, &Device::Cpu).unwrap()), None]
    }

    #[test]
    fn clipping_scales_to_the_max_norm() {
        let cfg = TrainConfig { clip_grad_norm: Some(1.0), ..TrainConfig::default() };
        let mut st = state(&cfg);
        let mut g = grads(&[3.0, 4.0]);
        let (norm, skipped) = unscale_and_clip(&mut g, &mut st, &cfg).unwrap();
        assert_eq!((norm, skipped), (5.0, false));
        let clipped = global_grad_norm(&g).unwrap();
        assert!((clipped - 1.0).abs() < 1e-6, "{clipped}");
    }

    #[test]
    fn f16_overflow_skips_and_backs_off_then_grows() {
        let mut cfg = TrainConfig { precision: Precision::F16, ..TrainConfig::default() };
        cfg.loss_scale.growth_interval = 2;
        let mut st = state(&cfg);
        assert_eq!(st.loss_scale, 65536.0);
        let mut g = grads(&[f32::INFINITY, 1.0]);
        let (_, skipped) = unscale_and_clip(&mut g, &mut st, &cfg).unwrap();
        assert!(skipped);
        assert_eq!(st.loss_scale, 32768.0);
        let mut g = grads(&[32768.0 * 3.0, 32768.0 * 4.0]);
        let (norm, skipped) = unscale_and_clip(&mut g, &mut st, &cfg).unwrap();
        assert_eq!((norm, skipped), (5.0, false), "gradients are unscaled before the norm");
        grow_loss_scale(&mut st, &cfg);
        grow_loss_scale(&mut st, &cfg);
        assert_eq!((st.loss_scale, st.scale_good_steps), (65536.0, 0));
    }

    #[test]
    fn f32_overflow_is_an_error() {
        let cfg = TrainConfig::default();
        let mut st = state(&cfg);
        let err = unscale_and_clip(&mut grads(&[f32::NAN]), &mut st, &cfg).unwrap_err();
        assert!(matches!(err, TrainError::NonFiniteGradient { epoch: 0, step: 0 }), "{err}");
    }

    #[test]
    fn the_accumulator_averages_the_loss_and_empties() {
        let mut acc = GradAccumulator::new(1);
        let x = Var::new(&[1f32, 2.0], &Device::Cpu).unwrap();
        let trainable = vec![("x".to_string(), x.clone(), x.as_tensor().clone())];
        for loss in [1.0, 3.0] {
            let grads = x.as_tensor().sqr().unwrap().sum_all().unwrap().backward().unwrap();
            acc.add(&grads, &trainable, loss, 4).unwrap();
        }
        assert_eq!((acc.batches(), acc.clips()), (2, 8));
        let out = acc.take();
        assert_eq!(out.loss, 2.0);
        assert_eq!(out.grads[0].as_ref().unwrap().to_vec1::<f32>().unwrap(), [4.0, 8.0]);
        assert_eq!((acc.batches(), acc.clips()), (0, 0));
        assert!(acc.take().loss.is_nan());
    }
}
