//! Datasets, the synthetic UCF101-layout writer and the threaded loader: shapes, labels, determinism.
use actionclip::data::synthetic::{self, SyntheticConfig, SyntheticFormat};
use actionclip::data::{self, ClipPipeline, Loader, LoaderConfig, Storage, Subset, VideoDataset};
use candle_core::DType;

fn small_cfg(format: SyntheticFormat) -> SyntheticConfig {
    SyntheticConfig {
        num_classes: 4,
        clips_per_class: 4,
        test_clips_per_class: 1,
        frames: 12,
        width: 32,
        height: 32,
        format,
        ..Default::default()
    }
}

fn epoch_data(loader: &Loader, epoch: u64) -> Vec<(Vec<usize>, Vec<u32>, Vec<f32>)> {
    loader
        .epoch(epoch)
        .map(|b| {
            let b = b.unwrap();
            let frames: Vec<f32> = b.frames.to_dtype(DType::F32).unwrap().flatten_all().unwrap().to_vec1().unwrap();
            (b.ids, b.labels.to_vec1::<u32>().unwrap(), frames)
        })
        .collect()
}

#[test]
fn synthetic_frame_folders_in_ucf101_layout() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = small_cfg(SyntheticFormat::FrameFolders);
    let written = synthetic::write_dataset(dir.path(), &cfg).unwrap();
    assert_eq!((written.train_clips, written.test_clips), (12, 4));
    let class_ind = std::fs::read_to_string(dir.path().join("classInd.txt")).unwrap();
    assert!(class_ind.starts_with("1 ShapeMovesRight\n2 ShapeMovesLeft\n"), "{class_ind}");
    let train_list = std::fs::read_to_string(dir.path().join("trainlist01.txt")).unwrap();
    assert!(train_list.contains("ShapeMovesLeft/v_ShapeMovesLeft_g02_c01.avi 2\n"), "{train_list}");

    for split in 1..=3 {
        let train = VideoDataset::ucf101(dir.path(), split, Subset::Train, Storage::FrameFolders).unwrap();
        let test = VideoDataset::ucf101(dir.path(), split, Subset::Test, Storage::FrameFolders).unwrap();
        assert_eq!((train.len(), test.len()), (12, 4), "split {split}");
        assert_eq!(train.classes, written.classes);
        let mut all: Vec<_> = train.samples.iter().chain(&test.samples).map(|s| s.path.clone()).collect();
        all.sort();
        all.dedup();
        assert_eq!(all.len(), 16, "split {split}: train and test overlap");
    }
    let test = VideoDataset::ucf101(dir.path(), 1, Subset::Test, Storage::FrameFolders).unwrap();
    assert_eq!(test.humanized_classes()[3], "shape moves down");
    assert_eq!(actionclip::prompts::humanize(&synthetic::class_names(16)[5]), "shape rotates counterclockwise");
    assert_eq!(data::frame_count(&test.samples[0].path).unwrap(), 12);
    // Labels follow the class folders.
    for s in &test.samples {
        assert!(s.path.to_string_lossy().contains(&format!("/{}/", test.classes[s.label])));
    }
}

#[test]
fn loader_batches_are_deterministic_whatever_the_workers() {
    let dir = tempfile::tempdir().unwrap();
    synthetic::write_dataset(dir.path(), &small_cfg(SyntheticFormat::FrameFolders)).unwrap();
    let dataset = VideoDataset::ucf101(dir.path(), 1, Subset::Train, Storage::FrameFolders).unwrap();
    for pipeline in [ClipPipeline::train(4, 24).unwrap(), ClipPipeline::test(4, 24).unwrap()] {
        let make = |workers: usize, prefetch: usize| {
            let cfg = LoaderConfig { batch_size: 5, workers, prefetch, seed: 7, ..Default::default() };
            Loader::new(dataset.clone(), pipeline.clone(), cfg).unwrap()
        };
        let reference = epoch_data(&make(0, 1), 3);
        assert_eq!(reference.len(), 3);
        assert_eq!(reference.iter().map(|b| b.0.len()).collect::<Vec<_>>(), vec![5, 5, 2]);
        for (workers, prefetch) in [(1, 1), (2, 1), (2, 3), (3, 2)] {
            assert_eq!(epoch_data(&make(workers, prefetch), 3), reference, "workers {workers}, prefetch {prefetch}");
        }
        // Another epoch: another order; every clip once.
        let other = epoch_data(&make(2, 2), 4);
        let ids = |e: &[(Vec<usize>, Vec<u32>, Vec<f32>)]| e.iter().flat_map(|b| b.0.clone()).collect::<Vec<_>>();
        assert_ne!(ids(&other), ids(&reference));
        let mut sorted = ids(&other);
        sorted.sort();
        assert_eq!(sorted, (0..12).collect::<Vec<_>>());
        // Labels are the dataset's.
        for (ids, labels, _) in &reference {
            for (i, l) in ids.iter().zip(labels) {
                assert_eq!(dataset.samples[*i].label as u32, *l);
            }
        }
    }
}

