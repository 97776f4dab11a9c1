#!/usr/bin/env python3
"""Golden parity fixtures for the `actionclip` crate, made with the PyTorch reference.

Run from the repository root:

    /root/venv/bin/python tools/make_fixtures.py

Needs torch, openai-clip (only its `clip/model.py` is used, so Pillow/torchvision are not
required), transformers and safetensors. CI never runs this script: its outputs are committed
under tests/fixtures/tiny/ and the Rust tests only read them.

Deterministic: torch.manual_seed(0) before the model is built and every parameter re-drawn in a
fixed order; the inputs come from a separate torch.Generator seeded with 0; torch uses 1 thread.

What it builds (see /work/shared/reference/ACTIONCLIP.md for the behaviour it mirrors):

* A tiny OpenAI-layout CLIP in f32, eval mode: embed 64, ViT 32px / patch 8 (16 patches + CLS),
  width 128, 2 layers, 2 heads; text width 128, 2 layers, 2 heads, vocab 1000, context 77.
  Every parameter is re-randomised (LayerNorm weight 1 + 0.1 N, LayerNorm/other biases 0.05 N,
  embeddings 0.1 N, matrices N(0, clamp(fan_in^-0.5, 0.02, 0.2)), logit_scale = ln(1/0.07) + 0.3)
  and then rounded to float16-representable values, so that the F16 files hold exactly the
  weights the f32 reference computed with.
* T = 4 frames per video, B = 4 videos.
* Temporal heads over frame features [B, T, 64], with the reference's module names:
  Conv_1D (`shift`, random taps; two forwards: "time" = along time, "reference" = the
  reference's scrambled `x.view(-1, D, T)`), LSTM (`lstm_visual`), Transf
  (`frame_position_embeddings` + `transformer.resblocks.*`, TF-style LayerNorm eps 1e-12,
  2 layers, 2 heads), Transf_cls (`transformer` = TAggregate: cls_token, pos_embed and a stock
  nn.TransformerEncoder of 2 layers, nhead 8, FFN 2048, final LayerNorm).
* In-network temporal shift (tsm, fold_div 8) applied before every vision block.
* Pre-network joint space-time tower with `visual.time_embedding` [T, 128].

Files written to tests/fixtures/tiny/:

  weights.safetensors            F16: CLIP (OpenAI names) + visual.time_embedding + fusion_model.*
  io.safetensors                 inputs and expected outputs (F32, ids/labels I64)
  hf_clip.safetensors            F16: the same CLIP in Hugging Face CLIPModel names
  hf_config.json                 the matching transformers CLIPConfig.to_dict()
  actionclip_tsm_transf.pt       ActionCLIP-style training checkpoint (tsm + Transf head)
  config.json                    human-readable description of the tiny model
"""

import importlib.util
import json
import math
import os
import sys
import warnings
from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn
from safetensors.torch import load_file, save_file

torch.set_num_threads(1)
warnings.filterwarnings("ignore")

# ---------------------------------------------------------------------------------------------
# openai-clip's model module. `import clip` pulls in Pillow/torchvision (for preprocessing only);
# load clip/model.py directly when those are absent.
# ---------------------------------------------------------------------------------------------
try:
    from clip import model as clip_model  # type: ignore
except ImportError:
    _spec = importlib.util.find_spec("clip")
    if _spec is None or not _spec.submodule_search_locations:
        sys.exit("openai-clip is not installed (pip install openai-clip)")
    _path = os.path.join(list(_spec.submodule_search_locations)[0], "model.py")
    _mspec = importlib.util.spec_from_file_location("openai_clip_model", _path)
    clip_model = importlib.util.module_from_spec(_mspec)
    _mspec.loader.exec_module(clip_model)

OUT_DIR = os.path.join("tests", "fixtures", "tiny")

