"""The files the ONNX-based contenders load, made once per model from the sentence-transformers folder.

    .venv/bin/python -m bench.peer_files MODEL_DIR OUT_DIR      # prints a JSON summary

* ``OUT/pooled.onnx``: Transformer + mean pooling (+ Normalize) in one ONNX graph (``torch.onnx.export``,
  opset 17): what sentence-transformers' ``backend="onnx"`` runs, the HF fast tokenizer outside.
* ``OUT/pooled-int8.onnx``: the same, weights dynamically quantized to int8 (``onnxruntime.quantization
  .quantize_dynamic``, per-channel, symmetric weights, no reduce_range: the avx512_vnni recipe of ``export_dynamic_quantized_onnx_model``).
* ``OUT/hf/``: a Hugging Face folder for fastembed and infinity-emb: the tokenizer as sentence-transformers
  configures it (``model_max_length`` = ``max_seq_length``), ``config.json`` and ``model.onnx`` (the bare
  encoder, output ``last_hidden_state``, the peers pool themselves). infinity's optimum engine
  truncates at ``config.max_position_embeddings`` rather than the tokenizer's limit, so that field is set
  to ``max_seq_length`` in this copy: every contender then computes the same embeddings (256 tokens for
  the default model), which the accuracy columns confirm.
"""
from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path


def make(model_dir: Path, out: Path) -> dict:
    import torch
    from sentence_transformers import SentenceTransformer

    out.mkdir(parents=True, exist_ok=True)
    st = SentenceTransformer(str(model_dir), device="cpu", trust_remote_code=False)
    pooling = st[1]
    modes = list(pooling.pooling_mode) if not isinstance(pooling.pooling_mode, str) else [pooling.pooling_mode]
    if modes != ["mean"]:
        raise SystemExit(f"the ONNX contenders support mean pooling only, got {modes}")
    normalize = any(type(m).__name__ == "Normalize" for m in st)
    hf = st[0].auto_model.eval()
    tok = st.tokenizer
    max_len = int(st.max_seq_length)
    input_names = [n for n in tok.model_input_names if n in ("input_ids", "attention_mask", "token_type_ids")]

    class Pooled(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.m = hf

        def forward(self, input_ids, attention_mask):
            h = self.m(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
            mask = attention_mask.unsqueeze(-1).to(h.dtype)
            e = (h * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            return torch.nn.functional.normalize(e, p=2, dim=-1) if normalize else e

    class Bare(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.m = hf

        def forward(self, *args):
            return self.m(**dict(zip(input_names, args))).last_hidden_state

    sample = tok(["hello world", "a longer sentence for tracing"], padding=True, return_tensors="pt")
    axes = {n: {0: "batch", 1: "seq"} for n in input_names}
    with torch.no_grad():
        torch.onnx.export(
            Pooled().eval(), (sample["input_ids"], sample["attention_mask"]), str(out / "pooled.onnx"),
            input_names=["input_ids", "attention_mask"], output_names=["sentence_embedding"],
            dynamic_axes={"input_ids": axes["input_ids"], "attention_mask": axes["attention_mask"],
                          "sentence_embedding": {0: "batch"}},
            opset_version=17, dynamo=False)
        hf_dir = out / "hf"
        hf_dir.mkdir(exist_ok=True)
        torch.onnx.export(
            Bare().eval(), tuple(sample[n] for n in input_names), str(hf_dir / "model.onnx"),
            input_names=input_names, output_names=["last_hidden_state"],
            dynamic_axes={**axes, "last_hidden_state": {0: "batch", 1: "seq"}}, opset_version=17, dynamo=False)
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(str(out / "pooled.onnx"), str(out / "pooled-int8.onnx"), weight_type=QuantType.QInt8,
                     per_channel=True, reduce_range=False)
    tok.save_pretrained(str(hf_dir))
    cfg_path = hf_dir / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["model_max_length"] = max_len
    cfg["max_length"] = max_len  # transformers 5 writes tokenizer.json's stale 128 here; fastembed takes the min
    cfg_path.write_text(json.dumps(cfg, indent=2))
    for name in ("vocab.txt", "special_tokens_map.json"):  # older readers (transformers 4 in infinity's venv)
        if (model_dir / name).is_file() and not (hf_dir / name).exists():
            shutil.copy(model_dir / name, hf_dir / name)
    config = hf.config.to_dict()
    config["max_position_embeddings"] = max_len  # see the module docstring (infinity's truncation)
    (hf_dir / "config.json").write_text(json.dumps(config, indent=2))
    # modules.json & co. are not copied: the peers are pointed at the bare encoder and pool themselves.
    return {"pooled_onnx": str(out / "pooled.onnx"), "int8_onnx": str(out / "pooled-int8.onnx"),
            "hf_dir": str(hf_dir), "tokenizer_dir": str(hf_dir), "max_seq_length": max_len,
            "dim": int(st.get_embedding_dimension()), "normalize": normalize,
            "input_names": input_names}


def main(argv=None) -> int:
    argv = argv if argv is not None else sys.argv[1:]
    model_dir, out = Path(argv[0]), Path(argv[1])
    if out.exists():
        shutil.rmtree(out)
    summary = make(model_dir, out)
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
