#!/usr/bin/env python3
"""PyTorch figures for the same shapes as `benches/encoders.rs` and `benches/train.rs`, in the same units
(videos/s, or sentences/s and labels/s for the text cases). Random weights of real size.

Cases (the part after the implementation names the criterion bench it pairs with):
  video/ARCH/IMPL/DTYPE/bB       the CLIP image tower on B videos x 8 frames at 224 px, mean over frames
  text/IMPL/DTYPE/encode/101x16  the text tower on 101 UCF101 labels x 16 ActionCLIP templates
  zero_shot/ARCH/openai/f32/...  `build/101x16`: tokenize and encode 101 x 16 sentences, normalise;
                                 `classify/bB`: encode B videos, the template-ensemble softmax, top 5
  train/ARCH/openai/f32/b4       one training step: both towers, the symmetric KL loss, backward, AdamW
Implementations:
  hf-eager / hf-sdpa : Hugging Face transformers CLIP towers with eager or SDPA attention
  openai             : the openai-clip package's model (the reference's own code)
Run: /path/to/venv/bin/python tools/bench_pytorch.py [--threads 2] [--filter ViT-B-16] [--json out.json]
Prints one line per case: `<case> <seconds per call> <items/s>`.
"""
import argparse
import importlib.util
import json
import pathlib
import re
import time

import torch

FRAMES = 8
TRAIN_BATCH = 4
ROOT = pathlib.Path(__file__).resolve().parent.parent
# (name, patch size, image size, vision width, vision layers, embed dim, text width, text heads, text layers)
ARCHS = {
    "tiny": (8, 32, 64, 2, 64, 64, 1, 2),
    "ViT-B-32": (32, 224, 768, 12, 512, 512, 8, 12),
    "ViT-B-16": (16, 224, 768, 12, 512, 512, 8, 12),
}
# The 16 ActionCLIP templates, read from src/prompts.rs.
TEMPLATES = re.findall(r'Template::\w+\(Cow::Borrowed\("(.*?)"\)\)', (ROOT / "src" / "prompts.rs").read_text())[:16]


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


