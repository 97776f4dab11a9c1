//! Similarity and the contrastive loss of ActionCLIP: cosine logits with a scale, the ground-truth matrix
//! of a batch (several positives per row when labels repeat) and the symmetric KL loss exactly as the
//! reference computes it.
//!
//! Public: [`normalize`], [`cosine_logits`] and [`symmetric_kl_loss`].
use candle_core::{DType, Device, Tensor, D};

use crate::{Error, Result};

/// Temperature of the soft targets: the reference takes `softmax(10 * gt)`.
const TARGET_SHARPNESS: f64 = 10.0;

/// Rows scaled to unit L2 norm.
// [N, D] -> [N, D]
pub fn normalize(x: &Tensor) -> Result<Tensor> {
    Ok(x.broadcast_div(&x.sqr()?.sum_keepdim(D::Minus1)?.sqrt()?)?)
}

/// `scale * cos(video_i, text_j)` and its transpose, `scale` being a plain factor (ActionCLIP passes
/// `exp(logit_scale)` in training, 100 at test time).
// [B, D], [N, D], [] -> ([B, N], [N, B])
pub fn cosine_logits(video: &Tensor, text: &Tensor, scale: &Tensor) -> Result<(Tensor, Tensor)> {
    let v = normalize(video)?;
    let t = normalize(text)?;
    let v2t = v.matmul(&t.t()?)?.broadcast_mul(&scale.to_dtype(v.dtype())?)?;
    let t2v = v2t.t()?;
    Ok((v2t, t2v))
}

/// The ground-truth matrix of a batch: `gt[i, k] = 1` when samples i and k share a label.
// [B] -> [B, B] f32
fn ground_truth(labels: &[u32], device: &Device) -> Result<Tensor> {
    let b = labels.len();
    let gt: Vec<f32> = labels.iter().flat_map(|a| labels.iter().map(move |c| if a == c { 1. } else { 0. })).collect();
    Ok(Tensor::from_vec(gt, (b, b), device)?)
}

/// One KL term of the reference: `KLDivLoss(mean)(log_softmax(logits), softmax(10 gt)) * B`.
// [B, B], [B, B] -> []
fn kl_term(logits: &Tensor, gt: &Tensor) -> Result<Tensor> {
    let (b, _) = logits.dims2()?;
    let logits = logits.to_dtype(DType::F32)?;
    let log_p = candle_nn::ops::log_softmax(&logits, D::Minus1)?;
    let target = candle_nn::ops::softmax(&(gt.to_dtype(DType::F32)? * TARGET_SHARPNESS)?, D::Minus1)?;
    // target is strictly positive, so target * log(target) needs no 0 * log 0 guard.
    let kl = (&target * (target.log()? - log_p)?)?;
    Ok((kl.sum_all()? / b as f64)?)
}

/// The symmetric KL contrastive loss: the mean of the video-to-text and text-to-video KL terms against
/// the ground truth made from `labels`.
// [B, B], [B, B], B labels -> []
pub fn symmetric_kl_loss(logits_v2t: &Tensor, logits_t2v: &Tensor, labels: &[u32]) -> Result<Tensor> {
    let b = labels.len();
    for (name, l) in [("logits_v2t", logits_v2t), ("logits_t2v", logits_t2v)] {
        if l.dims() != [b, b] {
            return Err(Error::InputShape {
                what: name,
                expected: format!("[{b}, {b}] for {b} labels"),
                found: l.dims().to_vec(),
            });
        }
    }
    let gt = ground_truth(labels, logits_v2t.device())?;
    Ok(((kl_term(logits_v2t, &gt)? + kl_term(logits_t2v, &gt)?)? / 2.0)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ground_truth_marks_repeated_labels() {
        let gt = ground_truth(&[0, 1, 0], &Device::Cpu).unwrap().to_vec2::<f32>().unwrap();
        assert_eq!(gt, vec![vec![1., 0., 1.], vec![0., 1., 0.], vec![1., 0., 1.]]);
    }

    #[test]
    fn loss_rejects_mismatched_shapes() {
        let l = Tensor::zeros((2, 2), DType::F32, &Device::Cpu).unwrap();
        assert!(matches!(symmetric_kl_loss(&l, &l, &[0, 1, 2]), Err(Error::InputShape { .. })));
    }
}
