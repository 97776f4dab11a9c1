#!/usr/bin/env python3
"""Writes the seed inputs of the fuzz targets into fuzz/corpus/<target>/ (files named seed-*).

Valid files the readers accept (a complete minuscule CLIP as a torch.save zip, an ActionCLIP training
checkpoint, a TorchScript archive, safetensors with and without this crate's config metadata, Hugging Face
names, UCF101 and TSN lists, a reference YAML, frame folders, tiny videos) and structure-aware mutations of
them: truncated zips, zip entries whose declared sizes lie, pickles that call os.system / builtins.eval
through GLOBAL+REDUCE or STACK_GLOBAL, deeply nested pickles, tensor rebuild calls with missing arguments,
huge declared shapes, strides and offsets, safetensors header lengths past the end of the file, configs
with absurd dimensions. Needs Python 3 only (no torch: pickles are written by the standard pickler over
stand-in classes, or assembled opcode by opcode); the video seeds need the ffmpeg command and are skipped
without it.

Usage: python3 fuzz/make_seeds.py   (from the repository root or anywhere)
"""
import collections
import io
import json
import pickle
import shutil
import struct
import subprocess
import sys
import tempfile
import types
import zipfile
from pathlib import Path

CORPUS = Path(__file__).resolve().parent / "corpus"


def write(target, name, data):
    folder = CORPUS / target
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"seed-{name}").write_bytes(data if isinstance(data, bytes) else data.encode())


# --- A minuscule CLIP: vision width 8, 1 block, patch 4, 8 px; text width 8, 1 block, vocab 8, context 4.

W, E, VOCAB, CTX, PATCH, GRID = 8, 8, 8, 4, 4, 2


def block(prefix, w):
    return {
        f"{prefix}.attn.in_proj_weight": [3 * w, w],
        f"{prefix}.attn.in_proj_bias": [3 * w],
        f"{prefix}.attn.out_proj.weight": [w, w],
        f"{prefix}.attn.out_proj.bias": [w],
        f"{prefix}.ln_1.weight": [w],
        f"{prefix}.ln_1.bias": [w],
        f"{prefix}.ln_2.weight": [w],
        f"{prefix}.ln_2.bias": [w],
        f"{prefix}.mlp.c_fc.weight": [4 * w, w],
        f"{prefix}.mlp.c_fc.bias": [4 * w],
        f"{prefix}.mlp.c_proj.weight": [w, 4 * w],
        f"{prefix}.mlp.c_proj.bias": [w],
    }


def clip_shapes():
    shapes = {
        "visual.class_embedding": [W],
        "visual.positional_embedding": [GRID * GRID + 1, W],
        "visual.conv1.weight": [W, 3, PATCH, PATCH],
        "visual.ln_pre.weight": [W],
        "visual.ln_pre.bias": [W],
        "visual.ln_post.weight": [W],
        "visual.ln_post.bias": [W],
        "visual.proj": [W, E],
        "token_embedding.weight": [VOCAB, W],
        "positional_embedding": [CTX, W],
        "ln_final.weight": [W],
        "ln_final.bias": [W],
        "text_projection": [W, E],
        "logit_scale": [],
    }
    shapes.update(block("visual.transformer.resblocks.0", W))
    shapes.update(block("transformer.resblocks.0", W))
    return shapes


CONFIG = {
    "clip": {
        "vision": {"width": W, "layers": 1, "heads": 1, "patch_size": PATCH, "image_size": GRID * PATCH},
        "text": {"width": W, "layers": 1, "heads": 1, "vocab_size": VOCAB, "context_length": CTX},
        "embed_dim": E,
    },
    "frames": 2,
    "prompt": {"joint": False, "temporal_shift": False, "post": "MeanPool"},
}


def numel(shape):
    n = 1
    for d in shape:
        n *= d
    return n


