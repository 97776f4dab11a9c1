//! The synthetic demo: eight motion classes written as a UCF101-layout dataset of JPEG frame folders
//! ([`crate::data::synthetic`]) and a tiny ActionCLIP trained on them from scratch, with the settings that
//! take it past 90% top-1 in a few minutes on two CPU cores.
//!
//! The text tower keeps its random initialisation: trained from scratch on eight label sentences that differ
//! in one word, it maps the sentences of classes the image tower cannot tell apart yet onto one point, and
//! then no gradient separates them again (the four translations and the two rotations stay confused at
//! about 48% top-1); frozen, the eight sentence embeddings stay distinct targets and the image tower and the
//! temporal head learn the motions. The clips include left/right and clockwise/counter-clockwise motion, so
//! training clips are never mirrored.
//!
//! ```no_run
//! use actionclip::train::demo::Demo;
//!
//! let demo = Demo::default();
//! let (train, test) = demo.write_dataset("runs/finetune_demo/data")?;
//! let recipe = demo.recipe();
//! let model_cfg = demo.model_config(recipe.frames, recipe.visual_prompt(Some(demo.head_layers))?);
//! assert_eq!((train.len(), test.len(), model_cfg.clip.vision.image_size), (696, 72, 32));
//! # Ok::<(), actionclip::Error>(())
//! ```
use std::path::{Path, PathBuf};

use super::recipe::Recipe;
use super::vars::Freeze;
use crate::data::synthetic::{self, SyntheticConfig, SyntheticFormat};
use crate::data::{ClipPipeline, ClipTransform, Storage, Subset, VideoDataset};
use crate::{ActionClipConfig, ClipConfig, Error, Result, TextConfig, VisionConfig, VisualPrompt};

/// The demo's model size, data size and augmentation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Demo {
    /// Image tower width.
    pub vision_width: usize,
    /// Image tower layers.
    pub vision_layers: usize,
    /// Text tower width (a multiple of 64: one attention head per 64).
    pub text_width: usize,
    /// Text tower layers.
    pub text_layers: usize,
    /// Patch size in pixels.
    pub patch_size: usize,
    /// Input resolution in pixels (the clips are 64x64).
    pub resolution: usize,
    /// Layers of the temporal Transformer head.
    pub head_layers: usize,
    /// Clips per class, 2 to 99; a tenth of them (at least one) are test clips.
    pub clips_per_class: usize,
    /// Train the text tower too.
    pub train_text: bool,
    /// Colour jitter and random grayscale on the training clips.
    pub color_jitter: bool,
}

impl Default for Demo {
    /// Vision width 64 x 2 layers, patch 8, 32 px; text width 64 x 1 layer (frozen); a 1-layer head;
    /// 96 clips per class (87 training and 9 test clips); no colour augmentation.
    fn default() -> Self {
        Self {
            vision_width: 64,
            vision_layers: 2,
            text_width: 64,
            text_layers: 1,
            patch_size: 8,
            resolution: 32,
            head_layers: 1,
            clips_per_class: 96,
            train_text: false,
            color_jitter: false,
        }
    }
}

impl Demo {
    /// The demo's training settings: the tiny model from scratch, 8 frames, temporal shift and a Transf head,
    /// 60 epochs of batch 8, AdamW lr 1e-3 for every group with weight decay 0.05, one warmup epoch then
    /// cosine, seed 0, run directory `runs/finetune_demo`.
    pub fn recipe(&self) -> Recipe {
        Recipe {
            arch: "demo-tiny".into(),
            scratch: true,
            frames: 8,
            sim_header: "Transf".into(),
            tsm: true,
            epochs: 60,
            lr: 1e-3,
            ratio: 1.0,
            f_ratio: 1.0,
            weight_decay: 0.05,
            warmup: 1.0,
            batch_size: 8,
            workers: 1,
            input_size: Some(self.resolution as u32),
            seed: 0,
            output: PathBuf::from("runs/finetune_demo"),
            ..Recipe::default()
        }
    }

    /// The tiny model for `frames` frames per clip and `prompt`.
    pub fn model_config(&self, frames: usize, prompt: VisualPrompt) -> ActionClipConfig {
        ActionClipConfig {
            clip: ClipConfig {
                vision: VisionConfig {
                    width: self.vision_width,
                    layers: self.vision_layers,
                    heads: 1,
                    patch_size: self.patch_size,
                    image_size: self.resolution,
                },
                text: TextConfig {
                    width: self.text_width,
                    layers: self.text_layers,
                    heads: (self.text_width / 64).max(1),
                    vocab_size: 49408,
                    context_length: 77,
                },
                embed_dim: 64,
            },
            frames,
            prompt,
        }
    }

