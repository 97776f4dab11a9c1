//! TSN segment sampling, exactly as the reference (`datasets.py`, `_sample_indices` and `_get_val_indices`).
//!
//! A clip of `N` frames is cut into `T` equal segments; each segment contributes `seg_length` consecutive
//! frames. All indices here are 0-based (the reference adds an `index_bias` of 1 when it names frame files;
//! the frame-folder reader does that for us).
//!
//! Randomness comes from [`sample_rng`]: a ChaCha stream keyed by `(seed, epoch, sample index)`, so a
//! sample draws the same frames and augmentation in a given epoch whatever thread loads it.
use rand::Rng;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use crate::error::{Error, Result};

/// Which sampling rule a clip is read with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum SampleMode {
    /// Training: one random position inside each segment.
    Train,
    /// Evaluation: the centre of each segment (deterministic).
    Test,
}

/// The segment layout: `segments` (T) segments of `seg_length` consecutive frames each.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Sampling {
    /// Number of segments T (the model's frame count when `seg_length` is 1).
    pub segments: usize,
    /// Consecutive frames taken per segment (the reference's `new_length`, 1 for ActionCLIP).
    pub seg_length: usize,
}

impl Sampling {
    /// `segments` segments of one frame each (ActionCLIP's setting).
    pub fn new(segments: usize) -> Result<Self> {
        Self::with_seg_length(segments, 1)
    }

    /// `segments` segments of `seg_length` consecutive frames each; both must be at least 1.
    pub fn with_seg_length(segments: usize, seg_length: usize) -> Result<Self> {
        if segments == 0 || seg_length == 0 {
            return Err(Error::Config(format!(
                "sampling needs at least one segment of at least one frame (got {segments} segments of {seg_length})"
            )));
        }
        Ok(Self { segments, seg_length })
    }

    /// Frames returned per clip: `segments * seg_length`.
    pub fn total_length(&self) -> usize {
        self.segments * self.seg_length
    }

    /// Training indices for a clip of `num_frames` frames (empty when `num_frames` is 0).
    ///
    /// `N <= T*L`: every frame once plus `T*L - N` random extras, sorted. Otherwise segment `i` spans
    /// `[i*N/T, (i+1)*N/T)` (integer division) and a random start inside it leaves room for `L` frames.
    pub fn train_indices<R: Rng + ?Sized>(&self, num_frames: usize, rng: &mut R) -> Vec<usize> {
        let n = num_frames;
        let total = self.total_length();
        if n == 0 {
            return Vec::new();
        }
        if n <= total {
            let mut out: Vec<usize> = (0..n).collect();
            out.extend((0..total - n).map(|_| rng.gen_range(0..n)));
            out.sort_unstable();
            return out;
        }
        let (t, l) = (self.segments, self.seg_length);
        let mut out = Vec::with_capacity(total);
        for i in 0..t {
            let tick = i * n / t;
            let tick_len = (i + 1) * n / t - tick;
            let start = if tick_len >= l { tick + rng.gen_range(0..tick_len - l + 1) } else { tick };
            out.extend(start..start + l);
        }
        out
    }

    /// Test indices (segment centres) for a clip of `num_frames` frames (empty when `num_frames` is 0).
    ///
    /// Same as [`Sampling::test_views`] with one view.
    pub fn test_indices(&self, num_frames: usize) -> Vec<usize> {
        self.view_indices(num_frames, 0, 1)
    }

    /// Multi-view test indices: `views` clips whose positions inside each segment are evenly spread
    /// (view `v` sits at fraction `(2v+1)/(2*views)` of the free room in the segment; one view is the
    /// reference's centre rule). Returns `views` index lists of `segments * seg_length` each.
    pub fn test_views(&self, num_frames: usize, views: usize) -> Vec<Vec<usize>> {
        let views = views.max(1);
        (0..views).map(|v| self.view_indices(num_frames, v, views)).collect()
    }

    fn view_indices(&self, num_frames: usize, view: usize, views: usize) -> Vec<usize> {
        let n = num_frames;
        let (t, l) = (self.segments, self.seg_length);
        let total = self.total_length();
        if n == 0 {
            return Vec::new();
        }
        if t == 1 && l == 1 && views == 1 {
            // The reference's special case: the middle frame (N // 2, not the segment-centre formula).
            return vec![n / 2];
        }
        if n <= total {
            return (0..total).map(|i| i * n / total).collect();
        }
        // offset = (N/T - L) / 2 for one view, float arithmetic in the reference's order.
        let room = n as f64 / t as f64 - l as f64;
        let offset = room * (2 * view + 1) as f64 / (2 * views) as f64;
        let mut out = Vec::with_capacity(total);
        for i in 0..t {
            let seg_start = (i * n) as f64 / t as f64;
            for j in 0..l {
                // Truncation toward zero, as numpy's int cast; the value is never negative.
                let idx = (seg_start + offset + j as f64) as usize;
                out.push(idx.min(n - 1));
            }
        }
        out
    }
}

/// The random stream of one sample in one epoch: ChaCha8 keyed by `(seed, epoch, index)`.
///
/// Independent of thread scheduling: the loader gives every sample its own stream.
pub fn sample_rng(seed: u64, epoch: u64, index: u64) -> ChaCha8Rng {
    keyed_rng(seed, epoch, index, 0x5341_4d50_4c45_0001) // "SAMPLE" domain
}

/// A ChaCha8 stream keyed by three numbers and a domain tag (different tags give unrelated streams).
pub(crate) fn keyed_rng(a: u64, b: u64, c: u64, domain: u64) -> ChaCha8Rng {
    let mut key = [0u8; 32];
    key[0..8].copy_from_slice(&a.to_le_bytes());
    key[8..16].copy_from_slice(&b.to_le_bytes());
    key[16..24].copy_from_slice(&c.to_le_bytes());
    key[24..32].copy_from_slice(&domain.to_le_bytes());
    ChaCha8Rng::from_seed(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_centres_match_reference_examples() {
        let s = Sampling::new(8).unwrap();
        // N = 100, T = 8: int(i*12.5 + 5.75)
        assert_eq!(s.test_indices(100), vec![5, 18, 30, 43, 55, 68, 80, 93]);
        // N <= T: i*N//T
        assert_eq!(s.test_indices(4), vec![0, 0, 1, 1, 2, 2, 3, 3]);
        assert_eq!(Sampling::new(1).unwrap().test_indices(10), vec![5]);
        assert!(s.test_indices(0).is_empty());
    }

    #[test]
    fn train_indices_stay_in_segments() {
        let s = Sampling::new(8).unwrap();
        let mut rng = sample_rng(1, 2, 3);
        for n in 1..200 {
            let idx = s.train_indices(n, &mut rng);
            assert_eq!(idx.len(), 8);
            assert!(idx.iter().all(|&i| i < n));
            assert!(idx.windows(2).all(|w| w[0] <= w[1]));
        }
    }

    #[test]
    fn rng_is_keyed() {
        let a: u64 = sample_rng(1, 2, 3).gen();
        let b: u64 = sample_rng(1, 2, 3).gen();
        let c: u64 = sample_rng(1, 2, 4).gen();
        assert_eq!(a, b);
        assert_ne!(a, c);
    }
}