def values(shape, fmt="<e"):
    """Little numbers in the struct format `fmt` (an integer format gives raw bit patterns)."""
    integer = fmt[-1] in "bBhHiIqQ"
    return b"".join(struct.pack(fmt, (i % 7) - 3 if integer else ((i % 7) - 3) / 8) for i in range(numel(shape)))


# --- safetensors


def safetensors(tensors, metadata=None, dtype="F32", fmt="<f"):
    """tensors: name -> shape. Returns the file bytes."""
    header, data = {}, b""
    for name, shape in tensors.items():
        raw = values(shape, fmt)
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [len(data), len(data) + len(raw)]}
        data += raw
    if metadata is not None:
        header["__metadata__"] = metadata
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + data


def safetensors_raw(header, data=b""):
    text = json.dumps(header, separators=(",", ":")).encode()
    return struct.pack("<Q", len(text)) + text + data


def safetensors_seeds():
    shapes = clip_shapes()
    ours = {"format": "pt", "actionclip_config": json.dumps(CONFIG)}
    write("safetensors", "actionclip-f16", safetensors(shapes, ours, "F16", "<e"))
    write("safetensors", "openai-f32", safetensors(shapes, {"format": "pt"}))
    write("safetensors", "openai-bf16-nometa", safetensors({"visual.proj": [W, E], "logit_scale": []}, None, "BF16", "<h"))
    hf = {
        "vision_model.embeddings.patch_embedding.weight": [W, 3, PATCH, PATCH],
        "vision_model.embeddings.class_embedding": [W],
        "vision_model.embeddings.position_embedding.weight": [GRID * GRID + 1, W],
        "vision_model.encoder.layers.0.self_attn.q_proj.weight": [W, W],
        "vision_model.encoder.layers.0.self_attn.k_proj.weight": [W, W],
        "vision_model.encoder.layers.0.self_attn.v_proj.weight": [W, W],
        "vision_model.encoder.layers.0.self_attn.q_proj.bias": [W],
        "text_model.embeddings.token_embedding.weight": [VOCAB, W],
        "visual_projection.weight": [E, W],
        "text_projection.weight": [E, W],
    }
    write("safetensors", "huggingface", safetensors(hf, {"format": "pt"}))
    for name, config in [
        ("huge-layers", {**CONFIG, "clip": {**CONFIG["clip"], "vision": {**CONFIG["clip"]["vision"], "layers": 1 << 40}}}),
        ("huge-context", {**CONFIG, "clip": {**CONFIG["clip"], "text": {**CONFIG["clip"]["text"], "context_length": 1 << 31}}}),
        ("huge-frames", {**CONFIG, "frames": 1 << 40}),
        ("transf-head", {**CONFIG, "prompt": {"joint": True, "temporal_shift": True, "post": {"Transformer": {"layers": 3}}}}),
    ]:
        write("safetensors", f"config-{name}", safetensors(shapes, {"actionclip_config": json.dumps(config)}, "F16", "<e"))
    write("safetensors", "config-not-json", safetensors({"logit_scale": []}, {"actionclip_config": "{\"clip\": [1, 2"}))
    base = safetensors({"visual.proj": [W, E]})
    write("safetensors", "header-length-past-end", struct.pack("<Q", 1 << 40) + base[8:])
    write("safetensors", "header-length-one-past", struct.pack("<Q", len(base) - 7) + base[8:])
    write("safetensors", "truncated-data", base[:-5])
    write("safetensors", "huge-shape", safetensors_raw(
        {"visual.proj": {"dtype": "F32", "shape": [1 << 31, 1 << 31], "data_offsets": [0, 16]}}, bytes(16)))
    write("safetensors", "shape-overflow", safetensors_raw(
        {"visual.proj": {"dtype": "F64", "shape": [1 << 62, 8], "data_offsets": [0, 0]}}))
    write("safetensors", "offsets-past-end", safetensors_raw(
        {"visual.proj": {"dtype": "F32", "shape": [2], "data_offsets": [1 << 50, (1 << 50) + 8]}}, bytes(8)))
    write("safetensors", "offsets-reversed", safetensors_raw(
        {"visual.proj": {"dtype": "F32", "shape": [2], "data_offsets": [8, 0]}}, bytes(8)))
    write("safetensors", "unsupported-dtype", safetensors_raw(
        {"visual.proj": {"dtype": "BOOL", "shape": [2], "data_offsets": [0, 2]},
         "logit_scale": {"dtype": "F8_E4M3", "shape": [], "data_offsets": [2, 3]}}, bytes(3)))
    write("safetensors", "header-not-object", struct.pack("<Q", 8) + b"[1,2,3] ")
    write("safetensors", "empty-header", struct.pack("<Q", 2) + b"{}")