    /// The towers kept fixed: the text tower unless `train_text`.
    pub fn freeze(&self) -> Freeze {
        Freeze { text: !self.train_text, vision: false }
    }

    /// The dataset: 8 motion classes of `clips_per_class` clips, 32 frames of 64x64 each, seed 0.
    pub fn dataset_config(&self) -> SyntheticConfig {
        let clips = self.clips_per_class.max(2);
        SyntheticConfig {
            num_classes: 8,
            clips_per_class: clips,
            test_clips_per_class: (clips / 10).max(1),
            frames: 32,
            width: 64,
            height: 64,
            seed: 0,
            format: SyntheticFormat::FrameFolders,
            ..SyntheticConfig::default()
        }
    }

    /// Writes the dataset into `root`, replacing whatever is there, and returns split 1's training and test
    /// clips. Writing takes a few seconds and is deterministic, so a resumed run sees the same clips, while
    /// a dataset another generator or other settings left is never reused.
    pub fn write_dataset(&self, root: impl AsRef<Path>) -> Result<(VideoDataset, VideoDataset)> {
        let root = root.as_ref();
        if root.exists() {
            std::fs::remove_dir_all(root).map_err(|e| Error::io(root, e))?;
        }
        synthetic::write_dataset(root, &self.dataset_config())?;
        let train = VideoDataset::ucf101(root, 1, Subset::Train, Storage::FrameFolders)?;
        let test = VideoDataset::ucf101(root, 1, Subset::Test, Storage::FrameFolders)?;
        Ok((train, test))
    }

    /// Adapts a training pipeline to the demo's clips: no mirroring (left/right and the rotation direction
    /// are what the classes are about), and no colour augmentation unless `color_jitter`.
    pub fn adapt_train_pipeline(&self, pipeline: &mut ClipPipeline) {
        if let ClipTransform::Train(t) = &mut pipeline.transform {
            t.flip = false;
            if !self.color_jitter {
                t.color_jitter = None;
                t.grayscale_p = 0.0;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::PostNetwork;

    #[test]
    fn the_default_demo_is_the_documented_one() {
        let demo = Demo::default();
        let recipe = demo.recipe();
        let prompt = recipe.visual_prompt(Some(demo.head_layers)).unwrap();
        assert_eq!(
            prompt,
            VisualPrompt { joint: false, temporal_shift: true, post: PostNetwork::Transformer { layers: 1 } }
        );
        let model = demo.model_config(recipe.frames, prompt);
        model.validate().unwrap();
        assert_eq!(
            (
                model.clip.vision.width,
                model.clip.vision.layers,
                model.clip.vision.image_size,
                model.clip.text.layers,
                model.frames
            ),
            (64, 2, 32, 1, 8)
        );
        let data = demo.dataset_config();
        assert_eq!((data.num_classes, data.clips_per_class, data.test_clips_per_class), (8, 96, 9));
        assert_eq!(demo.freeze(), Freeze { text: true, vision: false });
        let cfg = recipe.train_config(Default::default()).unwrap();
        assert_eq!(
            (cfg.epochs, cfg.optimizer.lr, cfg.optimizer.f_ratio, cfg.warmup_epochs, cfg.seed),
            (60, 1e-3, 1.0, 1.0, 0)
        );
    }

    #[test]
    fn writes_a_fresh_dataset_and_adapts_the_pipeline() {
        let root = tempfile::tempdir().unwrap();
        let data = root.path().join("data");
        std::fs::create_dir_all(data.join("Stale")).unwrap();
        let demo = Demo { clips_per_class: 3, ..Demo::default() };
        let (train, test) = demo.write_dataset(&data).unwrap();
        assert_eq!((train.len(), test.len(), train.num_classes()), (16, 8, 8));
        assert!(!data.join("Stale").exists(), "the old contents are gone");
        let mut pipeline = ClipPipeline::train(8, 32).unwrap();
        demo.adapt_train_pipeline(&mut pipeline);
        let ClipTransform::Train(t) = &pipeline.transform else { panic!("a training transform") };
        assert!(!t.flip && t.color_jitter.is_none() && t.grayscale_p == 0.0);
    }
}
