"""Build tiny random sentence-transformers models of each architecture, offline.

Each builder trains a small real tokenizer (WordPiece with ``tokenizers``, Unigram with
``sentencepiece``) on the shipped corpus plus some filler text, makes a randomly initialised
Hugging Face model, and saves the whole pipeline with ``SentenceTransformer(modules=...).save``.
"""
from __future__ import annotations

import json
import random
from pathlib import Path

from packager.verify import load_corpus

FILLER = (
    "the quick brown fox jumps over the lazy dog . search engines rank documents by relevance ; "
    "embedding models map sentences to vectors , and similar sentences get similar vectors ! "
    "Hello World, Café naïve résumé Straße 中文 日本語 한국어 العربية русский ελληνικά 123 456 7.89 "
    "https://example.com user@example.org #tag @name (parens) [brackets] {braces} <angles> "
).split(" ")


def training_text(n: int = 3000, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    lines = [s for s in load_corpus(None) if s.strip()]
    lines += [" ".join(rng.choice(FILLER) for _ in range(rng.randint(3, 25))) for _ in range(n)]
    return lines


def _wordpiece_vocab(lines, vocab_size, lowercase, strip_accents, chinese, specials) -> list[str]:
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers

    tok = Tokenizer(models.WordPiece(unk_token=specials[1]))
    tok.normalizer = normalizers.BertNormalizer(
        clean_text=True, handle_chinese_chars=chinese, strip_accents=strip_accents, lowercase=lowercase
    )
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=list(specials), show_progress=False)
    tok.train_from_iterator(lines, trainer)
    vocab = tok.get_vocab()
    return [t for t, _ in sorted(vocab.items(), key=lambda kv: kv[1])]


def _save_st(hf_dir: Path, out: Path, max_seq_length: int, pooling: str | list[str], dense: dict | None,
             normalize: bool) -> Path:
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Dense, Normalize, Pooling, Transformer

    transformer = Transformer(str(hf_dir), max_seq_length=max_seq_length)
    modules = [transformer, Pooling(transformer.get_embedding_dimension(), pooling_mode=pooling)]
    if dense:
        import torch

        torch.manual_seed(dense.get("seed", 0))
        act = dense.get("activation")
        modules.append(Dense(modules[-1].get_embedding_dimension(), dense["out"],
                             activation_function=act() if act else None))
    if normalize:
        modules.append(Normalize())
    SentenceTransformer(modules=modules, device="cpu").save(str(out))
    return out


