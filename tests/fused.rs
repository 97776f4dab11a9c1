//! The fused inference path of the model against its training path on random inputs (the layers and
//! kernels are unit-tested beside them, in `src/nn` and `src/kernels`).
mod common;

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};

fn assert_close(what: &str, a: &Tensor, b: &Tensor) {
    let d = common::max_rel_diff(a, b);
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
