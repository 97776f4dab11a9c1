#!/usr/bin/env python3
"""Make the tokenizer fixtures in tests/fixtures/tokenizer/ from the reference `clip.tokenize`.

Usage (from the repository root, with a Python that has the PyPI package `openai-clip`; torch is optional):

    /root/venv/bin/python tools/make_tokenizer_fixture.py

Two files, one JSON object per line:

    clip_tokenize.jsonl              the 16 ActionCLIP templates x every UCF101 and HMDB51 label (as written
                                     in the label lists), hand-made edge cases, seeded random mixes
    clip_tokenize_adversarial.jsonl  empty and whitespace-only texts, punctuation runs, emoji and ZWJ
                                     sequences, combining marks, right-to-left text, CJK, 10,000-character
                                     words, literal <|endoftext|> in mixed case and glued to punctuation,
                                     control characters, lone </w>, numbers

Each line is one of:

    {"text": ..., "ids": [...]}                             # clip.tokenize(text) without the zero padding
    {"text": ..., "error": "too_long", "truncated": [...]}  # clip.tokenize raised; ids of truncate=True

Only mojibake repair (ftfy.fix_encoding) is outside what the Rust tokenizer ports, so texts that need it are
not written. The output is deterministic (fixed order, seeded randomness).

Without torch, `clip.tokenize` runs as its own steps over clip's `SimpleTokenizer` (torch only holds the
result there), so both ways write the same files.
"""

import importlib.util
import json
import os
import random
import sys
import types

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = os.environ.get("ACTIONCLIP_SHARED_DATA", os.path.join(os.path.dirname(ROOT), "shared", "data"))
OUT = os.path.join(ROOT, "tests", "fixtures", "tokenizer", "clip_tokenize.jsonl")
ADVERSARIAL_OUT = os.path.join(ROOT, "tests", "fixtures", "tokenizer", "clip_tokenize_adversarial.jsonl")
CONTEXT_LENGTH = 77


