#!/usr/bin/env python3
"""Make the Hugging Face tokenizer fixtures in tests/fixtures/tokenizer/ with Hugging Face's own libraries.

Usage (from the repository root, with a Python that has `transformers`, `tokenizers` and `openai-clip`):

    /root/venv/bin/python tools/make_hf_tokenizer.py

Writes:

    clip_tokenizer.json.gz  the `tokenizer.json` of `transformers.CLIPTokenizer`, gzip-compressed. The tokenizer
                            is built the way `transformers`' conversion builds it for the OpenAI checkpoints:
                            vocab.json is `SimpleTokenizer.encoder` (256 byte symbols, the same with `</w>`,
                            the 48,894 merges' concatenations, <|startoftext|>, <|endoftext|>) and merges.txt
                            holds lines 1..=48894 of openai-clip's `bpe_simple_vocab_16e6.txt.gz`. No model hub
                            access is needed.
    hf_tokenize.jsonl       the ids Hugging Face's `tokenizers` gives with that file, for every fixture text
                            (clip_tokenize.jsonl and clip_tokenize_adversarial.jsonl) where they differ from the
                            fixture's `clip.tokenize` ids; every other fixture text gets the same ids from both
                            libraries. The lines have the fixture's format: {"text": ..., "ids": [...]} with
                            `Tokenizer.encode(text).ids` (the file's post-processor adds <|startoftext|> and
                            <|endoftext|>), or {"text": ..., "error": "too_long", "truncated": [...]} when those
                            are more than 77 ids, cut as `clip.tokenize(truncate=True)` cuts them (the first 77,
                            the last one replaced by <|endoftext|>).

Run tools/make_tokenizer_fixture.py first. The script prints why the differing texts differ, grouped by the
step of OpenAI's pipeline that Hugging Face's leaves out. The output is deterministic.
"""

import gzip
import html
import json
import os
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = os.path.join(ROOT, "tests", "fixtures", "tokenizer")
VOCAB_GZ = os.path.join(ROOT, "weights", "bpe_simple_vocab_16e6.txt.gz")
TOKENIZER_OUT = os.path.join(FIXTURES, "clip_tokenizer.json.gz")
IDS_OUT = os.path.join(FIXTURES, "hf_tokenize.jsonl")
FIXTURE_FILES = ("clip_tokenize.jsonl", "clip_tokenize_adversarial.jsonl")
NUM_MERGES = 49152 - 256 - 2
CONTEXT_LENGTH = 77


def bytes_to_unicode():
    """GPT-2's byte-to-symbol table, in the order openai-clip lists the symbols."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs]))


def openai_vocab_and_merges():
    """vocab.json and merges.txt of the OpenAI CLIP tokenizer, as `SimpleTokenizer.__init__` builds them."""
    with gzip.open(VOCAB_GZ) as f:
        lines = f.read().decode("utf-8").split("\n")
    merges = [tuple(line.split()) for line in lines[1 : NUM_MERGES + 1]]
    symbols = list(bytes_to_unicode().values())
    vocab = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges] + ["<|startoftext|>", "<|endoftext|>"]
    return dict(zip(vocab, range(len(vocab)))), merges


def build_tokenizer_json(path):
    """Writes the tokenizer.json of `CLIPTokenizer` built from vocab.json and merges.txt files."""
    from transformers import CLIPTokenizer

    vocab, merges = openai_vocab_and_merges()
    with tempfile.TemporaryDirectory() as tmp:
        vocab_file = os.path.join(tmp, "vocab.json")
        merges_file = os.path.join(tmp, "merges.txt")
        with open(vocab_file, "w", encoding="utf-8") as f:
            json.dump(vocab, f, ensure_ascii=False)
        with open(merges_file, "w", encoding="utf-8", newline="\n") as f:
            f.write("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
        tokenizer = CLIPTokenizer.from_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        with open(os.path.join(tmp, "tokenizer.json"), "rb") as f:
            data = f.read()
    with open(path, "wb") as f:
        # mtime 0: the same input gives the same bytes.
        with gzip.GzipFile(fileobj=f, mode="wb", compresslevel=9, mtime=0, filename="") as gz:
            gz.write(data)
    return data


def fixture_cases():
    for name in FIXTURE_FILES:
        with open(os.path.join(FIXTURES, name), encoding="utf-8") as f:
            for line in f:
                if line.strip():
                    yield json.loads(line)


def why_different(text):
    """The step of OpenAI's cleaning that explains a difference, in words."""
    import ftfy

    if ftfy.fix_text(text) != text:
        return "ftfy.fix_text changes the text"
    if html.unescape(html.unescape(text)) != text:
        return "html.unescape changes the text"
    if text.lower() != "".join(c.lower() for c in text):
        return "str.lower is context-sensitive here (final sigma)"
    lowered = text.lower()
    if "ſ" in lowered or "\u212a" in lowered:
        return "re.IGNORECASE folds ſ/K into the 's / 't pattern"
    if "<|" in text:
        return ("literal special tokens: added tokens match as written wherever they are, OpenAI's pattern in "
                "any case but only where a piece starts")
    return "other"


def main():
    from tokenizers import Tokenizer

    data = build_tokenizer_json(TOKENIZER_OUT)
    print(f"wrote {os.path.relpath(TOKENIZER_OUT, ROOT)} ({len(data):,} bytes, "
          f"{os.path.getsize(TOKENIZER_OUT):,} compressed)")
    tokenizer = Tokenizer.from_str(data.decode("utf-8"))
    records = []
    reasons = {}
    same = 0
    total = 0
    eot = tokenizer.token_to_id("<|endoftext|>")
    for case in fixture_cases():
        total += 1
        text = case["text"]
        ids = tokenizer.encode(text).ids
        if len(ids) > CONTEXT_LENGTH:
            record = {"text": text, "error": "too_long", "truncated": ids[: CONTEXT_LENGTH - 1] + [eot]}
        else:
            record = {"text": text, "ids": ids}
        if all(case.get(key) == value for key, value in record.items()):
            same += 1
            continue
        reasons.setdefault(why_different(text), []).append(text)
        records.append(json.dumps(record, ensure_ascii=False))
    with open(IDS_OUT, "w", encoding="utf-8", newline="\n") as f:
        f.write("\n".join(records) + "\n")
    print(f"{same} of {total} fixture texts get the clip.tokenize ids; wrote {len(records)} texts to "
          f"{os.path.relpath(IDS_OUT, ROOT)}")
    for reason, texts in sorted(reasons.items()):
        print(f"  {len(texts):4} differ: {reason}, e.g. {texts[:3]!r}")


if __name__ == "__main__":
    sys.exit(main())
