//! A run's settings in the vocabulary of ActionCLIP's configuration files (`configs/ucf101/ucf_train.yaml`).
//! [`Recipe::default`] is the reference's UCF101 recipe; [`Recipe::apply`] reads a parsed configuration
//! file (YAML or TOML read into a `serde_json::Value`) with the reference's keys (`network.arch`,
//! `network.sim_header`, `data.num_segments`, `solver.lr`, ...) or the command line's names (`arch`,
//! `sim_header`, `frames`, `lr`, ...); [`Recipe::train_config`] and [`Recipe::visual_prompt`] turn it into
//! this crate's settings.
//!
//! ```
//! use actionclip::train::recipe::Recipe;
//!
//! let yaml = serde_json::json!({ "network": { "sim_header": "meanP" }, "solver": { "lr": 1e-5, "epochs": 30 } });
//! let mut recipe = Recipe::default();
//! recipe.apply(&yaml)?;
//! let cfg = recipe.train_config(Default::default())?;
//! assert_eq!((cfg.epochs, cfg.optimizer.lr), (30, 1e-5));
//! # Ok::<(), actionclip::Error>(())
//! ```
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::config::{SchedulePolicy, TrainConfig};
use super::optimizer::AdamWConfig;
use crate::{Error, PostNetwork, Result, VisualPrompt};

/// Every setting of a fine-tuning run, named as in the reference's configuration files.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Recipe {
    /// CLIP architecture (`ViT-B/32`, `ViT-B/16`, `ViT-L/14`, `ViT-L/14@336px`).
    pub arch: String,
    /// Starting weights: a checkpoint file or directory, or a hub model id (`pretrain`).
    pub weights: Option<String>,
    /// Train from scratch (random initialisation of the `arch` dimensions).
    pub scratch: bool,
    /// Frames (segments) per clip (`data.num_segments`).
    pub frames: usize,
    /// Consecutive frames per segment (`data.seg_length`).
    pub seg_length: usize,
    /// Temporal head: `meanP`, `Conv_1D`, `LSTM`, `Transf`, `Transf_cls` (`network.sim_header`).
    pub sim_header: String,
    /// Pre-network joint space-time prompt (`network.joint`).
    pub joint: bool,
    /// In-network temporal shift (`network.tsm`).
    pub tsm: bool,
    /// Epochs (`solver.epochs`).
    pub epochs: usize,
    /// Base learning rate, the text tower's (`solver.lr`).
    pub lr: f64,
    /// Image tower learning rate = `lr * ratio` (`solver.ratio`).
    pub ratio: f64,
    /// Temporal head learning rate = `lr * f_ratio` (`solver.f_ratio`).
    pub f_ratio: f64,
    /// Decoupled weight decay (`solver.weight_decay`).
    pub weight_decay: f64,
    /// Warmup epochs (`solver.lr_warmup_step`).
    pub warmup: f64,
    /// Schedule: `cosine`, `multistep` or `constant` (`solver.type`).
    pub schedule: String,
    /// Epochs at which `multistep` drops the rate (`solver.lr_decay_step`).
    pub lr_decay_step: Vec<f64>,
    /// The `multistep` drop factor (`solver.lr_decay_factor`).
    pub lr_decay_factor: f64,
    /// Clips per batch (`data.batch_size`).
    pub batch_size: usize,
    /// Loader threads (`data.workers`).
    pub workers: usize,
    /// UCF101 split, 1 to 3 (`data.split`).
    pub split: u8,
    /// Input resolution; `None`: the model's (`data.input_size`).
    pub input_size: Option<u32>,
    /// UCF101 root (`data.root`).
    pub root: Option<PathBuf>,
    /// TSN/ActionCLIP training list file (`data.train_list`).
    pub train_list: Option<PathBuf>,
    /// Test list file (`data.val_list`).
    pub val_list: Option<PathBuf>,
    /// Label CSV `id,name` (`data.label_list`).
    pub label_list: Option<PathBuf>,
    /// Run directory (`logging.output`).
    pub output: PathBuf,
    /// Checkpoint to resume from.
    pub resume: Option<PathBuf>,
    /// Only evaluate the starting weights (`solver.evaluate`).
    pub evaluate_only: bool,
    /// Seed.
    pub seed: u64,
    /// Evaluate every n epochs (`logging.eval_freq`).
    pub eval_freq: usize,
}

