//! What `examples/finetune_ucf101` builds a run from: the reference's YAML read into a `Recipe` (as the
//! example reads `--config`), and the synthetic demo (dataset, model, settings) trained end to end for an
//! epoch on a few clips.
use actionclip::data::{ClipPipeline, Loader, LoaderConfig};
use actionclip::train::demo::Demo;
use actionclip::train::recipe::Recipe;
use actionclip::train::{SchedulePolicy, Silent, StartFrom, TrainConfig, TrainData, Trainer};
use actionclip::PostNetwork;
use candle_core::Device;

/// ActionCLIP's `configs/ucf101/ucf_train.yaml`, as the reference ships it.
const REFERENCE_YAML: &str = r#"
pretrain:
resume:
seed: 1024
data:
    dataset: ucf101
    modality: RGB
    num_segments: 8
    seg_length: 1
    split: 1
    batch_size: 16
    workers: 8
    gpus: 2
    num_classes: 101
    image_tmpl: 'image_{:04d}.jpg'
    train_list: 'lists/ucf101/train_rgb_split1.txt'
    val_list: 'lists/ucf101/val_rgb_split1.txt'
    label_list: 'lists/ucf_labels.csv'
    index_bias: 1
    input_size: 224
    randaug:
        N: 0
        M: 0
network:
    arch: ViT-B/16
    init: True
    tsm: False
    drop_out: 0.0
    emb_dropout: 0.0
    type: clip_ucf
    sim_header: "Transf"
    joint: False
    describe:
solver:
    type: cosine
    epochs: 50
    start_epoch: 0
    epoch_offset: 0
    optim: adamw
    lr: 5.e-6
    lr_warmup_step: 5
    momentum: 0.9
    weight_decay: 0.2
    lr_decay_step: 15
    lr_decay_factor: 0.1
    clip_gradient: 20
    loss_type: nll
    evaluate: False
    ratio: 1
    f_ratio: 10
logging:
    print_freq: 10
    eval_freq: 1
"#;

#[test]
fn the_reference_yaml_becomes_our_settings() {
    let tree: serde_yaml::Value = serde_yaml::from_str(REFERENCE_YAML).unwrap();
    let mut recipe = Recipe::default();
    recipe.apply(&serde_json::to_value(tree).unwrap()).unwrap();
    assert_eq!(
        (recipe.arch.as_str(), recipe.frames, recipe.batch_size, recipe.input_size),
        ("ViT-B/16", 8, 16, Some(224))
    );
    assert_eq!(recipe.hub_id(), Some("openai/clip-vit-base-patch16"));
    let prompt = recipe.visual_prompt(None).unwrap();
    assert_eq!(
        (prompt.joint, prompt.temporal_shift, prompt.post),
        (false, false, PostNetwork::Transformer { layers: 6 })
    );
    let cfg = recipe.train_config(TrainConfig::default()).unwrap();
    assert_eq!((cfg.epochs, cfg.warmup_epochs, cfg.schedule, cfg.seed), (50, 5.0, SchedulePolicy::Cosine, 1024));
    let o = &cfg.optimizer;
    assert_eq!((o.lr, o.ratio, o.f_ratio, o.weight_decay), (5e-6, 1.0, 10.0, 0.2), "`5.e-6` is read as a number");
}

#[test]
fn the_demo_trains_end_to_end() {
    let root = tempfile::tempdir().unwrap();
    let demo = Demo { clips_per_class: 3, ..Demo::default() };
    let (train, test) = demo.write_dataset(root.path().join("data")).unwrap();
    let recipe = demo.recipe();
    let model_cfg = demo.model_config(recipe.frames, recipe.visual_prompt(Some(demo.head_layers)).unwrap());
    let input = recipe.input_size.unwrap();
    let mut train_pipeline = ClipPipeline::train(recipe.frames, input).unwrap();
    demo.adapt_train_pipeline(&mut train_pipeline);
    let loader_cfg = |shuffle| LoaderConfig {
        batch_size: recipe.batch_size,
        workers: 0,
        shuffle,
        seed: recipe.seed,
        ..LoaderConfig::default()
    };
    let data = TrainData {
        train: Loader::new(train, train_pipeline, loader_cfg(true)).unwrap(),
        test: Some(Loader::new(test, ClipPipeline::test(recipe.frames, input).unwrap(), loader_cfg(false)).unwrap()),
        multi_view: None,
    };
    let cfg =
        recipe.train_config(TrainConfig { freeze: demo.freeze(), plots: false, ..TrainConfig::default() }).unwrap();
    let cfg = TrainConfig { epochs: 1, ..cfg };
    let dir = root.path().join("run");
    let mut trainer = Trainer::new(&model_cfg, StartFrom::Scratch, cfg, &Device::Cpu).unwrap().with_run_dir(&dir);
    assert!(
        trainer
            .optimizer()
            .params()
            .iter()
            .all(|p| p.name.starts_with("visual.") || p.name.starts_with("fusion_model.") || p.name == "logit_scale"),
        "the text tower is frozen"
    );
    let summary = trainer.fit(&data, &mut Silent).unwrap();
    assert_eq!((summary.epochs, summary.steps), (1, 2), "16 training clips in batches of 8");
    assert!(summary.epoch_losses[0].is_finite());
    assert_eq!(summary.last_eval.as_ref().map(|e| e.samples), Some(8));
    assert!(dir.join("best/model.safetensors").is_file());
}
