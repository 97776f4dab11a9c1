//! Many tensors through one collective call per bucket: tensors are flattened and packed into flat f32
//! buckets of at most [`BUCKET_ELEMS`] elements (PyTorch DDP's 25 MiB), the bucket goes through the
//! operation, and the results are cut back into the tensors' shapes.
use candle_core::{DType, Shape, Tensor};

use super::{sum_values, Collective, ReduceOp};
use crate::train::error::TrainResult;

/// f32 elements per bucket (25 MiB); a larger tensor travels alone.
const BUCKET_ELEMS: usize = 25 * 1024 * 1024 / 4;

/// The ranks' gradients summed (or averaged) in place. A slot without a gradient on this rank counts as
/// zeros of `shapes[i]`; after the reduction a slot holds a gradient (on the gradients' device) when any
/// rank had one.
pub(crate) fn all_reduce_grads(
    collective: &dyn Collective,
    grads: &mut [Option<Tensor>],
    shapes: &[Shape],
    op: ReduceOp,
) -> TrainResult<()> {
    if collective.world_size() == 1 {
        return Ok(());
    }
    let device = collective.device();
    let present: Vec<f64> = grads.iter().map(|g| g.is_some() as u8 as f64).collect();
    let present = sum_values(collective, &present)?;
    let local = grads
        .iter()
        .zip(shapes)
        .map(|(g, shape)| match g {
            Some(g) => Ok(g.to_dtype(DType::F32)?.to_device(device)?),
            None => Tensor::zeros(shape, DType::F32, device),
        })
        .collect::<candle_core::Result<Vec<_>>>()?;
    let home = grads.iter().flatten().map(|g| g.device().clone()).next().unwrap_or_else(|| device.clone());
    let reduced = bucketed(&local, BUCKET_ELEMS, |bucket| collective.all_reduce(bucket, op))?;
    for ((slot, sum), n) in grads.iter_mut().zip(reduced).zip(present) {
        *slot = if n > 0.0 { Some(sum.to_device(&home)?) } else { None };
    }
    Ok(())
}

/// Rank 0's values of `tensors` (as f32, each on its tensor's device), on every rank.
pub(crate) fn broadcast_tensors(collective: &dyn Collective, tensors: &[Tensor]) -> TrainResult<Vec<Tensor>> {
    if collective.world_size() == 1 {
        return Ok(tensors.to_vec());
    }
    let device = collective.device();
    let local =
        tensors.iter().map(|t| t.to_dtype(DType::F32)?.to_device(device)).collect::<candle_core::Result<Vec<_>>>()?;
    let synced = bucketed(&local, BUCKET_ELEMS, |bucket| collective.broadcast(bucket))?;
    Ok(synced.iter().zip(tensors).map(|(s, t)| s.to_device(t.device())).collect::<candle_core::Result<_>>()?)
}

/// `operation` applied to `tensors` packed into flat buckets of at most `capacity` elements (f32 tensors of
/// one device); the results in the tensors' shapes.
fn bucketed(
    tensors: &[Tensor],
    capacity: usize,
    mut operation: impl FnMut(&Tensor) -> TrainResult<Tensor>,
) -> TrainResult<Vec<Tensor>> {
    let mut out = Vec::with_capacity(tensors.len());
    let mut start = 0;
    while start < tensors.len() {
        let mut end = start + 1;
        let mut elems = tensors[start].elem_count();
        while end < tensors.len() && elems + tensors[end].elem_count() <= capacity {
            elems += tensors[end].elem_count();
            end += 1;
        }
        let flat = tensors[start..end].iter().map(Tensor::flatten_all).collect::<candle_core::Result<Vec<_>>>()?;
        // [elems] -> [elems]
        let bucket = operation(&Tensor::cat(&flat, 0)?)?;
        let mut at = 0;
        for t in &tensors[start..end] {
            out.push(bucket.narrow(0, at, t.elem_count())?.reshape(t.shape())?);
            at += t.elem_count();
        }
        start = end;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use candle_core::Device;

    use super::*;
    use crate::train::distributed::ThreadRank;

    #[test]
    fn buckets_are_filled_up_to_capacity_and_cut_back() {
        let dev = Device::Cpu;
        let tensors = vec![
            Tensor::arange(0f32, 6.0, &dev).unwrap().reshape((2, 3)).unwrap(),
            Tensor::arange(6f32, 8.0, &dev).unwrap(),
            Tensor::arange(8f32, 18.0, &dev).unwrap().reshape((5, 2)).unwrap(),
            Tensor::new(&[18f32], &dev).unwrap(),
        ];
        let mut sizes = Vec::new();
        let out = bucketed(&tensors, 8, |b| {
            sizes.push(b.elem_count());
            Ok(b.clone())
        })
        .unwrap();
        assert_eq!(sizes, [8, 10, 1], "a tensor larger than a bucket travels alone");
        for (a, b) in tensors.iter().zip(&out) {
            assert_eq!(a.dims(), b.dims());
            assert_eq!(
                a.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                b.flatten_all().unwrap().to_vec1::<f32>().unwrap()
            );
        }
    }

    #[test]
    fn missing_gradients_count_as_zeros() {
        let ranks = ThreadRank::group(2, Duration::from_secs(30));
        let shapes: Vec<Shape> = vec![(2,).into(), (1,).into(), (1,).into()];
        let results: Vec<Vec<Option<Vec<f32>>>> = std::thread::scope(|s| {
            let handles: Vec<_> = ranks
                .iter()
                .map(|r| {
                    let shapes = &shapes;
                    s.spawn(move || {
                        let v = |x: &[f32]| Some(Tensor::new(x, &Device::Cpu).unwrap());
                        let mut grads = match r.rank() {
                            0 => vec![v(&[1.0, 2.0]), None, None],
                            _ => vec![v(&[3.0, 4.0]), v(&[5.0]), None],
                        };
                        all_reduce_grads(r, &mut grads, shapes, ReduceOp::Sum).unwrap();
                        grads.iter().map(|g| g.as_ref().map(|g| g.to_vec1::<f32>().unwrap())).collect()
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        for grads in results {
            assert_eq!(grads, [Some(vec![4.0, 6.0]), Some(vec![5.0]), None]);
        }
    }
}