impl Default for Recipe {
    /// The reference's UCF101 recipe (`configs/ucf101/ucf_train.yaml`): ViT-B/16, 8 frames, Transf, 50 epochs,
    /// AdamW lr 5e-6 (image tower x1, head x10), weight decay 0.2, 5 warmup epochs then cosine, batch 32.
    fn default() -> Self {
        Self {
            arch: "ViT-B/16".into(),
            weights: None,
            scratch: false,
            frames: 8,
            seg_length: 1,
            sim_header: "Transf".into(),
            joint: false,
            tsm: false,
            epochs: 50,
            lr: 5e-6,
            ratio: 1.0,
            f_ratio: 10.0,
            weight_decay: 0.2,
            warmup: 5.0,
            schedule: "cosine".into(),
            lr_decay_step: vec![15.0],
            lr_decay_factor: 0.1,
            batch_size: 32,
            workers: 2,
            split: 1,
            input_size: None,
            root: None,
            train_list: None,
            val_list: None,
            label_list: None,
            output: PathBuf::from("runs/finetune_ucf101"),
            resume: None,
            evaluate_only: false,
            seed: 1024,
            eval_freq: 1,
        }
    }
}

impl Recipe {
    /// Reads the settings `cfg` holds over these; each has a reference key and the command line's name.
    pub fn apply(&mut self, cfg: &Value) -> Result<()> {
        self.apply_model_keys(cfg)?;
        self.apply_solver_keys(cfg)?;
        self.apply_data_keys(cfg)?;
        let keys = Keys(cfg);
        set(&mut self.resume, keys.path(&["resume"])?);
        set(&mut self.output, keys.string(&["output", "logging.output"])?.map(PathBuf::from));
        set(&mut self.seed, keys.whole(&["seed"])?);
        set(&mut self.eval_freq, keys.whole(&["logging.eval_freq", "eval_freq"])?);
        Ok(())
    }

    fn apply_model_keys(&mut self, cfg: &Value) -> Result<()> {
        let keys = Keys(cfg);
        set(&mut self.arch, keys.string(&["network.arch", "arch"])?);
        set(&mut self.weights, keys.optional_string(&["pretrain", "weights"])?);
        set(&mut self.frames, keys.whole(&["data.num_segments", "frames"])?);
        set(&mut self.seg_length, keys.whole(&["data.seg_length", "seg_length"])?);
        set(&mut self.sim_header, keys.string(&["network.sim_header", "sim_header"])?);
        set(&mut self.joint, keys.flag(&["network.joint", "joint"])?);
        set(&mut self.tsm, keys.flag(&["network.tsm", "tsm"])?);
        Ok(())
    }

    fn apply_solver_keys(&mut self, cfg: &Value) -> Result<()> {
        let keys = Keys(cfg);
        set(&mut self.epochs, keys.whole(&["solver.epochs", "epochs"])?);
        set(&mut self.lr, keys.number(&["solver.lr", "lr"])?);
        set(&mut self.ratio, keys.number(&["solver.ratio", "ratio"])?);
        set(&mut self.f_ratio, keys.number(&["solver.f_ratio", "f_ratio"])?);
        set(&mut self.weight_decay, keys.number(&["solver.weight_decay", "weight_decay"])?);
        set(&mut self.warmup, keys.number(&["solver.lr_warmup_step", "warmup"])?);
        set(&mut self.schedule, keys.string(&["solver.type", "schedule"])?);
        set(&mut self.lr_decay_step, keys.numbers(&["solver.lr_decay_step", "lr_decay_step"])?);
        set(&mut self.lr_decay_factor, keys.number(&["solver.lr_decay_factor", "lr_decay_factor"])?);
        set(&mut self.evaluate_only, keys.flag(&["solver.evaluate", "evaluate_only"])?);
        Ok(())
    }

    fn apply_data_keys(&mut self, cfg: &Value) -> Result<()> {
        let keys = Keys(cfg);
        set(&mut self.batch_size, keys.whole(&["data.batch_size", "batch_size"])?);
        set(&mut self.workers, keys.whole(&["data.workers", "workers"])?);
        set(&mut self.split, keys.whole(&["data.split", "split"])?);
        set(&mut self.input_size, keys.whole(&["data.input_size", "input_size"])?.map(Some));
        set(&mut self.root, keys.path(&["data.root", "root"])?);
        set(&mut self.train_list, keys.path(&["data.train_list", "train_list"])?);
        set(&mut self.val_list, keys.path(&["data.val_list", "val_list"])?);
        set(&mut self.label_list, keys.path(&["data.label_list", "label_list"])?);
        Ok(())
    }

    /// The learning-rate policy `schedule` names (`cosine`, `multistep` with `lr_decay_step` and
    /// `lr_decay_factor`, or `constant`; any case).
    pub fn schedule_policy(&self) -> Result<SchedulePolicy> {
        match self.schedule.to_lowercase().as_str() {
            "cosine" => Ok(SchedulePolicy::Cosine),
            "multistep" => {
                Ok(SchedulePolicy::MultiStep { milestones: self.lr_decay_step.clone(), gamma: self.lr_decay_factor })
            }
            "constant" => Ok(SchedulePolicy::Constant),
            other => Err(Error::Config(format!("unknown schedule {other:?} (cosine, multistep, constant)"))),
        }
    }

