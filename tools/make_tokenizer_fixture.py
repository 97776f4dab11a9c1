#!/usr/bin/env python3
"""Make tests/fixtures/tokenizer/clip_tokenize.jsonl from the PyTorch reference `clip.tokenize`.

Usage (from the repository root, with a Python that has the PyPI package `openai-clip` and torch):

    /root/venv/bin/python tools/make_tokenizer_fixture.py

Each line of the output is one JSON object:

    {"text": ..., "ids": [...]}                             # clip.tokenize(text) without the zero padding
    {"text": ..., "error": "too_long", "truncated": [...]}  # clip.tokenize raised; ids of truncate=True

Texts: the 16 ActionCLIP templates x every UCF101 and HMDB51 label (as written in the label lists), then
hand-made edge cases. Only mojibake repair (ftfy.fix_encoding) is outside what the Rust tokenizer ports, so
cases that need it are not written here. The output is deterministic (fixed order, no randomness).
"""

import json
import os
import sys
import types

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = os.environ.get("ACTIONCLIP_SHARED_DATA", os.path.join(os.path.dirname(ROOT), "shared", "data"))
OUT = os.path.join(ROOT, "tests", "fixtures", "tokenizer", "clip_tokenize.jsonl")


def import_clip():
    """`import clip`, stubbing the image-only imports (PIL, torchvision) if they are not installed.

    clip.tokenize only needs torch and the tokenizer; PIL and torchvision are used by clip.load's
    preprocessing, which this script never calls.
    """
    try:
        import clip  # noqa: F401

        return clip
    except ImportError as e:
        if e.name not in ("PIL", "torchvision", "torchvision.transforms"):
            raise
    pil = types.ModuleType("PIL")
    pil_image = types.ModuleType("PIL.Image")
    pil_image.BICUBIC = 3
    pil_image.Image = object
    pil.Image = pil_image
    tv = types.ModuleType("torchvision")
    tvt = types.ModuleType("torchvision.transforms")
    for name in ("Compose", "Resize", "CenterCrop", "ToTensor", "Normalize"):
        setattr(tvt, name, object)

    class InterpolationMode:
        BICUBIC = "bicubic"

    tvt.InterpolationMode = InterpolationMode
    tv.transforms = tvt
    for name, module in (("PIL", pil), ("PIL.Image", pil_image), ("torchvision", tv),
                         ("torchvision.transforms", tvt)):
        sys.modules.setdefault(name, module)
    import clip  # noqa: F811

    return clip


TEMPLATES = [
    "a photo of action {}", "a picture of action {}", "Human action of {}", "{}, an action",
    "{} this is an action", "{}, a video of action", "Playing action of {}", "{}",
    "Playing a kind of action, {}", "Doing a kind of action, {}", "Look, the human is {}",
    "Can you recognize the action of {}?", "Video classification of {}", "A video of {}",
    "The man is {}", "The woman is {}",
]


def labels(name):
    with open(os.path.join(DATA, name), encoding="utf-8") as f:
        return [line.strip() for line in f.read().splitlines() if line.strip()]


