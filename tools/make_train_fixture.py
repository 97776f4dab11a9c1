#!/usr/bin/env python3
"""Training-parity fixture for `actionclip::train`: three optimizer steps of ActionCLIP's recipe in PyTorch.

Run from the repository root (after tools/make_fixtures.py, whose tiny model it reuses):

    /root/venv/bin/python tools/make_train_fixture.py

The reference recipe (shared/reference/ACTIONCLIP.md sections 6 and 7) on the tiny model of
tests/fixtures/tiny/ (CLIP + the Transf head of 2 layers, weights from weights.safetensors):

* AdamW with the reference's three parameter groups -- everything outside `visual` (text tower, embeddings,
  logit_scale) at lr, `model.visual` at lr * ratio, the fusion head at lr * f_ratio -- betas (0.9, 0.98),
  eps 1e-8, weight decay 0.2 on every parameter, `foreach=False` (the single-tensor path);
* the per-iteration warmup-cosine schedule (LambdaLR: i / warmup during warmup, then
  0.5 * (1 + cos(pi * (i - warmup) / (total - warmup)))), stepped after every optimizer step;
* the symmetric KL loss with a label repeated in the batch; video = fusion(encode_image(frames)),
  logits = logit_scale.exp() * cos.

The three batches (frames f16-exact, tokens with the tiny vocabulary, labels) are saved, so the Rust test
feeds exactly the same inputs; no randomness is left. Saved to tests/fixtures/train/parity.safetensors:

  frames.{0,1,2}      F16 [4, 4, 3, 32, 32]
  tokens.{0,1,2}      I64 [4, 77]
  labels.{0,1,2}      I64 [4]
  losses              F64 [3]  the loss of each step (before its update)
  lr                  F64 [3]  the text group's learning rate used at each step
  final.{name}        F32      final weights: the whole tensor when it has <= 4096 values, otherwise every
                               STRIDE-th value of the flattened tensor (from index 0)
  stats.{name}        F64 [2]  sum and sum of squares of the whole final tensor
  hyper               F64 [8]  lr, ratio, f_ratio, weight_decay, warmup, total, stride, steps
"""

import math
import os
import sys
from collections import OrderedDict

import torch
from safetensors.torch import load_file, save_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import make_fixtures as mf  # noqa: E402  (the tiny model's code and constants)

torch.set_num_threads(1)

OUT = os.path.join("tests", "fixtures", "train", "parity.safetensors")
LR, RATIO, F_RATIO, WD = 1e-3, 0.5, 10.0, 0.2
WARMUP, TOTAL, STEPS = 2, 6, 3
STRIDE = 13
LABELS = [[0, 1, 0, 2], [2, 2, 1, 0], [1, 0, 1, 2]]


def factor(i):
    if i < WARMUP:
        return i / WARMUP
    return 0.5 * (1.0 + math.cos(math.pi * (i - WARMUP) / (TOTAL - WARMUP)))


def main():
    weights = {k: v.float() for k, v in load_file(os.path.join(mf.OUT_DIR, "weights.safetensors")).items()}
    model = mf.clip_model.CLIP(
        embed_dim=mf.EMBED, image_resolution=mf.IMAGE, vision_layers=mf.V_LAYERS, vision_width=mf.V_WIDTH,
        vision_patch_size=mf.PATCH, context_length=mf.CONTEXT, vocab_size=mf.VOCAB,
        transformer_width=mf.T_WIDTH, transformer_heads=mf.T_HEADS, transformer_layers=mf.T_LAYERS,
    ).float()
    fusion = mf.TransfHead(mf.EMBED, mf.TRANSF_LAYERS, mf.T_WIDTH // 64, mf.CONTEXT).float()
    clip_sd = {k: v for k, v in weights.items() if not k.startswith("fusion_model.") and k != "visual.time_embedding"}
    model.load_state_dict(clip_sd, strict=False)
    missing = [n for n, _ in model.named_parameters() if n not in clip_sd]
    assert not missing, missing
    head_sd = {k[len("fusion_model."):]: v for k, v in weights.items() if k.startswith("fusion_model.")}
    head_sd = {k: v for k, v in head_sd.items() if k in dict(fusion.named_parameters())}
    fusion.load_state_dict(head_sd, strict=True)
    model.train()
    fusion.train()

    # The reference's _optimizer (utils/solver.py): three groups.
    vision_ids = set(map(id, model.visual.parameters()))
    text_params = [p for p in model.parameters() if id(p) not in vision_ids]
    opt = torch.optim.AdamW(
        [
            {"params": text_params},
            {"params": list(model.visual.parameters()), "lr": LR * RATIO},
            {"params": list(fusion.parameters()), "lr": LR * F_RATIO},
        ],
        betas=(0.9, 0.98), lr=LR, eps=1e-8, weight_decay=WD, foreach=False,
    )
    sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)

    gen = torch.Generator().manual_seed(7)
    out = OrderedDict()
    losses, lrs = [], []
    for step in range(STEPS):
        frames = torch.randn(mf.B, mf.T, 3, mf.IMAGE, mf.IMAGE, generator=gen).half().float()
        tokens = mf.make_tokens(gen, mf.B)
        labels = torch.tensor(LABELS[step], dtype=torch.int64)
        out[f"frames.{step}"] = frames.half()
        out[f"tokens.{step}"] = tokens
        out[f"labels.{step}"] = labels

        lrs.append(opt.param_groups[0]["lr"])
        image = model.encode_image(frames.view(-1, 3, mf.IMAGE, mf.IMAGE)).view(mf.B, mf.T, -1)
        video = fusion(image)
        text = model.encode_text(tokens)
        v, t = mf.l2n(video), mf.l2n(text)
        logits_v2t = model.logit_scale.exp() * v @ t.t()
        logits_t2v = logits_v2t.t()
        gt = (labels[:, None] == labels[None, :]).float()
        loss = (mf.kl_loss(logits_v2t, gt) + mf.kl_loss(logits_t2v, gt)) / 2
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
        print(f"step {step}: lr {lrs[-1]:.3e} loss {loss.item():.8f}")

    final = OrderedDict()
    for n, p in model.named_parameters():
        final[n] = p.detach().clone()
    for n, p in fusion.named_parameters():
        final["fusion_model." + n] = p.detach().clone()
    moved = sum(int(not torch.equal(final[k], weights[k])) for k in final)
    print(f"{moved}/{len(final)} tensors changed")
    for name, w in final.items():
        flat = w.reshape(-1)
        out[f"final.{name}"] = flat.clone() if flat.numel() <= 4096 else flat[::STRIDE].clone()
        out[f"stats.{name}"] = torch.tensor([flat.double().sum().item(), (flat.double() ** 2).sum().item()], dtype=torch.float64)
    out["losses"] = torch.tensor(losses, dtype=torch.float64)
    out["lr"] = torch.tensor(lrs, dtype=torch.float64)
    out["hyper"] = torch.tensor([LR, RATIO, F_RATIO, WD, WARMUP, TOTAL, STRIDE, STEPS], dtype=torch.float64)
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    out = OrderedDict((k, v.contiguous()) for k, v in out.items())
    save_file(out, OUT, metadata={"format": "pt"})
    print(f"wrote {OUT}: {os.path.getsize(OUT)} bytes, torch {torch.__version__}")


if __name__ == "__main__":
    main()