# --- PyTorch pickles, written by the standard pickler over stand-in classes


def stand_in(module, name, obj):
    """Registers `obj` as `module.name` (creating the module and its parents), so the pickler names it so."""
    parts = module.split(".")
    for i in range(1, len(parts) + 1):
        sys.modules.setdefault(".".join(parts[:i]), types.ModuleType(".".join(parts[:i])))
    mod = sys.modules[module]
    obj.__module__, obj.__qualname__, obj.__name__ = module, name, name
    setattr(mod, name, obj)
    return obj


def _rebuild_tensor_v2(*args):
    raise NotImplementedError


def _rebuild_parameter(*args):
    raise NotImplementedError


stand_in("torch._utils", "_rebuild_tensor_v2", _rebuild_tensor_v2)
stand_in("torch._utils", "_rebuild_parameter", _rebuild_parameter)
STORAGES = {name: stand_in("torch", name, type(name, (), {})) for name in ["FloatStorage", "HalfStorage", "LongStorage"]}


class Storage:
    def __init__(self, key, kind, count):
        self.key, self.kind, self.count = key, kind, count


class Tensor:
    """A tensor as torch.save pickles it: _rebuild_tensor_v2(storage, offset, size, stride, False, {})."""

    def __init__(self, storage, shape, offset=0, stride=None, args=None):
        if stride is None:
            stride, acc = [], 1
            for d in reversed(shape):
                stride.insert(0, acc)
                acc *= d
        self.args = args if args is not None else (
            storage, offset, tuple(shape), tuple(stride), False, collections.OrderedDict())

    def __reduce__(self):
        return (_rebuild_tensor_v2, self.args)


class Parameter:
    def __init__(self, tensor):
        self.tensor = tensor

    def __reduce__(self):
        return (_rebuild_parameter, (self.tensor, False, collections.OrderedDict()))


class Pickler(pickle.Pickler):
    def persistent_id(self, obj):
        if isinstance(obj, Storage):
            return ("storage", STORAGES[obj.kind], obj.key, "cpu", obj.count)
        return None


def dumps(obj):
    buf = io.BytesIO()
    Pickler(buf, protocol=2).dump(obj)
    return buf.getvalue()


class Archive:
    """Tensors with their storages, for one torch.save zip."""

    def __init__(self):
        self.storages = {}

    def tensor(self, shape, kind="HalfStorage", **kw):
        key = str(len(self.storages))
        fmt = {"HalfStorage": "<e", "FloatStorage": "<f", "LongStorage": "<q"}[kind]
        self.storages[key] = values(shape, fmt)
        return Tensor(Storage(key, kind, numel(shape)), shape, **kw)

    def state_dict(self, shapes, **kw):
        return collections.OrderedDict((k, self.tensor(s, **kw)) for k, s in shapes.items())

    def zip(self, pickled, root="archive", extra=()):
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as z:
            z.writestr(f"{root}/data.pkl", pickled)
            for name, data in extra:
                z.writestr(f"{root}/{name}", data)
            z.writestr(f"{root}/byteorder", "little")
            for key, data in self.storages.items():
                z.writestr(f"{root}/data/{key}", data)
            z.writestr(f"{root}/version", "3\n")
        return buf.getvalue()