# Tiny model hyper-parameters.
EMBED = 64
IMAGE = 32
PATCH = 8
V_WIDTH = 128
V_LAYERS = 2
CONTEXT = 77
VOCAB = 1000
T_WIDTH = 128
T_HEADS = 2
T_LAYERS = 2
T = 4  # frames per video
B = 4  # videos
TRANSF_LAYERS = 2
TRANSF_CLS_LAYERS = 2
FOLD_DIV = 8
SOT_ID = VOCAB - 2  # 998, start role
EOT_ID = VOCAB - 1  # 999, end role: largest id, so argmax pooling finds it
N_TEMPLATES = 2
N_CLASSES = 3


# ---------------------------------------------------------------------------------------------
# Temporal heads (ACTIONCLIP.md section 5), module names as in the reference.
# ---------------------------------------------------------------------------------------------
class TFLayerNorm(nn.Module):
    """LayerNorm with the epsilon inside the square root (TF style), eps 1e-12."""

    def __init__(self, hidden, eps=1e-12):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden))
        self.bias = nn.Parameter(torch.zeros(hidden))
        self.variance_epsilon = eps

    def forward(self, x):
        u = x.mean(-1, keepdim=True)
        s = (x - u).pow(2).mean(-1, keepdim=True)
        x = (x - u) / torch.sqrt(s + self.variance_epsilon)
        return self.weight * x + self.bias


def temporal_block(d_model, n_head):
    """CLIP's ResidualAttentionBlock (attn, ln_1, mlp.{c_fc,gelu,c_proj}, ln_2), TF LayerNorms."""
    blk = clip_model.ResidualAttentionBlock(d_model, n_head)
    blk.ln_1 = TFLayerNorm(d_model)
    blk.ln_2 = TFLayerNorm(d_model)
    return blk


class TemporalTransformer(nn.Module):
    def __init__(self, width, layers, heads):
        super().__init__()
        self.width = width
        self.layers = layers
        self.resblocks = nn.Sequential(*[temporal_block(width, heads) for _ in range(layers)])

    def forward(self, x):
        return self.resblocks(x)


class TAggregate(nn.Module):
    def __init__(self, clip_length, embed_dim, n_layers):
        super().__init__()
        self.clip_length = clip_length
        enc_layer = nn.TransformerEncoderLayer(d_model=embed_dim, nhead=8)
        self.transformer_enc = nn.TransformerEncoder(
            enc_layer, num_layers=n_layers, norm=nn.LayerNorm(embed_dim)
        )
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, clip_length + 1, embed_dim))

    def forward(self, x):  # x [B, T, D]
        cls = self.cls_token.expand(x.shape[0], -1, -1)
        x = torch.cat((cls, x), dim=1) + self.pos_embed
        o = self.transformer_enc(x.transpose(0, 1))
        return o[0]