#[test]
fn loader_shapes_dtypes_and_views() {
    let dir = tempfile::tempdir().unwrap();
    synthetic::write_dataset(dir.path(), &small_cfg(SyntheticFormat::FrameFolders)).unwrap();
    let dataset = VideoDataset::ucf101(dir.path(), 1, Subset::Test, Storage::FrameFolders).unwrap();
    let cfg = LoaderConfig { batch_size: 4, dtype: DType::F16, shuffle: false, drop_last: true, ..Default::default() };
    let loader = Loader::new(dataset.clone(), ClipPipeline::test(8, 32).unwrap(), cfg.clone()).unwrap();
    let mut epoch = loader.epoch(0);
    let batch = epoch.next().unwrap().unwrap();
    assert_eq!(batch.frames.dims(), &[4, 8, 3, 32, 32]);
    assert_eq!(batch.frames.dtype(), DType::F16);
    assert_eq!(batch.labels.dtype(), DType::U32);
    assert_eq!(batch.ids, vec![0, 1, 2, 3]);
    assert!(epoch.next().is_none());
    assert_eq!(epoch.report().failed(), 0);
    // 2 temporal views x 3 crops.
    let views = ClipPipeline::multi_view(8, 32, 2, true).unwrap();
    let loader = Loader::new(dataset, views, LoaderConfig { dtype: DType::F32, ..cfg }).unwrap();
    let batch = loader.epoch(0).next().unwrap().unwrap();
    assert_eq!(batch.frames.dims(), &[4, 6, 8, 3, 32, 32]);
}

#[test]
fn tsn_list_files_with_label_csv() {
    let dir = tempfile::tempdir().unwrap();
    synthetic::write_dataset(dir.path(), &small_cfg(SyntheticFormat::FrameFolders)).unwrap();
    let list = "ShapeMovesUp/v_ShapeMovesUp_g01_c01 12 2\nShapeMovesDown/v_ShapeMovesDown_g02_c01 12 3\n";
    std::fs::write(dir.path().join("val.txt"), list).unwrap();
    std::fs::write(
        dir.path().join("labels.csv"),
        "id,name\n0,ShapeMovesRight\n1,ShapeMovesLeft\n2,ShapeMovesUp\n3,ShapeMovesDown\n",
    )
    .unwrap();
    let ds =
        VideoDataset::from_list(dir.path().join("val.txt"), dir.path().join("labels.csv"), Some(dir.path())).unwrap();
    assert_eq!(ds.len(), 2);
    assert_eq!(ds.samples[1].label, 3);
    assert_eq!(ds.samples[1].num_frames, Some(12));
    assert_eq!(ds.classes[2], "ShapeMovesUp");
    let clip = ClipPipeline::test(8, 32)
        .unwrap()
        .load(&ds.samples[0].path, ds.samples[0].num_frames, &mut data::sample_rng(0, 0, 0))
        .unwrap();
    assert_eq!(clip.shape, vec![8, 3, 32, 32]);
    assert_eq!(clip.indices, data::Sampling::new(8).unwrap().test_indices(12));
}

#[cfg(feature = "video")]
#[test]
fn synthetic_avi_dataset_decodes() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = small_cfg(SyntheticFormat::Avi);
    synthetic::write_dataset(dir.path(), &cfg).unwrap();
    let ds = VideoDataset::ucf101(dir.path(), 2, Subset::Train, Storage::Videos).unwrap();
    assert_eq!(ds.len(), 12);
    let info = data::probe(&ds.samples[0].path).unwrap();
    assert_eq!((info.frames, info.width, info.height, info.codec.as_str()), (12, 32, 32, "mpeg4"));
    // The AVI holds what the renderer drew (lossy, but close).
    let clip_no: usize =
        ds.samples[0].path.file_stem().unwrap().to_string_lossy()[..].split("_g").nth(1).unwrap()[..2].parse().unwrap();
    let drawn = synthetic::render_clip(&cfg, ds.samples[0].label, clip_no - 1).unwrap();
    let decoded = data::decode_frames(&ds.samples[0].path, &[0, 11]).unwrap();
    for (d, k) in decoded.iter().zip([0, 11]) {
        let err: f64 = d.as_raw().iter().zip(drawn[k].as_raw()).map(|(a, b)| a.abs_diff(*b) as f64).sum::<f64>()
            / d.as_raw().len() as f64;
        assert!(err < 12.0, "frame {k}: mean abs error {err}");
    }
    let loader =
        Loader::new(ds, ClipPipeline::train(8, 32).unwrap(), LoaderConfig { batch_size: 6, ..Default::default() })
            .unwrap();
    let mut epoch = loader.epoch(0);
    let n: usize = epoch.by_ref().map(|b| b.unwrap().ids.len()).sum();
    assert_eq!(n, 12);
    assert_eq!(epoch.report().failed(), 0);
}

#[test]
fn dropping_an_epoch_early_stops_its_workers() {
    let dir = tempfile::tempdir().unwrap();
    synthetic::write_dataset(dir.path(), &small_cfg(SyntheticFormat::FrameFolders)).unwrap();
    let dataset = VideoDataset::ucf101(dir.path(), 1, Subset::Train, Storage::FrameFolders).unwrap();
    let cfg = LoaderConfig { batch_size: 2, workers: 3, prefetch: 1, ..Default::default() };
    let loader = Loader::new(dataset, ClipPipeline::test(4, 16).unwrap(), cfg).unwrap();
    assert_eq!(loader.num_batches(), 6);
    for _ in 0..3 {
        let mut epoch = loader.epoch(0);
        assert!(epoch.next().unwrap().is_ok());
        drop(epoch); // must not hang
    }
    let report = loader.epoch(1).finish();
    assert_eq!((report.batches, report.samples, report.failed()), (6, 12, 0));
}
