//! Checkpoints written by the official ActionCLIP code (tools/make_official_fixtures.py runs its
//! `clip/model.py` and `modules/Visual_Prompt.py` and saves as its `train.py` does): every head x
//! temporal shift x CLIP dtype loads through `ActionClip::load` and matches the official forward
//! within 1e-5, and our safetensors export of each loads back to the same outputs and keeps the
//! official head layout.
mod common;

use std::collections::{BTreeSet, HashMap};

use actionclip::{ActionClip, PostNetwork};
use candle_core::{DType, Device, Tensor};
use common::{assert_close, max_abs_diff, official};

/// The official heads, with the head each must be read as and whether its `visual_prompt` holds
/// the frame position embedding.
const HEADS: [(&str, PostNetwork, bool); 5] = [
    ("meanP", PostNetwork::MeanPool, false),
    ("Conv_1D", PostNetwork::Conv1d { reference_reshape: true }, true),
    ("LSTM", PostNetwork::Lstm, true),
    ("Transf", PostNetwork::Transformer { layers: 6 }, true),
    ("Transf_cls", PostNetwork::TransformerCls { layers: 6 }, true),
];

fn io() -> HashMap<String, Tensor> {
    candle_core::safetensors::load(official("io.safetensors"), &Device::Cpu)
        .expect("tests/fixtures/official/io.safetensors")
}

/// The official fusion model's keys (its state dict without DataParallel's `module.`).
fn official_head_keys(name: &str) -> BTreeSet<String> {
    let ckpt = official(name);
    let tensors = candle_core::pickle::read_all_with_key(&ckpt, Some("fusion_model_state_dict")).unwrap();
    tensors.into_iter().map(|(k, _)| k.strip_prefix("module.").expect("DataParallel prefix").to_string()).collect()
}

fn head_keys(model: &ActionClip) -> BTreeSet<String> {
    model.named_tensors().into_iter().filter_map(|(k, _)| k.strip_prefix("fusion_model.").map(str::to_string)).collect()
}

#[test]
fn every_official_checkpoint_matches_the_official_forward() {
    let io = io();
    let frames = &io["frames"];
    let tokens = io["tokens"].to_dtype(DType::U32).unwrap();
    let dir = tempfile::tempdir().unwrap();
    for (head, post, has_positions) in HEADS {
        for shift in ["plain", "tsm"] {
            let golden = &io[&format!("video.{head}.{shift}")];
            for dtype in ["f32", "f16"] {
                let name = format!("{head}_{shift}_{dtype}.pt");
                let (model, cfg) = ActionClip::load(official(&name), &Device::Cpu, DType::F32).unwrap();
                assert_eq!(cfg.prompt.post, post, "{name}");
                assert_eq!(cfg.prompt.temporal_shift, shift == "tsm", "{name}");
                let video = model.encode_video(frames).unwrap();
                assert_close(&format!("{name} video"), &video, golden);
                assert_close(&format!("{name} text"), &model.encode_text(&tokens).unwrap(), &io["text_features"]);

                let keys = head_keys(&model);
                assert_eq!(keys, official_head_keys(&name), "{name}: the head's names differ from the official layout");
                assert_eq!(keys.contains("frame_position_embeddings.weight"), has_positions, "{name}");

                let exported = dir.path().join(format!("{head}_{shift}_{dtype}.safetensors"));
                model.save_safetensors(&exported).unwrap();
                let (back, back_cfg) = ActionClip::load(&exported, &Device::Cpu, DType::F32).unwrap();
                assert_eq!(back_cfg, cfg, "{name}");
                assert_eq!(head_keys(&back), keys, "{name}: export");
                assert_eq!(max_abs_diff(&back.encode_video(frames).unwrap(), &video), 0.0, "{name}: export");
            }
        }
    }
}
