//! Checkpoint formats: every naming users hold reads into the same canonical tensors, bit for bit.
//!
//! PyTorch zip files are written here with a small pickle writer that emits what `torch.save` (and
//! TorchScript) emit; the golden fixtures under `tests/fixtures/tiny/` come from real PyTorch.
use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use actionclip::weights::{self, Format, LoadedWeights};
use actionclip::{
    ActionClip, ActionClipConfig, ClipConfig, Error, PostNetwork, TextConfig, VisionConfig, VisualPrompt,
};
use candle_core::{DType, Device, Tensor};

// ---------------------------------------------------------------------------------------------------------
// Test state dicts

fn tiny_clip() -> ClipConfig {
    ClipConfig {
        vision: VisionConfig { width: 64, layers: 2, heads: 1, patch_size: 8, image_size: 32 },
        text: TextConfig { width: 64, layers: 2, heads: 1, vocab_size: 100, context_length: 16 },
        embed_dim: 32,
    }
}

fn block(out: &mut Vec<(String, Vec<usize>)>, p: &str, w: usize) {
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
}

/// OpenAI CLIP names and shapes, written out by hand (independent of the crate's `ActionClip::expected_shapes`).
fn openai_shapes(c: &ClipConfig) -> Vec<(String, Vec<usize>)> {
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

/// The `Transf` head (2 blocks) under the reference's module names, without the `fusion_model.` prefix.
fn transf_head_shapes(d: usize) -> Vec<(String, Vec<usize>)> {
    let mut out = vec![("frame_position_embeddings.weight".to_string(), vec![77, d])];
    for i in 0..2 {
        block(&mut out, &format!("transformer.resblocks.{i}."), d);
    }
    out
}

fn random(shapes: &[(String, Vec<usize>)], dtype: DType, seed: u64) -> Vec<(String, Tensor)> {
    // Deterministic, distinct values per tensor without relying on candle's RNG.
    let mut state = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    shapes
        .iter()
        .map(|(k, s)| {
            let n: usize = s.iter().product();
            let data: Vec<f32> = (0..n)
                .map(|_| {
                    state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                    ((state >> 33) as f32 / (1u64 << 31) as f32) * 2.0 - 1.0
                })
                .collect();
            let t = Tensor::from_vec(data, s.as_slice(), &Device::Cpu).unwrap().to_dtype(dtype).unwrap();
            (k.clone(), t)
        })
        .collect()
}

fn bits(t: &Tensor) -> (DType, Vec<usize>, Vec<u64>) {
    let flat = t.flatten_all().unwrap();
    let v: Vec<u64> = match t.dtype() {
        DType::F16 => flat.to_vec1::<half::f16>().unwrap().iter().map(|x| x.to_bits() as u64).collect(),
        DType::BF16 => flat.to_vec1::<half::bf16>().unwrap().iter().map(|x| x.to_bits() as u64).collect(),
        DType::F32 => flat.to_vec1::<f32>().unwrap().iter().map(|x| x.to_bits() as u64).collect(),
        DType::F64 => flat.to_vec1::<f64>().unwrap().iter().map(|x| x.to_bits()).collect(),
        DType::I64 => flat.to_vec1::<i64>().unwrap().iter().map(|x| *x as u64).collect(),
        other => panic!("dtype {other:?} not handled in the test"),
    };
    (t.dtype(), t.dims().to_vec(), v)
}

fn assert_same_tensor(key: &str, a: &Tensor, b: &Tensor) {
    let (da, sa, va) = bits(a);
    let (db, sb, vb) = bits(b);
    assert_eq!((da, &sa), (db, &sb), "{key}: dtype/shape differ");
    assert!(va == vb, "{key}: values differ");
}

fn assert_same_maps(a: &HashMap<String, Tensor>, b: &HashMap<String, Tensor>) {
    let mut ka: Vec<_> = a.keys().collect();
    let mut kb: Vec<_> = b.keys().collect();
    ka.sort();
    kb.sort();
    assert_eq!(ka, kb, "key sets differ");
    for (k, t) in a {
        assert_same_tensor(k, t, &b[k]);
    }
}

fn to_map(v: &[(String, Tensor)]) -> HashMap<String, Tensor> {
    v.iter().cloned().collect()
}

// ---------------------------------------------------------------------------------------------------------
// Hugging Face names, written as an explicit inverse of the OpenAI names (independent of the crate's mapping)

fn openai_to_hf(entries: &[(String, Tensor)]) -> Vec<(String, Tensor)> {
    fn block_name(tail: &str) -> String {
        let table = [
            ("ln_1.", "layer_norm1."),
            ("ln_2.", "layer_norm2."),
            ("mlp.c_fc.", "mlp.fc1."),
            ("mlp.c_proj.", "mlp.fc2."),
            ("attn.out_proj.", "self_attn.out_proj."),
        ];
        for (oa, hf) in table {
            if let Some(rest) = tail.strip_prefix(oa) {
                return format!("{hf}{rest}");
            }
        }
        panic!("unexpected block key {tail}")
    }
    let mut out = Vec::new();
    for (k, t) in entries {
        let (tower, rest) = if let Some(r) = k.strip_prefix("visual.transformer.resblocks.") {
            ("vision_model", Some(r))
        } else if let Some(r) = k.strip_prefix("transformer.resblocks.") {
            ("text_model", Some(r))
        } else {
            ("", None)
        };
        if let Some(rest) = rest {
            let (i, tail) = rest.split_once('.').unwrap();
            let layer = format!("{tower}.encoder.layers.{i}.");
            if let Some(wb) = tail.strip_prefix("attn.in_proj_") {
                let wb = if wb == "weight" { "weight" } else { "bias" };
                let n = t.dim(0).unwrap() / 3;
                for (j, part) in ["q_proj", "k_proj", "v_proj"].iter().enumerate() {
                    out.push((
                        format!("{layer}self_attn.{part}.{wb}"),
                        t.narrow(0, j * n, n).unwrap().contiguous().unwrap(),
                    ));
                }
            } else {
                out.push((format!("{layer}{}", block_name(tail)), t.clone()));
            }
            continue;
        }
        let (name, transpose) = match k.as_str() {
            "visual.conv1.weight" => ("vision_model.embeddings.patch_embedding.weight".to_string(), false),
            "visual.class_embedding" => ("vision_model.embeddings.class_embedding".into(), false),
            "visual.positional_embedding" => ("vision_model.embeddings.position_embedding.weight".into(), false),
            "visual.ln_pre.weight" => ("vision_model.pre_layrnorm.weight".into(), false),
            "visual.ln_pre.bias" => ("vision_model.pre_layrnorm.bias".into(), false),
            "visual.ln_post.weight" => ("vision_model.post_layernorm.weight".into(), false),
            "visual.ln_post.bias" => ("vision_model.post_layernorm.bias".into(), false),
            "visual.proj" => ("visual_projection.weight".into(), true),
            "token_embedding.weight" => ("text_model.embeddings.token_embedding.weight".into(), false),
            "positional_embedding" => ("text_model.embeddings.position_embedding.weight".into(), false),
            "ln_final.weight" => ("text_model.final_layer_norm.weight".into(), false),
            "ln_final.bias" => ("text_model.final_layer_norm.bias".into(), false),
            "text_projection" => ("text_projection.weight".into(), true),
            "logit_scale" => ("logit_scale".into(), false),
            other => panic!("unexpected key {other}"),
        };
        let t = if transpose { t.t().unwrap().contiguous().unwrap() } else { t.clone() };
        out.push((name, t));
    }
    // Buffers transformers checkpoints carry; they must be dropped.
    let ids = Tensor::arange(0i64, 16, &Device::Cpu).unwrap().unsqueeze(0).unwrap();
    out.push(("text_model.embeddings.position_ids".into(), ids));
    out
}

fn write_st(path: &Path, entries: &[(String, Tensor)]) {
    let map: HashMap<String, Tensor> = to_map(entries);
    candle_core::safetensors::save(&map, path).unwrap();
}

// ---------------------------------------------------------------------------------------------------------
// A minimal pickle writer producing what torch.save / torch.jit.save write

#[derive(Default)]
struct Pickle {
    buf: Vec<u8>,
    storages: Vec<Vec<u8>>,
}

enum Node {
    Tensor(Tensor),
    Module(String, Vec<(String, Node)>),
    Int(i64),
    Bool(bool),
}

impl Pickle {
    fn new() -> Self {
        Self { buf: vec![0x80, 2], storages: vec![] }
    }
    fn op(&mut self, b: u8) {
        self.buf.push(b);
    }
    fn str(&mut self, s: &str) {
        self.op(b'X');
        self.buf.extend((s.len() as u32).to_le_bytes());
        self.buf.extend(s.as_bytes());
    }
    fn int(&mut self, v: i64) {
        if (0..256).contains(&v) {
            self.op(b'K');
            self.buf.push(v as u8);
        } else {
            self.op(b'J');
            self.buf.extend((v as i32).to_le_bytes());
        }
    }
    fn global(&mut self, module: &str, name: &str) {
        self.op(b'c');
        self.buf.extend(format!("{module}\n{name}\n").as_bytes());
    }
    fn ints(&mut self, v: &[usize]) {
        self.op(b'(');
        for &x in v {
            self.int(x as i64);
        }
        self.op(b't');
    }
    fn ordered_dict(&mut self) {
        self.global("collections", "OrderedDict");
        self.op(b')');
        self.op(b'R');
    }
    fn tensor(&mut self, t: &Tensor) {
        let (dtype, _, v) = bits(t);
        let (class, size) = match dtype {
            DType::F16 => ("HalfStorage", 2),
            DType::F32 => ("FloatStorage", 4),
            DType::I64 => ("LongStorage", 8),
            other => panic!("{other:?}"),
        };
        let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()[..size].to_vec()).collect();
        let key = self.storages.len().to_string();
        self.storages.push(bytes);
        let dims = t.dims().to_vec();
        let mut strides = vec![1usize; dims.len()];
        for i in (0..dims.len().saturating_sub(1)).rev() {
            strides[i] = strides[i + 1] * dims[i + 1];
        }
        self.global("torch._utils", "_rebuild_tensor_v2");
        self.op(b'(');
        self.op(b'(');
        self.str("storage");
        self.global("torch", class);
        self.str(&key);
        self.str("cpu");
        self.int(t.elem_count() as i64);
        self.op(b't');
        self.op(b'Q');
        self.int(0);
        self.ints(&dims);
        self.ints(&strides);
        self.op(0x89);
        self.ordered_dict();
        self.op(b't');
        self.op(b'R');
    }
    /// An OrderedDict state dict of tensors.
    fn state_dict(&mut self, entries: &[(String, Tensor)]) {
        self.ordered_dict();
        self.op(b'(');
        for (k, t) in entries {
            self.str(k);
            self.tensor(t);
        }
        self.op(b'u');
    }
    /// A TorchScript module object: GLOBAL, EMPTY_TUPLE, NEWOBJ, attribute dict, BUILD.
    fn node(&mut self, node: &Node) {
        match node {
            Node::Tensor(t) => self.tensor(t),
            Node::Int(i) => self.int(*i),
            Node::Bool(b) => self.op(if *b { 0x88 } else { 0x89 }),
            Node::Module(class, attrs) => {
                self.global("__torch__.model", class);
                self.op(b')');
                self.op(0x81);
                self.op(b'}');
                self.op(b'(');
                for (k, v) in attrs {
                    self.str(k);
                    self.node(v);
                }
                self.op(b'u');
                self.op(b'b');
            }
        }
    }
    fn stop(&mut self) {
        self.op(b'.');
    }
}

