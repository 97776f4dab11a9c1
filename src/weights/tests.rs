//! Unit tests of inference, validation and the VarBuilder / VarMap helpers on in-memory maps.
use std::collections::HashMap;
use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarMap;

use super::*;
use crate::{ActionClip, ActionClipConfig, ClipConfig, PostNetwork, TextConfig, VisionConfig, VisualPrompt};

fn tiny() -> ClipConfig {
    ClipConfig {
        vision: VisionConfig { width: 64, layers: 2, heads: 1, patch_size: 8, image_size: 32 },
        text: TextConfig { width: 64, layers: 1, heads: 1, vocab_size: 50, context_length: 8 },
        embed_dim: 32,
    }
}

fn config(post: PostNetwork, joint: bool, frames: usize) -> ActionClipConfig {
    ActionClipConfig { clip: tiny(), frames, prompt: VisualPrompt { joint, temporal_shift: false, post } }
}

fn zeros_for(cfg: &ActionClipConfig, dtype: DType) -> HashMap<String, Tensor> {
    ActionClip::expected_shapes(cfg)
        .unwrap()
        .into_iter()
        .map(|(k, s)| {
            let t = Tensor::zeros(s.as_slice(), dtype, &Device::Cpu).unwrap();
            (k, t)
        })
        .collect()
}

fn loaded(tensors: HashMap<String, Tensor>) -> LoadedWeights {
    LoadedWeights {
        tensors,
        format: Format::OpenAiSafetensors,
        temporal_shift: false,
        config: None,
        path: PathBuf::from("test.safetensors"),
        dropped: vec![],
    }
}

#[test]
fn every_head_is_inferred_back_from_its_keys() {
    let cases = [
        (PostNetwork::MeanPool, false, 8, None),
        (PostNetwork::Conv1d { reference_reshape: true }, false, 8, None),
        (PostNetwork::Lstm, false, 8, None),
        (PostNetwork::Transformer { layers: 3 }, false, 8, None),
        (PostNetwork::TransformerCls { layers: 2 }, false, 5, Some(5)),
        (PostNetwork::MeanPool, true, 6, Some(6)),
    ];
    for (post, joint, frames, inferred_frames) in cases {
        let cfg = config(post, joint, frames);
        let w = loaded(zeros_for(&cfg, DType::F32));
        assert_eq!(w.inferred_post_network().unwrap(), post, "{post:?}");
        assert_eq!(w.inferred_frames(), inferred_frames, "{post:?}");
        let inferred = w.infer_config(frames).unwrap();
        assert_eq!(inferred, cfg, "{post:?}");
        check_shapes(&w.tensors, &ActionClip::expected_shapes(&inferred).unwrap()).unwrap();
    }
}

#[test]
fn the_references_unused_frame_positions_do_not_change_the_head() {
    let positions = || Tensor::zeros((77, 32), DType::F32, &Device::Cpu).unwrap();
    // An OpenAI-named file without a config comes from the reference's world: its Conv_1D takes the reference reshape.
    for post in
        [PostNetwork::Conv1d { reference_reshape: true }, PostNetwork::Lstm, PostNetwork::TransformerCls { layers: 2 }]
    {
        let mut tensors = zeros_for(&config(post, false, 8), DType::F32);
        tensors.insert("fusion_model.frame_position_embeddings.weight".into(), positions());
        assert_eq!(loaded(tensors).inferred_post_network().unwrap(), post, "{post:?}");
    }
    let mut tensors = zeros_for(&config(PostNetwork::MeanPool, false, 8), DType::F32);
    tensors.insert("fusion_model.frame_position_embeddings.weight".into(), positions());
    let err = loaded(tensors).inferred_post_network().unwrap_err();
    assert!(matches!(err, Error::UnknownHead { .. }), "{err}");
    let err = err.to_string();
    assert!(err.contains("fusion_model.frame_position_embeddings.weight") && err.contains("test.safetensors"), "{err}");
}