def make_bert(root: Path, *, model_type="bert", lowercase=True, strip_accents=None, chinese=True,
              max_seq_length=64, pooling="mean", dense=None, normalize=True, vocab_size=600, seed=0,
              hidden=32, layers=2, heads=4, intermediate=37, max_position=128) -> Path:
    """A tiny BERT or DistilBERT sentence-transformers model with a trained WordPiece vocab."""
    import torch
    import transformers as tr

    root = Path(root)
    hf_dir = root / "hf"
    hf_dir.mkdir(parents=True, exist_ok=True)
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    vocab = _wordpiece_vocab(training_text(seed=seed), vocab_size, lowercase, strip_accents, chinese, specials)
    (hf_dir / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    tok_cls = tr.DistilBertTokenizerFast if model_type == "distilbert" else tr.BertTokenizerFast
    # transformers 5's BERT tokenizers take the vocabulary itself (vocab_file is ignored: every word
    # would be [UNK]); the assert keeps the fixture honest.
    tok = tok_cls(vocab={t: i for i, t in enumerate(vocab)}, do_lower_case=lowercase, strip_accents=strip_accents,
                  tokenize_chinese_chars=chinese)
    assert len(tok) == len(vocab) and tok.tokenize("the quick brown fox") != ["[UNK]"] * 4, tok.tokenize("the quick brown fox")
    tok.save_pretrained(str(hf_dir))
    torch.manual_seed(seed)
    if model_type == "distilbert":
        cfg = tr.DistilBertConfig(vocab_size=len(vocab), dim=hidden, n_layers=layers, n_heads=heads,
                                  hidden_dim=intermediate, max_position_embeddings=max_position, pad_token_id=0)
        model = tr.DistilBertModel(cfg)
    else:
        cfg = tr.BertConfig(vocab_size=len(vocab), hidden_size=hidden, num_hidden_layers=layers,
                            num_attention_heads=heads, intermediate_size=intermediate,
                            max_position_embeddings=max_position, pad_token_id=0)
        model = tr.BertModel(cfg, add_pooling_layer=False)
    _randomize(model, seed)
    model.save_pretrained(str(hf_dir))
    return _save_st(hf_dir, root / "st", max_seq_length, pooling, dense, normalize)


def bpe_tokenizer(path: Path, *, padding_side: str = "right", post: str = "roberta", vocab_size: int = 500,
                  tokenizer_file: Path | None = None, pad_token: str | None = None):
    """A byte-level BPE fast tokenizer saved to ``path``: trained on the corpus, or a real tokenizer.json.

    ``post``: ``"eos"`` appends ``<|endoftext|>`` (as Qwen3-Embedding's tokenizer does); ``"roberta"``
    wraps in ``<s> ... </s>`` (pairs ``<s> a </s></s> b </s>``). With ``tokenizer_file`` the file is used
    as it is (its own pre-tokenizer, merges and post-processor).
    """
    import transformers as tr
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    if tokenizer_file is not None:
        fast = tr.PreTrainedTokenizerFast(tokenizer_file=str(tokenizer_file), padding_side=padding_side,
                                          pad_token=pad_token)
        fast.save_pretrained(str(path))
        return fast
    specials = ["<|endoftext|>", "<s>", "</s>", "<pad>", "<unk>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(training_text(400), trainer)
    if post == "eos":
        tok.post_processor = processors.TemplateProcessing(
            single="$A <|endoftext|>", pair="$A <|endoftext|> $B:1 <|endoftext|>:1",
            special_tokens=[("<|endoftext|>", tok.token_to_id("<|endoftext|>"))])
        fast = tr.PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", pad_token="<|endoftext|>",
                                          padding_side=padding_side)
    else:
        tok.post_processor = processors.RobertaProcessing(("</s>", tok.token_to_id("</s>")), ("<s>", tok.token_to_id("<s>")))
        fast = tr.PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                          unk_token="<unk>", padding_side=padding_side)
    fast.save_pretrained(str(path))
    return fast


def bpe_config(arch: str, tok, *, classification: bool = False, num_labels: int = 1):
    """A tiny transformers config of ``arch`` (roberta, modernbert, qwen3) sized for ``tok``'s vocabulary."""
    import transformers as tr

    V = len(tok)
    extra = {"num_labels": num_labels} if classification else {}
    if arch == "qwen3":
        # GQA: 4 query heads on 2 kv heads; head_dim 16 != hidden / heads (12).
        return tr.Qwen3Config(vocab_size=V, hidden_size=48, intermediate_size=56, num_hidden_layers=3,
                              num_attention_heads=4, num_key_value_heads=2, head_dim=16, rope_theta=1000.0,
                              rms_norm_eps=1e-6, pad_token_id=tok.pad_token_id, max_position_embeddings=256, **extra)
    if arch == "modernbert":
        return tr.ModernBertConfig(vocab_size=V, hidden_size=32, intermediate_size=40, num_hidden_layers=3,
                                   num_attention_heads=4, global_attn_every_n_layers=2, local_attention=8,
                                   pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
                                   eos_token_id=tok.eos_token_id, cls_token_id=tok.bos_token_id,
                                   sep_token_id=tok.eos_token_id, **extra)
    return tr.RobertaConfig(vocab_size=V, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                            intermediate_size=37, max_position_embeddings=80, pad_token_id=tok.pad_token_id,
                            type_vocab_size=1, **extra)