fn write_zip(path: &Path, root: &str, pickle: &Pickle, extra: &[(&str, &[u8])]) {
    use zip::write::SimpleFileOptions;
    let file = std::fs::File::create(path).unwrap();
    let mut zip = zip::ZipWriter::new(file);
    let opts = SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    zip.start_file(format!("{root}/data.pkl"), opts).unwrap();
    zip.write_all(&pickle.buf).unwrap();
    zip.start_file(format!("{root}/byteorder"), opts).unwrap();
    zip.write_all(b"little").unwrap();
    for (i, s) in pickle.storages.iter().enumerate() {
        zip.start_file(format!("{root}/data/{i}"), opts).unwrap();
        zip.write_all(s).unwrap();
    }
    for (name, bytes) in extra {
        zip.start_file(format!("{root}/{name}"), opts).unwrap();
        zip.write_all(bytes).unwrap();
    }
    zip.start_file(format!("{root}/version"), opts).unwrap();
    zip.write_all(b"3\n").unwrap();
    zip.finish().unwrap();
}

/// `torch.save({"epoch": 3, "model_state_dict": clip, "fusion_model_state_dict": fusion, "optimizer_state_dict": {}})`
fn write_actionclip_checkpoint(path: &Path, clip: &[(String, Tensor)], fusion: &[(String, Tensor)]) {
    let mut p = Pickle::new();
    p.op(b'}');
    p.op(b'(');
    p.str("epoch");
    p.int(3);
    p.str("model_state_dict");
    p.state_dict(clip);
    p.str("fusion_model_state_dict");
    p.state_dict(fusion);
    p.str("optimizer_state_dict");
    p.op(b'}');
    p.op(b'u');
    p.stop();
    write_zip(path, "last_model", &p, &[]);
}