#[test]
fn expected_shapes_agree_with_from_shapes() {
    let cfg = config(PostNetwork::MeanPool, false, 8);
    let shapes: HashMap<String, Vec<usize>> = ActionClip::expected_shapes(&cfg).unwrap().into_iter().collect();
    assert_eq!(ClipConfig::from_shapes(&shapes).unwrap(), tiny());
    assert_eq!(shapes["logit_scale"], Vec::<usize>::new());
    assert_eq!(shapes["visual.proj"], vec![64, 32]);
}

/// OpenAI CLIP names and shapes of both towers, written out by hand (independent of [`ActionClip::expected_shapes`]).
fn openai_shapes(c: &ClipConfig) -> Vec<(String, Vec<usize>)> {
    let block = |out: &mut Vec<(String, Vec<usize>)>, p: &str, w: usize| {
        for (n, s) in [
            ("ln_1.weight", vec![w]),
            ("ln_1.bias", vec![w]),
            ("attn.in_proj_weight", vec![3 * w, w]),
            ("attn.in_proj_bias", vec![3 * w]),
            ("attn.out_proj.weight", vec![w, w]),
            ("attn.out_proj.bias", vec![w]),
            ("ln_2.weight", vec![w]),
            ("ln_2.bias", vec![w]),
            ("mlp.c_fc.weight", vec![4 * w, w]),
            ("mlp.c_fc.bias", vec![4 * w]),
            ("mlp.c_proj.weight", vec![w, 4 * w]),
            ("mlp.c_proj.bias", vec![w]),
        ] {
            out.push((format!("{p}{n}"), s));
        }
    };
    let (w, tw, e) = (c.vision.width, c.text.width, c.embed_dim);
    let p = c.vision.patch_size;
    let g = c.vision.image_size / p;
    let mut out = vec![
        ("visual.conv1.weight".to_string(), vec![w, 3, p, p]),
        ("visual.class_embedding".into(), vec![w]),
        ("visual.positional_embedding".into(), vec![g * g + 1, w]),
        ("visual.ln_pre.weight".into(), vec![w]),
        ("visual.ln_pre.bias".into(), vec![w]),
        ("visual.ln_post.weight".into(), vec![w]),
        ("visual.ln_post.bias".into(), vec![w]),
        ("visual.proj".into(), vec![w, e]),
        ("token_embedding.weight".into(), vec![c.text.vocab_size, tw]),
        ("positional_embedding".into(), vec![c.text.context_length, tw]),
        ("ln_final.weight".into(), vec![tw]),
        ("ln_final.bias".into(), vec![tw]),
        ("text_projection".into(), vec![tw, e]),
        ("logit_scale".into(), vec![]),
    ];
    for i in 0..c.vision.layers {
        block(&mut out, &format!("visual.transformer.resblocks.{i}."), w);
    }
    for i in 0..c.text.layers {
        block(&mut out, &format!("transformer.resblocks.{i}."), tw);
    }
    out
}

#[test]
fn full_size_vit_b16_shapes_give_the_preset() {
    let cfg = ActionClipConfig {
        clip: ClipConfig::vit_b16(),
        frames: 8,
        prompt: VisualPrompt { joint: false, temporal_shift: false, post: PostNetwork::Transformer { layers: 6 } },
    };
    let tensors = zeros_for(&cfg, DType::F16);
    // The hand-written OpenAI list agrees with the crate's expectations for the CLIP part.
    for (k, s) in openai_shapes(&ClipConfig::vit_b16()) {
        assert_eq!(tensors[&k].dims(), s.as_slice(), "{k}");
    }
    let mut w = loaded(tensors);
    w.path = PathBuf::from("vit_b16.safetensors");
    assert_eq!(w.clip_config().unwrap(), ClipConfig::vit_b16());
    assert_eq!(w.action_clip_config().unwrap(), cfg);
}