    /// `base` with this recipe's epochs, AdamW rates and weight decay, warmup, schedule, seed and evaluation
    /// frequency.
    pub fn train_config(&self, base: TrainConfig) -> Result<TrainConfig> {
        Ok(TrainConfig {
            epochs: self.epochs,
            optimizer: AdamWConfig {
                lr: self.lr,
                ratio: self.ratio,
                f_ratio: self.f_ratio,
                weight_decay: self.weight_decay,
                ..base.optimizer
            },
            warmup_epochs: self.warmup,
            schedule: self.schedule_policy()?,
            seed: self.seed,
            eval_every: self.eval_freq,
            ..base
        })
    }

    /// The visual prompt of `joint`, `tsm` and `sim_header`; `head_layers` sets the depth of a Transformer
    /// head (the reference's is 6). A `Conv_1D` head convolves along time as this crate's files do.
    pub fn visual_prompt(&self, head_layers: Option<usize>) -> Result<VisualPrompt> {
        let mut post = PostNetwork::from_reference_name(&self.sim_header)?;
        match &mut post {
            PostNetwork::Transformer { layers } | PostNetwork::TransformerCls { layers } => {
                if let Some(n) = head_layers {
                    *layers = n;
                }
            }
            // The reference's reshape only applies to its own checkpoints.
            PostNetwork::Conv1d { reference_reshape } => *reference_reshape = false,
            _ => {}
        }
        Ok(VisualPrompt { joint: self.joint, temporal_shift: self.tsm, post })
    }

    /// The Hugging Face hub id of OpenAI's weights for `arch`, when it names one.
    pub fn hub_id(&self) -> Option<&'static str> {
        let key: String = self.arch.to_lowercase().chars().filter(|c| c.is_ascii_alphanumeric() || *c == '@').collect();
        match key.as_str() {
            "vitb32" => Some("openai/clip-vit-base-patch32"),
            "vitb16" => Some("openai/clip-vit-base-patch16"),
            "vitl14" => Some("openai/clip-vit-large-patch14"),
            "vitl14@336px" | "vitl14336" => Some("openai/clip-vit-large-patch14-336"),
            _ => None,
        }
    }
}

/// Overwrites `field` with `value` when there is one.
fn set<T>(field: &mut T, value: Option<T>) {
    if let Some(v) = value {
        *field = v;
    }
}

/// Typed reads of a parsed configuration; each key list names one setting, the first present key wins.
struct Keys<'a>(&'a Value);

impl Keys<'_> {
    /// The value of the first of `keys` (dotted paths) that is present and not null, converted.
    fn read<T>(&self, keys: &[&str], expected: &str, convert: impl Fn(&Value) -> Option<T>) -> Result<Option<T>> {
        let found =
            keys.iter().find_map(|k| k.split('.').try_fold(self.0, |v, part| v.get(part)).filter(|v| !v.is_null()));
        match found {
            None => Ok(None),
            Some(v) => convert(v)
                .map(Some)
                .ok_or_else(|| Error::Config(format!("config key {:?} is {v}: expected {expected}", keys[0]))),
        }
    }

    fn number(&self, keys: &[&str]) -> Result<Option<f64>> {
        self.read(keys, "a number", as_number)
    }

    fn numbers(&self, keys: &[&str]) -> Result<Option<Vec<f64>>> {
        self.read(keys, "a number or a list of numbers", |v| match v {
            Value::Array(a) => a.iter().map(as_number).collect(),
            other => as_number(other).map(|x| vec![x]),
        })
    }

    fn whole<T: TryFrom<u64>>(&self, keys: &[&str]) -> Result<Option<T>> {
        self.read(keys, "a whole number in range", |v| v.as_u64().and_then(|x| T::try_from(x).ok()))
    }

    fn flag(&self, keys: &[&str]) -> Result<Option<bool>> {
        self.read(keys, "true or false", Value::as_bool)
    }

    fn string(&self, keys: &[&str]) -> Result<Option<String>> {
        self.read(keys, "a string", |v| v.as_str().map(str::to_string))
    }

    /// A setting an empty string (or any non-string) clears.
    fn optional_string(&self, keys: &[&str]) -> Result<Option<Option<String>>> {
        self.read(keys, "a string", |v| Some(v.as_str().filter(|s| !s.is_empty()).map(str::to_string)))
    }

    /// A path an empty string (or any non-string) clears.
    fn path(&self, keys: &[&str]) -> Result<Option<Option<PathBuf>>> {
        Ok(self.optional_string(keys)?.map(|s| s.map(PathBuf::from)))
    }
}

