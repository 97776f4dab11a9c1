//! [`ActionClip`] (video encoder + text encoder + logit scale) and [`ZeroShotClassifier`] (class
//! sentences encoded once, videos scored against them).
use std::collections::HashSet;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use candle_nn::{Init, VarBuilder};

use crate::{
    clip::TextEncoder,
    config::ActionClipConfig,
    data::MAX_CLASSES,
    loss,
    nn::{
        params::{Named, Params},
        TowerWeights,
    },
    prompts::{self, Template},
    video_encoder::VideoEncoder,
    Error, Result, Tokenizer,
};

/// CLIP's initial logit scale, ln(1 / 0.07).
const INIT_LOGIT_SCALE: f64 = 2.659_260_036_932_778;
/// The fixed similarity scale of ActionCLIP's test-time ensemble.
pub const ENSEMBLE_SCALE: f64 = 100.0;
/// Sentences per text-encoder call when encoding class prompts.
const TEXT_CHUNK: usize = 256;

/// The whole ActionCLIP model.
#[derive(Clone)]
pub struct ActionClip {
    video: VideoEncoder,
    text: TextEncoder,
    logit_scale: Named<Tensor>,
    cfg: ActionClipConfig,
}

impl ActionClip {
    /// Builds the model for `cfg` from `vb` in canonical (OpenAI + `fusion_model.`) names. Over a
    /// `VarMap`, missing weights are created with ActionCLIP's initialisation, which makes the model
    /// trainable.
    pub fn new(vb: VarBuilder, cfg: &ActionClipConfig) -> Result<Self> {
        cfg.validate()?;
        #[cfg(feature = "cuda")]
        if let Device::Cuda(device) = vb.device() {
            crate::kernels::retain_freed_memory(device)?;
        }
        let video = VideoEncoder::new(vb.clone(), cfg)?;
        let text = TextEncoder::new(vb.clone(), &cfg.clip.text, cfg.clip.embed_dim)?;
        let logit_scale = Named::read(&vb, (), "logit_scale", Init::Const(INIT_LOGIT_SCALE))?;
        Ok(Self { video, text, logit_scale, cfg: cfg.clone() })
    }

    /// Every canonical key [`ActionClip::new`] reads for `config` and its shape, in the order it reads
    /// them: the image tower (with `visual.time_embedding` when joint), the post-network head under
    /// `fusion_model.`, the text tower and `logit_scale`. The record comes from running `new` over a
    /// builder that only notes what is read, so it names exactly the weights of
    /// [`ActionClip::named_tensors`] of a new model. [`ActionClip::load`] checks a checkpoint against it
    /// before building, so a missing key or a wrong shape is a typed error naming the key.
    pub fn expected_shapes(config: &ActionClipConfig) -> Result<Vec<(String, Vec<usize>)>> {
        crate::weights::recorded_shapes(|vb| Self::new(vb, config))
    }

    /// Loads a model from any supported checkpoint: OpenAI/open_clip safetensors or `.pt` state dicts,
    /// Hugging Face CLIP safetensors, ActionCLIP training checkpoints, our own files and run directories,
    /// or (feature `hub`) a hub model id such as `openai/clip-vit-base-patch16`. Dimensions, the visual
    /// prompt and the frame count are inferred from the weights (or read from our config metadata).
    pub fn load(source: impl AsRef<Path>, device: &Device, dtype: DType) -> Result<(Self, ActionClipConfig)> {
        let weights = crate::weights::load(source.as_ref())?;
        let cfg = weights.action_clip_config()?;
        crate::weights::check_shapes(&weights.tensors, &Self::expected_shapes(&cfg)?)?;
        let vb = weights.var_builder(dtype, device);
        let model = Self::new(vb, &cfg)?;
        Ok((model, cfg))
    }