fn tmp() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

// ---------------------------------------------------------------------------------------------------------
// Tests

#[test]
fn openai_and_hugging_face_safetensors_read_the_same() {
    let dir = tmp();
    let openai = random(&openai_shapes(&tiny_clip()), DType::F16, 1);
    let oa_path = dir.path().join("openai.safetensors");
    let hf_path = dir.path().join("hf.safetensors");
    write_st(&oa_path, &openai);
    write_st(&hf_path, &openai_to_hf(&openai));

    let a = weights::load(&oa_path).unwrap();
    let b = weights::load(&hf_path).unwrap();
    assert_eq!(a.format, Format::OpenAiSafetensors);
    assert_eq!(b.format, Format::HuggingFaceSafetensors);
    assert_eq!(weights::detect_format(&hf_path).unwrap(), Format::HuggingFaceSafetensors);
    assert_same_maps(&a.tensors, &to_map(&openai));
    assert_same_maps(&a.tensors, &b.tensors);
    assert!(b.dropped.iter().any(|d| d.contains("position_ids")), "{:?}", b.dropped);
    assert_eq!(a.clip_config().unwrap(), tiny_clip());
    assert_eq!(b.clip_config().unwrap(), tiny_clip());
    assert!(!a.temporal_shift && a.config.is_none());
    assert_eq!(a.post_network().unwrap(), PostNetwork::MeanPool);
}

