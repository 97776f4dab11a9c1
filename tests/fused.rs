//! The fused inference path of the model against its training path on random inputs (the layers and
//! kernels are unit-tested beside them, in `src/nn` and `src/kernels`).
use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};

/// Max |a - b| / max(1, |b|) after checking the shapes agree (infinite where only one is non-finite).
fn max_rel_diff(a: &Tensor, b: &Tensor) -> f32 {
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

fn assert_close(what: &str, a: &Tensor, b: &Tensor) {
    let d = max_rel_diff(a, b);
    assert!(d <= 1e-5, "{what}: max difference {d}");
}

fn randn(shape: &[usize], seed_scale: f64) -> Tensor {
    Tensor::randn(0f32, seed_scale as f32, shape, &Device::Cpu).unwrap()
}

/// Large inference batches are encoded in chunks of whole videos (about 2048 token rows per chunk): with
/// 2 frames of 32 x 32 + 1 tokens each video is its own chunk, and the chunked inference features of three
/// videos equal the training path's, which takes the batch whole (temporal shift across frames, the
/// Transformer head, and the joint prompt, whose tokens span a video's frames).
#[test]
fn inference_in_video_chunks_matches_the_whole_batch() {
    use actionclip::{ActionClip, ActionClipConfig, ClipConfig, PostNetwork, TextConfig, VisionConfig, VisualPrompt};
    let clip = ClipConfig {
        vision: VisionConfig { width: 32, layers: 1, heads: 2, patch_size: 4, image_size: 128 },
        text: TextConfig { width: 32, layers: 1, heads: 2, vocab_size: 100, context_length: 77 },
        embed_dim: 16,
    };
    let frames = randn(&[3, 2, 3, 128, 128], 1.);
    for prompt in [
        VisualPrompt { joint: false, temporal_shift: true, post: PostNetwork::Transformer { layers: 1 } },
        VisualPrompt { joint: true, temporal_shift: false, post: PostNetwork::MeanPool },
    ] {
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
        let model = ActionClip::new(vb, &ActionClipConfig { clip: clip.clone(), frames: 2, prompt }).unwrap();
        let (chunked, whole) =
            (model.encode_video_t(&frames, false).unwrap(), model.encode_video_t(&frames, true).unwrap());
        assert_close(&format!("{prompt:?}"), &chunked, &whole);
    }
}
