#!/usr/bin/env python3
"""Checkpoints written the way the official ActionCLIP training code writes them, one per
post-network head x temporal shift x CLIP dtype, with the official forward's outputs.

Run from the repository root with a checkout of the official code (sallymmx/ActionCLIP):

    /root/venv/bin/python tools/make_official_fixtures.py /path/to/ActionCLIP

Needs torch and safetensors. The official code is imported from that checkout, not copied here:
its `clip/model.py` (`CLIP`, `convert_weights`; `tsm=True` wraps every vision block in
`modules/temporal_shift.py`'s `TemporalShift_VIT`) and `modules/Visual_Prompt.py`
(`visual_prompt`). CI never runs this script: its outputs are committed under
tests/fixtures/official/ and the Rust tests only read them.

What it writes (a tiny CLIP: embed 8, ViT 16 px / patch 8 / width 64 / 1 layer, text width 64 /
1 layer / vocab 128 / context 77; T = 4 frames, B = 2 videos):

  {head}_{tsm|plain}_{f16|f32}.pt  for head in meanP, Conv_1D, LSTM, Transf, Transf_cls:
      torch.save({'epoch', 'model_state_dict', 'fusion_model_state_dict',
                  'optimizer_state_dict'}) as `utils/saving.py` does. `model_state_dict` is the
      official CLIP's state dict (with `tsm=True` its vision blocks are named `...resblocks.i.net.X`;
      f16 = the official `convert_weights`, as CUDA training leaves it), `fusion_model_state_dict`
      is the `visual_prompt` wrapped in `nn.DataParallel` (keys start with `module.`, f32), and
      `optimizer_state_dict` is an AdamW over the reference's three parameter groups.
  io.safetensors: frames [B, T, 3, 16, 16], tokens [B, 77], text_features [B, 8], and
      video.{head}.{tsm|plain} [B, 8]: the official forward (test.py: `encode_image` per frame,
      `.view(b, t, -1)`, `fusion_model`), run in f32 on the CPU.

Every parameter is re-drawn (LayerNorm weights 1 + 0.1 N, biases 0.05 N, embeddings 0.1 N,
matrices N(0, fan_in^-0.5 clamped to [0.02, 0.2])) and rounded to f16-representable values, so
the f16 and f32 files hold the same numbers and the f32 forward is the expected output of both.
"""

import contextlib
import io as io_module
import os
import sys
import types
from collections import OrderedDict

import torch
from safetensors.torch import save_file
from torch import nn

torch.set_num_threads(1)

OUT_DIR = os.path.join("tests", "fixtures", "official")
HEADS = ["meanP", "Conv_1D", "LSTM", "Transf", "Transf_cls"]
EMBED, IMAGE, PATCH, V_WIDTH, V_LAYERS = 8, 16, 8, 64, 1
T_WIDTH, T_LAYERS, VOCAB, CONTEXT = 64, 1, 128, 77
T, B = 4, 2
SOT_ID, EOT_ID = VOCAB - 2, VOCAB - 1


def import_official(root):
    """The official modules, imported from a checkout at `root`."""
    sys.path.insert(0, os.path.abspath(root))
    # `make_temporal_shift_vit` imports torchvision only to test for ResNets; ViTs never use it.
    sys.modules.setdefault("torchvision", types.ModuleType("torchvision"))
    from clip import model as clip_model  # noqa: E402
    from modules.Visual_Prompt import visual_prompt  # noqa: E402

    return clip_model, visual_prompt


def quietly(f, *args, **kwargs):
    """Calls `f` with its prints (the official constructors print their settings) swallowed."""
    with contextlib.redirect_stdout(io_module.StringIO()):
        return f(*args, **kwargs)


@torch.no_grad()
def rerandomise(module, norm_types):
    norm_params = set()
    for m in module.modules():
        if isinstance(m, norm_types):
            m.weight.copy_(1.0 + 0.1 * torch.randn_like(m.weight))
            m.bias.copy_(0.05 * torch.randn_like(m.bias))
            norm_params.update({id(m.weight), id(m.bias)})
    for name, p in module.named_parameters():
        if id(p) in norm_params:
            continue
        leaf = name.split(".")[-1]
        if leaf == "logit_scale":
            p.fill_(2.659260036932778 + 0.3)
        elif "embedding" in name or leaf in ("cls_token", "pos_embed"):
            p.copy_(0.1 * torch.randn_like(p))
        elif "bias" in leaf:
            p.copy_(0.05 * torch.randn_like(p))
        else:
            fan_in = p.shape[0] if leaf in ("proj", "text_projection") else p[0].numel()
            p.copy_(min(0.2, max(0.02, fan_in ** -0.5)) * torch.randn_like(p))
        p.copy_(p.half().float())