#[test]
fn hugging_face_with_a_missing_q_k_v_part_names_it() {
    let dir = tmp();
    let openai = random(&openai_shapes(&tiny_clip()), DType::F32, 2);
    let hf: Vec<_> = openai_to_hf(&openai)
        .into_iter()
        .filter(|(k, _)| k != "text_model.encoder.layers.1.self_attn.k_proj.bias")
        .collect();
    let path = dir.path().join("hf.safetensors");
    write_st(&path, &hf);
    match weights::load(&path) {
        Err(Error::MissingKey { key, .. }) => assert_eq!(key, "text_model.encoder.layers.1.self_attn.k_proj.bias"),
        other => panic!("expected MissingKey, got {other:?}"),
    }
}

#[test]
fn actionclip_checkpoint_with_net_and_module_prefixes() {
    let dir = tmp();
    let clip = random(&openai_shapes(&tiny_clip()), DType::F16, 3);
    let head = random(&transf_head_shapes(32), DType::F16, 4);
    // The reference's names: `.net.` in visual blocks (temporal shift), `module.` on the fusion head.
    let clip_ref: Vec<_> = clip
        .iter()
        .map(|(k, t)| match k.strip_prefix("visual.transformer.resblocks.") {
            Some(rest) => {
                let (i, tail) = rest.split_once('.').unwrap();
                (format!("visual.transformer.resblocks.{i}.net.{tail}"), t.clone())
            }
            None => (k.clone(), t.clone()),
        })
        .collect();
    let head_ref: Vec<_> = head.iter().map(|(k, t)| (format!("module.{k}"), t.clone())).collect();
    let path = dir.path().join("last_model.pt");
    write_actionclip_checkpoint(&path, &clip_ref, &head_ref);

    assert_eq!(weights::detect_format(&path).unwrap(), Format::ActionClipCheckpoint);
    let w = weights::load(&path).unwrap();
    assert_eq!(w.format, Format::ActionClipCheckpoint);
    assert!(w.temporal_shift);
    let mut want = to_map(&clip);
    want.extend(head.iter().map(|(k, t)| (format!("fusion_model.{k}"), t.clone())));
    assert_same_maps(&w.tensors, &want);
    assert_eq!(w.post_network().unwrap(), PostNetwork::Transformer { layers: 2 });
    assert_eq!(w.frames(), None);
    let cfg = w.action_clip_config().unwrap();
    assert_eq!(cfg.frames, weights::DEFAULT_FRAMES);
    assert_eq!(
        cfg.prompt,
        VisualPrompt { joint: false, temporal_shift: true, post: PostNetwork::Transformer { layers: 2 } }
    );
    assert_eq!(cfg.clip, tiny_clip());
    // The canonical map satisfies the crate's own expectations for that config: the model loads.
    let (_, loaded_cfg) = ActionClip::load(&path, &Device::Cpu, DType::F32).unwrap();
    assert_eq!(loaded_cfg, cfg);
}

