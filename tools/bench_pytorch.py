#!/usr/bin/env python3
"""PyTorch figures for the same shapes as `benches/encoders.rs`, in the same units (videos/s).

Video encoding = the CLIP image tower on B videos x 8 frames at 224 px (random weights), plus the
temporal head for the ActionCLIP variants. Implementations:
  hf-eager / hf-sdpa : Hugging Face transformers CLIPVisionModel with eager or SDPA attention
  openai             : the openai-clip package's VisionTransformer (the reference's own code)
Run: /path/to/venv/bin/python tools/bench_pytorch.py [--threads 2] [--filter ViT-B-16] [--json out.json]
Prints one line per case: `<case> <seconds per call> <videos/s>`.
"""
import argparse
import json
import time

import torch

FRAMES = 8


def timeit(fn, min_time=3.0, min_iters=3):
    fn()  # warm-up
    times = []
    start = time.perf_counter()
    while len(times) < min_iters or time.perf_counter() - start < min_time:
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    times.sort()
    return times[len(times) // 2]


def hf_vision(patch, attn, dtype):
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    cfg = CLIPVisionConfig(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                           image_size=224, patch_size=patch, projection_dim=512, hidden_act="quick_gelu")
    cfg._attn_implementation = attn
    return CLIPVisionModelWithProjection(cfg).eval().to(dtype)


def openai_vision(patch, dtype):
    # Load clip/model.py alone: `import clip` also needs Pillow and torchvision.
    import importlib.util
    import pathlib

    spec = importlib.util.find_spec("clip")
    path = pathlib.Path(spec.submodule_search_locations[0]) / "model.py"
    module_spec = importlib.util.spec_from_file_location("clip_model", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module.VisionTransformer(224, patch, 768, 12, 12, 512).eval().to(dtype)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--filter", default="")
    ap.add_argument("--json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    results = {}
    for arch, patch in [("ViT-B-16", 16), ("ViT-B-32", 32)]:
        for impl in ["hf-eager", "hf-sdpa", "openai"]:
            for dtype_name, dtype in [("f32", torch.float32), ("bf16", torch.bfloat16)]:
                for batch in [1, 4]:
                    case = f"video/{arch}/{impl}/{dtype_name}/b{batch}"
                    if args.filter not in case:
                        continue
                    if impl == "openai" and dtype_name != "f32":
                        continue
                    try:
                        model = openai_vision(patch, dtype) if impl == "openai" else hf_vision(patch, impl[3:], dtype)
                    except Exception as e:  # a missing optional package: say so, go on
                        print(f"{case} skipped: {e}")
                        continue
                    x = torch.randn(batch * FRAMES, 3, 224, 224, dtype=dtype)
                    with torch.inference_mode():
                        if impl == "openai":
                            fn = lambda: model(x).view(batch, FRAMES, -1).mean(1)
                        else:
                            fn = lambda: model(pixel_values=x).image_embeds.view(batch, FRAMES, -1).mean(1)
                        sec = timeit(fn)
                    results[case] = {"seconds": sec, "videos_per_s": batch / sec}
                    print(f"{case} {sec:.4f} s {batch / sec:.3f} videos/s", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"torch": torch.__version__, "threads": args.threads, "results": results}, f, indent=1)


if __name__ == "__main__":
    main()
