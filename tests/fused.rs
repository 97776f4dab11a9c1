//! The fused CPU inference kernels (`actionclip::nn::fused`) against plain candle ops on random inputs:
//! odd sizes, strided weights, causal and random masks, and the fallback for other dtypes.
use actionclip::nn::{fused, quick_gelu, Mlp, MultiHeadAttention, ResidualAttentionBlock};
use candle_core::{DType, Device, IndexOp, Tensor, D};
use candle_nn::{VarBuilder, VarMap};

/// Max |a - b| / max(1, |b|) after checking the shapes agree (infinite where only one is non-finite).
fn max_rel_diff(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims());
    let a: Vec<f32> = a.to_dtype(DType::F32).unwrap().flatten_all().unwrap().to_vec1().unwrap();
    let b: Vec<f32> = b.to_dtype(DType::F32).unwrap().flatten_all().unwrap().to_vec1().unwrap();
    a.iter()
        .zip(&b)
        .map(|(x, y)| if x == y { 0. } else if (x - y).is_finite() { (x - y).abs() / y.abs().max(1.) } else { f32::INFINITY })
        .fold(0., f32::max)
}

fn assert_close(what: &str, a: &Tensor, b: &Tensor) {
    let d = max_rel_diff(a, b);
    assert!(d <= 1e-5, "{what}: max difference {d}");
}

/// Asserts `a` equals `b` within 1e-5 of `b`'s scale, max(1, max |b|). For GEMM outputs: each is a sum of
/// k products and another blocking of that sum (the AVX-512 kernel's against candle's `gemm`) moves it by
/// ~sqrt(k) f32 roundings of the partial sums, whatever its own size; an element near 0 in a row of
/// 20s differs by ~3e-5 at k = 768 (candle's matmul itself is off the f64 product by as much there).
fn assert_close_to_scale(what: &str, a: &Tensor, b: &Tensor) {
    assert_eq!(a.dims(), b.dims());
    let values = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let (a, b) = (values(a), values(b));
    let scale = b.iter().fold(1f32, |m, v| m.max(v.abs()));
    let diff = |x: f32, y: f32| if x == y { 0. } else if (x - y).is_finite() { (x - y).abs() } else { f32::INFINITY };
    let d = a.iter().zip(&b).fold(0f32, |m, (&x, &y)| m.max(diff(x, y))) / scale;
    assert!(d <= 1e-5, "{what}: max difference {d} of the scale {scale}");
}

fn randn(shape: &[usize], seed_scale: f64) -> Tensor {
    Tensor::randn(0f32, seed_scale as f32, shape, &Device::Cpu).unwrap()
}

fn linear_ref(x: &Tensor, w: &Tensor, b: Option<&Tensor>) -> Tensor {
    let y = x.matmul(&w.t().unwrap()).unwrap();
    match b {
        Some(b) => y.broadcast_add(b).unwrap(),
        None => y,
    }
}

#[test]
fn linear_matches_matmul_plus_bias() {
    for (rows, k, n) in [(394, 96, 200), (13, 7, 5), (1, 64, 33), (37, 128, 512), (197, 768, 77), (0, 8, 4)] {
        let x = randn(&[rows, k], 1.);
        let w = randn(&[n, k], 0.5);
        let b = randn(&[n], 1.);
        let want = linear_ref(&x, &w, Some(&b));
        assert_close_to_scale(&format!("linear {rows}x{k}x{n}"), &fused::linear(&x, &w, Some(&b)).unwrap(), &want);
        let want = quick_gelu(&want).unwrap();
        assert_close_to_scale(&format!("linear+gelu {rows}x{k}x{n}"), &fused::linear_quick_gelu(&x, &w, Some(&b)).unwrap(), &want);
        let want = linear_ref(&x, &w, None);
        assert_close_to_scale(&format!("linear no bias {rows}x{k}x{n}"), &fused::linear(&x, &w, None).unwrap(), &want);
    }
}

#[test]
fn linear_reads_strided_inputs() {
    // A weight stored transposed ([in, out] viewed as [out, in]) and x as a column slice with an offset.
    let (rows, k, n) = (45, 70, 31);
    let wt = randn(&[k, n], 0.5);
    let w = wt.t().unwrap();
    let wide = randn(&[rows + 2, k + 9], 1.);
    let x = wide.i((1..rows + 1, 3..k + 3)).unwrap();
    assert!(!w.is_contiguous() && !x.is_contiguous());
    let b = randn(&[n], 1.);
    let want = linear_ref(&x.contiguous().unwrap(), &w.contiguous().unwrap(), Some(&b));
    assert_close_to_scale("strided linear", &fused::linear(&x, &w, Some(&b)).unwrap(), &want);
}

#[test]
fn quick_gelu_epilogue_handles_extremes() {
    let x = Tensor::new(&[[-200f32, -90., -20., -1e-3, 0., 1e-3, 1., 20., 90., 200.]], &Device::Cpu).unwrap();
    let w = Tensor::eye(10, DType::F32, &Device::Cpu).unwrap();
    let got = fused::linear_quick_gelu(&x, &w, None).unwrap();
    assert_close("gelu extremes", &got, &quick_gelu(&x).unwrap());
}

