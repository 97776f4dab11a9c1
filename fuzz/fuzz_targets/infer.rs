//! Config inference from a state dict with arbitrary names and shapes. The input picks a starting state dict
//! (the names and shapes a tiny model of one head reads, or none) and edits it: keys removed, renamed,
//! reshaped, added with any name. Tensors are zero-stride views of one zero, so any declared shape costs no
//! memory. The result goes through `clip_config`, `post_network`, `frames` and `infer_config`; an inferred
//! config goes through `ActionClip::expected_shapes`, and when every expected shape is present and the
//! tensors are small, a model is built from them.
//!
//! A finding is a panic, abort, hang or runaway allocation; a typed `Err` (missing key, bad shape, unknown
//! head, invalid config) is the correct answer.
#![no_main]

use std::collections::HashMap;
use std::path::PathBuf;

use actionclip::weights::{Format, LoadedWeights};
use actionclip::{ActionClip, ActionClipConfig, ClipConfig, PostNetwork, VisualPrompt};
use arbitrary::Arbitrary;
use candle_core::{DType, Device, Tensor};
use libfuzzer_sys::fuzz_target;

/// Largest state dict (in elements) that a model is built from.
const MAX_BUILD_ELEMENTS: usize = 1 << 18;

#[derive(Arbitrary, Debug)]
enum Head {
    None,
    MeanPool,
    Conv1d,
    Lstm,
    Transformer,
    TransformerCls,
}

#[derive(Arbitrary, Debug)]
enum Edit {
    Remove(u16),
    Rename(u16, String),
    Reshape(u16, Vec<u16>),
    Insert(String, Vec<u16>),
}

#[derive(Arbitrary, Debug)]
struct Input {
    head: Head,
    joint: bool,
    temporal_shift: bool,
    format: u8,
    default_frames: u8,
    edits: Vec<Edit>,
}

/// The names and shapes a tiny model with `head` reads, with a joint prompt when `joint` and the head is
/// MeanPool (the only head a joint prompt takes).
fn starting_shapes(head: &Head, joint: bool) -> Vec<(String, Vec<usize>)> {
    let post = match head {
        Head::None => return Vec::new(),
        Head::MeanPool => PostNetwork::MeanPool,
        Head::Conv1d => PostNetwork::Conv1d { reference_reshape: true },
        Head::Lstm => PostNetwork::Lstm,
        Head::Transformer => PostNetwork::Transformer { layers: 1 },
        Head::TransformerCls => PostNetwork::TransformerCls { layers: 1 },
    };
    let prompt = VisualPrompt { joint: joint && post == PostNetwork::MeanPool, temporal_shift: false, post };
    let config = ActionClipConfig { clip: ClipConfig::tiny(), frames: 4, prompt };
    ActionClip::expected_shapes(&config).expect("a tiny config's shapes")
}

/// At most four dimensions, so the element count fits a `usize`.
fn dims(raw: &[u16]) -> Vec<usize> {
    raw.iter().take(4).map(|&d| usize::from(d)).collect()
}

fn apply(shapes: &mut Vec<(String, Vec<usize>)>, edit: Edit) {
    let at = |i: u16| usize::from(i) % shapes.len().max(1);
    match edit {
        Edit::Remove(i) if !shapes.is_empty() => {
            shapes.swap_remove(at(i));
        }
        Edit::Rename(i, name) if !shapes.is_empty() => {
            let i = at(i);
            shapes[i].0 = name;
        }
        Edit::Reshape(i, raw) if !shapes.is_empty() => {
            let i = at(i);
            shapes[i].1 = dims(&raw);
        }
        Edit::Insert(name, raw) => shapes.push((name, dims(&raw))),
        _ => {}
    }
}

const FORMATS: [Format; 7] = [
    Format::OpenAiSafetensors,
    Format::ActionClipSafetensors,
    Format::HuggingFaceSafetensors,
    Format::OpenAiPt,
    Format::HuggingFacePt,
    Format::ActionClipCheckpoint,
    Format::TorchScript,
];

fuzz_target!(|input: Input| {
    let mut shapes = starting_shapes(&input.head, input.joint);
    for edit in input.edits {
        apply(&mut shapes, edit);
    }
    let zero = Tensor::zeros((), DType::F32, &Device::Cpu).expect("a scalar");
    let tensors: HashMap<String, Tensor> =
        shapes.into_iter().map(|(name, dims)| (name, zero.broadcast_as(dims).expect("a zero-stride view"))).collect();
    let weights = LoadedWeights {
        tensors,
        format: FORMATS[usize::from(input.format) % FORMATS.len()],
        temporal_shift: input.temporal_shift,
        config: None,
        path: PathBuf::from("fuzz.safetensors"),
        dropped: Vec::new(),
    };
    let _ = weights.clip_config();
    let _ = weights.post_network();
    let _ = weights.frames();
    let Ok(config) = weights.infer_config(usize::from(input.default_frames)) else { return };
    let Ok(expected) = ActionClip::expected_shapes(&config) else { return };
    let complete = expected.iter().all(|(k, s)| weights.tensors.get(k).is_some_and(|t| t.dims() == s.as_slice()));
    let elements = weights.tensors.values().fold(0usize, |n, t| n.saturating_add(t.elem_count()));
    if complete && elements <= MAX_BUILD_ELEMENTS {
        let _ = ActionClip::new(weights.var_builder(DType::F32, &Device::Cpu), &config);
    }
});