def edge_cases():
    long_words = " ".join(["a"] * 100)
    cases = [
        # basics
        "", " ", "   ", "\t\n", "a", "A", "a photo of a cat", "A Photo Of A Cat", "A PHOTO OF A CAT",
        "a video of archery", "ApplyEyeMakeup", "apply eye makeup", "YoYo", "PlayingDaf", "Skijet",
        "hello world", "hello, world!", "Hello... world?!", "the quick brown fox jumps over the lazy dog",
        "supercalifragilisticexpialidocious", "pneumonoultramicroscopicsilicovolcanoconiosis",
        "mixedCASEwordsHERE", "under_score_words", "kebab-case-words", "CamelCaseWordsAreSplitByBPE",
        # punctuation runs
        "!!!", "?!?!", "...", "..", "--", "---", "—", "–", "a--b", "a...b", "(parentheses)", "[brackets]",
        "{braces}", "<angle>", "a/b/c", "a\\b", "#hashtag", "@mention", "$100", "100%", "50% off!",
        "a+b=c", "x*y", "~tilde~", "`backtick`", "^caret^", "|pipe|", "semi;colon", "colon: here",
        "'single quoted'", '"double quoted"', "it's", "!?", "?!", ".,;:", "****", "<<>>", "&&", "&",
        "& and &", "a & b", "a &b", "<|startoftext|>", "<|endoftext|>", "a <|endoftext|> b",
        "<|STARTOFTEXT|>", "</w>", "a</w>b",
        # digits and numbers
        "0", "7", "42", "2024", "1234567890", "3.14159", "1,000,000", "1 000 000", "1'000'000", "10-20",
        "9am", "v2.0.1", "covid19", "4k60fps", "0x1F", "1st 2nd 3rd 4th", "٣", "١٢٣", "四五六", "½", "²",
        "Ⅻ", "①②③",
        # apostrophes and contractions
        "it's", "don't", "we're", "we've", "i'm", "we'll", "he'd", "IT'S", "DON'T", "WE'RE", "WE'VE",
        "I'M", "WE'LL", "HE'D", "It'S", "'s", "'t", "'re", "'ve", "'m", "'ll", "'d", "''", "'", "'x",
        "rock'n'roll", "o'clock", "the dog's ball", "the dogs' balls", "'sss", "'dd", "'ſ",
        # HTML entities
        "&amp;", "&lt;", "&gt;", "&quot;", "&#39;", "&#x27;", "&nbsp;", "&eacute;", "&amp;amp;",
        "&amp;amp;amp;amp;", "&amp", "&ampx", "&amp x", "caf&eacute;", "&EACUTE;", "&Eacute;", "P&EACUTE;REZ",
        "STRA&SZLIG;E", "&NTILDE; &nTILDE;", "&copy; 2024", "&COPY;", "&copy", "&not;", "this&not that",
        "&notin;", "&notit;", "&frac12;", "&hellip;", "&mdash;", "&ndash;", "&lsquo;x&rsquo;", "&ldquo;x&rdquo;",
        "&#8217;", "&#x2019;", "&#65;&#66;&#67;", "&#x41;", "&#X41;", "&#128;", "&#150;", "&#0;", "&#1;",
        "&#13;", "&#x110000;", "&#xD800;", "&#65", "&#65abc;", "&#x;", "&#;", "&bogus;", "&acE;", "&fjlig;",
        "&nbsp;&nbsp;a&nbsp;&nbsp;", "&lt;b&gt;bold&lt;/b&gt;", "<b>bold</b> &amp;", "a < b &amp; c",
        "x &lt; y", "&LT;", "&Amp;", "&amp;lt;", "&amp;#39;", "line1 &amp;\nline2 <\nline3 &amp;",
        "line1 <\nline2 &amp;", "&Hat;", "&HAT;",
        # accented Latin, other scripts
        "café", "naïve", "résumé", "über", "Ångström", "crème brûlée", "piñata", "São Paulo", "Łódź",
        "ß", "STRASSE", "straße", "İstanbul", "ǅ", "Dž", "ﬁ", "ﬂ", "ﬀ", "ﬃ", "ﬄ", "ﬅ", "ﬆ", "oﬃce ﬂoor",
        "Ĳssel", "ĳs", "ŉ", "Ǳ", "ǈ", "cafe\u0301", "e\u0301", "A\u030a", "\u212b", "\u2126",
        "Αθήνα", "ΟΔΟΣ", "ὈΔΥΣΣΕΎΣ", "σσ Σ", "Москва", "ПРИВЕТ мир", "Ёлка", "東京", "北京欢迎你",
        "日本語のテキスト", "한국어", "ｶﾀｶﾅ", "ｶﾞｷﾞ", "ﾊﾟﾋﾟ", "مرحبا بالعالم", "שלום", "हिन्दी", "ภาษาไทย",
        "😀", "👍🏽", "🇫🇷", "👨‍👩‍👧", "❤️", "a😀b", "cat 🐱 dog 🐶", "™", "©®", "°C", "µ", "€100", "£5",
        # curly quotes, full width, line breaks, control characters
        "‘single’", "“double”", "‚low‛", "„low‟", "it’s", "IT’S", "don’t", "ʼn", "don\u02bct",
        "ＦＵＬＬＷＩＤＴＨ", "ｆｕｌｌ ｗｉｄｔｈ", "１２３", "ＡＢＣ！？", "a\u3000b", "（括弧）", "＆ａｍｐ；",
        "￥１００", "ﾟ", "a\tb", "a\nb", "a\r\nb", "a\rb", "a\u2028b", "a\u2029b", "a\x85b", "a\x0bb",
        "a\x0cb", "a  b", "a \t \n b", "  leading", "trailing  ", "\n\nboth\n\n", "a\x00b", "a\x07b",
        "a\x1bb", "a\x1cb", "a\x7fb", "\ufeffbom", "a\u200bb", "a\u200cb", "a\u200db", "a\u2060b",
        "a\u206ab", "a\ufffcb", "a\ufff9b", "\x1b[31mred\x1b[0m", "\x1b[1;32mgreen", "a\u00a0b",
        "a\u2003b", "a\u202fb", "a\u180eb", "a\u00adb", "\x80", "\x93quoted\x94", "a\x81b", "a\x96b",
        "a\x85", "\x9d",
        # long inputs
        long_words, "Can you recognize the action of " + "very " * 80 + "long jumping?",
        "".join(chr(ord("a") + i % 26) for i in range(400)), "😀" * 60, "!" * 300,
    ]
    for n in (74, 75, 76, 77):
        cases.append(" ".join(["a"] * n))
    return cases


