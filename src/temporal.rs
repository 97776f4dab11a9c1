//! Post-network visual prompts: the heads that turn per-frame features [B, T, D] into one video feature
//! [B, D]. Weights live under `fusion_model.` with the reference's module names.
use candle_core::{DType, Tensor};
use candle_nn::{Init, VarBuilder};

use crate::{
    config::{PostNetwork, CONTEXT_LENGTH},
    nn::{
        forward_blocks,
        params::{Named, Params},
        LayerNorm, Linear, MultiHeadAttention, ResidualAttentionBlock,
    },
    Error, Result,
};

/// LayerNorm epsilon of ActionCLIP's temporal transformer (TF style).
const TRANSF_LN_EPS: f64 = 1e-12;
/// LayerNorm epsilon of PyTorch's `nn.TransformerEncoderLayer`.
const TORCH_LN_EPS: f64 = 1e-5;
/// Heads of the `Transf_cls` encoder layers (PyTorch `nhead=8` in the reference).
const CLS_HEADS: usize = 8;
/// Feed-forward width of the `Transf_cls` encoder layers (PyTorch's default).
const CLS_FFN: usize = 2048;

/// Name of the reference's frame position embedding `[77, D]` under `fusion_model.`.
pub(crate) const FRAME_POSITIONS: &str = "frame_position_embeddings.weight";

/// A post-network head, built from a [`PostNetwork`].
#[derive(Clone, Debug)]
pub struct TemporalHead {
    pool: Pool,
    /// The reference's `frame_position_embeddings` in a checkpoint of another head than `Transf`: its
    /// `visual_prompt` creates the embedding for Conv_1D, LSTM and Transf_cls too but reads it only in
    /// Transf. Kept, unread, so that saving gives the reference's layout back.
    unused_frame_positions: Option<Named<Tensor>>,
}

/// The head's pooling, one variant per [`PostNetwork`].
#[derive(Clone, Debug)]
enum Pool {
    Mean,
    Conv1d(Conv1dHead),
    Lstm(LstmHead),
    Transformer(TransformerHead),
    TransformerCls(TransformerClsHead),
}

impl TemporalHead {
    /// Builds the head described by `post` under `vb` (`fusion_model`), for features of width `dim`, with
    /// `heads` attention heads for the temporal transformer and `frames` frames for the class-token head.
    pub fn new(vb: VarBuilder, post: &PostNetwork, dim: usize, heads: usize, frames: usize) -> Result<Self> {
        let pool = match *post {
            PostNetwork::MeanPool => Pool::Mean,
            PostNetwork::Conv1d { reference_reshape } => {
                Pool::Conv1d(Conv1dHead::new(vb.clone(), dim, reference_reshape)?)
            }
            PostNetwork::Lstm => Pool::Lstm(LstmHead::new(vb.clone(), dim)?),
            PostNetwork::Transformer { layers } => {
                Pool::Transformer(TransformerHead::new(vb.clone(), dim, heads, layers)?)
            }
            PostNetwork::TransformerCls { layers } => {
                Pool::TransformerCls(TransformerClsHead::new(vb.pp("transformer"), dim, layers, frames)?)
            }
        };
        let unused_frame_positions = match pool {
            Pool::Transformer(_) => None,
            _ if vb.contains_tensor(FRAME_POSITIONS) => {
                Some(Named::read(&vb, (CONTEXT_LENGTH, dim), FRAME_POSITIONS, Init::Const(0.))?)
            }
            _ => None,
        };
        Ok(Self { pool, unused_frame_positions })
    }

    /// Checks that the head can take `frames` frames.
    pub fn check_frames(&self, frames: usize) -> Result<()> {
        match &self.pool {
            Pool::Transformer(_) if frames > CONTEXT_LENGTH => Err(Error::FrameCount {
                part: "Transformer head",
                found: frames,
                reason: format!("its frame position embedding has {CONTEXT_LENGTH} rows"),
            }),
            Pool::TransformerCls(h) if frames != h.frames => Err(Error::FrameCount {
                part: "TransformerCls head",
                found: frames,
                reason: format!("its position embedding was built for exactly {} frames", h.frames),
            }),
            _ => Ok(()),
        }
    }

    /// Pools frame features into video features.
    // [B, T, D] -> [B, D]
    pub fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        self.check_frames(x.dim(1)?)?;
        Ok(match &self.pool {
            Pool::Mean => x.mean(1)?,
            Pool::Conv1d(h) => h.forward(x)?,
            Pool::Lstm(h) => h.forward_t(x, train)?,
            Pool::Transformer(h) => h.forward_t(x, train)?,
            Pool::TransformerCls(h) => h.forward_t(x, train)?,
        })
    }
}