    /// The same model with the linear layers of its image and text towers held as `format` says, for
    /// inference: [`TowerWeights::Packed`] keeps f32 and its results, laid out once for the CPU's
    /// AVX-512 or AVX2 GEMM (faster), [`TowerWeights::F16`] halves their memory, [`TowerWeights::Int8`] quarters
    /// it and runs the CPU's integer GEMM (int8 and packed: f32 activations on the CPU; a training
    /// forward then fails). Patch
    /// embedding, projections and the temporal head keep their weights. See the README for the
    /// measured effect on speed and accuracy.
    pub fn with_tower_weights(&self, format: TowerWeights) -> Result<Self> {
        Ok(Self {
            video: self.video.with_tower_weights(format)?,
            text: self.text.with_tower_weights(format)?,
            logit_scale: self.logit_scale.clone(),
            cfg: self.cfg.clone(),
        })
    }

    /// The configuration the model was built with.
    pub fn config(&self) -> &ActionClipConfig {
        &self.cfg
    }

    /// The video encoder.
    pub fn video_encoder(&self) -> &VideoEncoder {
        &self.video
    }

    /// The text encoder.
    pub fn text_encoder(&self) -> &TextEncoder {
        &self.text
    }

    /// The learned logit scale (natural log of the similarity factor).
    pub fn logit_scale(&self) -> &Tensor {
        &self.logit_scale
    }

    /// The device of the weights.
    pub fn device(&self) -> &Device {
        self.logit_scale.device()
    }

    /// The dtype of the weights.
    pub fn dtype(&self) -> DType {
        self.logit_scale.dtype()
    }

    /// Video features (inference path; not normalised).
    // [B, T, 3, H, W] -> [B, D]
    pub fn encode_video(&self, frames: &Tensor) -> Result<Tensor> {
        self.video.forward_t(&frames.to_dtype(self.dtype())?, false)
    }

    /// Video features; `train = true` uses only differentiable ops.
    // [B, T, 3, H, W] -> [B, D]
    pub fn encode_video_t(&self, frames: &Tensor, train: bool) -> Result<Tensor> {
        self.video.forward_t(&frames.to_dtype(self.dtype())?, train)
    }

    /// Text features (inference path; not normalised).
    // [N, 77] u32 -> [N, D]
    pub fn encode_text(&self, tokens: &Tensor) -> Result<Tensor> {
        self.text.tower().forward_t(tokens, false)
    }

    /// Text features; `train = true` uses only differentiable ops.
    // [N, 77] u32 -> [N, D]
    pub fn encode_text_t(&self, tokens: &Tensor, train: bool) -> Result<Tensor> {
        self.text.tower().forward_t(tokens, train)
    }

    /// `exp(logit_scale) * cos(video, text)` and its transpose.
    // [B, D], [N, D] -> ([B, N], [N, B])
    pub fn logits(&self, video: &Tensor, text: &Tensor) -> Result<(Tensor, Tensor)> {
        loss::cosine_logits(video, text, &self.logit_scale.exp()?)
    }

    /// The full forward: video and text embeddings, both logit matrices and, when `labels` (one per video,
    /// the class of the sentence at the same row) are given, the symmetric KL loss. `train = true` uses
    /// only differentiable ops.
    // [B, T, 3, H, W], [N, 77] u32 -> ActionClipOutput (loss needs N = B)
    pub fn forward_t(
        &self,
        frames: &Tensor,
        tokens: &Tensor,
        labels: Option<&[u32]>,
        train: bool,
    ) -> Result<ActionClipOutput> {
        let video_embeds = self.encode_video_t(frames, train)?;
        let text_embeds = self.encode_text_t(tokens, train)?;
        let (logits_per_video, logits_per_text) = self.logits(&video_embeds, &text_embeds)?;
        let loss =
            labels.map(|labels| loss::symmetric_kl_loss(&logits_per_video, &logits_per_text, labels)).transpose()?;
        Ok(ActionClipOutput { video_embeds, text_embeds, logits_per_video, logits_per_text, loss })
    }

