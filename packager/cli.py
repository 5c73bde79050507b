"""packager command line: a thin layer over the library (every command calls one function).

    packager export [MODEL] -o DIR            one SavedModel: raw strings in, embeddings out
    packager verify [MODEL] --export DIR      parity report against sentence-transformers
    packager verify [MODEL] --url URL --model NAME
    packager embed  TEXT... --export DIR      print embeddings (or --url URL --model NAME)
    packager rerank QUERY DOC... --export DIR print a reranker's scores (or --url URL --model NAME)
    packager build  [MODEL] --target triton|tfserving
    packager serve  [REPO]                    a real local tritonserver (python backend)

MODEL is a local folder, a model name in the local Hugging Face cache, or nothing for the
embedded default (sentence-transformers/all-MiniLM-L6-v2). TensorFlow's native start-up log
lines are hidden unless -v is given.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from pathlib import Path

from .errors import OutputExistsError, PackagerError

MODEL_HELP = "model folder, model name in the local HF cache, or omit for the embedded default (all-MiniLM-L6-v2)"


# ------------------------------------------------------------------------------------------- commands
def cmd_export(args) -> int:
    from .graph import export

    m = export(args.model, args.output, force=args.force, truncate_dim=args.truncate_dim, precision=args.precision)
    reduced = " (reduced precision)" if m.precision != "fp32" else ""
    print(f"exported {m.source} -> {args.output}  (dim {m.output_dim}, max_seq_length {m.max_seq_length}, "
          f"precision {m.precision}{reduced}, op libraries: {', '.join(m.op_libraries) or 'none'})")
    return 0


def _live_or_export(args, rerank: bool = False):
    """(embed or score, tokenize or None) for ``--url`` (a live server) or ``--export`` (in-process)."""
    from . import verify as v

    prompt = getattr(args, "prompt", None)
    if args.url:
        from .clients import embedder, reranker

        if not args.model_name:
            raise PackagerError("--url needs --model NAME (the served model name)")
        make = reranker if rerank else embedder
        return make(args.url, args.model_name, protocol=args.protocol, prompt_name=prompt), None
    if not args.export:
        raise PackagerError("give --export DIR (an exported SavedModel) or --url URL --model NAME (a live server)")
    from .graph import load, read_manifest

    manifest = read_manifest(args.export)
    if (manifest.task == "rerank") != rerank:
        raise PackagerError(f"{args.export} is {'a reranker' if manifest.task == 'rerank' else 'an embedding model'}: "
                            f"use packager {'rerank' if manifest.task == 'rerank' else 'embed'}")
    if prompt is not None and prompt not in manifest.prompt_names:
        raise PackagerError(f"unknown prompt {prompt!r}; the model's prompts: {', '.join(manifest.prompt_names) or 'none'}")
    embed, tokenize = v.graph_functions(load(args.export, manifest), prompt_name=prompt)
    return embed, (None if prompt is not None else tokenize)


def _verified_precision(args, manifest) -> str:
    """The precision whose thresholds verify applies: ``--precision``, else the export's manifest (with
    ``--url``, ``--export`` names the export the server serves), else fp32."""
    if manifest is not None and args.precision and args.precision != manifest.precision:
        raise PackagerError(f"--precision {args.precision} contradicts {args.export}: its manifest says "
                            f"{manifest.precision}")
    return args.precision or (manifest.precision if manifest is not None else "fp32")


def cmd_verify(args) -> int:
    from . import verify as v
    from .source import resolve_model

    texts = v.load_corpus(args.corpus)
    manifest = None
    if args.export:
        from .manifest import read as read_manifest

        manifest = read_manifest(args.export)
    truncate_dim = args.truncate_dim if args.truncate_dim is not None else (manifest.truncate_dim if manifest else None)
    precision = _verified_precision(args, manifest)
    model_dir = resolve_model(args.model)[0]
    rerank = v.is_reranker_folder(model_dir)
    embed, tokenize = _live_or_export(args, rerank=rerank)  # a bad URL or name fails before the reference loads
    reference = v.reference_model(model_dir, truncate_dim=truncate_dim)
    if rerank:
        texts = v.rerank_pairs(texts)
    report = v.check(texts, reference, embed, tokenize, precision=precision, min_id_match=args.min_id_match,
                     max_abs_diff=args.max_abs_diff, min_cosine=args.min_cosine, prompt_name=args.prompt)
    print(report.render())
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(report.to_dict(), indent=2, ensure_ascii=False) + "\n")
    return 0 if report.ok else 1


def cmd_embed(args) -> int:
    import numpy as np

    embed, _ = _live_or_export(args)
    vectors = np.asarray(embed(args.texts))
    for text, vec in zip(args.texts, vectors):
        head = " ".join(f"{x:+.4f}" for x in vec[: args.show])
        print(f"{text[:40]!r:44} dim {vec.shape[0]}  [{head} ...]  |v|={np.linalg.norm(vec):.4f}")
    return 0


def _k8s_settings(pairs: list[str]) -> dict:
    """``KEY=VALUE`` pairs -> KubernetesOptions fields, each value parsed as its field's type."""
    from .targets.kubernetes import KubernetesOptions

    fields = {f.name: f for f in dataclasses.fields(KubernetesOptions)}
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or key not in fields:
            raise PackagerError(f"--k8s takes FIELD=VALUE with FIELD one of: {', '.join(sorted(fields))}; got {pair!r}")
        default = fields[key].default
        if isinstance(default, bool):
            if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise PackagerError(f"--k8s {key} takes true or false, not {value!r}")
            out[key] = value.lower() in ("true", "1", "yes")
        elif isinstance(default, int):
            try:
                out[key] = int(value)
            except ValueError:
                raise PackagerError(f"--k8s {key} takes a whole number, not {value!r}") from None
        elif isinstance(default, tuple):
            out[key] = tuple(v for v in value.split(",") if v)
        else:
            out[key] = value
    return out


