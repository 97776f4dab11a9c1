//! Rows of every rank in one tensor: all-gathers of tensors whose first dimension differs between ranks
//! (padded to the longest, cut back), and the logits of the global batch with gradients flowing through
//! this rank's rows only (open_clip's `gather_with_grad` with `local_loss = false`).
use candle_core::{DType, Device, Tensor};

use super::Collective;
use crate::loss;
use crate::train::error::TrainResult;

/// Every rank's row count (the first dimension of its part), in rank order.
pub(crate) fn row_counts(collective: &dyn Collective, rows: usize) -> TrainResult<Vec<usize>> {
    if collective.world_size() == 1 {
        return Ok(vec![rows]);
    }
    let mine = Tensor::from_vec(vec![rows as u32], 1, &Device::Cpu)?.to_device(collective.device())?;
    Ok(collective.all_gather(&mine)?.to_vec1::<u32>()?.into_iter().map(|n| n as usize).collect())
}

/// Every rank's rows in rank order, given the ranks' row counts ([`row_counts`]), on `rows`' device.
// [counts[rank], ...] -> [sum(counts), ...]
pub(crate) fn gather_rows(collective: &dyn Collective, rows: &Tensor, counts: &[usize]) -> TrainResult<Tensor> {
    let longest = counts.iter().copied().max().unwrap_or(0);
    if collective.world_size() == 1 || longest == 0 {
        return Ok(rows.clone());
    }
    let n = rows.dim(0)?;
    let mut pad = rows.dims().to_vec();
    pad[0] = longest - n;
    let padded = match n {
        0 => Tensor::zeros(pad, rows.dtype(), rows.device())?,
        n if n < longest => Tensor::cat(&[rows, &Tensor::zeros(pad, rows.dtype(), rows.device())?], 0)?,
        _ => rows.clone(),
    };
    let all = collective.all_gather(&padded.to_device(collective.device())?)?.to_device(rows.device())?;
    let parts = counts
        .iter()
        .enumerate()
        .filter(|(_, k)| **k > 0)
        .map(|(rank, &k)| all.narrow(0, rank * longest, k))
        .collect::<candle_core::Result<Vec<_>>>()?;
    Ok(Tensor::cat(&parts, 0)?)
}

/// [`gather_rows`] whose own rows are `rows` itself, carrying its graph; the other ranks' rows are constants.
// [counts[rank], D] -> [sum(counts), D]
fn gather_with_grad(collective: &dyn Collective, rows: &Tensor, counts: &[usize]) -> TrainResult<Tensor> {
    if collective.world_size() == 1 {
        return Ok(rows.clone());
    }
    let all = gather_rows(collective, &rows.detach(), counts)?;
    let start: usize = counts[..collective.rank()].iter().sum();
    let own = counts[collective.rank()];
    let total: usize = counts.iter().sum();
    let parts: Vec<Tensor> = [all.narrow(0, 0, start)?, rows.clone(), all.narrow(0, start + own, total - start - own)?]
        .into_iter()
        .filter(|t| t.dim(0).is_ok_and(|n| n > 0))
        .collect();
    Ok(Tensor::cat(&parts, 0)?)
}

/// The logits of the global batch: this rank's `video` and `text` embeddings (`[b, D]`, carrying the graph)
/// between the other ranks' rows, and `scale` (`exp(logit_scale)`) passing `1 / world_size` of its gradient
/// back, so that the ranks' gradients summed are exactly those of one process with the whole batch.
// [b, D], [b, D], [] (counts: every rank's b) -> ([B, B], [B, B]), B = sum(counts)
pub(crate) fn global_logits(
    collective: &dyn Collective,
    video: &Tensor,
    text: &Tensor,
    scale: &Tensor,
    counts: &[usize],
) -> TrainResult<(Tensor, Tensor)> {
    let world = collective.world_size();
    if world == 1 {
        return Ok(loss::cosine_logits(video, text, scale)?);
    }
    let d = video.dim(1)?;
    // One gather for both towers: [b, 2D] -> [B, 2D].
    let both = gather_with_grad(collective, &Tensor::cat(&[video, text], 1)?, counts)?;
    let detached = scale.detach();
    // The value of `scale`, with 1/world of its gradient: every rank sees the whole loss through it.
    let shared_scale = (&detached + ((scale - &detached)? / world as f64)?)?;
    Ok(loss::cosine_logits(&both.narrow(1, 0, d)?, &both.narrow(1, d, d)?, &shared_scale)?)
}