    /// Every weight under its canonical checkpoint name.
    pub fn named_tensors(&self) -> Vec<(String, Tensor)> {
        let mut out = Vec::new();
        self.visit(&mut |name, t| out.push((name.to_string(), t.clone())));
        out
    }

    /// Writes the weights as safetensors in OpenAI names with the head under `fusion_model.` and the
    /// configuration in the file's metadata, so [`ActionClip::load`] restores the same model.
    pub fn save_safetensors(&self, path: impl AsRef<Path>) -> Result<()> {
        let tensors: std::collections::HashMap<_, _> = self.named_tensors().into_iter().collect();
        crate::weights::save_safetensors(&tensors, Some(&self.cfg), path.as_ref())
    }
}

/// What [`ActionClip::forward_t`] returns, for B videos and N sentences.
#[derive(Clone, Debug)]
pub struct ActionClipOutput {
    /// Video features `[B, D]`, not normalised.
    pub video_embeds: Tensor,
    /// Text features `[N, D]`, not normalised.
    pub text_embeds: Tensor,
    /// `exp(logit_scale) * cos(video, text)`, `[B, N]`.
    pub logits_per_video: Tensor,
    /// The transpose of `logits_per_video`, `[N, B]`.
    pub logits_per_text: Tensor,
    /// ActionCLIP's symmetric KL loss, a scalar, when labels were given.
    pub loss: Option<Tensor>,
}

impl Params for ActionClip {
    fn visit(&self, f: &mut dyn FnMut(&str, &Tensor)) {
        self.video.visit(f);
        self.text.visit(f);
        self.logit_scale.visit(f);
    }
}

/// Zero-shot classification: every label is written with every template, encoded once, and a video's
/// class probabilities are ActionCLIP's test-time ensemble (per template, softmax over classes of
/// `100 * cos`; then the mean over templates).
///
/// Labels are used as given (humanize them with [`prompts::humanize`] first if you want words); repeated
/// labels are kept once, in first-seen order.
pub struct ZeroShotClassifier<'a> {
    model: &'a ActionClip,
    tokenizer: &'a Tokenizer,
    templates: Vec<Template>,
    labels: Vec<String>,
    /// Normalised class features [templates, classes, D].
    class_features: Tensor,
}

impl<'a> ZeroShotClassifier<'a> {
    /// Encodes `labels` x `templates` with the model's text tower.
    pub fn new<S: AsRef<str>>(
        model: &'a ActionClip,
        tokenizer: &'a Tokenizer,
        labels: &[S],
        templates: &[Template],
    ) -> Result<Self> {
        if templates.is_empty() {
            return Err(Error::Labels("no templates given".into()));
        }
        let labels = dedup_labels(labels, &[])?;
        let mut zs = Self {
            model,
            tokenizer,
            templates: templates.to_vec(),
            labels: Vec::new(),
            class_features: Tensor::zeros(0, DType::F32, model.device())?,
        };
        zs.class_features = zs.encode_labels(&labels)?;
        zs.labels = labels;
        Ok(zs)
    }

    /// A classifier over class embeddings computed before (by [`ZeroShotClassifier::new`] with the same
    /// model, tokenizer, labels and templates): `class_features` is `[templates, labels, D]`, normalised,
    /// in template and label order, as [`ZeroShotClassifier::class_features`] returns it. Labels are
    /// deduplicated as by `new`; a shape that does not fit is [`Error::InputShape`].
    pub fn from_class_features<S: AsRef<str>>(
        model: &'a ActionClip,
        tokenizer: &'a Tokenizer,
        labels: &[S],
        templates: &[Template],
        class_features: Tensor,
    ) -> Result<Self> {
        let labels = dedup_labels(labels, &[])?;
        let expected = [templates.len(), labels.len(), model.config().clip.embed_dim];
        if class_features.dims() != expected {
            return Err(Error::InputShape {
                what: "class_features",
                expected: format!("{expected:?} (templates, labels, embedding width)"),
                found: class_features.dims().to_vec(),
            });
        }
        let class_features = class_features.to_dtype(DType::F32)?.to_device(model.device())?;
        Ok(Self { model, tokenizer, templates: templates.to_vec(), labels, class_features })
    }