def cmd_rerank(args) -> int:
    import numpy as np

    score, _ = _live_or_export(args, rerank=True)
    scores = np.asarray(score([args.query] * len(args.documents), args.documents))
    order = np.argsort(-scores[:, -1], kind="stable")
    print(f"query: {args.query[:70]!r}")
    for rank, i in enumerate(order, 1):
        values = " ".join(f"{x:.6f}" for x in scores[i])
        print(f"{rank:3d}. [{values}]  {args.documents[i][:70]!r}")
    return 0


def cmd_build(args) -> int:
    from .targets import build, make_options, write_kubernetes, write_stack

    if args.kubernetes and args.target != "triton":
        raise PackagerError("--kubernetes writes manifests for Triton: use it with --target triton")
    k8s = _k8s_settings(args.k8s or [])
    if k8s and not args.kubernetes:
        raise PackagerError("--k8s sets fields of the Kubernetes bundle: give --kubernetes DIR too")
    options = make_options(args.target, **target_options(args, args.target))
    path = build(args.model, target=args.target, output=args.output, name=args.name, version=args.version or 1,
                 force=args.force, options=options,
                 export_options={"truncate_dim": args.truncate_dim, "precision": args.precision})
    print(f"wrote {args.target} layout to {path}")
    if not args.no_compose:
        stack = write_stack(args.target, path.parent, path.name, options, compose_dir=args.compose_dir,
                            precision=args.precision)
        print(f"wrote compose stack to {stack}  (docker-compose -f {stack}/docker-compose.yml up -d)")
    if args.kubernetes:
        bundle = write_kubernetes(path.name, options, out_dir=args.kubernetes, version=args.version or 1,
                                  settings={**k8s, "precision": args.precision})
        print(f"wrote Kubernetes bundle to {bundle}  (kubectl apply -k {bundle}/overlays/cpu; see docs/kubernetes.md)")
    return 0


def cmd_serve(args) -> int:
    from .serve import serve_forever

    return serve_forever(args.repository, http_port=args.http_port, grpc_port=args.grpc_port,
                         metrics_port=args.metrics_port, check=args.check)


# ------------------------------------------------------------------------------------------- options -> flags
def _int_list(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in text.replace(" ", "").split(",") if x)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from exc


def _flag(f: dataclasses.Field, help_text: str) -> tuple[str, dict]:
    """The argparse flag and keyword arguments of one options field (its metadata has the help)."""
    name = f.name.replace("_", "-")
    meta = f.metadata
    kw: dict = {"dest": f.name, "default": None, "help": help_text}
    if isinstance(f.default, bool):
        if f.default:
            return f"--no-{name}", {**kw, "help": f"turn off: {help_text}", "action": "store_const", "const": False}
        return f"--{name}", {**kw, "action": "store_const", "const": True}
    annotation = str(f.type)
    if isinstance(f.default, tuple) or "tuple[int" in annotation:
        kw["type"] = _int_list
    elif isinstance(f.default, int) or annotation.startswith("int"):
        kw["type"] = int
    elif isinstance(f.default, float):
        kw["type"] = float
    if meta.get("choices"):
        kw["choices"] = list(meta["choices"])
    if meta.get("metavar"):
        kw["metavar"] = meta["metavar"]
    if f.default is not None and not isinstance(f.default, tuple):
        kw["help"] += f" (default {f.default})"
    return f"--{name}", kw