def make_bpe_st(root: Path, arch: str, *, tokenizer_file: Path | None = None, pad_token: str | None = None,
                max_seq_length: int = 48, seed: int = 11) -> Path:
    """A tiny sentence-transformers model with a byte-level BPE tokenizer: Qwen3 + lasttoken + Normalize
    (left padding, EOS appended), ModernBERT + mean + Normalize, or RoBERTa + cls + Normalize."""
    import transformers as tr

    root = Path(root)
    hf_dir = root / "hf"
    left = arch == "qwen3"
    tok = bpe_tokenizer(hf_dir, padding_side="left" if left else "right", post="eos" if left else "roberta",
                        tokenizer_file=tokenizer_file, pad_token=pad_token)
    cfg = bpe_config(arch, tok)
    model = {"qwen3": tr.Qwen3Model, "modernbert": tr.ModernBertModel}.get(arch)
    model = model(cfg) if model else tr.RobertaModel(cfg, add_pooling_layer=False)
    _randomize(model, seed)
    model.save_pretrained(str(hf_dir))
    pooling = {"qwen3": "lasttoken", "modernbert": "mean"}.get(arch, "cls")
    return _save_st(hf_dir, root / "st", max_seq_length, pooling, None, True)


def make_mpnet(root: Path, *, max_seq_length=64, pooling="mean", dense=None, normalize=True, vocab_size=600,
               seed=1, hidden=32, layers=2, heads=4, intermediate=37, max_position=130,
               unk_token="[UNK]", mask_normalized=False, wordpieces: list[str] | None = None) -> Path:
    """A tiny MPNet model (relative position bias) whose tokenizer is laid out like all-mpnet-base-v2's.

    Vocabulary: ``<s>``=0, ``<pad>``=1, ``</s>``=2, ``<unk>``=3, then a trained lower-cased WordPiece
    vocabulary (which holds ``[UNK]``), then ``<mask>`` last. Like the real model, the WordPiece
    unknown token is ``[UNK]`` and ``<unk>`` is an extra special token; ``<mask>`` has
    ``lstrip=True`` (it swallows the spaces before it). The post-processor is ``<s> $A </s>``.

    Args:
        unk_token: the WordPiece unknown token (``"<unk>"`` gives the other common layout).
        mask_normalized: make ``<mask>`` a normalized added token (matched after lower-casing).
        wordpieces: a WordPiece vocabulary to use instead of training one (e.g. BERT's uncased vocab,
            which all-mpnet-base-v2's is built from: realistic token counts for benchmarks).
    """
    import torch
    import transformers as tr
    from tokenizers import AddedToken

    root = Path(root)
    hf_dir = root / "hf"
    hf_dir.mkdir(parents=True, exist_ok=True)
    specials = ["<s>", "<pad>", "</s>", "<unk>"]
    trained = wordpieces or _wordpiece_vocab(training_text(seed=seed), vocab_size, True, None, True, ["[PAD]", "[UNK]"])
    vocab = specials + [t for t in trained if t not in specials and t != "[PAD]"] + ["<mask>"]
    (hf_dir / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    # transformers 5's MPNetTokenizer takes the vocabulary itself (it ignores vocab_file)
    tok = tr.MPNetTokenizer(
        vocab={t: i for i, t in enumerate(vocab)}, do_lower_case=True, unk_token=unk_token,
        mask_token=AddedToken("<mask>", lstrip=True, rstrip=False, normalized=mask_normalized, special=True),
        additional_special_tokens=["<unk>"] if unk_token != "<unk>" else None,
    )
    assert tok.convert_tokens_to_ids(["<s>", "<pad>", "</s>", "<unk>", "<mask>"]) == [0, 1, 2, 3, len(vocab) - 1]
    tok.save_pretrained(str(hf_dir))
    torch.manual_seed(seed)
    cfg = tr.MPNetConfig(vocab_size=len(vocab), hidden_size=hidden, num_hidden_layers=layers,
                         num_attention_heads=heads, intermediate_size=intermediate,
                         max_position_embeddings=max_position, relative_attention_num_buckets=32,
                         pad_token_id=1, bos_token_id=0, eos_token_id=2)
    model = tr.MPNetModel(cfg, add_pooling_layer=False)
    _randomize(model, seed)
    model.save_pretrained(str(hf_dir))
    return _save_st(hf_dir, root / "st", max_seq_length, pooling, dense, normalize)


def make_xlmr(root: Path, *, max_seq_length=64, pooling="mean", dense=None, normalize=True, vocab_size=400,
              seed=2, hidden=32, layers=2, heads=4, intermediate=37, max_position=130,
              keep_spm_model=True) -> Path:
    """A tiny XLM-R model whose tokenizer is laid out like the real xlm-roberta / multilingual-e5 ones.

    A SentencePiece Unigram model is trained by ``sentencepiece`` with spm's default ids
    (``<unk>``=0, ``<s>``=1, ``</s>``=2, nmt_nfkc charsmap), exactly like XLM-R's
    ``sentencepiece.bpe.model``. The HF tokenizer gets the fairseq layout from it: ``<s>``=0,
    ``<pad>``=1, ``</s>``=2, ``<unk>``=3, spm pieces shifted by one, ``<mask>`` last with
    ``lstrip=True``; its tokenizer.json holds the Precompiled charsmap normalizer and the Metaspace
    pre-tokenizer. (transformers 5 can no longer convert the .model file itself here: its
    ``sentencepiece_model_pb2`` needs protobuf 7 while TF pins 6, so the vocab is passed directly.)

    Args:
        keep_spm_model: ship ``sentencepiece.bpe.model`` next to tokenizer.json in the saved
            model; ``False`` ships tokenizer.json only.
    """
    import sentencepiece as spm
    import torch
    import transformers as tr
    from tokenizers import AddedToken

    from packager.tokenizers.sentencepiece import model_proto_class

    root = Path(root)
    hf_dir = root / "hf"
    hf_dir.mkdir(parents=True, exist_ok=True)
    text_file = root / "spm_train.txt"
    text_file.write_text("\n".join(s.replace("\n", " ") for s in training_text(seed=seed)), encoding="utf-8")
    spm.SentencePieceTrainer.train(
        input=str(text_file), model_prefix=str(root / "spm"), vocab_size=vocab_size, model_type="unigram",
        character_coverage=0.9995, normalization_rule_name="nmt_nfkc", unk_id=0, bos_id=1, eos_id=2, pad_id=-1,
        minloglevel=2, seed_sentencepiece_size=100000, num_threads=1,
    )
    spm_path = hf_dir / "sentencepiece.bpe.model"
    (root / "spm.model").replace(spm_path)
    proto = model_proto_class()()
    proto.ParseFromString(spm_path.read_bytes())
    assert [p.piece for p in proto.pieces[:3]] == ["<unk>", "<s>", "</s>"]
    # fairseq: <s> <pad> </s> <unk>, then spm pieces 3.. (id + 1), then <mask>
    vocab = [("<s>", 0.0), ("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)]
    vocab += [(p.piece, p.score) for p in proto.pieces[3:]]
    vocab += [("<mask>", 0.0)]
    tok = tr.XLMRobertaTokenizer(
        vocab=vocab, _spm_precompiled_charsmap=proto.normalizer_spec.precompiled_charsmap,
        mask_token=AddedToken("<mask>", lstrip=True, rstrip=False, normalized=False, special=True),
    )
    tok.save_pretrained(str(hf_dir))
    torch.manual_seed(seed)
    cfg = tr.XLMRobertaConfig(vocab_size=len(tok), hidden_size=hidden, num_hidden_layers=layers,
                              num_attention_heads=heads, intermediate_size=intermediate,
                              max_position_embeddings=max_position, pad_token_id=1, bos_token_id=0,
                              eos_token_id=2, type_vocab_size=1)
    model = tr.XLMRobertaModel(cfg, add_pooling_layer=False)
    _randomize(model, seed)
    model.save_pretrained(str(hf_dir))
    st_dir = _save_st(hf_dir, root / "st", max_seq_length, pooling, dense, normalize)
    # sentence-transformers saves the tokenizer through save_pretrained (tokenizer.json only)
    if keep_spm_model:
        (st_dir / spm_path.name).write_bytes(spm_path.read_bytes())
    else:
        (st_dir / spm_path.name).unlink(missing_ok=True)
    return st_dir


def _randomize(model, seed: int) -> None:
    """Give every parameter (norms and biases too) non-trivial values, so parity tests bite."""
    import torch

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("weight") and "norm" in name.lower():
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(0.1 * torch.randn(p.shape, generator=g))


def describe(path: Path) -> dict:
    return json.loads((Path(path) / "modules.json").read_text())


def make_cross_encoder(root: Path, *, model_type: str = "bert", num_labels: int = 1, activation=None,
                       max_length: int | None = 64, seed: int = 6) -> Path:
    """A tiny sentence-transformers 6 CrossEncoder (a reranker) built on a tiny bi-encoder's tokenizer.

    ``model_type`` ``"bert"`` gives ``[CLS] a [SEP] b [SEP]`` with token types; ``"xlm-roberta"`` a
    SentencePiece tokenizer with ``<s> a </s></s> b </s>``. ``activation`` is a torch module class
    (default: CrossEncoder's own, Sigmoid for one label, Identity otherwise).
    """
    import torch
    import transformers as tr
    from sentence_transformers import CrossEncoder

    root = Path(root)
    hf_dir = root / "hf"
    torch.manual_seed(seed)
    if model_type in ("roberta", "modernbert"):
        bi = root / "tok"
        tok = bpe_tokenizer(bi, post="roberta")
        model = (tr.ModernBertForSequenceClassification if model_type == "modernbert"
                 else tr.RobertaForSequenceClassification)(bpe_config(model_type, tok, classification=True,
                                                                      num_labels=num_labels))
    else:
        bi = make_xlmr(root / "bi", seed=seed) if model_type == "xlm-roberta" else make_bert(root / "bi", seed=seed)
        cfg = tr.AutoConfig.from_pretrained(str(bi))
        cfg.num_labels = num_labels
        cls = tr.XLMRobertaForSequenceClassification if model_type == "xlm-roberta" else tr.BertForSequenceClassification
        model = cls(cfg)
    _randomize(model, seed)
    model.save_pretrained(str(hf_dir))
    tr.AutoTokenizer.from_pretrained(str(bi)).save_pretrained(str(hf_dir))
    kwargs = {"max_length": max_length} if max_length else {}
    if activation is not None:
        kwargs["activation_fn"] = activation()
    ce = CrossEncoder(str(hf_dir), device="cpu", **kwargs)
    out = root / "ce"
    ce.save(str(out))
    return out


def with_prompts(model_dir: Path, out: Path, prompts: dict[str, str], default_prompt_name: str | None = None,
                 include_prompt: bool = True) -> Path:
    """A copy of a sentence-transformers folder with ``prompts`` (and optionally Pooling's
    ``include_prompt: false``), checked to load in sentence-transformers as configured."""
    import shutil

    from sentence_transformers import SentenceTransformer

    out = Path(out)
    shutil.copytree(model_dir, out)
    cfg_path = out / "config_sentence_transformers.json"
    cfg = json.loads(cfg_path.read_text()) if cfg_path.is_file() else {}
    cfg.update(prompts=prompts, default_prompt_name=default_prompt_name)
    cfg_path.write_text(json.dumps(cfg, indent=2))
    if not include_prompt:
        modules = json.loads((out / "modules.json").read_text())
        pooling = next(m for m in modules if m["type"].endswith("Pooling"))
        pcfg = out / pooling["path"] / "config.json"
        pcfg.write_text(json.dumps(dict(json.loads(pcfg.read_text()), include_prompt=False), indent=2))
    st = SentenceTransformer(str(out), device="cpu")
    assert all(st.prompts[k] == v for k, v in prompts.items()) and st.default_prompt_name == default_prompt_name
    return out