/// Labels of every rank's clips in rank order, given the ranks' row counts.
// [b] -> [B]
pub(crate) fn gather_labels(collective: &dyn Collective, labels: &[u32], counts: &[usize]) -> TrainResult<Vec<u32>> {
    let local = Tensor::from_vec(labels.to_vec(), labels.len(), &Device::Cpu)?.to_device(collective.device())?;
    Ok(gather_rows(collective, &local, counts)?.to_dtype(DType::U32)?.to_vec1::<u32>()?)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use candle_core::Var;

    use super::*;
    use crate::train::distributed::{all_reduce_grads, ReduceOp, SingleProcess, ThreadRank};

    /// `[6, 4]` video and text embeddings, labels with repeats, and a logit scale.
    fn batch() -> (Tensor, Tensor, Vec<u32>, f32) {
        let dev = Device::Cpu;
        let v = Tensor::arange(0f32, 24.0, &dev).unwrap().reshape((6, 4)).unwrap().sin().unwrap();
        let t = Tensor::arange(0f32, 24.0, &dev).unwrap().reshape((6, 4)).unwrap().cos().unwrap();
        (v, t, vec![0, 1, 0, 2, 1, 0], 2.5)
    }

    /// The loss of `rows` of the batch seen by `collective` and its gradients on (video, text, log scale).
    fn loss_and_grads(collective: &dyn Collective, rows: std::ops::Range<usize>) -> (f32, Vec<Vec<f32>>) {
        let (v, t, labels, s) = batch();
        let n = rows.len();
        let video = Var::from_tensor(&v.narrow(0, rows.start, n).unwrap()).unwrap();
        let text = Var::from_tensor(&t.narrow(0, rows.start, n).unwrap()).unwrap();
        let log_scale = Var::new(s, &Device::Cpu).unwrap();
        let counts = row_counts(collective, n).unwrap();
        let scale = log_scale.as_tensor().exp().unwrap();
        let (v2t, t2v) = global_logits(collective, video.as_tensor(), text.as_tensor(), &scale, &counts).unwrap();
        let all_labels = gather_labels(collective, &labels[rows], &counts).unwrap();
        let loss = loss::symmetric_kl_loss(&v2t, &t2v, &all_labels).unwrap();
        let grads = loss.backward().unwrap();
        let params = [video.as_tensor(), text.as_tensor(), log_scale.as_tensor()];
        let mut g: Vec<Option<Tensor>> = params.iter().map(|x| grads.get(x).cloned()).collect();
        let shapes: Vec<_> = params.iter().map(|x| x.shape().clone()).collect();
        // Only the log scale is shared: the embeddings' gradients are per rank (not summed here).
        all_reduce_grads(collective, &mut g[2..], &shapes[2..], ReduceOp::Sum).unwrap();
        let flat = |g: Option<Tensor>| g.map_or(Vec::new(), |g| g.flatten_all().unwrap().to_vec1::<f32>().unwrap());
        let g = g.into_iter().map(flat).collect();
        (loss.to_scalar::<f32>().unwrap(), g)
    }

    #[test]
    fn the_gathered_loss_has_the_single_process_loss_and_gradients() {
        let (whole_loss, whole) = loss_and_grads(&SingleProcess::new(&Device::Cpu), 0..6);
        // Rank 2 has no clips in this batch: it still gathers and passes back its share of the scale.
        let splits = [0..2, 2..6, 6..6];
        let ranks = ThreadRank::group(3, Duration::from_secs(30));
        let parts: Vec<(f32, Vec<Vec<f32>>)> = std::thread::scope(|s| {
            let handles: Vec<_> =
                ranks.iter().zip(splits.clone()).map(|(r, rows)| s.spawn(move || loss_and_grads(r, rows))).collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let close = |a: &[f32], b: &[f32]| a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-6);
        for ((loss, grads), rows) in parts.iter().zip(splits) {
            assert!((loss - whole_loss).abs() < 1e-6, "{loss} vs {whole_loss}");
            for tower in 0..2 {
                let d = 4;
                assert!(close(&grads[tower], &whole[tower][rows.start * d..rows.end * d]), "rows {rows:?}");
            }
            assert!(close(&grads[2], &whole[2]), "{:?} vs {:?}", grads[2], whole[2]);
        }
    }
}