#[test]
fn shape_errors_name_key_found_and_expected() {
    let clip_shapes = openai_shapes(&tiny());
    let clip = zeros_for(&config(PostNetwork::MeanPool, false, 8), DType::F32);
    let mut expected = clip_shapes.clone();
    expected.iter_mut().find(|(k, _)| k == "visual.proj").unwrap().1 = vec![32, 64];
    let err = check_shapes(&clip, &expected).unwrap_err();
    match &err {
        Error::KeyShape { key, found, expected } => {
            assert_eq!(key, "visual.proj");
            assert_eq!(found, &vec![64, 32]);
            assert_eq!(expected, &vec![32, 64]);
        }
        other => panic!("expected KeyShape, got {other:?}"),
    }
    assert!(err.to_string().contains("visual.proj has shape [64, 32], expected [32, 64]"), "{err}");

    let mut partial = clip.clone();
    partial.remove("visual.transformer.resblocks.1.ln_2.weight");
    let err = check_shapes(&partial, &clip_shapes).unwrap_err();
    match &err {
        Error::MissingKey { key, hint: Some(hint) } => {
            assert_eq!(key, "visual.transformer.resblocks.1.ln_2.weight");
            assert!(hint.contains("visual.transformer.resblocks.0.ln_2.weight"), "{hint}");
        }
        other => panic!("expected MissingKey with a hint, got {other:?}"),
    }
    let err =
        check_shapes(&clip, &ActionClip::expected_shapes(&config(PostNetwork::Lstm, false, 8)).unwrap()).unwrap_err();
    assert!(
        err.to_string().contains("fusion_model.lstm_visual.weight_ih_l0")
            && err.to_string().contains("no fusion_model"),
        "{err}"
    );
}

#[test]
fn our_conv1d_keeps_the_configs_choice() {
    let cfg = config(PostNetwork::Conv1d { reference_reshape: false }, false, 8);
    let mut w = loaded(zeros_for(&cfg, DType::F32));
    w.format = Format::ActionClipSafetensors;
    assert_eq!(w.inferred_post_network().unwrap(), PostNetwork::Conv1d { reference_reshape: false });
    w.format = Format::ActionClipCheckpoint;
    assert_eq!(w.inferred_post_network().unwrap(), PostNetwork::Conv1d { reference_reshape: true });
    w.config = Some(cfg.clone());
    assert_eq!(w.post_network().unwrap(), PostNetwork::Conv1d { reference_reshape: false });
    assert_eq!(w.action_clip_config().unwrap(), cfg);
}

#[test]
fn ambiguous_or_broken_heads_are_errors() {
    let mut tensors = zeros_for(&config(PostNetwork::Lstm, false, 8), DType::F32);
    tensors.extend(zeros_for(&config(PostNetwork::Conv1d { reference_reshape: true }, false, 8), DType::F32));
    let err = loaded(tensors).inferred_post_network().unwrap_err();
    assert!(matches!(err, Error::UnknownHead { .. }), "{err}");
    let err = err.to_string();
    assert!(err.contains("Conv_1D") && err.contains("LSTM"), "{err}");

    let mut tensors = zeros_for(&config(PostNetwork::Transformer { layers: 3 }, false, 8), DType::F32);
    tensors.retain(|k, _| !k.starts_with("fusion_model.transformer.resblocks.1."));
    assert!(matches!(loaded(tensors.clone()).inferred_post_network(), Err(Error::Checkpoint { .. })));
    let err = loaded(tensors).inferred_post_network().unwrap_err().to_string();
    assert!(err.contains("fusion_model.transformer.resblocks.") && err.contains("0..2"), "{err}");

    let mut tensors = zeros_for(&config(PostNetwork::MeanPool, false, 8), DType::F32);
    tensors.insert("fusion_model.mystery.weight".into(), Tensor::zeros(3, DType::F32, &Device::Cpu).unwrap());
    let err = loaded(tensors).inferred_post_network().unwrap_err().to_string();
    assert!(err.contains("fusion_model.mystery.weight"), "{err}");
}

