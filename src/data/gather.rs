//! Picking decoded frames by index, shared by the video decoder and the frame-folder reader.
use std::collections::BTreeMap;

use image::RgbImage;

/// Frames for `indices` (repeats allowed) from `by_index`, moving each image out at its last use and
/// cloning only repeats. Indices missing from the map are left out.
pub(crate) fn gather(mut by_index: BTreeMap<usize, RgbImage>, indices: &[usize]) -> Vec<RgbImage> {
    let mut out = Vec::with_capacity(indices.len());
    for (k, i) in indices.iter().enumerate() {
        let used_later = indices[k + 1..].contains(i);
        let img = if used_later { by_index.get(i).cloned() } else { by_index.remove(i) };
        out.extend(img);
    }
    out
}