impl Params for TemporalHead {
    fn visit(&self, f: &mut dyn FnMut(&str, &Tensor)) {
        self.unused_frame_positions.visit(f);
        match &self.pool {
            Pool::Mean => {}
            Pool::Conv1d(h) => h.weight.visit(f),
            Pool::Lstm(h) => h.visit(f),
            Pool::Transformer(h) => h.visit(f),
            Pool::TransformerCls(h) => h.visit(f),
        }
    }
}

/// `Conv_1D`: depthwise `Conv1d(D, D, 3, padding 1, groups D, no bias)` named `shift`, plus the input,
/// then the mean over frames.
#[derive(Clone, Debug)]
struct Conv1dHead {
    /// `shift.weight` [D, 1, 3].
    weight: Named<Tensor>,
    reference_reshape: bool,
}

impl Conv1dHead {
    /// Reads `shift.weight`; a new head starts as ActionCLIP's fixed shift (first D/4 channels tap 0,
    /// middle D/2 tap 1, last D/4 tap 2).
    fn new(vb: VarBuilder, dim: usize, reference_reshape: bool) -> Result<Self> {
        let key = "shift.weight";
        let fresh = !vb.contains_tensor(key);
        let weight = Named::read(&vb, (dim, 1, 3), key, Init::Const(0.))?;
        let weight = match (fresh, vb.contains_tensor(key)) {
            (false, _) => weight,
            // The builder keeps the variable it created (a VarMap): the fixed shift goes into its storage,
            // so training starts from it.
            (true, true) => {
                weight.slice_set(&fixed_shift(dim, &weight)?, 0, 0)?;
                weight
            }
            // The builder keeps nothing (a shape recorder): the head holds the fixed shift itself.
            (true, false) => weight.with(fixed_shift(dim, &weight)?),
        };
        Ok(Self { weight, reference_reshape })
    }

    // [B, T, D] -> [B, D]
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (b, t, d) = x.dims3()?;
        let y = if self.reference_reshape {
            // The reference reinterprets the [B, T, D] memory as [B, D, T].
            depthwise_conv3(&x.reshape((b, d, t))?, &self.weight)?.transpose(1, 2)?
        } else {
            depthwise_conv3(&x.transpose(1, 2)?, &self.weight)?.transpose(1, 2)?
        };
        Ok((y + x)?.mean(1)?)
    }
}

/// ActionCLIP's fixed temporal shift as a depthwise kernel on the device and in the dtype of `like`:
/// channels `[0, D/4)` tap 0 (frame t-1), `[D/4, D/4 + D/2)` tap 1 (frame t), the rest tap 2 (frame t+1).
// -> [D, 1, 3]
fn fixed_shift(dim: usize, like: &Tensor) -> Result<Tensor> {
    let taps: Vec<f32> = (0..dim)
        .flat_map(|c| {
            let tap = if c < dim / 4 {
                0
            } else if c < dim / 4 + dim / 2 {
                1
            } else {
                2
            };
            (0..3).map(move |k| if k == tap { 1. } else { 0. })
        })
        .collect();
    Ok(Tensor::from_vec(taps, (dim, 1, 3), like.device())?.to_dtype(like.dtype())?)
}

/// Depthwise convolution with kernel 3 and zero padding 1 along the last axis.
// [B, C, L], [C, 1, 3] -> [B, C, L]
fn depthwise_conv3(x: &Tensor, weight: &Tensor) -> Result<Tensor> {
    let (b, c, _) = x.dims3()?;
    let zeros = Tensor::zeros((b, c, 1), x.dtype(), x.device())?;
    let padded = Tensor::cat(&[&zeros, &x.contiguous()?, &zeros], 2)?;
    let l = x.dim(2)?;
    let tap = |k: usize| -> Result<Tensor> {
        let w = weight.narrow(2, k, 1)?.reshape((1, c, 1))?;
        Ok(padded.narrow(2, k, l)?.broadcast_mul(&w)?)
    };
    Ok(((tap(0)? + tap(1)?)? + tap(2)?)?)
}

/// `LSTM`: one-layer unidirectional batch-first LSTM (D -> D, PyTorch gate order i, f, g, o), run in
/// f32, plus the input, then the mean over frames.
#[derive(Clone, Debug)]
struct LstmHead {
    input: Linear,
    hidden: Linear,
    dim: usize,
}