def build_clip(clip_model, tsm):
    return quietly(
        clip_model.CLIP,
        EMBED, IMAGE, V_LAYERS, V_WIDTH, PATCH, CONTEXT, VOCAB, T_WIDTH, T_WIDTH // 64, T_LAYERS,
        tsm=tsm, T=T,
    ).float().eval()


def make_tokens(gen):
    toks = torch.zeros(B, CONTEXT, dtype=torch.int64)
    for r in range(B):
        n = int(torch.randint(3, 12, (1,), generator=gen))
        toks[r, 0] = SOT_ID
        toks[r, 1 : 1 + n] = torch.randint(1, SOT_ID, (n,), generator=gen)
        toks[r, 1 + n] = EOT_ID
    return toks


def optimizer_state(clip, fusion):
    """An AdamW state dict over train.py's groups (text + rest, `visual`, the fusion model)."""
    visual = list(clip.visual.parameters())
    visual_ids = {id(p) for p in visual}
    rest = [p for p in clip.parameters() if id(p) not in visual_ids]
    groups = [{"params": rest}, {"params": visual, "lr": 5e-6}]
    fusion_params = list(fusion.parameters())
    if fusion_params:
        groups.append({"params": fusion_params, "lr": 5e-5})
    opt = torch.optim.AdamW(groups, lr=5e-6, betas=(0.9, 0.98), eps=1e-8, weight_decay=0.2)
    return opt.state_dict()


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    clip_model, visual_prompt = import_official(sys.argv[1])
    os.makedirs(OUT_DIR, exist_ok=True)
    norm_types = (nn.LayerNorm, sys.modules["modules.Visual_Prompt"].LayerNorm)

    torch.manual_seed(0)
    base = build_clip(clip_model, tsm=False)
    rerandomise(base, norm_types)
    base_sd = base.state_dict()

    gen = torch.Generator().manual_seed(0)
    frames = torch.randn(B, T, 3, IMAGE, IMAGE, generator=gen)
    tokens = make_tokens(gen)
    out = OrderedDict(frames=frames, tokens=tokens)
    with torch.no_grad():
        out["text_features"] = base.encode_text(tokens)

    for tsm in (False, True):
        clip = build_clip(clip_model, tsm)
        # The official tsm model names vision blocks `...resblocks.i.net.X`: same tensors, new names.
        clip.load_state_dict({k: base_sd[k.replace(".net.", ".")] for k in clip.state_dict()})
        with torch.no_grad():
            per_frame = clip.encode_image(frames.view(-1, 3, IMAGE, IMAGE)).view(B, T, -1)
        for head in HEADS:
            torch.manual_seed(1 + HEADS.index(head))
            fusion = quietly(visual_prompt, head, base_sd, T)
            rerandomise(fusion, norm_types)
            fusion = nn.DataParallel(fusion.eval())
            tag = "tsm" if tsm else "plain"
            with torch.no_grad():
                out[f"video.{head}.{tag}"] = fusion(per_frame)
            for dtype in ("f32", "f16"):
                saved = build_clip(clip_model, tsm)
                saved.load_state_dict(clip.state_dict())
                if dtype == "f16":
                    clip_model.convert_weights(saved)
                ckpt = {
                    "epoch": 3,
                    "model_state_dict": saved.state_dict(),
                    "fusion_model_state_dict": fusion.state_dict(),
                    "optimizer_state_dict": optimizer_state(saved, fusion),
                }
                path = os.path.join(OUT_DIR, f"{head}_{tag}_{dtype}.pt")
                torch.save(ckpt, path)
                check_round_trip(path, clip_model, visual_prompt, base_sd, tsm, head, frames,
                                 out[f"video.{head}.{tag}"])

    out = OrderedDict((k, v.detach().contiguous()) for k, v in out.items())
    save_file(out, os.path.join(OUT_DIR, "io.safetensors"), metadata={"format": "pt"})
    report(out)


def check_round_trip(path, clip_model, visual_prompt, base_sd, tsm, head, frames, expected):
    """The saved file alone, loaded by the official classes in f32, gives the expected output."""
    ck = torch.load(path, map_location="cpu", weights_only=True)
    clip = build_clip(clip_model, tsm)
    clip.load_state_dict({k: v.float() for k, v in ck["model_state_dict"].items()})
    fusion = nn.DataParallel(quietly(visual_prompt, head, base_sd, T).eval())
    fusion.load_state_dict(ck["fusion_model_state_dict"])
    with torch.no_grad():
        again = fusion(clip.encode_image(frames.view(-1, 3, IMAGE, IMAGE)).view(B, T, -1))
    assert torch.equal(again, expected), path


def report(out):
    print(f"torch {torch.__version__}")
    for name in sorted(os.listdir(OUT_DIR)):
        print(f"  {name:28s} {os.path.getsize(os.path.join(OUT_DIR, name)):>9d} bytes")
    for k, v in out.items():
        if k.startswith("video."):
            print(f"  {k:28s} |x|max {v.abs().max().item():.4f}")


if __name__ == "__main__":
    main()