    /// The labels, in class-index order.
    pub fn labels(&self) -> &[String] {
        &self.labels
    }

    /// The templates.
    pub fn templates(&self) -> &[Template] {
        &self.templates
    }

    /// The normalised class embeddings `[templates, labels, D]` (f32): one text feature per template and
    /// label, in template and label order.
    pub fn class_features(&self) -> &Tensor {
        &self.class_features
    }

    /// The model the classifier scores videos with (its frame count and input size set the sampling).
    pub fn model(&self) -> &'a ActionClip {
        self.model
    }

    /// Adds labels (already present ones are skipped); only the new sentences are encoded.
    pub fn add_labels<S: AsRef<str>>(&mut self, labels: &[S]) -> Result<()> {
        let new = dedup_labels(labels, &self.labels)?;
        let features = self.encode_labels(&new)?;
        self.class_features = Tensor::cat(&[&self.class_features, &features], 1)?;
        self.labels.extend(new);
        Ok(())
    }

    /// Replaces all labels.
    pub fn set_labels<S: AsRef<str>>(&mut self, labels: &[S]) -> Result<()> {
        let labels = dedup_labels(labels, &[])?;
        self.class_features = self.encode_labels(&labels)?;
        self.labels = labels;
        Ok(())
    }

    // C labels -> [templates, C, D], normalised
    fn encode_labels(&self, labels: &[String]) -> Result<Tensor> {
        let sentences = prompts::fill_all(&self.templates, labels);
        let device = self.model.device();
        let chunks = sentences
            .chunks(TEXT_CHUNK)
            .map(|chunk| {
                let tokens = self.tokenizer.encode_batch(chunk, device)?;
                loss::normalize(&self.model.encode_text(&tokens)?.to_dtype(DType::F32)?)
            })
            .collect::<Result<Vec<_>>>()?;
        let features = Tensor::cat(&chunks, 0)?;
        let d = features.dim(1)?;
        Ok(features.reshape((self.templates.len(), labels.len(), d))?)
    }

    /// Class probabilities of video features by the template ensemble.
    // [B, D] -> [B, C]
    pub fn probabilities(&self, video_features: &Tensor) -> Result<Tensor> {
        ensemble_probabilities(video_features, &self.class_features)
    }

    /// The `k` most probable labels of every video, most probable first.
    // [B, T, 3, H, W] -> B lists of k (label, probability)
    pub fn classify(&self, frames: &Tensor, k: usize) -> Result<Vec<Vec<(String, f32)>>> {
        let features = self.model.encode_video(frames)?;
        self.classify_features(&features, k)
    }

    /// The `k` most probable labels for precomputed video features.
    // [B, D] -> B lists of k (label, probability)
    pub fn classify_features(&self, video_features: &Tensor, k: usize) -> Result<Vec<Vec<(String, f32)>>> {
        let probs = self.probabilities(video_features)?.to_vec2::<f32>()?;
        Ok(probs
            .into_iter()
            .map(|row| top_k(&row, k).into_iter().map(|(i, p)| (self.labels[i].clone(), p)).collect())
            .collect())
    }
}

/// ActionCLIP's test-time ensemble: `softmax_c(100 * cos(v, text[j, c]))` averaged over templates j.
// [B, D], [J, C, D] (normalised) -> [B, C]
pub fn ensemble_probabilities(video_features: &Tensor, class_features: &Tensor) -> Result<Tensor> {
    let (j, c, d) = class_features.dims3()?;
    let b = video_features.dim(0)?;
    let v = loss::normalize(&video_features.to_dtype(DType::F32)?)?;
    let sims = (v.matmul(&class_features.reshape((j * c, d))?.t()?)? * ENSEMBLE_SCALE)?;
    let probs = candle_nn::ops::softmax_last_dim(&sims.reshape((b, j, c))?.contiguous()?)?;
    Ok(probs.mean(1)?)
}

