//! Parity with the PyTorch reference (tests/fixtures/tiny, made by tools/make_fixtures.py): image, text
//! and video features for every visual prompt, logits, loss and the zero-shot ensemble, in f32 on the
//! CPU, max abs difference <= 1e-5. The inference path and the differentiable training path are both
//! checked.
mod common;

use actionclip::{loss, model::ensemble_probabilities, ActionClip, PostNetwork};
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use common::*;

fn model(joint: bool, shift: bool, post: PostNetwork) -> ActionClip {
    let vb = VarBuilder::from_tensors(weights(), DType::F32, &Device::Cpu);
    ActionClip::new(vb, &tiny_config(joint, shift, post)).unwrap()
}

fn tokens(io: &std::collections::HashMap<String, Tensor>, key: &str) -> Tensor {
    io[key].to_dtype(DType::U32).unwrap()
}

/// Every visual prompt variant of the fixture, by its output key.
fn variants() -> Vec<(&'static str, bool, bool, PostNetwork)> {
    vec![
        ("video.meanP", false, false, PostNetwork::MeanPool),
        ("video.conv1d_time", false, false, PostNetwork::Conv1d { reference_reshape: false }),
        ("video.conv1d_reference", false, false, PostNetwork::Conv1d { reference_reshape: true }),
        ("video.lstm", false, false, PostNetwork::Lstm),
        ("video.transf", false, false, PostNetwork::Transformer { layers: 2 }),
        ("video.transf_cls", false, false, PostNetwork::TransformerCls { layers: 2 }),
        ("video.tsm_meanP", false, true, PostNetwork::MeanPool),
        ("video.tsm_transf", false, true, PostNetwork::Transformer { layers: 2 }),
        ("video.joint", true, false, PostNetwork::MeanPool),
    ]
}

#[test]
fn image_features_match_reference() {
    let io = io();
    let m = model(false, false, PostNetwork::MeanPool);
    let images = io["frames"].flatten_to(1).unwrap();
    for train in [false, true] {
        let ours = m.video_encoder().visual().forward_t(&images, None, train).unwrap();
        assert_close(&format!("image_features (train={train})"), &ours, &io["image_features"]);
    }
}

#[test]
fn text_features_match_reference() {
    let io = io();
    let m = model(false, false, PostNetwork::MeanPool);
    for train in [false, true] {
        let ours = m.encode_text_t(&tokens(&io, "tokens"), train).unwrap();
        assert_close(&format!("text_features (train={train})"), &ours, &io["text_features"]);
    }
    assert_close("zs_text_features", &m.encode_text(&tokens(&io, "zs_tokens")).unwrap(), &io["zs_text_features"]);
}

#[test]
fn video_features_match_reference_for_every_prompt() {
    let io = io();
    for (key, joint, shift, post) in variants() {
        let m = model(joint, shift, post);
        for train in [false, true] {
            let ours = m.encode_video_t(&io["frames"], train).unwrap();
            assert_close(&format!("{key} (train={train})"), &ours, &io[key]);
        }
    }
}

#[test]
fn logits_loss_and_ensemble_match_reference() {
    let io = io();
    let m = model(false, false, PostNetwork::Transformer { layers: 2 });
    let video = m.encode_video(&io["frames"]).unwrap();
    let text = m.encode_text(&tokens(&io, "tokens")).unwrap();
    let (v2t, t2v) = m.logits(&video, &text).unwrap();
    assert_close("logits_v2t", &v2t, &io["logits_v2t"]);
    assert_close("logits_t2v", &t2v, &io["logits_t2v"]);

    let labels: Vec<u32> = io["labels"].to_dtype(DType::U32).unwrap().to_vec1().unwrap();
    assert_eq!(labels, [0, 1, 0, 2], "the loss batch must repeat a label");
    let l = loss::symmetric_kl_loss(&v2t, &t2v, &labels).unwrap();
    assert_close("loss", &l.reshape(1).unwrap(), &io["loss"]);

    let out = m.forward_t(&io["frames"], &tokens(&io, "tokens"), Some(&labels), false).unwrap();
    assert_eq!(max_abs_diff(&out.video_embeds, &video), 0.0);
    assert_eq!(max_abs_diff(&out.text_embeds, &text), 0.0);
    assert_eq!(max_abs_diff(&out.logits_per_video, &v2t), 0.0);
    assert_eq!(max_abs_diff(&out.logits_per_text, &t2v), 0.0);
    assert_close("forward loss", &out.loss.unwrap().reshape(1).unwrap(), &io["loss"]);
    assert!(m.forward_t(&io["frames"], &tokens(&io, "tokens"), None, false).unwrap().loss.is_none());

    let zs_text =
        loss::normalize(&m.encode_text(&tokens(&io, "zs_tokens")).unwrap()).unwrap().reshape((2, 3, 64)).unwrap();
    let probs = ensemble_probabilities(&video, &zs_text).unwrap();
    assert_close("zs_probs", &probs, &io["zs_probs"]);
}