#[test]
fn plain_and_nested_state_dicts_in_pt_files() {
    let dir = tmp();
    let clip = random(&openai_shapes(&tiny_clip()), DType::F32, 5);
    // open_clip style: {"epoch": 1, "state_dict": {"module.visual...": ...}}
    let prefixed: Vec<_> = clip.iter().map(|(k, t)| (format!("module.{k}"), t.clone())).collect();
    let mut p = Pickle::new();
    p.op(b'}');
    p.op(b'(');
    p.str("epoch");
    p.int(1);
    p.str("state_dict");
    p.state_dict(&prefixed);
    p.op(b'u');
    p.stop();
    let nested = dir.path().join("epoch_1.pt");
    write_zip(&nested, "epoch_1", &p, &[]);
    let w = weights::load(&nested).unwrap();
    assert_eq!(w.format, Format::OpenAiPt);
    assert_same_maps(&w.tensors, &to_map(&clip));

    // A plain state dict with Hugging Face names (pytorch_model.bin).
    let mut p = Pickle::new();
    p.state_dict(&openai_to_hf(&clip));
    p.stop();
    let bin = dir.path().join("pytorch_model.bin");
    write_zip(&bin, "archive", &p, &[]);
    let w = weights::load(&bin).unwrap();
    assert_eq!(w.format, Format::HuggingFacePt);
    assert_same_maps(&w.tensors, &to_map(&clip));
}

#[test]
fn torchscript_archive_reads_its_parameters() {
    // A module tree shaped like OpenAI's JIT file (CLIP -> visual -> transformer -> resblocks -> "0" ...).
    fn tree(entries: &[(String, Tensor)], class: &str) -> Node {
        let mut children: Vec<(String, Node)> = vec![("training".into(), Node::Bool(false))];
        let mut groups: Vec<(String, Vec<(String, Tensor)>)> = Vec::new();
        for (k, t) in entries {
            match k.split_once('.') {
                None => children.push((k.clone(), Node::Tensor(t.clone()))),
                Some((head, rest)) => match groups.iter_mut().find(|(h, _)| h == head) {
                    Some((_, v)) => v.push((rest.to_string(), t.clone())),
                    None => groups.push((head.to_string(), vec![(rest.to_string(), t.clone())])),
                },
            }
        }
        for (head, v) in groups {
            children.push((head.clone(), tree(&v, &format!("Module_{head}"))));
        }
        Node::Module(class.to_string(), children)
    }
    let dir = tmp();
    let clip = random(&openai_shapes(&tiny_clip()), DType::F16, 6);
    let mut entries = clip.clone();
    entries.push(("input_resolution".into(), Tensor::new(32i64, &Device::Cpu).unwrap()));
    entries
        .push(("transformer.resblocks.0.attn_mask".into(), Tensor::zeros((16, 16), DType::F32, &Device::Cpu).unwrap()));
    let Node::Module(class, mut attrs) = tree(&entries, "CLIP") else { unreachable!() };
    attrs.push(("context_length_int".into(), Node::Int(16)));
    let mut p = Pickle::new();
    p.node(&Node::Module(class, attrs));
    p.stop();
    let path = dir.path().join("ViT-tiny.pt");
    write_zip(&path, "ViT-tiny", &p, &[("constants.pkl", b"\x80\x02).".as_slice()), ("code/__torch__/model.py", b"")]);
    let w = weights::load(&path).unwrap();
    assert_eq!(w.format, Format::TorchScript);
    assert_same_maps(&w.tensors, &to_map(&clip));
    assert_eq!(w.clip_config().unwrap(), tiny_clip());
}

