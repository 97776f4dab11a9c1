//! Bad input gets a typed error naming the culprit, never a panic.
mod common;

use actionclip::{ActionClip, ActionClipConfig, Error, PostNetwork, VisualPrompt};
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use common::*;

fn model(cfg: &ActionClipConfig) -> ActionClip {
    ActionClip::new(VarBuilder::from_tensors(weights(), DType::F32, &Device::Cpu), cfg).unwrap()
}

fn frames(dims: &[usize]) -> Tensor {
    Tensor::zeros(dims, DType::F32, &Device::Cpu).unwrap()
}

#[test]
fn wrong_frame_rank_or_size_is_an_input_shape_error() {
    let m = model(&tiny_config(false, false, PostNetwork::MeanPool));
    for dims in [&[4, 3, 32, 32][..], &[1, 4, 3, 64, 64], &[1, 4, 1, 32, 32], &[0, 4, 3, 32, 32]] {
        match m.encode_video(&frames(dims)) {
            Err(Error::InputShape { what: "frames", found, .. }) => assert_eq!(found, dims),
            other => panic!("{dims:?}: expected InputShape, got {:?}", other.map(|t| t.dims().to_vec())),
        }
    }
}

#[test]
fn frame_counts_the_prompt_cannot_take_are_rejected() {
    let cls = model(&tiny_config(false, false, PostNetwork::TransformerCls { layers: 2 }));
    let err = cls.encode_video(&frames(&[1, 3, 3, 32, 32])).unwrap_err();
    assert!(matches!(err, Error::FrameCount { part: "TransformerCls head", found: 3, .. }), "{err}");

    let joint = model(&tiny_config(true, false, PostNetwork::MeanPool));
    let err = joint.encode_video(&frames(&[1, 6, 3, 32, 32])).unwrap_err();
    assert!(matches!(err, Error::FrameCount { found: 6, .. }), "{err}");

    let transf = model(&tiny_config(false, false, PostNetwork::Transformer { layers: 2 }));
    let err = transf.encode_video(&frames(&[1, 78, 3, 32, 32])).unwrap_err();
    assert!(matches!(err, Error::FrameCount { part: "Transformer head", found: 78, .. }), "{err}");
    // Any count up to 77 works for the temporal transformer, mean pooling and the temporal shift.
    assert_eq!(transf.encode_video(&frames(&[2, 7, 3, 32, 32])).unwrap().dims(), [2, 64]);
    let tsm = model(&tiny_config(false, true, PostNetwork::MeanPool));
    assert_eq!(tsm.encode_video(&frames(&[1, 1, 3, 32, 32])).unwrap().dims(), [1, 64]);
}

#[test]
fn nonsensical_prompt_combinations_are_rejected() {
    for prompt in [
        VisualPrompt { joint: true, temporal_shift: true, post: PostNetwork::MeanPool },
        VisualPrompt { joint: true, temporal_shift: false, post: PostNetwork::Lstm },
        VisualPrompt { joint: false, temporal_shift: false, post: PostNetwork::Transformer { layers: 0 } },
    ] {
        let cfg = ActionClipConfig { clip: tiny_clip(), frames: 4, prompt };
        let vb = VarBuilder::from_tensors(weights(), DType::F32, &Device::Cpu);
        assert!(matches!(ActionClip::new(vb, &cfg), Err(Error::InvalidPrompt(_))), "{prompt:?}");
    }
}

#[test]
fn bad_tokens_are_rejected() {
    let m = model(&tiny_config(false, false, PostNetwork::MeanPool));
    let too_long = Tensor::zeros((1, 78), DType::U32, &Device::Cpu).unwrap();
    assert!(matches!(m.encode_text(&too_long), Err(Error::InputShape { what: "tokens", .. })));
    let out_of_vocab = Tensor::new(&[[5u32, 1000]], &Device::Cpu).unwrap();
    assert!(matches!(m.encode_text(&out_of_vocab), Err(Error::InputShape { what: "tokens", .. })));
}
