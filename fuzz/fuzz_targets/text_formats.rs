//! Every text file the crate parses, one per input: the first byte picks the parser, the rest is the file.
//! The other files a parser needs are small valid ones.
//!
//! | first byte % 8 | the rest is | read by |
//! |---|---|---|
//! | 0 | UCF101 `classInd.txt` | `VideoDataset::ucf101_with_splits` (video storage) |
//! | 1 | UCF101 `trainlist01.txt` | the same |
//! | 2 | UCF101 `testlist01.txt` | the same, frame-folder storage |
//! | 3 | an ActionCLIP/TSN list (`frame_dir num_frames label`) | `VideoDataset::from_list` |
//! | 4 | a label CSV (`id,name`) | `VideoDataset::from_list` |
//! | 5 | a list of clip paths | `VideoDataset::scan` |
//! | 6 | a reference YAML config | `Recipe::apply`, `train_config`, `visual_prompt`, `schedule_policy` |
//! | 7 | a frame template line, then frame file names | `FrameTemplate::parse`, `data::frame_count` and a test `ClipPipeline` over a folder of those (valid 4x4 PNG) files |
//!
//! A finding is a panic, abort, hang or runaway allocation; a typed `Err` naming the file and line is the
//! correct answer to a broken file.
#![no_main]

use std::io::Cursor;
use std::path::Path;
use std::sync::LazyLock;

use actionclip::data::{self, ClipPipeline, FrameNaming, FrameTemplate, Storage, Subset, VideoDataset};
use actionclip::train::recipe::Recipe;
use actionclip_fuzz::{fresh_dir, scratch_dir, scratch_file};
use libfuzzer_sys::fuzz_target;

const CLASS_IND: &[u8] = b"1 ApplyEyeMakeup\n2 Archery\n3 YoYo\n";
const SPLIT_LIST: &[u8] = b"ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi 1\nYoYo/v_YoYo_g25_c05.avi 3\n";
const TSN_LIST: &[u8] = b"frames/v_Archery_g01_c01 120 1\nframes/v_YoYo_g02_c03 97 2\n";
const LABEL_CSV: &[u8] = b"id,name\n0,apply eye makeup\n1,archery\n2,\"yo yo\"\n";
/// Most frame files an input creates.
const MAX_FRAME_FILES: usize = 64;

/// A 4x4 grey PNG, the content of every frame file.
static FRAME_PNG: LazyLock<Vec<u8>> = LazyLock::new(|| {
    let mut png = Vec::new();
    image::RgbImage::from_pixel(4, 4, image::Rgb([128, 128, 128]))
        .write_to(&mut Cursor::new(&mut png), image::ImageFormat::Png)
        .expect("encoding a PNG");
    png
});

fn ucf101(class_ind: &[u8], split_list: &[u8], subset: Subset, storage: Storage) {
    let dir = scratch_dir();
    scratch_file("classInd.txt", class_ind);
    let list = match subset {
        Subset::Train => "trainlist01.txt",
        Subset::Test => "testlist01.txt",
    };
    scratch_file(list, split_list);
    let _ = VideoDataset::ucf101_with_splits(dir, dir, 1, subset, storage);
}

fn tsn_list(list: &[u8], labels: &[u8]) {
    let list = scratch_file("list.txt", list);
    let labels = scratch_file("labels.csv", labels);
    let _ = VideoDataset::from_list(&list, &labels, Some(scratch_dir()));
}

fn recipe(yaml: &[u8]) {
    let Ok(value) = serde_yaml::from_slice::<serde_json::Value>(yaml) else { return };
    let mut recipe = Recipe::default();
    if recipe.apply(&value).is_ok() {
        let _ = recipe.train_config(Default::default());
        let _ = recipe.visual_prompt(None);
        let _ = recipe.schedule_policy();
        let _ = recipe.hub_id();
    }
}

/// A usable file name: one path component, no NUL.
fn is_file_name(name: &str) -> bool {
    !name.is_empty() && name.len() <= 255 && !name.contains(['/', '\0']) && name != "." && name != ".."
}

fn frame_folder(text: &str) {
    let mut lines = text.lines();
    let template = lines.next().unwrap_or_default();
    let dir = fresh_dir("frames");
    for name in lines.filter(|n| is_file_name(n)).take(MAX_FRAME_FILES) {
        std::fs::write(dir.join(name), &*FRAME_PNG).expect("writing a frame file");
    }
    let _ = data::frame_count(&dir);
    let Ok(template) = FrameTemplate::parse(template) else { return };
    let Ok(mut pipeline) = ClipPipeline::test(2, 4) else { return };
    pipeline.naming = FrameNaming { template, first_index: 1 };
    let _ = pipeline.load(Path::new(&dir), None, &mut data::sample_rng(0, 0, 0));
}

fuzz_target!(|data: &[u8]| {
    let Some((&which, file)) = data.split_first() else { return };
    match which % 8 {
        0 => ucf101(file, SPLIT_LIST, Subset::Train, Storage::Videos),
        1 => ucf101(CLASS_IND, file, Subset::Train, Storage::Videos),
        2 => ucf101(CLASS_IND, file, Subset::Test, Storage::FrameFolders),
        3 => tsn_list(file, LABEL_CSV),
        4 => tsn_list(TSN_LIST, file),
        5 => {
            let list = scratch_file("clips.txt", file);
            let _ = VideoDataset::scan(&list, Some(scratch_dir()));
        }
        6 => recipe(file),
        _ => frame_folder(&String::from_utf8_lossy(file)),
    }
});