#[test]
fn missing_key_hints() {
    let keys: Vec<String> =
        ["visual.ln_pre.weight", "visual.ln_pre.bias", "visual.ln_post.weight"].iter().map(|s| s.to_string()).collect();
    let hint = check::similar_keys_hint("visual.ln_post.bias", keys.iter()).unwrap();
    assert_eq!(hint, "keys under visual.ln_post.: visual.ln_post.weight");
    let hint = check::similar_keys_hint("fusion_model.ln_pre.bias", keys.iter().chain(&["fusion_model.x".to_string()]));
    assert_eq!(hint.as_deref(), Some("keys with the same ending: visual.ln_pre.bias"));
    let hint = check::similar_keys_hint("visual.conv1.weight", keys.iter()).unwrap();
    assert!(hint.contains("keys under visual."), "{hint}");
    let hint = check::similar_keys_hint("fusion_model.shift.weight", keys.iter()).unwrap();
    assert!(hint.contains("no fusion_model"), "{hint}");
    assert_eq!(check::similar_keys_hint("x", std::iter::empty()).as_deref(), Some("the checkpoint holds no tensors"));
}

#[test]
fn var_builder_casts_on_access() -> Result<()> {
    let mut tensors = HashMap::new();
    let v = Tensor::new(&[1.5f32, -2.25, 3.0], &Device::Cpu)?.to_dtype(DType::F16)?;
    tensors.insert("a.weight".to_string(), v);
    let w = loaded(tensors);
    let vb = w.var_builder(DType::F32, &Device::Cpu);
    let got = vb.pp("a").get(3, "weight")?;
    assert_eq!(got.dtype(), DType::F32);
    assert_eq!(got.to_vec1::<f32>()?, vec![1.5, -2.25, 3.0]);
    assert!(vb.get(4, "a.weight").is_err());
    Ok(())
}

#[test]
fn var_maps_from_and_into_checkpoints() -> Result<()> {
    let mut tensors = HashMap::new();
    tensors.insert("a".to_string(), Tensor::new(&[1f32, 2.], &Device::Cpu)?.to_dtype(DType::F16)?);
    tensors.insert("ids".to_string(), Tensor::new(&[1i64, 2], &Device::Cpu)?);
    let w = loaded(tensors);

    let vm = w.to_var_map(DType::F32, &Device::Cpu)?;
    let vars = vm.data().lock().unwrap();
    assert_eq!(vars.len(), 1, "integer buffers are not variables");
    assert_eq!(vars["a"].dtype(), DType::F32);
    drop(vars);

    let target = VarMap::new();
    let vb = candle_nn::VarBuilder::from_varmap(&target, DType::F32, &Device::Cpu);
    vb.get_with_hints(2, "a", candle_nn::Init::Const(0.))?;
    vb.get_with_hints(3, "new_head", candle_nn::Init::Const(7.))?;
    let missing = w.copy_into_var_map(&target)?;
    assert_eq!(missing, vec!["new_head".to_string()]);
    let a = target.data().lock().unwrap()["a"].as_tensor().to_vec1::<f32>()?;
    assert_eq!(a, vec![1., 2.]);

    let wrong = VarMap::new();
    candle_nn::VarBuilder::from_varmap(&wrong, DType::F32, &Device::Cpu).get_with_hints(
        5,
        "a",
        candle_nn::Init::Const(0.),
    )?;
    match w.copy_into_var_map(&wrong) {
        Err(Error::KeyShape { key, found, expected }) => {
            assert_eq!((key.as_str(), found, expected), ("a", vec![2], vec![5]));
        }
        other => panic!("expected KeyShape, got {other:?}"),
    }
    Ok(())
}

#[test]
fn describe_keys_is_short() {
    let keys: Vec<String> = (0..15).map(|i| format!("k{i:02}")).collect();
    let d = describe_keys(keys.iter().map(String::as_str));
    assert!(d.starts_with("15 tensors; first keys: k00, k01"), "{d}");
    assert!(d.ends_with(", ..."), "{d}");
}