#[test]
fn save_and_load_round_trip_bit_exact_with_config() {
    let dir = tmp();
    let cfg = ActionClipConfig {
        clip: tiny_clip(),
        frames: 6,
        prompt: VisualPrompt {
            joint: false,
            temporal_shift: true,
            post: PostNetwork::Conv1d { reference_reshape: false },
        },
    };
    let mut entries = random(&openai_shapes(&tiny_clip()), DType::F16, 7);
    entries.extend(random(&[("fusion_model.shift.weight".to_string(), vec![32, 1, 3])], DType::F32, 8));
    entries.extend(random(&[("logit_scale_bf16_probe".to_string(), vec![3])], DType::BF16, 9));
    let map = to_map(&entries);
    let path = dir.path().join("model.safetensors");
    weights::save_safetensors(&map, Some(&cfg), &path).unwrap();
    let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(names.len(), 1, "no temporary file is left: {names:?}");

    let w = weights::load(&path).unwrap();
    assert_eq!(w.format, Format::ActionClipSafetensors);
    assert_eq!(w.config.as_ref(), Some(&cfg));
    assert!(w.temporal_shift, "the config's temporal shift is reported");
    assert_same_maps(&w.tensors, &map);
    // The config decides over inference (inference alone would say reference_reshape: true).
    assert_eq!(w.post_network().unwrap(), PostNetwork::Conv1d { reference_reshape: false });
    assert_eq!(w.action_clip_config().unwrap(), cfg);

    // Saving what was loaded gives the same tensors again; without a config the metadata has none.
    let again = dir.path().join("again.safetensors");
    weights::save_safetensors(&w.tensors, None, &again).unwrap();
    let w2 = weights::load(&again).unwrap();
    assert_eq!(w2.format, Format::OpenAiSafetensors);
    assert!(w2.config.is_none());
    assert_same_maps(&w2.tensors, &map);
    assert_eq!(
        w2.infer_config(weights::DEFAULT_FRAMES).unwrap().prompt.post,
        PostNetwork::Conv1d { reference_reshape: true }
    );
}

#[test]
fn run_directory_with_config_json() {
    let dir = tmp();
    let cfg = ActionClipConfig {
        clip: tiny_clip(),
        frames: 4,
        prompt: VisualPrompt { joint: false, temporal_shift: false, post: PostNetwork::MeanPool },
    };
    let map = to_map(&random(&openai_shapes(&tiny_clip()), DType::F32, 10));
    weights::save_safetensors(&map, None, dir.path().join("model.safetensors")).unwrap();
    std::fs::write(dir.path().join("config.json"), serde_json::to_string_pretty(&cfg).unwrap()).unwrap();
    let w = weights::load(dir.path()).unwrap();
    assert_eq!(w.config.as_ref(), Some(&cfg));
    assert_eq!(w.path, dir.path().join("model.safetensors"));
    assert_eq!(w.frames(), Some(4));
    assert_same_maps(&w.tensors, &map);

    // A Hugging Face config.json beside the weights is ignored.
    std::fs::write(dir.path().join("config.json"), r#"{"architectures": ["CLIPModel"], "model_type": "clip"}"#)
        .unwrap();
    assert!(weights::load(dir.path()).unwrap().config.is_none());

    // A broken actionclip config.json is an error naming the file.
    std::fs::write(dir.path().join("config.json"), r#"{"clip": 3, "prompt": {}, "frames": 8}"#).unwrap();
    let err = weights::load(dir.path()).unwrap_err();
    assert!(matches!(&err, Error::Checkpoint { path, .. } if path.ends_with("config.json")), "{err}");

    // A directory without weights lists what it holds.
    let empty = tmp();
    std::fs::write(empty.path().join("notes.txt"), "x").unwrap();
    let err = weights::load(empty.path()).unwrap_err();
    assert!(matches!(&err, Error::UnknownFormat { found, .. } if found.contains("notes.txt")), "{err}");
}

#[test]
fn unknown_layouts_list_what_was_found() {
    let dir = tmp();
    // safetensors with foreign names
    let path = dir.path().join("other.safetensors");
    write_st(
        &path,
        &random(&[("encoder.block.0.weight".into(), vec![2, 2]), ("decoder.bias".into(), vec![2])], DType::F32, 11),
    );
    let err = weights::load(&path).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, Error::UnknownFormat { .. }), "{msg}");
    assert!(msg.contains("encoder.block.0.weight") && msg.contains("decoder.bias"), "{msg}");

    // a PyTorch dict without any state dict
    let mut p = Pickle::new();
    p.op(b'}');
    p.op(b'(');
    p.str("epoch");
    p.int(3);
    p.str("optimizer_state_dict");
    p.op(b'}');
    p.op(b'u');
    p.stop();
    let pt = dir.path().join("opt.pt");
    write_zip(&pt, "opt", &p, &[]);
    let err = weights::load(&pt).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, Error::UnknownFormat { .. }), "{msg}");
    assert!(msg.contains("epoch (int)") && msg.contains("optimizer_state_dict (dict"), "{msg}");

    // neither safetensors nor zip
    let junk = dir.path().join("junk.bin");
    std::fs::write(&junk, b"hello world, not weights").unwrap();
    assert!(matches!(weights::load(&junk), Err(Error::UnknownFormat { .. })));
    // a legacy (non-zip) torch file
    let legacy = dir.path().join("legacy.pt");
    std::fs::write(&legacy, b"\x80\x02\x8a\x0alz\xfc\x9cF\xf9 j\xa8P\x19.").unwrap();
    let msg = weights::load(&legacy).unwrap_err().to_string();
    assert!(msg.contains("legacy"), "{msg}");
    // a missing file
    assert!(matches!(weights::load(dir.path().join("nope.pt")), Err(Error::Io { .. })));
}