def clip_module(name):
    """One file of the openai-clip package, loaded alone (`import clip` also needs Pillow and torchvision)."""
    spec = importlib.util.find_spec("clip")
    path = pathlib.Path(spec.submodule_search_locations[0]) / f"{name}.py"
    module_spec = importlib.util.spec_from_file_location(f"clip_{name}", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module


def openai_vision(patch, dtype):
    return clip_module("model").VisionTransformer(224, patch, 768, 12, 12, 512).eval().to(dtype)


def openai_clip(arch):
    patch, size, vwidth, vlayers, embed, twidth, theads, tlayers = ARCHS[arch]
    return clip_module("model").CLIP(embed, size, vlayers, vwidth, patch, 77, 49408, twidth, theads, tlayers)


class Tokenizer:
    """`clip.tokenize` without `clip/clip.py`'s imports: BPE ids between start and end, zero-padded to 77."""

    def __init__(self):
        self.bpe = clip_module("simple_tokenizer").SimpleTokenizer()
        self.sot = self.bpe.encoder["<|startoftext|>"]
        self.eot = self.bpe.encoder["<|endoftext|>"]

    def __call__(self, texts):
        out = torch.zeros(len(texts), 77, dtype=torch.long)
        for i, text in enumerate(texts):
            ids = [self.sot] + self.bpe.encode(text) + [self.eot]
            out[i, : len(ids)] = torch.tensor(ids)
        return out


def ucf101_labels():
    """The 101 class names as our benches humanize them: `ApplyEyeMakeup` -> `apply eye makeup`."""
    names = (ROOT / "weights" / "ucf101_classes.txt").read_text().split()
    return [re.sub(r"(?<=[a-z])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])", " ", n).replace("_", " ").lower() for n in names]


def hf_text(attn, dtype):
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    cfg = CLIPTextConfig(hidden_size=512, intermediate_size=2048, num_hidden_layers=12, num_attention_heads=8,
                         max_position_embeddings=77, projection_dim=512, hidden_act="quick_gelu")
    cfg._attn_implementation = attn
    return CLIPTextModelWithProjection(cfg).eval().to(dtype)


def normalize(x):
    return x / x.norm(dim=-1, keepdim=True)


def kl_loss(logits, target):
    """ActionCLIP's KLLoss: KL(softmax(10 * target) || softmax(logits)), summed, divided by the batch."""
    log_p = torch.log_softmax(logits, 1)
    q = torch.softmax(target * 10, 1)
    return torch.nn.functional.kl_div(log_p, q, reduction="sum") / logits.shape[0]


def video_cases(args, results):
    for arch in ["ViT-B-16", "ViT-B-32"]:
        patch = ARCHS[arch][0]
        for impl in ["hf-eager", "hf-sdpa", "openai"]:
            for dtype_name, dtype in [("f32", torch.float32), ("bf16", torch.bfloat16)]:
                for batch in [1, 4]:
                    case = f"video/{arch}/{impl}/{dtype_name}/b{batch}"
                    if args.filter not in case or (impl == "openai" and dtype_name != "f32"):
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
                        record(results, case, timeit(fn), batch)


def text_cases(args, results):
    sentences = [t.format(label) for t in TEMPLATES for label in ucf101_labels()]
    tokens = Tokenizer()(sentences)
    for impl in ["hf-eager", "hf-sdpa", "openai"]:
        case = f"text/{impl}/f32/encode/101x16"
        if args.filter not in case:
            continue
        if impl == "openai":
            model = openai_clip("ViT-B-16").eval()
            fn = lambda: model.encode_text(tokens)
        else:
            model = hf_text(impl[3:], torch.float32)
            # HF pools at the first end-of-text id; pass the attention mask as its CLIP pipelines do.
            mask = (tokens != 0).long()
            fn = lambda: model(input_ids=tokens, attention_mask=mask).text_embeds
        with torch.inference_mode():
            record(results, case, timeit(fn), len(sentences))


def zero_shot_cases(args, results):
    labels = ucf101_labels()
    sentences = [t.format(label) for t in TEMPLATES for label in labels]
    tokenizer = Tokenizer()
    for arch in ["ViT-B-32", "ViT-B-16"]:
        prefix = f"zero_shot/{arch}/openai/f32"
        if args.filter not in prefix and not any(args.filter in f"{prefix}/{c}" for c in ["build/101x16", "classify/b1", "classify/b4"]):
            continue
        model = openai_clip(arch).eval()
        with torch.inference_mode():
            def build():
                return normalize(model.encode_text(tokenizer(sentences))).view(len(TEMPLATES), len(labels), -1)

            if args.filter in f"{prefix}/build/101x16":
                record(results, f"{prefix}/build/101x16", timeit(build), len(labels))
            class_features = build()
            for batch in [1, 4]:
                case = f"{prefix}/classify/b{batch}"
                if args.filter not in case:
                    continue
                x = torch.randn(batch * FRAMES, 3, 224, 224)

                def classify():
                    video = normalize(model.encode_image(x).view(batch, FRAMES, -1).mean(1))
                    probs = torch.softmax(100 * torch.einsum("bd,jcd->jbc", video, class_features), -1).mean(0)
                    return probs.topk(5, dim=-1)

                record(results, case, timeit(classify), batch)


def train_cases(args, results):
    labels = ucf101_labels()[:TRAIN_BATCH]
    tokens = Tokenizer()([TEMPLATES[0].format(label) for label in labels])
    target = torch.eye(TRAIN_BATCH)
    for arch in ["tiny", "ViT-B-32"]:
        case = f"train/{arch}/openai/f32/b{TRAIN_BATCH}"
        if args.filter not in case:
            continue
        size = ARCHS[arch][1]
        model = openai_clip(arch).train()
        opt = torch.optim.AdamW(model.parameters(), lr=5e-6, betas=(0.9, 0.98), eps=1e-6, weight_decay=0.2)
        x = torch.randn(TRAIN_BATCH * FRAMES, 3, size, size)

        def step():
            video = normalize(model.encode_image(x).view(TRAIN_BATCH, FRAMES, -1).mean(1))
            text = normalize(model.encode_text(tokens))
            logits = model.logit_scale.exp() * video @ text.t()
            loss = (kl_loss(logits, target) + kl_loss(logits.t(), target)) / 2
            opt.zero_grad()
            loss.backward()
            opt.step()

        record(results, case, timeit(step), TRAIN_BATCH)


def record(results, case, sec, items):
    results[case] = {"seconds": sec, "per_s": items / sec}
    print(f"{case} {sec:.4f} s {items / sec:.3f} /s", flush=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--filter", default="")
    ap.add_argument("--json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    results = {}
    for cases in [video_cases, text_cases, zero_shot_cases, train_cases]:
        cases(args, results)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"torch": torch.__version__, "threads": args.threads, "results": results}, f, indent=1)


if __name__ == "__main__":
    main()