def script_module(name, attrs):
    cls = stand_in(f"__torch__.{name.lower()}", name, type(name, (), {}))
    obj = cls.__new__(cls)
    obj.__dict__.update(attrs)
    return obj


def pytorch_seeds():
    shapes = clip_shapes()
    a = Archive()
    valid = a.zip(dumps(a.state_dict(shapes)))
    write("pytorch", "openai-state-dict", valid)

    a = Archive()
    fusion = {"frame_position_embeddings.weight": [77, E], "shift.weight": [E, 1, 3]}
    checkpoint = collections.OrderedDict(
        epoch=3,
        model_state_dict=a.state_dict({f"module.{k}": s for k, s in shapes.items()}),
        fusion_model_state_dict=a.state_dict({f"module.{k}": s for k, s in fusion.items()}),
        optimizer_state_dict={"state": {}, "param_groups": [{"lr": 5e-6}]},
        loss=0.5,
    )
    write("pytorch", "actionclip-checkpoint", a.zip(dumps(checkpoint)))

    a = Archive()
    nested = {"state_dict": a.state_dict({"visual.proj": [W, E], "logit_scale": []}, kind="FloatStorage")}
    write("pytorch", "under-state-dict", a.zip(dumps(nested), root="model_best"))

    a = Archive()
    params = {"weight": Parameter(a.tensor([W, 3, PATCH, PATCH])), "training": False}
    visual = script_module("VisionTransformer", {
        "conv1": script_module("Conv2d", params),
        "proj": a.tensor([W, E]),
        "class_embedding": a.tensor([W]),
    })
    root = script_module("CLIP", {"visual": visual, "logit_scale": a.tensor([]), "training": False})
    write("pytorch", "torchscript", a.zip(dumps(root), root="ViT-B-16",
                                          extra=[("constants.pkl", dumps(())), ("code/__torch__/model.py", "")]))

    # Truncated archives: cut in the central directory, in the storages, in the pickle.
    for cut in [len(valid) - 30, len(valid) // 2, 200, 40]:
        write("pytorch", f"truncated-{cut}", valid[:cut])

    # A zip entry whose declared sizes lie (central directory and local header of data.pkl).
    lying = bytearray(valid)
    for sig, size_at in [(b"PK\x01\x02", 24), (b"PK\x03\x04", 22)]:
        at = lying.find(sig)
        lying[at + size_at:at + size_at + 4] = struct.pack("<I", 0xFFFFFFF0)
    write("pytorch", "declared-size-lies", bytes(lying))

    # Hostile pickles in a valid archive.
    def with_pickle(name, pickled):
        write("pytorch", name, Archive().zip(pickled))

    with_pickle("global-os-system", b"\x80\x02cos\nsystem\nX\x04\x00\x00\x00trueq\x00\x85R.")
    with_pickle("stack-global-eval",
                b"\x80\x04\x8c\x08builtins\x94\x8c\x04eval\x94\x93\x94\x8c\x011\x94\x85\x94R\x94.")
    with_pickle("nested-lists-100000", b"\x80\x02" + b"]" * 100_000 + b"a" * 99_999 + b".")
    with_pickle("nested-lists-200", b"\x80\x02" + b"]" * 200 + b"a" * 199 + b".")
    with_pickle("wide-integer", b"\x80\x02}q\x00X\x01\x00\x00\x00aq\x01\x8a\x09" + bytes(range(1, 10)) + b"s.")
    with_pickle("not-a-dict", dumps([1, 2.5, "x", None, True]))
    with_pickle("no-stop", b"\x80\x02}q\x00")

    # Tensor rebuild calls with missing or absurd arguments.
    def odd_tensor(name, shape=(W, E), kind="FloatStorage", **kw):
        """visual.proj with a storage of W * E floats but the given declared shape, offset or stride."""
        a = Archive()
        a.storages["0"] = values([W, E], "<f")
        t = Tensor(Storage("0", kind, W * E), list(shape), **kw)
        write("pytorch", name, a.zip(dumps({"visual.proj": t})))

    odd_tensor("huge-shape", shape=(2**31 - 1, 2**31 - 1), kind="LongStorage")
    odd_tensor("huge-offset", offset=1 << 62)
    odd_tensor("negative-offset", offset=-1)
    odd_tensor("stride-rank-mismatch", stride=(1,))
    odd_tensor("non-contiguous", stride=(1, 3))
    a = Archive()
    storage = Storage("0", "FloatStorage", 4)
    a.storages["0"] = bytes(16)
    for n in range(0, 6):
        short = Tensor(storage, [2, 2], args=(storage, 0, (2, 2), (2, 1), False, {})[:n])
        write("pytorch", f"rebuild-args-{n}", a.zip(dumps({"visual.proj": short})))

    class ShortStorage(Storage):
        pass

    class ShortPickler(Pickler):
        def persistent_id(self, obj):
            if isinstance(obj, Storage):
                return ("storage", STORAGES["FloatStorage"])
            return None

    buf = io.BytesIO()
    ShortPickler(buf, protocol=2).dump({"visual.proj": Tensor(ShortStorage("0", "FloatStorage", 4), [2, 2])})
    write("pytorch", "short-persistent-id", a.zip(buf.getvalue()))

    # A legacy (pre-1.6) raw pickle stream and an empty zip.
    write("pytorch", "legacy-raw-pickle", b"\x80\x02\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19.")
    buf = io.BytesIO()
    zipfile.ZipFile(buf, "w").close()
    write("pytorch", "empty-zip", buf.getvalue())


# --- Text formats: the first byte picks the parser (see fuzz_targets/text_formats.rs).


def text_seeds():
    seeds = {
        "class-ind": (0, "1 ApplyEyeMakeup\n2 ApplyLipstick\n3 Archery\n"),
        "class-ind-gap": (0, "1 ApplyEyeMakeup\n3 Archery\n"),
        "trainlist": (1, "ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi 1\nArchery/v_Archery_g01_c01.avi 2\n"),
        "trainlist-bad-label": (1, "Archery/v_Archery_g01_c01.avi 99\n"),
        "testlist": (2, "YoYo/v_YoYo_g01_c01.avi\nArchery/v_Archery_g02_c01.avi\r\n"),
        "tsn-list": (3, "frames/v_Archery_g01_c01 120 1\n/abs/path with spaces/clip 7 0\n"),
        "tsn-list-huge-count": (3, "frames/a 99999999999999999999999 1\n"),
        "label-csv": (4, "id,name\n0,abseiling\n1,\"air drumming\"\n2,archery\n"),
        "label-csv-repeat": (4, "id,name\n0,a\n0,b\n"),
        "scan-list": (5, "Archery/v_Archery_g01_c01.avi 2\nYoYo/v_YoYo_g02_c03.avi\n"),
        "yaml-reference": (6, "pretrain:\nresume:\nseed: 1024\ndata:\n  dataset: ucf101\n  modality: RGB\n"
                              "  num_segments: 8\n  seg_length: 1\n  split: 1\n  batch_size: 16\n  workers: 8\n"
                              "  num_classes: 101\n  image_tmpl: 'img_{:05d}.jpg'\n  train_list: 'lists/ucf101/trainlist01.txt'\n"
                              "  val_list: 'lists/ucf101/testlist01.txt'\n  label_list: 'lists/ucf_labels.csv'\n"
                              "  input_size: 224\n  randaug:\n    N: 0\n    M: 0\n"
                              "network:\n  arch: ViT-B/16\n  init: True\n  tsm: False\n  drop_out: 0.0\n"
                              "  emb_dropout: 0.0\n  type: clip_ucf\n  sim_header: 'Transf'\n  joint: False\n"
                              "  describe:\nsolver:\n  type: cosine\n  epochs: 50\n  start_epoch: 0\n"
                              "  epoch_offset: 0\n  optim: adamw\n  lr: 5.e-6\n  lr_warmup_step: 5\n"
                              "  momentum: 0.9\n  weight_decay: 0.2\n  lr_decay_step: 15\n  lr_decay_factor: 0.1\n"
                              "  clip_gradient: 20\n  loss_type: nll\n  evaluate: False\n  ratio: 1\n"
                              "  f_ratio: 10\nlogging:\n  print_freq: 10\n  eval_freq: 1\n"),
        "yaml-odd-values": (6, "solver:\n  epochs: -3\n  lr: .nan\n  lr_decay_step: [1e30, -1]\n"
                               "network:\n  sim_header: Transf_cls\n  arch: RN50\ndata:\n  num_segments: 1e300\n"),
        "yaml-anchors": (6, "a: &a [1, 2]\nb: &b [*a, *a]\nc: &c [*b, *b]\nseed: *c\n"),
        "frames": (7, "img_{:05d}.jpg\nimg_00001.jpg\nimg_00002.jpg\nimg_00003.jpg\n"),
        "frames-gap": (7, "frame{:d}.png\nframe1.png\nframe3.png\nimg_00001.jpg\n"),
        "frames-bad-template": (7, "img_{:99999999999999999999d}.jpg\nimg_1.jpg\n"),
    }
    for name, (which, text) in seeds.items():
        write("text_formats", name, bytes([which]) + text.encode())


def tokenizer_seeds():
    for name, text in {
        "ascii": "a video of a person doing archery",
        "punctuation": "it's   a  <|startoftext|>test!!! 123,456 don't",
        "unicode": "naïve café — 日本語のテキスト 🎯🏹 ﬁ Ⅻ",
        "html": "&amp; &lt;b&gt;bold&lt;/b&gt; <script>alert(1)</script>",
        "long": "word " * 200,
        "control": "\x00\x01\u200b\u202e\ufeff tab\tnew\nline",
    }.items():
        write("tokenizer", name, text)
    write("tokenizer", "invalid-utf8", b"\xff\xfe\xc3\x28 ok \xed\xa0\x80")


def infer_seeds():
    # Arbitrary's derive reads enum tags and lengths from the input; a few byte strings give it a start.
    for n, data in enumerate([bytes(16), bytes([1] * 32), bytes([3, 1, 0, 2, 7] * 12), bytes(range(64))]):
        write("infer", f"bytes-{n}", data)


def video_seeds():
    if shutil.which("ffmpeg") is None:
        print("ffmpeg not found: no video seeds", file=sys.stderr)
        return
    with tempfile.TemporaryDirectory() as tmp:
        for name, args in {
            "mpeg4.avi": ["-c:v", "mpeg4"],
            "mjpeg.avi": ["-c:v", "mjpeg", "-pix_fmt", "yuvj420p"],
            "mpeg4.mp4": ["-c:v", "mpeg4"],
            "ffv1.mkv": ["-c:v", "ffv1"],
            "anim.gif": [],
            "raw.y4m": ["-pix_fmt", "yuv420p"],
        }.items():
            out = Path(tmp) / name
            cmd = ["ffmpeg", "-loglevel", "error", "-f", "lavfi", "-i", "testsrc=size=16x16:rate=5:duration=0.8",
                   *args, str(out)]
            if subprocess.run(cmd).returncode == 0:
                data = out.read_bytes()
                write("video", name, data)
                write("video", f"truncated-{name}", data[: len(data) // 2])


if __name__ == "__main__":
    safetensors_seeds()
    pytorch_seeds()
    text_seeds()
    tokenizer_seeds()
    infer_seeds()
    video_seeds()
    for folder in sorted(CORPUS.iterdir()):
        files = list(folder.iterdir())
        print(f"{folder.name}: {len(files)} files, {sum(f.stat().st_size for f in files)} bytes")