/// Indices and values of the `k` largest entries, largest first.
pub fn top_k(values: &[f32], k: usize) -> Vec<(usize, f32)> {
    let mut idx: Vec<usize> = (0..values.len()).collect();
    idx.sort_by(|&a, &b| values[b].total_cmp(&values[a]));
    idx.into_iter().take(k).map(|i| (i, values[i])).collect()
}

/// Labels without repeats (and without those in `existing`); empty input, an empty label, or more than
/// [`MAX_CLASSES`] labels with `existing` is an error.
fn dedup_labels<S: AsRef<str>>(labels: &[S], existing: &[String]) -> Result<Vec<String>> {
    if labels.is_empty() {
        return Err(Error::Labels("the label list is empty".into()));
    }
    let mut seen: HashSet<&str> = existing.iter().map(String::as_str).collect();
    let mut out: Vec<String> = Vec::with_capacity(labels.len().min(MAX_CLASSES));
    for l in labels {
        let l = l.as_ref().trim();
        if l.is_empty() {
            return Err(Error::Labels("a label is empty".into()));
        }
        if seen.insert(l) {
            if seen.len() > MAX_CLASSES {
                return Err(Error::Labels(format!("more than {MAX_CLASSES} labels (data::MAX_CLASSES)")));
            }
            out.push(l.to_string());
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use candle_nn::VarMap;

    use super::*;
    use crate::{ClipConfig, PostNetwork, TextConfig, VisionConfig, VisualPrompt};

    /// Names and shapes of a model's weights, sorted by name.
    fn named_shapes(model: &ActionClip) -> BTreeMap<String, Vec<usize>> {
        model.named_tensors().into_iter().map(|(name, t)| (name, t.dims().to_vec())).collect()
    }

    #[test]
    fn expected_shapes_name_exactly_the_weights_of_a_new_model() -> Result<()> {
        let clip = ClipConfig {
            vision: VisionConfig { width: 64, layers: 2, heads: 1, patch_size: 8, image_size: 32 },
            text: TextConfig { width: 64, layers: 1, heads: 1, vocab_size: 50, context_length: 8 },
            embed_dim: 32,
        };
        let posts = [
            PostNetwork::MeanPool,
            PostNetwork::Conv1d { reference_reshape: true },
            PostNetwork::Conv1d { reference_reshape: false },
            PostNetwork::Lstm,
            PostNetwork::Transformer { layers: 2 },
            PostNetwork::TransformerCls { layers: 2 },
        ];
        for post in posts {
            for (joint, temporal_shift) in [(false, false), (false, true), (true, false), (true, true)] {
                let cfg = ActionClipConfig {
                    clip: clip.clone(),
                    frames: 4,
                    prompt: VisualPrompt { joint, temporal_shift, post },
                };
                if cfg.validate().is_err() {
                    assert!(ActionClip::expected_shapes(&cfg).is_err(), "{:?}", cfg.prompt);
                    continue;
                }
                let expected = ActionClip::expected_shapes(&cfg)?;
                let by_name: BTreeMap<String, Vec<usize>> = expected.iter().cloned().collect();
                assert_eq!(by_name.len(), expected.len(), "{:?}: a name is read twice", cfg.prompt);
                let model = ActionClip::new(VarBuilder::from_varmap(&VarMap::new(), DType::F32, &Device::Cpu), &cfg)?;
                assert_eq!(named_shapes(&model), by_name, "{:?}", cfg.prompt);
                // Converted towers list the same weights (int8 ones dequantized).
                assert_eq!(named_shapes(&model.with_tower_weights(TowerWeights::Int8)?), by_name, "{:?}", cfg.prompt);
            }
        }
        Ok(())
    }
}
