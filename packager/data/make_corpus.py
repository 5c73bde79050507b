"""Regenerates corpus.jsonl, the tricky default parity corpus (one JSON string per line).

Run: python packager/data/make_corpus.py. The output is committed; this script documents it.
"""
import json
import pathlib
import random

CASES = [
    # plain, mixed case, accents
    "The quick brown fox jumps over the lazy dog.",
    "HELLO World, this Is MiXeD CaSe.",
    "Café, naïve, résumé, jalapeño, Ångström, Øresund, Łódź, Dvořák.",
    "Crème brûlée à la française; Straße; ß ẞ; İstanbul ıi; ǅ ǈ ǋ.",
    "Ελληνικά: ΣΊΣΥΦΟΣ σίσυφος ΟΔΟΣ; Σ at the end ΣΣ.",
    "Русский текст: Ёлка и ёжик. Українська: Їжак, ґанок.",
    # combining marks, decomposed forms
    "e\u0301 a\u0300 o\u0308 n\u0303 c\u0327 a\u030a\u0301 Z\u0351\u0362\u0316",
    "Zalgo: H\u0336\u0328\u0310e\u0337\u0354\u030bl\u0338\u0317l\u0335o\u0334\u0359",
    "ﬁnance ﬂour ½ ¼ ³ ™ © ® … ‰ № ℃ Ⅻ ﬀ ﬃ",
    "Ｆｕｌｌｗｉｄｔｈ　ＡＢＣ　１２３！？",
    # CJK, Japanese, Korean, Thai
    "中文分词测试：我爱自然语言处理。",
    "日本語のテキスト、カタカナとひらがな。漢字も。ｶﾀｶﾅ",
    "한국어 문장입니다. 안녕하세요!",
    "ภาษาไทยไม่มีช่องว่างระหว่างคำ",
    "Mixed 中文 and English 混合 text 123.",
    "𠀀𠀁𪜀 CJK extension B characters 𫝀 and compat 豈 更",
    # Arabic, Hebrew, Hindi, RTL marks
    "مرحبا بالعالم! هذا نص عربي مع تشكيل: مُحَمَّدٌ",
    "שלום עולם, זה טקסט בעברית.",
    "हिन्दी पाठ: नमस्ते दुनिया। क़ ख़",
    "\u202eRTL override\u202c and \u200fRLM\u200e LRM",
    # emoji
    "Emoji: 😀😃😄 👍🏽 👨‍👩‍👧‍👦 🇫🇷 ❤️ ✨🔥 🥲 🫠 🪿",
    "Flags 🇺🇸🇬🇧 and keycaps 1️⃣ #️⃣ plus skin tones 👋🏿",
    # URLs, emails, code, numbers
    "Visit https://example.com/path?query=1&x=y#frag or http://foo.bar:8080/a_b-c.",
    "Email me at john.doe+tag@example.co.uk, or @handle #hashtag.",
    "def f(x): return {'a': [1, 2, 3]} if x >= 0 else None  # comment",
    "Prices: $1,234.56, €99,99, £5, ¥1000, 3.14159e-10, -42, 1/2, 50%.",
    "Phone +1 (555) 123-4567; date 2024-01-31T12:34:56Z; IPv6 ::1.",
    "C++ / C# / F# / .NET / node.js / x86_64 / a--b / a...b / ?!?!",
    "“Smart quotes” ‘single’ «guillemets» „German“ — em–dash ‐ hyphen",
    # control, zero width, odd whitespace
    "tab\there\nnewline\r\ncarriage\x0bvertical\x0cformfeed",
    "zero\u200bwidth\u200cnon\u200djoiner\u2060word\ufeffbom",
    "soft\u00adhyphen and nbsp\u00a0here and thin\u2009space and ideographic\u3000space",
    "control\x01chars\x07bell\x1bescape\x7fdel\x85nel",
    "nul\x00inside\x00string",
    "replacement \ufffd char and private use \ue000\uf8ff and noncharacter \ufdd0",
    "line\u2028separator and paragraph\u2029separator",
    "mongolian\u180evowel separator and ogham\u1680space",
    "   leading and trailing spaces   ",
    "\t\n leading whitespace of all kinds \u3000\u00a0",
    "multiple     internal      spaces",
    # special token text
    "[CLS] [SEP] [MASK] [PAD] [UNK] should stay whole",
    "The capital of France is [MASK].",
    "no space[MASK]around[SEP]tokens",
    "<s> </s> <mask> <pad> <unk> roberta style",
    "lowercase [mask] is not special, nor [ MASK ]",
    "[MASK][MASK] [[MASK]] [MASK",
    # tricky wordpiece
    "unbelievably antidisestablishmentarianism supercalifragilisticexpialidocious",
    "a" * 99,
    "b" * 100,
    "c" * 101,
    "é" * 60,
    "word" * 30,
    "x" * 150 + " y",
    "Dr. Smith's co-worker didn't (really) know; U.S.A. vs. U.K.",
    "Underscores_and-dashes, slashes/back\\slashes, pipes|and~tildes^carets`ticks",
    # short / empty
    "",
    " ",
    "\t\n",
    "\u200b",
    "a",
    "?",
    "中",
    "😀",
    # misc scripts
    "Ge'ez: ሰላም ዓለም; Armenian: Բարեւ; Georgian: გამარჯობა",
    "Tamil: வணக்கம்; Bengali: হ্যালো; Sinhala: ආයුබෝවන්",
    "Math: ∀x∈ℝ, ∃y: x²+y²≤1 ⇒ √(x·y) ≠ ∞; ∑ ∏ ∫ ∂",
    "Box drawing ┌─┐ │ └─┘ and arrows ← → ↑ ↓ ⇐ ⇒",
    "Musical 𝄞 symbols 𝅘𝅥𝅮 and math bold 𝐀𝐁𝐂 𝒜 𝔄",
    "Old Italic 𐌀𐌁 and Linear B 𐀀 and Cuneiform 𒀀",
    "New-ish unicode: 🫨 🩷 🪼 and Kawi 𑼀 and CJK ext H 𱍐",
]


