//! `ActionClip::load` end to end: the same golden weights in the reference's `.pt` checkpoint format,
//! Hugging Face names and our own safetensors give the PyTorch reference's outputs.
mod common;

use actionclip::{ActionClip, PostNetwork};
use candle_core::{DType, Device};
use candle_nn::VarBuilder;
use common::*;

#[test]
fn actionclip_pt_checkpoint_loads_with_inferred_prompt() {
    let io = io();
    let (model, cfg) = ActionClip::load(tiny("actionclip_tsm_transf.pt"), &Device::Cpu, DType::F32).unwrap();
    assert!(cfg.prompt.temporal_shift, "temporal shift inferred from `.net.` names");
    assert_eq!(cfg.prompt.post, PostNetwork::Transformer { layers: 2 });
    assert_eq!(cfg.clip, tiny_clip());
    assert_close("pt video.tsm_transf", &model.encode_video(&io["frames"]).unwrap(), &io["video.tsm_transf"]);
    let tokens = io["tokens"].to_dtype(DType::U32).unwrap();
    assert_close("pt text_features", &model.encode_text(&tokens).unwrap(), &io["text_features"]);
}

#[test]
fn hugging_face_clip_loads_as_mean_pool_model() {
    let io = io();
    let (model, cfg) = ActionClip::load(tiny("hf_clip.safetensors"), &Device::Cpu, DType::F32).unwrap();
    assert_eq!(cfg.prompt.post, PostNetwork::MeanPool);
    assert_eq!(cfg.clip, tiny_clip());
    assert_close("hf video.meanP", &model.encode_video(&io["frames"]).unwrap(), &io["video.meanP"]);
    let tokens = io["tokens"].to_dtype(DType::U32).unwrap();
    assert_close("hf text_features", &model.encode_text(&tokens).unwrap(), &io["text_features"]);
}

#[test]
fn saved_safetensors_round_trip_bit_exact_for_every_head() {
    let io = io();
    let dir = tempfile::tempdir().unwrap();
    for post in [
        PostNetwork::MeanPool,
        PostNetwork::Conv1d { reference_reshape: false },
        PostNetwork::Lstm,
        PostNetwork::Transformer { layers: 2 },
        PostNetwork::TransformerCls { layers: 2 },
    ] {
        for shift in [false, true] {
            let cfg = tiny_config(false, shift, post);
            let model = ActionClip::new(VarBuilder::from_tensors(weights(), DType::F32, &Device::Cpu), &cfg).unwrap();
            let path = dir.path().join(format!("{}-{shift}.safetensors", post.reference_name()));
            model.save_safetensors(&path).unwrap();
            let (loaded, loaded_cfg) = ActionClip::load(&path, &Device::Cpu, DType::F32).unwrap();
            assert_eq!(loaded_cfg, cfg, "config restored from the file's metadata");
            let ours = model.encode_video(&io["frames"]).unwrap();
            let theirs = loaded.encode_video(&io["frames"]).unwrap();
            assert_eq!(max_abs_diff(&ours, &theirs), 0.0, "{post:?} shift={shift}");
            for ((n1, t1), (n2, t2)) in model.named_tensors().iter().zip(loaded.named_tensors().iter()) {
                assert_eq!(n1, n2);
                assert_eq!(max_abs_diff(t1, t2), 0.0, "{n1}");
            }
        }
    }
}

#[test]
fn joint_model_round_trips_through_a_run_directory() {
    let io = io();
    let dir = tempfile::tempdir().unwrap();
    let cfg = tiny_config(true, false, PostNetwork::MeanPool);
    let model = ActionClip::new(VarBuilder::from_tensors(weights(), DType::F32, &Device::Cpu), &cfg).unwrap();
    model.save_safetensors(dir.path().join("model.safetensors")).unwrap();
    let (loaded, loaded_cfg) = ActionClip::load(dir.path(), &Device::Cpu, DType::F32).unwrap();
    assert_eq!(loaded_cfg, cfg);
    assert_close("dir video.joint", &loaded.encode_video(&io["frames"]).unwrap(), &io["video.joint"]);
}

#[test]
fn half_precision_load_is_close() {
    // f16 weights and activations on the CPU: a smoke test of the half path, not a parity claim.
    let io = io();
    let (model, _) = ActionClip::load(tiny("actionclip_tsm_transf.pt"), &Device::Cpu, DType::F16).unwrap();
    let ours = model.encode_video(&io["frames"]).unwrap();
    assert_eq!(ours.dtype(), DType::F16);
    let d = max_abs_diff(&ours, &io["video.tsm_transf"]);
    assert!(d < 0.1, "f16 video features differ by {d}");
}

#[test]
fn mis_shaped_or_missing_keys_name_the_key() {
    let dir = tempfile::tempdir().unwrap();
    // The golden CLIP weights, converted from Hugging Face names to canonical ones.
    let openai = actionclip::weights::load(tiny("hf_clip.safetensors")).unwrap().tensors;

    let mut bad = openai.clone();
    bad.insert("visual.ln_post.weight".into(), candle_core::Tensor::zeros(127, DType::F16, &Device::Cpu).unwrap());
    let path = dir.path().join("bad_shape.safetensors");
    actionclip::weights::save_safetensors(&bad, None, &path).unwrap();
    match ActionClip::load(&path, &Device::Cpu, DType::F32) {
        Err(actionclip::Error::KeyShape { key, found, expected }) => {
            assert_eq!((key.as_str(), found, expected), ("visual.ln_post.weight", vec![127], vec![128]));
        }
        other => panic!("expected KeyShape, got {:?}", other.err()),
    }

    let mut missing = openai;
    missing.remove("visual.ln_post.bias");
    let path = dir.path().join("missing.safetensors");
    actionclip::weights::save_safetensors(&missing, None, &path).unwrap();
    let err = ActionClip::load(&path, &Device::Cpu, DType::F32).err().expect("missing key must fail");
    assert!(matches!(&err, actionclip::Error::MissingKey { key, .. } if key == "visual.ln_post.bias"), "{err}");
    assert!(err.to_string().contains("visual.ln_post.bias"));
}

#[test]
fn unknown_layout_lists_what_was_found() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("other.safetensors");
    let t = candle_core::Tensor::zeros(3, DType::F32, &Device::Cpu).unwrap();
    candle_core::safetensors::save(
        &std::collections::HashMap::from([("encoder.layer.0.weight".to_string(), t)]),
        &path,
    )
    .unwrap();
    let err = ActionClip::load(&path, &Device::Cpu, DType::F32).err().expect("unknown layout must fail");
    assert!(matches!(err, actionclip::Error::UnknownFormat { .. }), "{err}");
    assert!(err.to_string().contains("encoder.layer.0.weight"), "{err}");
    let err = ActionClip::load(dir.path().join("nope.pt"), &Device::Cpu, DType::F32).err().unwrap();
    assert!(err.to_string().contains("nope.pt"), "{err}");
}