impl LstmHead {
    /// Reads `lstm_visual.{weight_ih_l0, weight_hh_l0, bias_ih_l0, bias_hh_l0}`.
    fn new(vb: VarBuilder, dim: usize) -> Result<Self> {
        let vb = vb.pp("lstm_visual");
        let bound = (dim as f64).powf(-0.5);
        let init = Init::Uniform { lo: -bound, up: bound };
        let get = |shape: &[usize], key: &str| Named::read(&vb, shape.to_vec(), key, init);
        Ok(Self {
            input: Linear::from_named(get(&[4 * dim, dim], "weight_ih_l0")?, Some(get(&[4 * dim], "bias_ih_l0")?)),
            hidden: Linear::from_named(get(&[4 * dim, dim], "weight_hh_l0")?, Some(get(&[4 * dim], "bias_hh_l0")?)),
            dim,
        })
    }

    // [B, T, D] -> [B, D]
    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let (b, t, d) = x.dims3()?;
        let dtype = x.dtype();
        let x32 = x.to_dtype(DType::F32)?;
        let input = self.input.to_dtype(DType::F32)?;
        let hidden = self.hidden.to_dtype(DType::F32)?;
        // All input projections in one GEMM: [B, T, 4D].
        let gates_x = input.forward_t(&x32, train)?;
        let mut h = Tensor::zeros((b, d), DType::F32, x.device())?;
        let mut c = h.clone();
        let mut outputs = Vec::with_capacity(t);
        for step in 0..t {
            let gates = (gates_x.narrow(1, step, 1)?.squeeze(1)? + hidden.forward_t(&h, train)?)?;
            let chunk = |k: usize| gates.narrow(1, k * self.dim, self.dim);
            let i = candle_nn::ops::sigmoid(&chunk(0)?)?;
            let f = candle_nn::ops::sigmoid(&chunk(1)?)?;
            let g = chunk(2)?.tanh()?;
            let o = candle_nn::ops::sigmoid(&chunk(3)?)?;
            c = ((f * &c)? + (i * g)?)?;
            h = (o * c.tanh()?)?;
            outputs.push(h.clone());
        }
        let y = Tensor::stack(&outputs, 1)?;
        Ok((y + x32)?.mean(1)?.to_dtype(dtype)?)
    }
}

impl Params for LstmHead {
    fn visit(&self, f: &mut dyn FnMut(&str, &Tensor)) {
        self.input.visit(f);
        self.hidden.visit(f);
    }
}

/// `Transf`: frame position embeddings, CLIP-style residual blocks (TF-style LayerNorm, eps 1e-12),
/// plus the input, then the mean over frames.
#[derive(Clone, Debug)]
struct TransformerHead {
    frame_position_embeddings: Named<Tensor>,
    blocks: Vec<ResidualAttentionBlock>,
}

impl TransformerHead {
    /// Reads `frame_position_embeddings.weight` [77, D] and `transformer.resblocks.*`.
    fn new(vb: VarBuilder, dim: usize, heads: usize, layers: usize) -> Result<Self> {
        let normal = Init::Randn { mean: 0., stdev: 0.02 };
        let frame_position_embeddings = Named::read(&vb, (CONTEXT_LENGTH, dim), FRAME_POSITIONS, normal)?;
        let blocks = (0..layers)
            .map(|i| {
                ResidualAttentionBlock::new(vb.pp(format!("transformer.resblocks.{i}")), dim, heads, TRANSF_LN_EPS)
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self { frame_position_embeddings, blocks })
    }

    // [B, T, D] -> [B, D]
    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let t = x.dim(1)?;
        let positions = self.frame_position_embeddings.narrow(0, 0, t)?.to_dtype(x.dtype())?;
        let h = forward_blocks(&self.blocks, &x.broadcast_add(&positions)?, false, train)?;
        Ok((h + x)?.mean(1)?)
    }
}

impl Params for TransformerHead {
    fn visit(&self, f: &mut dyn FnMut(&str, &Tensor)) {
        self.frame_position_embeddings.visit(f);
        self.blocks.visit(f);
    }
}

/// One PyTorch `nn.TransformerEncoderLayer` (post-LN, ReLU feed-forward, 8 heads); dropout is not
/// applied.
#[derive(Clone, Debug)]
struct EncoderLayer {
    self_attn: MultiHeadAttention,
    linear1: Linear,
    linear2: Linear,
    norm1: LayerNorm,
    norm2: LayerNorm,
}