# byte-level BPE traps (GPT-2 / Llama 3 / Qwen split regexes, ByteLevel, merges, byte fallback)
BPE_CASES = [
    # contractions: the regexes special-case 's 't 're 've 'm 'll 'd (case-insensitively in Llama 3 / Qwen)
    "I'm sure we'll see they're right; you've done it, isn't it? He'd say it's fine.",
    "WE'LL SEE THEY'RE HERE, I'M OUT, IT'S 'RE 'VE 'S 'LL 'D",
    "rock 'n' roll, O'Neil's, dogs' bowls, ''quoted'', ’s curly apostrophe, 'sup",
    "l'ſ long-s contraction and 'ſ alone",
    # digit runs: \p{N}{1,3} (Llama 3) vs \p{N} (Qwen) vs \p{N}+ (GPT-2)
    "1 12 123 1234 12345 123456 1234567 12345678901234567890",
    "v2.0.1-rc3 3.14159 1,000,000 0x1F 2024-01-31 ٣٤٥ ४५६ ½²³ Ⅻ",
    # whitespace runs before/after words: \s+(?!\S) keeps the last space for the next word
    "one  two   three    four     five",
    "     five leading spaces and five trailing     ",
    "tabs\t\tbetween\twords \t mixed \t",
    "windows\r\nline\r\nendings\r\n\r\nand blank lines",
    "unix\n\n\nnewlines\n  indented\n\tcode",
    "spaces before newline   \n   and after",
    "\r alone, \r\r\n, \n\r mixed",
    # emoji ZWJ sequences, flags, skin tones, keycaps
    "👩‍💻 👨‍👩‍👧‍👦 🏳️‍🌈 🏴‍☠️ 🧑🏽‍🚀 👁️‍🗨️",
    "🇯🇵🇰🇷🇨🇳🇮🇳 🇪🇺 and tag flag 🏴󠁧󠁢󠁳󠁣󠁴󠁿",
    "😀😀😀😀😀😀😀😀 repeated emoji and ❤️‍🔥",
    # CJK and mixed scripts without spaces (one long pre-token)
    "混合中文English日本語한국어Русский123mixed",
    "这是一个很长的中文句子没有任何标点符号用来测试字节级别的合并规则是否正确",
    "ひらがなカタカナ漢字ｶﾀｶﾅ　全角スペース",
    # combining marks and normalization-sensitive text (NFC / NFKC)
    "e\u0301 vs \u00e9, A\u030a vs \u00c5 vs \u212b, \u1100\u1161\u11a8 vs \uac01",
    "o\u0323\u0302 o\u0302\u0323 \u1ed9 stacking order, q\u0307\u0323",
    "\u0915\u093c \u0958, \u0b47\u0b3e \u0b4b, \u0dd9\u0dcf",
    # text only byte fallback can encode: rare and private-use characters, astral planes
    "\U0001d54f\U0001d56b \U0001f9ec \U00020bb7 \ue000\U000f0001 \U0010fffd",
    "ancient 𓀀𓀁 cuneiform 𒀭 and emoji 🪿 🫎 with rare CJK 𪚥",
    # punctuation runs, code, markup
    "...!!!??? --- === *** ### @@@ $$$ %%% ^^^ &&& ((())) [[[]]] {{{}}}",
    "<div class=\"x\">a &amp; b</div> <!-- comment --> <br/>",
    "for (int i = 0; i < n; ++i) { sum += a[i] * b[i]; }  // C-style",
    "    def method(self):\n        return self._value  # four-space indent",
    "path/to/file.txt C:\\Windows\\System32 ~/.config/app.json",
    # special-token text of decoder tokenizers
    "<|endoftext|> <|im_start|>user\nhello<|im_end|> <|begin_of_text|>",
    "<think>reasoning</think> <tool_call>{}</tool_call> <|endoftext",
]


def long_texts():
    rng = random.Random(0)
    words = ("search engine embedding vector model serving latency throughput token "
             "graph tensor batch query document relevance ranking retrieval").split()
    out = []
    for n in (300, 1000, 5000):
        out.append(" ".join(rng.choice(words) for _ in range(n)))
    out.append("长文本" * 400)
    out.append(("Émile Zoë naïve façade coöperate. " * 80).strip())
    out.append("😀" * 600)
    return out


def main():
    path = pathlib.Path(__file__).with_name("corpus.jsonl")
    lines = CASES + long_texts() + BPE_CASES
    path.write_text("".join(json.dumps(s, ensure_ascii=True) + "\n" for s in lines))
    print(f"wrote {len(lines)} lines to {path}")


if __name__ == "__main__":
    main()
