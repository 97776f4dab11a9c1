#!/usr/bin/env python3
"""PyTorch figures for the same cases as `benches/gpu.rs`, on the first CUDA device, in videos/s.

ViT-B/16 CLIP (Hugging Face transformers, SDPA attention, QuickGELU), 8 frames of 224 px per video,
mean pooling over frames, random weights:
  gpu/infer/ViT-B-16/bf16/b1, .../bf16/b16, .../f32/b16 : video embeddings, weights in that dtype
  gpu/train/ViT-B-16/bf16/b4, .../bf16/b32               : one ActionCLIP step: image and text towers
      under bf16 autocast with f32 weights, symmetric KL loss over 100 x cosine logits, backward,
      fused AdamW (betas 0.9/0.98, eps 1e-8, weight decay 0.2)
Run: python3 tools/gpu_bench.py [--filter infer] [--json out.json]
Prints `<case> <ms per call> <videos/s>` per case; --json keeps them with the peak memory of each case.
"""
import argparse
import json

import torch
import torch.nn.functional as F

FRAMES = 8


def clip_config():
    from transformers import CLIPConfig

    cfg = CLIPConfig(
        vision_config=dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                           image_size=224, patch_size=16, hidden_act="quick_gelu"),
        text_config=dict(hidden_size=512, intermediate_size=2048, num_hidden_layers=12, num_attention_heads=8,
                         max_position_embeddings=77, hidden_act="quick_gelu"),
        projection_dim=512)
    cfg._attn_implementation = "sdpa"
    cfg.vision_config._attn_implementation = "sdpa"
    cfg.text_config._attn_implementation = "sdpa"
    return cfg


def embeds(out):
    """Projected features from `get_*_features` (a tensor, or an output whose pooler_output holds them)."""
    return out if torch.is_tensor(out) else out.pooler_output


def time_ms(fn, warmup=3, iters=20):
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(iters):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    times.sort()
    return times[len(times) // 2]


def inference_case(dtype, batch):
    from transformers import CLIPVisionModelWithProjection

    model = CLIPVisionModelWithProjection(clip_config().vision_config).cuda().to(dtype).eval()
    x = torch.randn(batch * FRAMES, 3, 224, 224, device="cuda", dtype=dtype)

    def step():
        with torch.inference_mode():
            return model(pixel_values=x).image_embeds.view(batch, FRAMES, -1).mean(1)

    return step


def training_case(batch):
    from transformers import CLIPModel

    model = CLIPModel(clip_config()).cuda().train()
    opt = torch.optim.AdamW(model.parameters(), lr=5e-6, betas=(0.9, 0.98), eps=1e-8, weight_decay=0.2, fused=True)
    x = torch.randn(batch * FRAMES, 3, 224, 224, device="cuda")
    ids = torch.randint(1, 49405, (batch, 77), device="cuda")
    labels = torch.arange(batch, device="cuda")
    gt = (labels[:, None] == labels[None, :]).float()
    gt = gt / gt.sum(1, keepdim=True)

    def step():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            video = embeds(model.get_image_features(pixel_values=x)).view(batch, FRAMES, -1).mean(1)
            text = embeds(model.get_text_features(input_ids=ids))
        video, text = F.normalize(video.float(), dim=-1), F.normalize(text.float(), dim=-1)
        logits = 100.0 * video @ text.t()
        loss = (F.kl_div(F.log_softmax(logits, 1), gt, reduction="batchmean")
                + F.kl_div(F.log_softmax(logits.t(), 1), gt, reduction="batchmean")) / 2
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    return step


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--filter", default="")
    ap.add_argument("--json")
    args = ap.parse_args()
    cases = [("gpu/infer/ViT-B-16/bf16/b1", lambda: inference_case(torch.bfloat16, 1), 1),
             ("gpu/infer/ViT-B-16/bf16/b16", lambda: inference_case(torch.bfloat16, 16), 16),
             ("gpu/infer/ViT-B-16/f32/b16", lambda: inference_case(torch.float32, 16), 16),
             ("gpu/train/ViT-B-16/bf16/b4", lambda: training_case(4), 4),
             ("gpu/train/ViT-B-16/bf16/b32", lambda: training_case(32), 32)]
    results = {}
    for name, make, batch in cases:
        if args.filter not in name:
            continue
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        ms = time_ms(make())
        peak = torch.cuda.max_memory_allocated() / 2**30
        results[name] = {"ms": ms, "videos_per_s": batch * 1000.0 / ms, "peak_gib": peak}
        print(f"{name} {ms:.2f} ms {batch * 1000.0 / ms:.1f} videos/s (peak {peak:.1f} GiB)", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"torch": torch.__version__, "device": torch.cuda.get_device_name(), "results": results}, f, indent=1)


if __name__ == "__main__":
    main()