impl EncoderLayer {
    fn new(vb: VarBuilder, dim: usize) -> Result<Self> {
        Ok(Self {
            self_attn: MultiHeadAttention::new(vb.pp("self_attn"), dim, CLS_HEADS)?,
            linear1: Linear::new(vb.pp("linear1"), dim, CLS_FFN)?,
            linear2: Linear::new(vb.pp("linear2"), CLS_FFN, dim)?,
            norm1: LayerNorm::new(vb.pp("norm1"), dim, TORCH_LN_EPS)?,
            norm2: LayerNorm::new(vb.pp("norm2"), dim, TORCH_LN_EPS)?,
        })
    }

    // [B, L, D] -> [B, L, D]
    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let x = self.norm1.forward_t(&(x + self.self_attn.forward_t(x, false, train)?)?, train)?;
        let ff = self.linear2.forward_t(&self.linear1.forward_t(&x, train)?.relu()?, train)?;
        self.norm2.forward_t(&(x + ff)?, train)
    }
}

impl Params for EncoderLayer {
    fn visit(&self, f: &mut dyn FnMut(&str, &Tensor)) {
        self.self_attn.visit(f);
        self.linear1.visit(f);
        self.linear2.visit(f);
        self.norm1.visit(f);
        self.norm2.visit(f);
    }
}

/// `Transf_cls`: a class token and position embeddings for exactly T frames, PyTorch transformer encoder
/// layers and a final LayerNorm; returns the class token's output.
#[derive(Clone, Debug)]
struct TransformerClsHead {
    cls_token: Named<Tensor>,
    pos_embed: Named<Tensor>,
    layers: Vec<EncoderLayer>,
    norm: LayerNorm,
    frames: usize,
}

impl TransformerClsHead {
    /// Reads `cls_token` [1, 1, D], `pos_embed` [1, T+1, D] and `transformer_enc.{layers.i, norm}`.
    fn new(vb: VarBuilder, dim: usize, layers: usize, frames: usize) -> Result<Self> {
        let enc = vb.pp("transformer_enc");
        Ok(Self {
            cls_token: Named::read(&vb, (1, 1, dim), "cls_token", Init::Const(0.))?,
            pos_embed: Named::read(&vb, (1, frames + 1, dim), "pos_embed", Init::Randn { mean: 0., stdev: 0.02 })?,
            layers: (0..layers)
                .map(|i| EncoderLayer::new(enc.pp(format!("layers.{i}")), dim))
                .collect::<Result<Vec<_>>>()?,
            norm: LayerNorm::new(enc.pp("norm"), dim, TORCH_LN_EPS)?,
            frames,
        })
    }

    // [B, T, D] -> [B, D]
    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let (b, _, d) = x.dims3()?;
        let cls = self.cls_token.to_dtype(x.dtype())?.broadcast_as((b, 1, d))?;
        let mut h = Tensor::cat(&[&cls, x], 1)?.broadcast_add(&self.pos_embed.to_dtype(x.dtype())?)?;
        for layer in &self.layers {
            h = layer.forward_t(&h, train)?;
        }
        let h = self.norm.forward_t(&h, train)?;
        Ok(h.narrow(1, 0, 1)?.squeeze(1)?)
    }
}

impl Params for TransformerClsHead {
    fn visit(&self, f: &mut dyn FnMut(&str, &Tensor)) {
        self.cls_token.visit(f);
        self.pos_embed.visit(f);
        self.layers.visit(f);
        self.norm.visit(f);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn conv1d_fixed_shift_init_moves_channels_in_time() {
        let dev = Device::Cpu;
        let varmap = candle_nn::VarMap::new();
        let head = Conv1dHead::new(VarBuilder::from_varmap(&varmap, DType::F32, &dev), 4, false).unwrap();
        // The initial value lives in the VarMap's variable, so training starts from it.
        let stored =
            varmap.data().lock().unwrap()["shift.weight"].as_tensor().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(stored, head.weight.flatten_all().unwrap().to_vec1::<f32>().unwrap());
        // x[b, t, d] = t for every channel
        let x = Tensor::arange(0f32, 3., &dev)
            .unwrap()
            .reshape((1, 3, 1))
            .unwrap()
            .broadcast_as((1, 3, 4))
            .unwrap()
            .contiguous()
            .unwrap();
        let y = depthwise_conv3(&x.transpose(1, 2).unwrap(), &head.weight).unwrap().transpose(1, 2).unwrap();
        let y = y.squeeze(0).unwrap().to_vec2::<f32>().unwrap();
        // channel 0 (tap 0) sees t-1, channel 1..3 (tap 1) sees t, channel 3 (tap 2) sees t+1
        assert_eq!(y[1], vec![0., 1., 1., 2.]);
    }
}