def reference_tokenize():
    """`clip.tokenize` of one text as a list of 77 ids; raises RuntimeError when the text is too long.

    With torch installed this is `clip.tokenize` itself. Without it, the same steps run over clip's
    `SimpleTokenizer`, loaded from its file so that the package's torch imports are not executed.
    """
    try:
        import torch  # noqa: F401
    except ImportError:
        pass
    else:
        clip = import_clip()
        return lambda text, truncate=False: clip.tokenize(text, truncate=truncate)[0].tolist()
    package = importlib.util.find_spec("clip")
    if package is None or not package.submodule_search_locations:
        raise ImportError("the PyPI package openai-clip is not installed")
    path = os.path.join(list(package.submodule_search_locations)[0], "simple_tokenizer.py")
    spec = importlib.util.spec_from_file_location("clip_simple_tokenizer", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    tokenizer = module.SimpleTokenizer()
    sot = tokenizer.encoder["<|startoftext|>"]
    eot = tokenizer.encoder["<|endoftext|>"]

    def tokenize(text, truncate=False):
        # clip.tokenize for one text, step by step.
        tokens = [sot] + tokenizer.encode(text) + [eot]
        if len(tokens) > CONTEXT_LENGTH:
            if not truncate:
                raise RuntimeError(f"Input {text} is too long for context length {CONTEXT_LENGTH}")
            tokens = tokens[:CONTEXT_LENGTH]
            tokens[-1] = eot
        return tokens + [0] * (CONTEXT_LENGTH - len(tokens))

    return tokenize


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


def adversarial_cases():
    """Inputs at the edges of the pipeline (see the module docstring)."""
    rng = random.Random(1)
    random_word = "".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(10_000))
    zalgo = "Z\u0351\u036b\u0343\u036a\u0302\u036b\u033d\u034fA\u036b\u0357\u0334\u0362\u0335L\u0368\u0367G\u0311O\u0342"
    return [
        # empty and whitespace only
        "", "\u00a0", "\u3000", " \t\r\n\u2003\u2028 ", "\u200b", "\u200b\u200c\u200d", "\u2060\ufeff",
        # punctuation only
        "!", "?!.,;:", "'''", "'", "---...---", "((()))", "!@#$%^&*()_+-=[]{}|;':\",./<>?`~",
        "\u3001\u3002\u300c\u300d", "\u00a1\u00bf", "\u2026", "\u203d", "&", "&;", "& & &",
        # emoji, ZWJ sequences, skin tones, flags, keycaps, variation selectors
        "\U0001F468\u200D\U0001F469\u200D\U0001F467\u200D\U0001F466", "\U0001F9D1\U0001F3FF\u200D\U0001F680",
        "\U0001F3F3\uFE0F\u200D\U0001F308", "\U0001F3F4\u200D\u2620\uFE0F", "\U0001F1FA\U0001F1F3\U0001F1EF\U0001F1F5",
        "1\uFE0F\u20E3#\uFE0F\u20E3", "\U0001F44D\U0001F3FB\U0001F44D\U0001F3FF", "\u263A\uFE0E\u263A\uFE0F",
        "a\U0001F468\u200D\U0001F469\u200D\U0001F467b", "\U0001F600\U0001F603\U0001F604\U0001F601" * 5,
        "\U0001F9D1\u200D\U0001F91D\u200D\U0001F9D1", "\U0001F3C3\u200D\u2640\uFE0F running",
        # combining marks
        "e\u0301\u0301\u0301", zalgo, "\u0301", "\u0301abc", "a\u0308\u0304", "\u1100\u1161\u11a8",
        "\u0915\u094D\u0937\u093F", "n\u0303 \u00f1", "A\u030A \u212B \u00C5",
        # right-to-left text and bidi controls
        "\u0645\u0631\u062d\u0628\u0627", "\u05e9\u05c1\u05b8\u05dc\u05d5\u05b9\u05dd", "\u202eabc\u202c",
        "abc \u200f \u0645\u0631\u062d\u0628\u0627 \u200e def", "\u0641\u0627\u0631\u0633\u06cc \u06f1\u06f2\u06f3",
        "\u05e2\u05d1\u05e8\u05d9\u05ea 123 english",
        # CJK
        "\u6771\u4eac\u30bf\u30ef\u30fc\u3067\u304a\u8336\u3092\u98f2\u3080", "\u6211\u7231\u5317\u4eac\u5929\u5b89\u95e8",
        "\ud55c\uad6d\uc5b4 \ud14d\uc2a4\ud2b8", "\u6f22\u5b57\u304b\u306a\u30ab\u30ca\uff76\uff85",
        "\U00020000\U00020001\U0002A6D6", "\u3007\u4e00\u4e8c\u4e09", "\u4e2d\u6587\uff0c\u6807\u70b9\uff01",
        # long inputs
        random_word, "abcdefghij" * 1000, "a" * 10_000, "1" * 500, ". " * 200, "<|endoftext|>" * 80,
        "\U0001F600" * 2000,
        # literal markers: mixed case, glued to words and punctuation, partial, escaped
        "<|endoftext|>", "<|EndOfText|>", "<|ENDOFTEXT|>", "<|StartOfText|>", "a<|endoftext|>b", "a <|EndOfText|> b",
        "!<|endoftext|>", "'<|endoftext|>", "<|endoftext|><|endoftext|>", "<|startoftext|><|endoftext|>",
        "<|endoftext|>'s", "<|endoftext|>!", "\u017f<|endoftext|>", "<|\u017ftartoftext|>", "<|endoftext",
        "endoftext|>", "< |endoftext| >", "&lt;|endoftext|&gt;", "<|endoftext|&gt;", "1<|endoftext|>2",
        # control characters
        "a\x00b\x01c\x02", "\x7f\x80\x9f", "tab\there", "bell\x07", "\x1b]0;title\x07text", "\x1b[2Jclear",
        "nul\x00", "\x0c form feed", "\x1c\x1d\x1e\x1f sep", "\x08\x08back",
        # lone </w> and byte-level look-alikes
        "</w>", "</w></w>", "a</w>", "</w>a", "</W>", "w</w", "\u0120hello", "\u010a", "\u0120\u0120",
        # numbers
        "0", "00", "007", "3.14", "-1", "+1", "1e10", "1,234.56", "\u0660\u0661\u0662", "\u0967\u0968\u0969", "\u2460",
        "\u00bc", "\u216b", "\u0e51\u0e52\u0e53", "123456789012345678901234567890", "2024-01-01", "12:30pm", "x\u00b2",
        "10^6",
        # contractions in any case
        "'S'T'RE'VE'M'LL'D", "it'S", "can'T", "'s's's", "O'Neil's", "I\u2019LL",
    ]


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


def write_fixture(path, texts, tokenize):
    """Writes one line per text (first occurrence only), leaving out texts that need mojibake repair."""
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
            record = {"text": text, "ids": strip_padding(tokenize(text))}
        except RuntimeError:
            record = {"text": text, "error": "too_long", "truncated": strip_padding(tokenize(text, truncate=True))}
        lines.append(json.dumps(record, ensure_ascii=False))
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        f.write("\n".join(lines) + "\n")
    print(f"wrote {len(lines)} texts to {os.path.relpath(path, ROOT)}")


def main():
    tokenize = reference_tokenize()
    texts = []
    for label_file in ("ucf101_classes.txt", "hmdb51_classes.txt"):
        names = labels(label_file)
        for template in TEMPLATES:
            for name in names:
                texts.append(template.format(name))
    texts.extend(edge_cases())
    texts.extend(random_mixes(300))
    write_fixture(OUT, texts, tokenize)
    main_texts = set(texts)
    write_fixture(ADVERSARIAL_OUT, [t for t in adversarial_cases() if t not in main_texts], tokenize)


def strip_padding(ids):
    while ids and ids[-1] == 0:
        ids.pop()
    return ids


if __name__ == "__main__":
    main()
