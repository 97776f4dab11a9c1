//! The CLIP text tower (causal transformer, OpenAI layout) and [`TextEncoder`], the text side of
//! ActionCLIP: token ids or sentences (with the caller's tokenizer) in, embeddings out.
use candle_core::{DType, Tensor};
use candle_nn::{Init, VarBuilder};

use super::{tokenizer::Tokenizer, vision::CLIP_LN_EPS};
use crate::{
    config::TextConfig,
    nn::{
        forward_blocks_at,
        params::{Named, Params},
        LayerNorm, ResidualAttentionBlock, TowerWeights,
    },
    Error, Result,
};

/// The text tower. Its weights sit at the root of OpenAI checkpoints (`token_embedding`,
/// `positional_embedding`, `transformer.resblocks.*`, `ln_final`, `text_projection`).
#[derive(Clone, Debug)]
pub struct TextTransformer {
    cfg: TextConfig,
    token_embedding: Named<Tensor>,
    positional_embedding: Named<Tensor>,
    blocks: Vec<ResidualAttentionBlock>,
    ln_final: LayerNorm,
    text_projection: Named<Tensor>,
}

impl TextTransformer {
    /// Reads the tower at the root of `vb`.
    pub fn new(vb: VarBuilder, cfg: &TextConfig, embed_dim: usize) -> Result<Self> {
        let w = cfg.width;
        let blocks = (0..cfg.layers)
            .map(|i| {
                ResidualAttentionBlock::new(vb.pp(format!("transformer.resblocks.{i}")), w, cfg.heads, CLIP_LN_EPS)
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            cfg: cfg.clone(),
            token_embedding: Named::read(&vb, (cfg.vocab_size, w), "token_embedding.weight", crate::nn::WEIGHT_INIT)?,
            positional_embedding: Named::read(
                &vb,
                (cfg.context_length, w),
                "positional_embedding",
                Init::Randn { mean: 0., stdev: 0.01 },
            )?,
            blocks,
            ln_final: LayerNorm::new(vb.pp("ln_final"), w, CLIP_LN_EPS)?,
            text_projection: Named::read(
                &vb,
                (w, embed_dim),
                "text_projection",
                Init::Randn { mean: 0., stdev: (w as f64).powf(-0.5) },
            )?,
        })
    }

    /// The same tower with the linear weights of its blocks held as `format` says.
    pub fn with_block_weights(&self, format: TowerWeights) -> Result<Self> {
        let blocks = self.blocks.iter().map(|b| b.with_weights(format)).collect::<Result<Vec<_>>>()?;
        Ok(Self { blocks, ..self.clone() })
    }

    /// The tower's configuration.
    pub fn config(&self) -> &TextConfig {
        &self.cfg
    }

    /// Encodes token ids; each row is pooled at its largest id (the end-of-text token).
    // [N, L] u32 (L <= context length) -> [N, D]
    pub fn forward_t(&self, tokens: &Tensor, train: bool) -> Result<Tensor> {
        let n = match tokens.dims() {
            &[n, l] if l >= 1 && l <= self.cfg.context_length => n,
            dims => {
                return Err(Error::InputShape {
                    what: "tokens",
                    expected: format!("[N, L] with 1 <= L <= {}", self.cfg.context_length),
                    found: dims.to_vec(),
                })
            }
        };
        let tokens = tokens.to_dtype(DType::U32)?;
        let max_id = tokens.max_keepdim(1)?.max_keepdim(0)?.flatten_all()?.to_vec1::<u32>()?;
        if let Some(&id) = max_id.first().filter(|&&id| id as usize >= self.cfg.vocab_size) {
            return Err(Error::InputShape {
                what: "tokens",
                expected: format!("ids below the vocabulary size {}", self.cfg.vocab_size),
                found: vec![id as usize],
            });
        }
        // Position of the end-of-text token (the largest id) of each sequence; the last block computes
        // that token alone.
        let eot = tokens.argmax(1)?.to_dtype(DType::U32)?;
        // Under the causal mask no position attends to a later one, so the positions after the last
        // end-of-text token of the batch (the zero padding) change nothing that is pooled: drop them.
        let l = eot.max(0)?.to_scalar::<u32>()? as usize + 1;
        let tokens = tokens.narrow(1, 0, l)?;
        let w = self.cfg.width;
        // [N, L, W]
        let x = self.token_embedding.embedding(&tokens.flatten_all()?)?.reshape((n, l, w))?;
        let x = crate::kernels::bias_add(&x, &self.positional_embedding.narrow(0, 0, l)?)?;
        // [N, W]
        let pooled = forward_blocks_at(&self.blocks, &x, &eot, true, train)?;
        Ok(self.ln_final.forward_t(&pooled, train)?.matmul(&self.text_projection)?)
    }
}

impl Params for TextTransformer {
    fn visit(&self, f: &mut dyn FnMut(&str, &Tensor)) {
        self.token_embedding.visit(f);
        self.positional_embedding.visit(f);
        self.blocks.visit(f);
        self.ln_final.visit(f);
        self.text_projection.visit(f);
    }
}

/// The text side of ActionCLIP: the CLIP text tower, token ids or sentences in, embeddings out. Sentences
/// are tokenized with the tokenizer the caller brings ([`Tokenizer::new`] for CLIP's own vocabulary).
#[derive(Clone, Debug)]
pub struct TextEncoder {
    tower: TextTransformer,
}

impl TextEncoder {
    /// Reads the text tower at the root of `vb`.
    pub fn new(vb: VarBuilder, cfg: &TextConfig, embed_dim: usize) -> Result<Self> {
        Ok(Self { tower: TextTransformer::new(vb, cfg, embed_dim)? })
    }

    /// The same encoder with the linear weights of its tower's blocks held as `format` says.
    pub fn with_tower_weights(&self, format: TowerWeights) -> Result<Self> {
        Ok(Self { tower: self.tower.with_block_weights(format)? })
    }

    /// The tower.
    pub fn tower(&self) -> &TextTransformer {
        &self.tower
    }

    /// Encodes token ids (inference path).
    // [N, 77] u32 -> [N, D]
    pub fn encode_tokens(&self, tokens: &Tensor) -> Result<Tensor> {
        self.tower.forward_t(tokens, false)
    }

    /// Tokenizes sentences with `tokenizer` and encodes them; an over-long sentence is
    /// [`Error::TextTooLong`].
    // N sentences -> [N, D]
    pub fn encode_texts<S: AsRef<str>>(&self, tokenizer: &Tokenizer, texts: &[S]) -> Result<Tensor> {
        let tokens = tokenizer.encode_batch(texts, self.tower.token_embedding.device())?;
        self.encode_tokens(&tokens)
    }
}

impl Params for TextEncoder {
    fn visit(&self, f: &mut dyn FnMut(&str, &Tensor)) {
        self.tower.visit(f)
    }
}
