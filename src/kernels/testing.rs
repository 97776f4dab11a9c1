//! Comparisons the kernel and layer unit tests share.
use candle_core::{DType, Tensor};

/// Max |a - b| / max(1, |b|) after checking the shapes agree (infinite where only one is non-finite).
pub(crate) fn max_rel_diff(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims());
    let a: Vec<f32> = a.to_dtype(DType::F32).unwrap().flatten_all().unwrap().to_vec1().unwrap();
    let b: Vec<f32> = b.to_dtype(DType::F32).unwrap().flatten_all().unwrap().to_vec1().unwrap();
    a.iter()
        .zip(&b)
        .map(|(x, y)| {
            if x == y {
                0.
            } else if (x - y).is_finite() {
                (x - y).abs() / y.abs().max(1.)
            } else {
                f32::INFINITY
            }
        })
        .fold(0., f32::max)
}

/// Asserts [`max_rel_diff`] of `a` against `b` is at most 1e-5.
pub(crate) fn assert_close(what: &str, a: &Tensor, b: &Tensor) {
    let d = max_rel_diff(a, b);
    assert!(d <= 1e-5, "{what}: max difference {d}");
}