def add_target_flags(p: argparse.ArgumentParser) -> dict[str, set[str]]:
    """One flag per options field of every target; a field several targets share gets one flag.

    Returns:
        field name -> the targets that take it.
    """
    from .options import cli_fields
    from .targets import TARGETS

    owners: dict[str, set[str]] = {}
    fields_by_name: dict[str, dataclasses.Field] = {}
    helps: dict[str, dict[str, str]] = {}
    for target, module in TARGETS.items():
        for f in cli_fields(module.Options):
            owners.setdefault(f.name, set()).add(target)
            fields_by_name.setdefault(f.name, f)
            helps.setdefault(f.name, {})[target] = f.metadata["help"]
    groups = {}
    for fname, f in fields_by_name.items():
        who = sorted(owners[fname])
        title = f"{who[0]} options" if len(who) == 1 else f"{' and '.join(who)} options"
        if title not in groups:
            groups[title] = p.add_argument_group(title)
        texts = helps[fname]
        help_text = next(iter(texts.values())) if len(set(texts.values())) == 1 else \
            "; ".join(f"{t}: {h}" for t, h in sorted(texts.items()))
        flag, kw = _flag(f, help_text)
        groups[title].add_argument(flag, **kw)
    return owners


def target_options(args: argparse.Namespace, target: str) -> dict:
    """The options given on the command line for ``target``; a flag of another target is an error."""
    owners = args.option_owners
    given = {k: getattr(args, k) for k in owners if getattr(args, k, None) is not None}
    wrong = sorted(k for k in given if target not in owners[k])
    if wrong:
        flags = ", ".join("--" + k.replace("_", "-") for k in wrong)
        raise PackagerError(f"{flags} do(es) not apply to --target {target} "
                            f"(they belong to {', '.join(sorted({t for k in wrong for t in owners[k]}))})")
    return given


def _add_parity_thresholds(p: argparse.ArgumentParser) -> None:
    from .verify import THRESHOLDS

    fp32, bf16 = THRESHOLDS["fp32"], THRESHOLDS["bf16"]
    p.add_argument("--corpus", help="corpus file: .jsonl (one JSON string per line) or plain lines; default: the shipped tricky corpus")
    _add_precision(p, "the export's precision, which picks the thresholds (default: the --export's manifest; "
                      "with --url give --precision, or --export DIR of the export the server serves; else fp32)",
                   default=None)
    p.add_argument("--min-id-match", type=float, help=f"required share of identical token-id rows (default {fp32.min_id_match})")
    p.add_argument("--max-abs-diff", type=float, help=f"allowed max abs embedding difference (default {fp32.max_abs_diff:g}; "
                                                      f"bf16 exports {bf16.max_abs_diff:g})")
    p.add_argument("--min-cosine", type=float, help=f"required min cosine per sentence (default: not checked; bf16 exports "
                                                    f"{bf16.min_cosine:g})")
    p.add_argument("--json", dest="json_out", help="also write the report as JSON to this file")


def _add_precision(p: argparse.ArgumentParser, help_text: str | None = None, default: str | None = "fp32") -> None:
    from .encoders.precision import PRECISIONS

    p.add_argument("--precision", choices=list(PRECISIONS), default=default,
                   help=help_text or "the encoder's precision: fp32 (default, exact) or bf16 (reduced precision: "
                                     "projections in bfloat16, needs a CPU with avx512_bf16 or amx_bf16; its servers "
                                     "get TF_ONEDNN_ASSUME_FROZEN_WEIGHTS=1; docs/performance.md)")


def _add_truncate_dim(p: argparse.ArgumentParser, help_text: str | None = None) -> None:
    p.add_argument("--truncate-dim", type=int, metavar="N",
                   help=help_text or "keep the first N dimensions of each embedding (Matryoshka models), "
                                     "as SentenceTransformer(truncate_dim=N)")


def _add_live(p: argparse.ArgumentParser) -> None:
    p.add_argument("--export", help="an exported SavedModel folder (in-process)")
    p.add_argument("--url", help="a live server: http://127.0.0.1:8000 (Triton HTTP), 127.0.0.1:8001 (Triton gRPC) "
                                 "or http://host:8501 (TF-Serving REST)")
    p.add_argument("--model", dest="model_name", help="served model name (with --url)")
    p.add_argument("--protocol", choices=["http", "grpc", "tfserving"], help="with --url; default: guessed from the URL")