/// Builds `cache/models--org--name/{refs/main, snapshots/<rev>/...}` as huggingface_hub does.
#[cfg(feature = "hub")]
fn fake_hub_cache(cache: &Path, model: &str, files: &[(&str, &Path)]) -> PathBuf {
    let repo = cache.join(format!("models--{}", model.replace('/', "--")));
    let rev = "0123456789abcdef0123456789abcdef01234567";
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::write(repo.join("refs").join("main"), rev).unwrap();
    let snap = repo.join("snapshots").join(rev);
    std::fs::create_dir_all(&snap).unwrap();
    for (name, src) in files {
        std::fs::copy(src, snap.join(name)).unwrap();
    }
    snap
}

#[cfg(feature = "hub")]
#[test]
fn hub_model_from_an_offline_cache() {
    use actionclip::weights::HubOptions;
    let dir = tmp();
    let cfg = ActionClipConfig {
        clip: tiny_clip(),
        frames: 8,
        prompt: VisualPrompt { joint: false, temporal_shift: false, post: PostNetwork::MeanPool },
    };
    let openai = random(&openai_shapes(&tiny_clip()), DType::F16, 13);
    let hf_file = dir.path().join("hf.safetensors");
    write_st(&hf_file, &openai_to_hf(&openai));
    let cfg_file = dir.path().join("hf_config.json");
    std::fs::write(&cfg_file, r#"{"model_type": "clip"}"#).unwrap();
    let cache = dir.path().join("hub");
    let snap = fake_hub_cache(&cache, "org/tiny-clip", &[("model.safetensors", &hf_file), ("config.json", &cfg_file)]);

    let options = HubOptions {
        cache_dir: cache.clone(),
        offline: true,
        endpoint: None,
        revision: "main".into(),
        stall_timeout: std::time::Duration::from_secs(60),
    };
    let path = weights::hub_model_with("org/tiny-clip", &options).unwrap();
    assert_eq!(path, snap.join("model.safetensors"));
    let w = weights::load(&path).unwrap();
    assert_eq!(w.format, Format::HuggingFaceSafetensors);
    assert!(w.config.is_none(), "a Hugging Face config.json is not an actionclip config");
    assert_same_maps(&w.tensors, &to_map(&openai));

    // pytorch_model.bin is found when there is no safetensors file; our config.json is picked up.
    let mut p = Pickle::new();
    p.state_dict(&openai);
    p.stop();
    let bin = dir.path().join("pytorch_model.bin");
    write_zip(&bin, "archive", &p, &[]);
    let ours = dir.path().join("ours.json");
    std::fs::write(&ours, serde_json::to_string(&cfg).unwrap()).unwrap();
    fake_hub_cache(&cache, "org/tiny-bin", &[("pytorch_model.bin", &bin), ("config.json", &ours)]);
    let path = weights::hub_model_with("org/tiny-bin", &options).unwrap();
    assert!(path.ends_with("pytorch_model.bin"));
    let w = weights::load(&path).unwrap();
    assert_eq!(w.format, Format::OpenAiPt);
    assert_eq!(w.config, Some(cfg));

    // Not cached and offline: an error naming the model and where it looked.
    let err = weights::hub_model_with("org/absent", &options).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, Error::HubNotCached { .. }), "{msg}");
    assert!(
        msg.contains("org/absent") && msg.contains("models--org--absent") && msg.contains("HF_HUB_OFFLINE"),
        "{msg}"
    );

    // The environment route (the only test in this binary that sets these variables).
    std::env::set_var("HF_HUB_CACHE", &cache);
    std::env::set_var("HF_HUB_OFFLINE", "1");
    assert_eq!(weights::hub_model("org/tiny-clip").unwrap(), snap.join("model.safetensors"));
    let w = weights::load("org/tiny-clip").unwrap();
    assert_eq!(w.format, Format::HuggingFaceSafetensors);
    let msg = weights::load("org/absent").unwrap_err().to_string();
    assert!(msg.contains("org/absent"), "{msg}");
}