/// softmax(q k^T / sqrt(hd) + mask) v from `qkv` [N, L, 3, H, hd], on plain candle ops.
fn attention_ref(qkv: &Tensor, mask: Option<&Tensor>) -> Tensor {
    let (n, l, _, h, hd) = qkv.dims5().unwrap();
    let part = |i: usize| qkv.i((.., .., i)).unwrap().transpose(1, 2).unwrap().contiguous().unwrap();
    let (q, k, v) = (part(0), part(1), part(2));
    let s = (q.matmul(&k.t().unwrap()).unwrap() / (hd as f64).sqrt()).unwrap();
    let s = match mask {
        Some(m) => s.broadcast_add(m).unwrap(),
        None => s,
    };
    let p = candle_nn::ops::softmax(&s, D::Minus1).unwrap();
    p.matmul(&v).unwrap().transpose(1, 2).unwrap().reshape((n, l, h * hd)).unwrap()
}

fn causal(l: usize) -> Tensor {
    let m: Vec<f32> = (0..l).flat_map(|i| (0..l).map(move |j| if j > i { f32::NEG_INFINITY } else { 0. })).collect();
    Tensor::from_vec(m, (l, l), &Device::Cpu).unwrap()
}

#[test]
fn attention_matches_plain_ops() {
    // (N, L, H, hd): L = 197 (ViT-B/16), N*H odd, tiny and single-token cases.
    for (n, l, h, hd) in [(3, 197, 5, 64), (1, 5, 3, 7), (2, 50, 12, 64), (1, 1, 1, 4), (7, 9, 1, 16)] {
        let qkv = randn(&[n, l, 3, h, hd], 1.);
        assert_close(&format!("attention {n}x{l}x{h}x{hd}"), &fused::attention(&qkv, None).unwrap(), &attention_ref(&qkv, None));
        let mask = randn(&[l, l], 2.);
        let what = format!("attention, random mask {n}x{l}x{h}x{hd}");
        assert_close(&what, &fused::attention(&qkv, Some(&mask)).unwrap(), &attention_ref(&qkv, Some(&mask)));
    }
}

#[test]
fn attention_with_causal_mask() {
    for (n, l, h, hd) in [(5, 77, 8, 64), (3, 77, 3, 32), (2, 16, 2, 8)] {
        let qkv = randn(&[n, l, 3, h, hd], 2.);
        let m = causal(l);
        assert_close(&format!("causal attention {n}x{l}x{h}x{hd}"), &fused::attention(&qkv, Some(&m)).unwrap(), &attention_ref(&qkv, Some(&m)));
    }
}

#[test]
fn attention_rejects_bad_shapes() {
    let qkv = randn(&[2, 4, 3, 2, 8], 1.);
    assert!(fused::attention(&qkv, Some(&randn(&[4, 5], 1.))).is_err());
    assert!(fused::attention(&randn(&[2, 4, 2, 2, 8], 1.), None).is_err());
    assert!(fused::attention(&randn(&[2, 4, 48], 1.), None).is_err());
    assert!(fused::linear(&randn(&[3, 4], 1.), &randn(&[5, 6], 1.), None).is_err());
    assert!(fused::linear(&randn(&[3, 4], 1.), &randn(&[5, 4], 1.), Some(&randn(&[6], 1.))).is_err());
}

#[test]
fn other_dtypes_fall_back_to_plain_ops() {
    let x = randn(&[9, 12], 1.).to_dtype(DType::F64).unwrap();
    let w = randn(&[5, 12], 1.).to_dtype(DType::F64).unwrap();
    let b = randn(&[5], 1.).to_dtype(DType::F64).unwrap();
    let got = fused::linear_quick_gelu(&x, &w, Some(&b)).unwrap();
    assert_eq!(got.dtype(), DType::F64);
    assert_close("f64 linear", &got, &quick_gelu(&linear_ref(&x, &w, Some(&b))).unwrap());
    let qkv = randn(&[2, 6, 3, 2, 4], 1.).to_dtype(DType::F64).unwrap();
    let m = causal(6).to_dtype(DType::F64).unwrap();
    let got = fused::attention(&qkv, Some(&m)).unwrap();
    assert_eq!(got.dtype(), DType::F64);
    assert_close("f64 attention", &got, &attention_ref(&qkv, Some(&m)));
}

#[test]
fn inference_blocks_match_training_blocks() {
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
    let attn = MultiHeadAttention::new(vb.pp("attn"), 96, 3).unwrap();
    let mlp = Mlp::new(vb.pp("mlp"), 96).unwrap();
    let x = randn(&[3, 77, 96], 1.);
    for causal in [false, true] {
        let (fast, slow) = (attn.forward_t(&x, causal, false).unwrap(), attn.forward_t(&x, causal, true).unwrap());
        assert_close("MultiHeadAttention", &fast, &slow);
    }
    assert_close("Mlp", &mlp.forward_t(&x, false).unwrap(), &mlp.forward_t(&x, true).unwrap());
    // Width 256: the MLP's 1024 hidden values per row are padded in the fused inference op; the block adds
    // its residuals in the output GEMMs' epilogues.
    let block = ResidualAttentionBlock::new(vb.pp("block"), 256, 4, 1e-5).unwrap();
    let x = randn(&[2, 50, 256], 1.);
    for causal in [false, true] {
        let (fast, slow) = (block.forward_t(&x, causal, false).unwrap(), block.forward_t(&x, causal, true).unwrap());
        assert_close("ResidualAttentionBlock", &fast, &slow);
    }
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
        let (chunked, whole) = (model.encode_video_t(&frames, false).unwrap(), model.encode_video_t(&frames, true).unwrap());
        assert_close(&format!("{prompt:?}"), &chunked, &whole);
    }
}
