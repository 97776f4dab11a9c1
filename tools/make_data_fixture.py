#!/usr/bin/env python3
"""Goldens for the data side (tests/data_golden.rs), made with the reference's own code paths.

Writes tests/fixtures/data/:
  preprocess/<name>.png       deterministic input images of several sizes (lossless)
  preprocess/<name>.out.png   the reference's GroupScale(256) + GroupCenterCrop(224) output (the PIL image,
                              lossless): torchvision Resize(256, BICUBIC) on a PIL image, CenterCrop(224)
  preprocess.safetensors      the full test-time pipeline (+ ToTorchFormatTensor /255, GroupNormalize with
                              CLIP mean/std) as f16 [3, 224, 224], for the first two images (size limit)
  sampling.txt                the reference's sampling formulas (datasets.py) for N = 1..300,
                              T in {8, 16, 32} (seg_length 1) and T = 8 with seg_length 2:
                                test T L N: <test indices, 0-based>
                                ticks T L N: <segment boundaries i*N//T, i = 0..T>   (N > T*L only)

Usage: python tools/make_data_fixture.py   (needs torch, torchvision, pillow, numpy, safetensors)
"""
import os
import sys

import numpy as np
import torch
import torchvision
from PIL import Image
from safetensors.torch import save_file

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures", "data")
MEAN = [0.48145466, 0.4578275, 0.40821073]
STD = [0.26862954, 0.26130258, 0.27577711]


# ---- the reference's transforms (datasets/transforms_ss.py, utils/Augmentation.py), test branch ----
class GroupScale:
    def __init__(self, size, interpolation=torchvision.transforms.InterpolationMode.BICUBIC):
        # The reference passes Image.BICUBIC; current torchvision spells it InterpolationMode.BICUBIC.
        self.worker = torchvision.transforms.Resize(size, interpolation)

    def __call__(self, group):
        return [self.worker(img) for img in group]


class GroupCenterCrop:
    def __init__(self, size):
        self.worker = torchvision.transforms.CenterCrop(size)

    def __call__(self, group):
        return [self.worker(img) for img in group]


def to_tensor_normalized(img):
    # Stack + ToTorchFormatTensor(div=True) + GroupNormalize for one RGB frame.
    t = torch.from_numpy(np.array(img)).permute(2, 0, 1).contiguous().float().div(255)
    mean = torch.Tensor(MEAN)
    std = torch.Tensor(STD)
    return t.sub_(mean[:, None, None]).div_(std[:, None, None])


def make_image(w, h, seed):
    """Smooth colour fields + hard edges + a checkerboard patch + mild noise (compresses well as PNG)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    img = np.zeros((h, w, 3))
    for c in range(3):
        fx, fy, ph = rng.uniform(0.01, 0.06), rng.uniform(0.01, 0.06), rng.uniform(0, 6.28)
        img[..., c] = 128 + 100 * np.sin(x * fx + ph) * np.cos(y * fy)
    # hard-edged rectangles and a disc
    for _ in range(4):
        x0, y0 = rng.integers(0, w - 20), rng.integers(0, h - 20)
        x1, y1 = x0 + rng.integers(10, w // 3), y0 + rng.integers(10, h // 3)
        img[y0:y1, x0:x1] = rng.integers(0, 256, 3)
    cx, cy, r = rng.integers(w // 4, 3 * w // 4), rng.integers(h // 4, 3 * h // 4), min(w, h) // 6
    img[(x - cx) ** 2 + (y - cy) ** 2 < r * r] = rng.integers(0, 256, 3)
    # a fine checkerboard (aliasing-prone when downscaled)
    cb = ((x // 2 + y // 2) % 2 == 0) & (x < w // 4) & (y < h // 4)
    img[cb] = 255
    # a noisy patch (bottom right), small so the PNG stays small
    ny, nx = h // 5, w // 5
    img[h - ny:, w - nx:] += rng.normal(0, 12.0, (ny, nx, 3))
    return Image.fromarray(np.clip(np.round(img), 0, 255).astype(np.uint8), "RGB")


IMAGES = [  # name, width, height
    ("ucf_320x240", 320, 240),
    ("small_171x128", 171, 128),
    ("large_400x300", 400, 300),
    ("portrait_180x320", 180, 320),
    ("hd_640x360", 640, 360),
]


def preprocess():
    os.makedirs(os.path.join(ROOT, "preprocess"), exist_ok=True)
    scale, crop = GroupScale(256), GroupCenterCrop(224)
    tensors = {}
    for i, (name, w, h) in enumerate(IMAGES):
        img = make_image(w, h, 1000 + i)
        path = os.path.join(ROOT, "preprocess", f"{name}.png")
        img.save(path, optimize=True)
        img = Image.open(path).convert("RGB")  # read back, exactly as the test will
        out = crop(scale([img]))[0]
        out.save(os.path.join(ROOT, "preprocess", f"{name}.out.png"), optimize=True)
        if i < 2:
            tensors[name] = to_tensor_normalized(out).to(torch.float16).contiguous()
    save_file(tensors, os.path.join(ROOT, "preprocess.safetensors"),
              metadata={"made_by": "tools/make_data_fixture.py", "torchvision": torchvision.__version__,
                        "pillow": Image.__version__ if hasattr(Image, "__version__") else "?"})


# ---- the reference's sampling (datasets/datasets.py), with index_bias 0 ----
def get_val_indices(num_frames, num_segments, seg_length):
    total_length = num_segments * seg_length
    if num_segments == 1:
        return np.array([num_frames // 2], dtype=np.int64)
    if num_frames <= total_length:
        return np.array([i * num_frames // total_length for i in range(total_length)], dtype=np.int64)
    offset = (num_frames / num_segments - seg_length) / 2.0
    return np.array([i * num_frames / num_segments + offset + j
                     for i in range(num_segments)
                     for j in range(seg_length)], dtype=np.int64)


def sampling():
    lines = []
    for (t, l) in [(8, 1), (16, 1), (32, 1), (8, 2), (1, 1)]:
        for n in range(1, 301):
            idx = get_val_indices(n, t, l)
            lines.append(f"test {t} {l} {n}: " + " ".join(str(int(v)) for v in idx))
            if n > t * l:
                ticks = [i * n // t for i in range(t + 1)]
                lines.append(f"ticks {t} {l} {n}: " + " ".join(map(str, ticks)))
    with open(os.path.join(ROOT, "sampling.txt"), "w") as f:
        f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    os.makedirs(ROOT, exist_ok=True)
    preprocess()
    sampling()
    total = sum(os.path.getsize(os.path.join(dp, fn)) for dp, _, fns in os.walk(ROOT) for fn in fns)
    print(f"wrote {ROOT} ({total / 1e6:.2f} MB)", file=sys.stderr)