// ---------------------------------------------------------------------------------------------------------
// Golden fixtures made by PyTorch (tests/fixtures/tiny, see its make_fixtures.py)

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny").join(name)
}

fn is_clip_key(k: &str) -> bool {
    !k.starts_with("fusion_model.") && k != "visual.time_embedding"
}

#[test]
fn golden_fixtures_agree() {
    let openai = weights::load(fixture("weights.safetensors")).unwrap();
    let hf = weights::load(fixture("hf_clip.safetensors")).unwrap();
    let pt = weights::load(fixture("actionclip_tsm_transf.pt")).unwrap();
    assert_eq!(openai.format, Format::OpenAiSafetensors);
    assert_eq!(hf.format, Format::HuggingFaceSafetensors);
    assert_eq!(pt.format, Format::ActionClipCheckpoint);

    let clip_of = |w: &LoadedWeights| -> HashMap<String, Tensor> {
        w.tensors.iter().filter(|(k, _)| is_clip_key(k)).map(|(k, t)| (k.clone(), t.clone())).collect()
    };
    let reference = clip_of(&openai);
    assert_same_maps(&clip_of(&hf), &reference);
    assert_same_maps(&clip_of(&pt), &reference);
    assert_eq!(hf.tensors.len(), reference.len(), "the HF file holds the CLIP towers only");

    // The checkpoint's head equals the Transf tensors of weights.safetensors.
    let head: Vec<_> = pt.tensors.keys().filter(|k| k.starts_with("fusion_model.")).cloned().collect();
    assert!(!head.is_empty());
    for k in &head {
        assert!(
            k.starts_with("fusion_model.frame_position_embeddings.")
                || k.starts_with("fusion_model.transformer.resblocks."),
            "{k}"
        );
        assert_same_tensor(k, &pt.tensors[k], &openai.tensors[k]);
    }
    let transf_in_openai = openai
        .tensors
        .keys()
        .filter(|k| {
            k.starts_with("fusion_model.frame_position_embeddings.")
                || k.starts_with("fusion_model.transformer.resblocks.")
        })
        .count();
    assert_eq!(head.len(), transf_in_openai);

    assert!(pt.temporal_shift);
    assert!(!openai.temporal_shift && !hf.temporal_shift);
    assert_eq!(pt.post_network().unwrap(), PostNetwork::Transformer { layers: 2 });
    assert_eq!(pt.frames(), None);
    let cfg = pt.action_clip_config().unwrap();
    assert_eq!(cfg.frames, weights::DEFAULT_FRAMES);
    assert!(cfg.prompt.temporal_shift);
    let clip = openai.clip_config().unwrap();
    assert_eq!(
        (clip.vision.width, clip.vision.layers, clip.vision.patch_size, clip.vision.image_size),
        (128, 2, 8, 32)
    );
    assert_eq!((clip.text.width, clip.text.vocab_size, clip.embed_dim), (128, 1000, 64));
    assert_eq!(hf.clip_config().unwrap(), clip);
    assert_eq!(cfg.clip, clip);

    // weights.safetensors holds every head at once: the head cannot be inferred, the frame count can.
    assert!(openai.config.is_none());
    assert!(matches!(openai.post_network(), Err(Error::UnknownHead { .. })));
    assert_eq!(openai.frames(), Some(4));
}