def make_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="packager", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-q", "--quiet", action="store_true", help="no progress output")
    p.add_argument("-v", "--verbose", action="store_true", help="show TensorFlow's native log lines too")
    sub = p.add_subparsers(dest="cmd", required=True)

    e = sub.add_parser("export", help="export MODEL as one SavedModel (tokenizer + encoder + heads)")
    e.add_argument("model", nargs="?", help=MODEL_HELP)
    e.add_argument("-o", "--output", required=True, help="SavedModel folder to write (atomically)")
    e.add_argument("--force", action="store_true", help="replace an existing export")
    _add_truncate_dim(e)
    _add_precision(e)
    e.set_defaults(func=cmd_export)

    v = sub.add_parser("verify", help="parity report: token ids and embeddings against sentence-transformers")
    v.add_argument("model", nargs="?", help=MODEL_HELP + " (the reference)")
    _add_live(v)
    v.add_argument("--prompt", help="embedders: the prompt name the server or export applies (default: the model's default)")
    _add_truncate_dim(v, "the reference's Matryoshka dimension (default: the export's; needed with --url)")
    _add_parity_thresholds(v)
    v.set_defaults(func=cmd_verify)

    m = sub.add_parser("embed", help="embed a few texts with an export (in-process) or a live server, and print them")
    m.add_argument("texts", nargs="+", help="the texts to embed")
    _add_live(m)
    m.add_argument("--prompt", help="one of the model's prompts, e.g. query (default: the model's default prompt)")
    m.add_argument("--show", type=int, default=6, help="how many leading components to print")
    m.set_defaults(func=cmd_embed)

    r = sub.add_parser("rerank", help="score documents against a query with a reranker export or a live server")
    r.add_argument("query", help="the query")
    r.add_argument("documents", nargs="+", help="the documents to score")
    _add_live(r)
    r.add_argument("--prompt", help="one of the reranker's prompts (applied to the query)")
    r.set_defaults(func=cmd_rerank)

    from .targets import TARGETS

    b = sub.add_parser("build", help="export MODEL and lay it out for a server (Triton or TF-Serving)")
    b.add_argument("model", nargs="?", help=MODEL_HELP)
    b.add_argument("--target", choices=list(TARGETS), default="triton")
    b.add_argument("-o", "--output", default=None,
                   help="repository folder (default: model_repository/ for triton, tfserving_models/ for tfserving)")
    b.add_argument("--name", help="served model name (sanitized to [a-z0-9_-]; default: from the model)")
    b.add_argument("--version", type=int, help="version folder to write (default 1; other versions are kept)")
    b.add_argument("--force", action="store_true", help="replace an existing model version")
    _add_truncate_dim(b)
    _add_precision(b)
    b.add_argument("--compose-dir", default="compose", help="where the docker-compose stack goes (default %(default)s/<stack>/)")
    b.add_argument("--no-compose", action="store_true", help="do not write a docker-compose stack")
    b.add_argument("--kubernetes", metavar="DIR", help="triton: also write a Kubernetes bundle (kustomize base, cpu and "
                   "gpu overlays, KServe InferenceService) to DIR/<name>/")
    b.add_argument("--k8s", action="append", metavar="FIELD=VALUE",
                   help="a field of the Kubernetes bundle, e.g. namespace=search, min_replicas=3, "
                        "repository_source=url, repository_url=s3://bucket/models (repeatable; docs/kubernetes.md)")
    b.set_defaults(func=cmd_build, option_owners=add_target_flags(b))

    s = sub.add_parser("serve", help="run the bundled tritonserver (python backend) on a repository, on 127.0.0.1")
    s.add_argument("repository", nargs="?", default="model_repository")
    s.add_argument("--http-port", type=int)
    s.add_argument("--grpc-port", type=int)
    s.add_argument("--metrics-port", type=int)
    s.add_argument("--check", action="store_true", help="start, query, report parity against sentence-transformers, stop")
    s.set_defaults(func=cmd_serve)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = make_parser()
    args = parser.parse_args(argv)
    from .progress import set_quiet
    from .settings import apply_thread_split, quiet_native_logs

    apply_thread_split()  # the graph's projection parts run at once (packager.settings.thread_split)
    if args.verbose:
        os.environ["TF_CPP_MIN_LOG_LEVEL"] = "0"
    else:
        quiet_native_logs()
    set_quiet(args.quiet)
    try:
        return args.func(args)
    except OutputExistsError as exc:
        print(f"error: {exc} (pass --force to replace it)", file=sys.stderr)
        return 2
    except PackagerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