def needs_mojibake_repair(text):
    """True when ftfy's fix_encoding (mojibake repair, not ported) changes the text."""
    import ftfy

    return ftfy.fix_text(text) != ftfy.fix_text(text, fix_encoding=False)


def random_mixes(count, seed=0):
    """Seeded mixes of the fragments the cleaning steps act on (entities, quotes, widths, controls)."""
    import html.entities
    import random

    rng = random.Random(seed)
    names = sorted(html.entities.html5)
    fragments = ["&", ";", "#", "&amp;", "<", "\n", "\r", " ", "\t", "'", "'S", "'LL", "\u2019", "\u201c", "\ufb01",
                 "\uff21", "\uff76", "\uff9e", "\u3000", "\x85", "\x93", "\x1b[3m", "\ufeff", "\xa0", "\u2028",
                 "e\u0301", "\u03a3", "\u0130", "\xdf", "\U0001f600", "\u6771", "\u041c\u043e\u0441\u043a\u0432\u0430",
                 "\u0661", "\xbd", "<|endoftext|>", "a", "cat", "Run", "1,000", "..."]
    blocks = [(0x20, 0x7F), (0xA0, 0x250), (0x370, 0x52F), (0x600, 0x6FF), (0x2000, 0x206F), (0x3000, 0x30FF),
              (0x4E00, 0x4E80), (0xFB00, 0xFB4F), (0xFF00, 0xFFEF), (0x1F300, 0x1F6FF)]

    def piece():
        r = rng.random()
        if r < 0.35:
            return rng.choice(fragments)
        if r < 0.55:
            entity = "&" + rng.choice(names)
            if rng.random() < 0.3:
                entity = entity.upper()
            return entity
        if r < 0.65:
            return "&#" + rng.choice(["", "x"]) + str(rng.choice([0, 13, 39, 65, 128, 150, 233, 65534, 8217])) + ";"
        lo, hi = rng.choice(blocks)
        return "".join(chr(rng.randrange(lo, hi)) for _ in range(rng.randint(1, 6)))

    return ["".join(piece() for _ in range(rng.randint(1, 8))) for _ in range(count)]


def main():
    clip = import_clip()
    texts = []
    for label_file in ("ucf101_classes.txt", "hmdb51_classes.txt"):
        names = labels(label_file)
        for template in TEMPLATES:
            for name in names:
                texts.append(template.format(name))
    texts.extend(edge_cases())
    texts.extend(random_mixes(300))
    seen = set()
    lines = []
    for text in texts:
        if text in seen:
            continue
        if needs_mojibake_repair(text):
            print(f"skipped (needs mojibake repair): {text!r}")
            continue
        seen.add(text)
        try:
            ids = clip.tokenize(text)[0].tolist()
            record = {"text": text, "ids": strip_padding(ids)}
        except RuntimeError:
            truncated = clip.tokenize(text, truncate=True)[0].tolist()
            record = {"text": text, "error": "too_long", "truncated": strip_padding(truncated)}
        lines.append(json.dumps(record, ensure_ascii=False))
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    with open(OUT, "w", encoding="utf-8", newline="\n") as f:
        f.write("\n".join(lines) + "\n")
    print(f"wrote {len(lines)} texts to {os.path.relpath(OUT, ROOT)}")


def strip_padding(ids):
    while ids and ids[-1] == 0:
        ids.pop()
    return ids


if __name__ == "__main__":
    main()