class Conv1DHead(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.shift = nn.Conv1d(d, d, 3, padding=1, groups=d, bias=False)

    def forward_reference(self, x):
        # The reference's reshape: a view, not a transpose, so the kernel does not run along time.
        b, t, c = x.shape
        x_original = x
        x = x.contiguous().view(-1, c, t)
        x = self.shift(x.float())
        x = x.permute(0, 2, 1)
        x = x + x_original
        return x.mean(dim=1)

    def forward_time(self, x):
        y = self.shift(x.transpose(1, 2)).transpose(1, 2)
        return (y + x).mean(1)


class LSTMHead(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.lstm_visual = nn.LSTM(
            input_size=d, hidden_size=d, batch_first=True, bidirectional=False, num_layers=1
        )

    def forward(self, x):
        y, _ = self.lstm_visual(x)
        return (y + x).mean(1)


class TransfHead(nn.Module):
    def __init__(self, d, layers, heads, context_length):
        super().__init__()
        self.frame_position_embeddings = nn.Embedding(context_length, d)
        self.transformer = TemporalTransformer(width=d, layers=layers, heads=heads)

    def forward(self, x):
        x_original = x
        pos = self.frame_position_embeddings(torch.arange(x.shape[1]))
        x = x + pos.unsqueeze(0)
        x = self.transformer(x.permute(1, 0, 2)).permute(1, 0, 2)
        x = x + x_original
        return x.mean(1)


class TransfClsHead(nn.Module):
    def __init__(self, d, t, layers):
        super().__init__()
        self.transformer = TAggregate(clip_length=t, embed_dim=d, n_layers=layers)

    def forward(self, x):
        return self.transformer(x)


# ---------------------------------------------------------------------------------------------
# Vision tower variants.
# ---------------------------------------------------------------------------------------------
def embed_tokens(visual, frames):
    """conv1 patchify, prepend class_embedding, + positional_embedding: [N, 1 + P, W] (NLD)."""
    x = visual.conv1(frames)
    x = x.reshape(x.shape[0], x.shape[1], -1).permute(0, 2, 1)
    cls = visual.class_embedding.to(x.dtype) + torch.zeros(
        x.shape[0], 1, x.shape[-1], dtype=x.dtype
    )
    x = torch.cat([cls, x], dim=1)
    return x + visual.positional_embedding.to(x.dtype)


def temporal_shift(x, n_segment, fold_div):
    """TemporalShift_VIT.shift on x [L, B*T, C] (LND). CLS row (L=0) is left as is."""
    length, nt, c = x.shape
    cls = x[:1]
    p = x[1:].permute(1, 2, 0).contiguous().view(nt // n_segment, n_segment, c, length - 1)
    fold = c // fold_div
    out = torch.zeros_like(p)
    out[:, :-1, :fold] = p[:, 1:, :fold]  # channel group 0 takes frame t+1
    out[:, 1:, fold : 2 * fold] = p[:, :-1, fold : 2 * fold]  # group 1 takes frame t-1
    out[:, :, 2 * fold :] = p[:, :, 2 * fold :]
    out = out.view(nt, c, length - 1).permute(2, 0, 1)
    return torch.cat((cls, out), dim=0)


def encode_image_tsm(visual, frames, n_segment, shift=True):
    x = visual.ln_pre(embed_tokens(visual, frames)).permute(1, 0, 2)
    for blk in visual.transformer.resblocks:
        if shift:
            x = temporal_shift(x, n_segment, FOLD_DIV)
        x = blk(x)
    x = x.permute(1, 0, 2)
    return visual.ln_post(x[:, 0, :]) @ visual.proj


def encode_video_joint(visual, time_embedding, frames, b, t):
    """Intended 'joint' tower: one CLS (frame 0's) + all T*N patch tokens (frame-major)."""
    x = embed_tokens(visual, frames)  # [B*T, 1+N, W]
    n1, w = x.shape[1], x.shape[2]
    x = x.view(b, t, n1, w)
    cls = x[:, 0, :1, :]  # [B, 1, W]
    patches = x[:, :, 1:, :] + time_embedding[None, :, None, :]  # [B, T, N, W]
    x = torch.cat([cls, patches.reshape(b, t * (n1 - 1), w)], dim=1)
    x = visual.ln_pre(x).permute(1, 0, 2)
    x = visual.transformer(x).permute(1, 0, 2)
    return visual.ln_post(x[:, 0, :]) @ visual.proj


# ---------------------------------------------------------------------------------------------
# Re-randomisation.
# ---------------------------------------------------------------------------------------------
EMBEDDING_NAMES = {
    "class_embedding",
    "positional_embedding",
    "token_embedding.weight",
    "frame_position_embeddings.weight",
    "cls_token",
    "pos_embed",
    "time_embedding",
}


@torch.no_grad()
def rerandomise(module):
    norm_params = set()
    for m in module.modules():
        if isinstance(m, (nn.LayerNorm, TFLayerNorm)):
            m.weight.copy_(1.0 + 0.1 * torch.randn_like(m.weight))
            m.bias.copy_(0.05 * torch.randn_like(m.bias))
            norm_params.update({id(m.weight), id(m.bias)})
    for name, p in module.named_parameters():
        if id(p) in norm_params:
            continue
        leaf = name.split(".")[-1]
        if name == "logit_scale":
            p.fill_(math.log(1 / 0.07) + 0.3)
        elif any(name == e or name.endswith("." + e) for e in EMBEDDING_NAMES):
            p.copy_(0.1 * torch.randn_like(p))
        elif "bias" in leaf:
            p.copy_(0.05 * torch.randn_like(p))
        else:
            if leaf in ("proj", "text_projection"):  # used as x @ P, so fan_in = rows
                fan_in = p.shape[0]
            else:  # Linear/Conv/MHA/LSTM weight [out, in, ...]
                fan_in = p[0].numel()
            std = min(0.2, max(0.02, fan_in ** -0.5))
            p.copy_(std * torch.randn_like(p))


@torch.no_grad()
def round_to_f16(module):
    for p in module.parameters():
        p.data = p.data.half().float()


# ---------------------------------------------------------------------------------------------
# Conversions.
# ---------------------------------------------------------------------------------------------
def to_f16(sd):
    return OrderedDict((k, v.detach().to(torch.float16).clone().contiguous()) for k, v in sd.items())


def openai_to_hf(sd):
    """OpenAI CLIP state dict -> Hugging Face CLIPModel state dict (float tensors)."""
    out = OrderedDict()

    def block(src, dst):
        w = sd[f"{src}.attn.in_proj_weight"]
        b = sd[f"{src}.attn.in_proj_bias"]
        for j, n in enumerate("qkv"):
            out[f"{dst}.self_attn.{n}_proj.weight"] = w.chunk(3, 0)[j]
            out[f"{dst}.self_attn.{n}_proj.bias"] = b.chunk(3, 0)[j]
        out[f"{dst}.self_attn.out_proj.weight"] = sd[f"{src}.attn.out_proj.weight"]
        out[f"{dst}.self_attn.out_proj.bias"] = sd[f"{src}.attn.out_proj.bias"]
        for a, h in (("ln_1", "layer_norm1"), ("ln_2", "layer_norm2"),
                     ("mlp.c_fc", "mlp.fc1"), ("mlp.c_proj", "mlp.fc2")):
            out[f"{dst}.{h}.weight"] = sd[f"{src}.{a}.weight"]
            out[f"{dst}.{h}.bias"] = sd[f"{src}.{a}.bias"]

    vm = "vision_model"
    out[f"{vm}.embeddings.patch_embedding.weight"] = sd["visual.conv1.weight"]
    out[f"{vm}.embeddings.class_embedding"] = sd["visual.class_embedding"]
    out[f"{vm}.embeddings.position_embedding.weight"] = sd["visual.positional_embedding"]
    for s in ("weight", "bias"):
        out[f"{vm}.pre_layrnorm.{s}"] = sd[f"visual.ln_pre.{s}"]
    for i in range(V_LAYERS):
        block(f"visual.transformer.resblocks.{i}", f"{vm}.encoder.layers.{i}")
    for s in ("weight", "bias"):
        out[f"{vm}.post_layernorm.{s}"] = sd[f"visual.ln_post.{s}"]
    out["visual_projection.weight"] = sd["visual.proj"].t()

    tm = "text_model"
    out[f"{tm}.embeddings.token_embedding.weight"] = sd["token_embedding.weight"]
    out[f"{tm}.embeddings.position_embedding.weight"] = sd["positional_embedding"]
    for i in range(T_LAYERS):
        block(f"transformer.resblocks.{i}", f"{tm}.encoder.layers.{i}")
    for s in ("weight", "bias"):
        out[f"{tm}.final_layer_norm.{s}"] = sd[f"ln_final.{s}"]
    out["text_projection.weight"] = sd["text_projection"].t()
    out["logit_scale"] = sd["logit_scale"]
    return out


def tsm_rename(key):
    """visual.transformer.resblocks.{i}.X -> visual.transformer.resblocks.{i}.net.X"""
    pre = "visual.transformer.resblocks."
    if key.startswith(pre):
        i, rest = key[len(pre):].split(".", 1)
        return f"{pre}{i}.net.{rest}"
    return key


def make_tokens(gen, rows):
    toks = torch.zeros(rows, CONTEXT, dtype=torch.int64)
    for r in range(rows):
        n = int(torch.randint(4, 21, (1,), generator=gen))
        ids = torch.randint(1, SOT_ID, (n,), generator=gen)  # [1, 997]
        toks[r, 0] = SOT_ID
        toks[r, 1 : 1 + n] = ids
        toks[r, 1 + n] = EOT_ID
    return toks


def l2n(x):
    return x / x.norm(dim=-1, keepdim=True)


def kl_loss(logits, gt):
    # The reference's KLLoss: KLDivLoss(mean over B*B)(log_softmax, softmax(10 * gt)) * B.
    p = F.log_softmax(logits, 1)
    q = F.softmax(gt * 10, 1)
    return F.kl_div(p, q, reduction="mean") * logits.shape[0]


def maxdiff(a, b):
    return (a - b).abs().max().item()


# ---------------------------------------------------------------------------------------------
def main():
    import transformers
    from transformers import CLIPConfig, CLIPModel

    os.makedirs(OUT_DIR, exist_ok=True)
    torch.manual_seed(0)

    model = clip_model.CLIP(
        embed_dim=EMBED, image_resolution=IMAGE, vision_layers=V_LAYERS, vision_width=V_WIDTH,
        vision_patch_size=PATCH, context_length=CONTEXT, vocab_size=VOCAB,
        transformer_width=T_WIDTH, transformer_heads=T_HEADS, transformer_layers=T_LAYERS,
    ).float().eval()
    time_holder = nn.Module()
    time_holder.time_embedding = nn.Parameter(torch.zeros(T, V_WIDTH))
    conv = Conv1DHead(EMBED).eval()
    lstm = LSTMHead(EMBED).eval()
    transf = TransfHead(EMBED, TRANSF_LAYERS, T_WIDTH // 64, CONTEXT).eval()
    transf_cls = TransfClsHead(EMBED, T, TRANSF_CLS_LAYERS).eval()

    for m in (model, time_holder, conv, lstm, transf, transf_cls):
        rerandomise(m)
        round_to_f16(m)
    time_embedding = time_holder.time_embedding

    # ---- inputs ----
    gen = torch.Generator().manual_seed(0)
    frames = torch.randn(B, T, 3, IMAGE, IMAGE, generator=gen)
    labels = torch.tensor([0, 1, 0, 2], dtype=torch.int64)
    tokens = make_tokens(gen, B)
    zs_tokens = make_tokens(gen, N_TEMPLATES * N_CLASSES)
    assert (tokens.argmax(-1) == (tokens == EOT_ID).int().argmax(-1)).all()

    with torch.no_grad():
        flat = frames.view(-1, 3, IMAGE, IMAGE)
        image_features = model.encode_image(flat)  # [B*T, 64]
        text_features = model.encode_text(tokens)
        zs_text_features = model.encode_text(zs_tokens)
        frame_feats = image_features.view(B, T, EMBED)

        # self-check: the custom vision path without the shift is encode_image
        no_shift = encode_image_tsm(model.visual, flat, T, shift=False)
        d = maxdiff(no_shift, image_features)
        print(f"tsm-forward with shift disabled vs encode_image: max|diff| = {d:.3e}")
        assert d < 1e-6, d
        tsm_feats = encode_image_tsm(model.visual, flat, T, shift=True).view(B, T, EMBED)
        d = maxdiff(tsm_feats, frame_feats)
        print(f"tsm vs plain frame features differ by max {d:.3e} (must be > 0)")
        assert d > 1e-3

        video = OrderedDict()
        video["video.meanP"] = frame_feats.mean(1)
        video["video.conv1d_time"] = conv.forward_time(frame_feats)
        video["video.conv1d_reference"] = conv.forward_reference(frame_feats)
        video["video.lstm"] = lstm(frame_feats)
        video["video.transf"] = transf(frame_feats)
        video["video.transf_cls"] = transf_cls(frame_feats)
        video["video.tsm_meanP"] = tsm_feats.mean(1)
        video["video.tsm_transf"] = transf(tsm_feats)
        video["video.joint"] = encode_video_joint(model.visual, time_embedding, flat, B, T)
        assert torch.equal(image_features.view(B, T, EMBED).mean(1), video["video.meanP"])
        d = maxdiff(video["video.conv1d_time"], video["video.conv1d_reference"])
        print(f"conv1d time vs reference reshape differ by max {d:.3e} (must be > 0)")
        assert d > 1e-3
        for k, v in video.items():
            assert v.shape == (B, EMBED), (k, v.shape)
            assert torch.isfinite(v).all(), k

        v = l2n(video["video.transf"])
        t = l2n(text_features)
        logits_v2t = model.logit_scale.exp() * v @ t.t()
        logits_t2v = logits_v2t.t().contiguous()
        gt = (labels[:, None] == labels[None, :]).float()
        loss = ((kl_loss(logits_v2t, gt) + kl_loss(logits_t2v, gt)) / 2).reshape(1)

        sim = 100.0 * v @ l2n(zs_text_features).t()  # [B, templates*classes], template-major
        zs_probs = sim.view(B, N_TEMPLATES, N_CLASSES).softmax(dim=-1).mean(dim=1)

    # ---- weights.safetensors ----
    clip_sd = model.state_dict()
    param_names = {n for n, _ in model.named_parameters()}
    clip_sd = OrderedDict((k, v) for k, v in clip_sd.items() if k in param_names)
    weights = OrderedDict(clip_sd)
    weights["visual.time_embedding"] = time_embedding.data
    heads = OrderedDict()
    for head in (conv, lstm, transf, transf_cls):
        hp = {n for n, _ in head.named_parameters()}
        for k, val in head.state_dict().items():
            if k in hp:
                key = "fusion_model." + k
                assert key not in heads, key
                heads[key] = val
    weights.update(heads)
    weights16 = to_f16(weights)
    for k, val in weights.items():
        assert torch.equal(weights16[k].float(), val), f"{k} is not f16-exact"
    meta = {"format": "pt"}  # one key: safetensors writes metadata in hash order
    save_file(weights16, os.path.join(OUT_DIR, "weights.safetensors"), metadata=meta)

    # ---- io.safetensors ----
    io = OrderedDict()
    io["frames"] = frames
    io["labels"] = labels
    io["tokens"] = tokens
    io["zs_tokens"] = zs_tokens
    io["image_features"] = image_features
    io["text_features"] = text_features
    io.update(video)
    io["logits_v2t"] = logits_v2t
    io["logits_t2v"] = logits_t2v
    io["loss"] = loss
    io["zs_text_features"] = zs_text_features
    io["zs_probs"] = zs_probs
    io = OrderedDict((k, x.detach().clone().contiguous()) for k, x in io.items())
    save_file(io, os.path.join(OUT_DIR, "io.safetensors"), metadata=meta)

    # ---- hf_clip.safetensors + hf_config.json, verified with transformers.CLIPModel ----
    hf_sd = openai_to_hf(clip_sd)
    config = CLIPConfig(
        text_config=dict(
            vocab_size=VOCAB, hidden_size=T_WIDTH, intermediate_size=4 * T_WIDTH,
            projection_dim=EMBED, num_hidden_layers=T_LAYERS, num_attention_heads=T_HEADS,
            max_position_embeddings=CONTEXT, hidden_act="quick_gelu", layer_norm_eps=1e-5,
            pad_token_id=0, bos_token_id=SOT_ID, eos_token_id=EOT_ID,
        ),
        vision_config=dict(
            hidden_size=V_WIDTH, intermediate_size=4 * V_WIDTH, projection_dim=EMBED,
            num_hidden_layers=V_LAYERS, num_attention_heads=V_WIDTH // 64, num_channels=3,
            image_size=IMAGE, patch_size=PATCH, hidden_act="quick_gelu", layer_norm_eps=1e-5,
        ),
        projection_dim=EMBED,
        logit_scale_init_value=float(model.logit_scale.item()),
    )
    config.architectures = ["CLIPModel"]
    hf = CLIPModel(config).float().eval()
    missing, unexpected = hf.load_state_dict(hf_sd, strict=False)
    missing = [k for k in missing if not k.endswith("position_ids")]
    assert not missing and not unexpected, (missing, unexpected)
    with torch.no_grad():
        def feats(o):
            if isinstance(o, torch.Tensor):
                return o
            for name in ("image_embeds", "text_embeds", "pooler_output"):
                if getattr(o, name, None) is not None:
                    return getattr(o, name)
            raise TypeError(type(o))

        hf_img = feats(hf.get_image_features(pixel_values=flat))
        hf_txt = feats(hf.get_text_features(input_ids=tokens))
        hf_zs = feats(hf.get_text_features(input_ids=zs_tokens))
    di, dt, dz = maxdiff(hf_img, image_features), maxdiff(hf_txt, text_features), maxdiff(
        hf_zs, zs_text_features)
    print(f"HF vs OpenAI: image max|diff| = {di:.3e}, text = {dt:.3e}, zero-shot text = {dz:.3e}")
    assert max(di, dt, dz) < 1e-5
    hf16 = to_f16(hf_sd)
    save_file(hf16, os.path.join(OUT_DIR, "hf_clip.safetensors"), metadata=meta)
    with open(os.path.join(OUT_DIR, "hf_config.json"), "w") as f:
        json.dump(config.to_dict(), f, indent=2, sort_keys=True)
        f.write("\n")

    # ---- actionclip_tsm_transf.pt (training checkpoint, reference layout) ----
    ckpt = {
        "epoch": 3,
        "model_state_dict": OrderedDict(
            (tsm_rename(k), v) for k, v in to_f16(clip_sd).items()),
        "fusion_model_state_dict": OrderedDict(
            ("module." + k, v) for k, v in to_f16(transf.state_dict()).items()),
        "optimizer_state_dict": {"state": {}, "param_groups": [{"lr": 5e-6}]},
    }
    ckpt_path = os.path.join(OUT_DIR, "actionclip_tsm_transf.pt")
    torch.save(ckpt, ckpt_path)

    # Round trip: the checkpoint alone reproduces video.tsm_transf.
    ck = torch.load(ckpt_path, map_location="cpu", weights_only=True)
    m2 = clip_model.CLIP(
        embed_dim=EMBED, image_resolution=IMAGE, vision_layers=V_LAYERS, vision_width=V_WIDTH,
        vision_patch_size=PATCH, context_length=CONTEXT, vocab_size=VOCAB,
        transformer_width=T_WIDTH, transformer_heads=T_HEADS, transformer_layers=T_LAYERS,
    ).float().eval()
    m2.load_state_dict({k.replace(".net.", "."): v.float() for k, v in ck["model_state_dict"].items()})
    h2 = TransfHead(EMBED, TRANSF_LAYERS, T_WIDTH // 64, CONTEXT).eval()
    h2.load_state_dict({k[len("module."):]: v.float() for k, v in ck["fusion_model_state_dict"].items()})
    with torch.no_grad():
        again = h2(encode_image_tsm(m2.visual, flat, T).view(B, T, EMBED))
    assert torch.equal(again, video["video.tsm_transf"])

    # Round trip: weights.safetensors equals the f32 parameters exactly.
    back = load_file(os.path.join(OUT_DIR, "weights.safetensors"))
    assert set(back) == set(weights)
    for k, val in weights.items():
        assert back[k].dtype == torch.float16 and torch.equal(back[k].float(), val), k

    # ---- config.json ----
    cfg = {
        "embed_dim": EMBED,
        "vision": {"width": V_WIDTH, "layers": V_LAYERS, "heads": V_WIDTH // 64,
                   "patch_size": PATCH, "image_size": IMAGE},
        "text": {"width": T_WIDTH, "layers": T_LAYERS, "heads": T_HEADS,
                 "vocab_size": VOCAB, "context_length": CONTEXT},
        "frames": T,
        "transf_layers": TRANSF_LAYERS,
        "transf_cls_layers": TRANSF_CLS_LAYERS,
        "batch": B,
    }
    with open(os.path.join(OUT_DIR, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
        f.write("\n")

    print(f"torch {torch.__version__}, transformers {transformers.__version__}")
    total = 0
    for name in sorted(os.listdir(OUT_DIR)):
        size = os.path.getsize(os.path.join(OUT_DIR, name))
        total += size
        print(f"  {name:28s} {size:>9d} bytes")
    print(f"  total {total} bytes; loss = {loss.item():.6f}")
    print("zs_probs:", zs_probs)


if __name__ == "__main__":
    main()