/// A number, or a string holding one (YAML reads `5.e-6` as a string).
fn as_number(v: &Value) -> Option<f64> {
    v.as_f64().or_else(|| v.as_str().and_then(|s| s.parse().ok()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::path::Path;

    /// The keys of the reference's `configs/ucf101/ucf_train.yaml` that this crate reads.
    fn reference_ucf101() -> Value {
        json!({
            "pretrain": null, "resume": null, "seed": 1024,
            "data": { "dataset": "ucf101", "num_segments": 8, "seg_length": 1, "split": 1, "batch_size": 16, "workers": 8,
                      "train_list": "lists/ucf101/train_rgb_split1.txt", "val_list": "lists/ucf101/val_rgb_split1.txt",
                      "label_list": "lists/ucf_labels.csv", "input_size": 224, "randaug": { "N": 0, "M": 0 } },
            "network": { "arch": "ViT-B/32", "init": true, "tsm": false, "drop_out": 0.0, "emb_dropout": 0.0, "type": "clip_ucf",
                         "sim_header": "Transf", "joint": false, "describe": null },
            "solver": { "type": "cosine", "epochs": 50, "start_epoch": 0, "epoch_offset": 0, "optim": "adamw", "lr": "5.e-6",
                        "lr_warmup_step": 5, "momentum": 0.9, "weight_decay": 0.2, "lr_decay_step": 15, "lr_decay_factor": 0.1,
                        "clip_gradient": 20, "loss_type": "nll", "evaluate": false, "ratio": 1, "f_ratio": 10 },
            "logging": { "print_freq": 10, "eval_freq": 1 }
        })
    }

    #[test]
    fn reads_the_reference_yaml_keys() {
        let mut r = Recipe::default();
        r.apply(&reference_ucf101()).unwrap();
        assert_eq!(
            (r.arch.as_str(), r.frames, r.batch_size, r.workers, r.input_size),
            ("ViT-B/32", 8, 16, 8, Some(224))
        );
        assert_eq!((r.lr, r.ratio, r.f_ratio, r.weight_decay, r.warmup), (5e-6, 1.0, 10.0, 0.2, 5.0));
        assert_eq!(r.lr_decay_step, [15.0]);
        assert_eq!(r.train_list, Some(PathBuf::from("lists/ucf101/train_rgb_split1.txt")));
        assert_eq!((r.weights.as_deref(), r.resume.as_deref()), (None, None));
        assert_eq!(r.output, Recipe::default().output, "a key the file lacks keeps its value");
        let cfg = r.train_config(TrainConfig::default()).unwrap();
        assert_eq!(
            (cfg.epochs, cfg.warmup_epochs, cfg.seed, cfg.eval_every, cfg.schedule.clone()),
            (50, 5.0, 1024, 1, SchedulePolicy::Cosine)
        );
        assert_eq!(
            (cfg.optimizer.lr, cfg.optimizer.ratio, cfg.optimizer.f_ratio, cfg.optimizer.weight_decay),
            (5e-6, 1.0, 10.0, 0.2)
        );
        assert_eq!(
            r.visual_prompt(None).unwrap(),
            VisualPrompt { joint: false, temporal_shift: false, post: PostNetwork::Transformer { layers: 6 } }
        );
        assert_eq!(r.hub_id(), Some("openai/clip-vit-base-patch32"));
    }

    #[test]
    fn flag_names_multistep_and_heads() {
        let mut r = Recipe::default();
        r.apply(&json!({ "schedule": "MultiStep", "lr_decay_step": [10, 20.5], "sim_header": "Conv_1D", "tsm": true, "weights": "", "output": "runs/x" })).unwrap();
        assert_eq!(
            r.schedule_policy().unwrap(),
            SchedulePolicy::MultiStep { milestones: vec![10.0, 20.5], gamma: 0.1 }
        );
        assert_eq!(
            r.visual_prompt(Some(1)).unwrap(),
            VisualPrompt { joint: false, temporal_shift: true, post: PostNetwork::Conv1d { reference_reshape: false } }
        );
        assert_eq!((r.weights.as_deref(), r.output.as_path()), (None, Path::new("runs/x")));
        r.sim_header = "Transf_cls".into();
        assert_eq!(r.visual_prompt(Some(2)).unwrap().post, PostNetwork::TransformerCls { layers: 2 });
    }

    #[test]
    fn bad_values_are_config_errors() {
        for bad in [
            json!({ "solver": { "lr": "fast" } }),
            json!({ "data": { "split": 300 } }),
            json!({ "network": { "tsm": "yes" } }),
            json!({ "epochs": -1 }),
        ] {
            let err = Recipe::default().apply(&bad).unwrap_err();
            assert!(matches!(&err, Error::Config(m) if m.starts_with("config key")), "{err}");
        }
        let r = Recipe { schedule: "step".into(), ..Recipe::default() };
        assert!(r.train_config(TrainConfig::default()).is_err());
        assert!(Recipe { sim_header: "GRU".into(), ..Recipe::default() }.visual_prompt(None).is_err());
    }
}
