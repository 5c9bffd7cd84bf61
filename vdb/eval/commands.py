"""`vdbctl eval` and `vdbctl recommend`: thin click commands over vdb.eval (registered on the vdbctl group by
vdb/cli.py). Library errors become one `Error: ...` line and exit status 1, here as in the group."""
from __future__ import annotations

import functools
import json
import shlex
import tempfile

import click

from vdb.errors import VdbError, translate

DATASET_HELP = ("DATASET is a folder in the ../shared/data layout (base.npy, query.npy, labels...), an "
                "ann-benchmarks .hdf5 file, Iceberg .bin records (a folder, or 'BASE.bin,QUERY.bin'), or the "
                "built-in 'synthetic' (options: 'synthetic:n=20000,nq=1000,dim=64,clusters=100,spread=3,seed=0') "
                "or 'synthetic-text' (documents with texts; 'synthetic-text:n=5000,nq=500,topics=20,seed=0,named=0.5').")


def _edge(fn):
    """Turn library errors into click errors (one line on stderr, exit 1)."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except click.ClickException:
            raise
        except VdbError as e:
            raise click.ClickException(str(e)) from None
        except Exception as e:
            from index.errors import VectorIndexError
            from storage.errors import StorageError
            if isinstance(e, (StorageError, VectorIndexError)):
                raise click.ClickException(str(translate(e))) from None
            raise
    return wrapper


def _common(fn):
    fn = click.option("--dim", type=click.IntRange(min=1),
                      help="Vector dimension of Iceberg .bin records (inferred from the bytes when omitted).")(fn)
    fn = click.option("--seed", type=int, default=0, show_default=True,
                      help="Seed of every sample, k-means, bootstrap and index build.")(fn)
    fn = click.option("--k", "k", type=click.IntRange(1, 1000), default=10, show_default=True,
                      help="Neighbours per query: recall@k and the task metrics' k.")(fn)
    fn = click.option("--metric", type=click.Choice(["auto", "l2", "ip", "cosine"]), default="auto",
                      show_default=True,
                      help="Metric the indexes serve; auto = the dataset's natural one (meta.json, or cosine "
                           "for unit-length vectors, else l2).")(fn)
    return click.argument("dataset", metavar="DATASET")(fn)


EVAL_HELP = """Judge vector search by the downstream task, not only by recall.

Builds vdb's index and faiss peers (Flat, IVF, HNSW) on DATASET, sweeps their operating points, and writes
recall, task metrics (kNN vote accuracy, Label Recall, Hit/MRR/NDCG), latency p50/p95/p99, QPS, build time,
RAM, disk and bytes read per query; the information-loss funnel; the meta-features and Iceberg's decision
tree with its check; and the recall vs task rankings (Kendall tau). On a dataset with texts (texts.jsonl and
queries.jsonl, or the built-in synthetic-text) it also compares dense, BM25 and hybrid search on the task
metrics, the funnel and latency, and says which mode to turn on.

""" + DATASET_HELP + """

\b
Example:
  vdbctl eval ../shared/data/kjv_books --out eval-kjv
  vdbctl eval synthetic --quick --out eval-demo
  vdbctl eval glove-100-angular.hdf5 --sweep sweep.toml --k 100
"""

RECOMMEND_HELP = """Print Iceberg's decision-tree path for DATASET, with the measured meta-feature values, and its
mapping onto vdb's knobs (metric, nprobe, replicas, INT8 re-rank, cache threshold).

""" + DATASET_HELP + """

\b
Example:
  vdbctl recommend ../shared/data/kjv_books
  vdbctl recommend synthetic --check
"""


@click.command("eval", help=EVAL_HELP, context_settings={"help_option_names": ["-h", "--help"]})
@_common
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default="eval-out", show_default=True,
              help="Directory for points.jsonl, summary.json, report.md and the PNG plots.")
@click.option("--sweep", "sweep_file", type=click.Path(dir_okay=False),
              help="JSON or TOML file of systems and operating points (overrides the default sweep for the "
                   "systems it names; see vdb/eval/sweep.py).")
@click.option("--quick", is_flag=True,
              help="Smoke run: a short sweep, the first 1000 queries, 200 latency queries, no metric peers.")
@click.option("--latency-queries", type=click.IntRange(min=1), default=1000, show_default=True,
              help="Queries timed one by one per operating point (latency percentiles).")
@click.option("--cache-dir", type=click.Path(file_okay=False),
              help="Ground-truth cache directory (default OUT/groundtruth); reuse it across runs.")
@click.option("--keep-indexes", is_flag=True, help="Keep the vdb index directories built under OUT/indexes.")
@click.option("--server", metavar="HOST:PORT",
              help="Evaluate a running vdb server over gRPC: the dataset is uploaded into a temporary collection, "
                   "vdb's points are measured through the client (cache included), the collection is dropped.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bars on stderr.")
@_edge
def eval_command(dataset, metric, k, seed, dim, out_dir, sweep_file, quick, latency_queries, cache_dir,
                 keep_indexes, server, quiet):
    from vdb.eval.datasets import load_dataset
    from vdb.eval.report import write_outputs
    from vdb.config import tune_process
    from vdb.eval.runner import EvalConfig, run_eval
    tune_process()  # the evaluator measures latency as a server would see it
    ds = load_dataset(dataset, dim=dim)
    config = EvalConfig(k=k, metric=metric, quick=quick, sweep_file=sweep_file, seed=seed,
                        latency_queries=min(latency_queries, 200) if quick else latency_queries,
                        cache_dir=cache_dir, keep_indexes=keep_indexes, progress=not quiet, server=server)
    result = run_eval(ds, out_dir, config)
    paths = write_outputs(result, out_dir, command=_command_line(click.get_current_context()))
    click.echo(_eval_summary(result, paths))


def _command_line(ctx: click.Context) -> str:
    """The command as typed, rebuilt from the parsed parameters (options left at their default omitted)."""
    words = ["vdbctl", ctx.command.name]
    for param in ctx.command.params:
        value = ctx.params.get(param.name)
        if isinstance(param, click.Argument):
            words.append(shlex.quote(str(value)))
        elif value not in (None, False) and value != param.default:
            words.append(param.opts[-1] if value is True else f"{param.opts[-1]} {shlex.quote(str(value))}")
    return " ".join(words)


def _eval_summary(result, paths) -> str:
    lines = [f"{result.dataset['name']}: {len(result.points)} operating points, metric {result.metric}, "
             f"task {result.task or '-'}"]
    if result.funnel:
        f = result.funnel
        lines.append(f"exact ceiling {f.ceiling:.4f} ({f.best_metric}); exact {f.chosen_metric} "
                     f"{f.exact_chosen:.4f}; served {f.served:.4f} at {f.served_point}")
    if result.check:
        lines.append(f"recommendation: metric {result.check.recommended_metric} (best measured "
                     f"{result.check.best_metric}), {result.check.recommended_family} (measured "
                     f"{result.check.best_family})")
    if result.modes and result.modes.get("recommendation"):
        rec = result.modes["recommendation"]
        lines.append(f"search mode: {rec['mode']} ({rec['reason']})")
    lines.append(f"report: {paths['report']}")
    return "\n".join(lines)


@click.command("recommend", help=RECOMMEND_HELP, context_settings={"help_option_names": ["-h", "--help"]})
@_common
@click.option("--check", is_flag=True,
              help="Also run a small sweep (as `eval --quick`) and check the recommendation against it.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False),
              help="With --check: where the sweep's outputs go (default: a temporary directory).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bars on stderr (with --check).")
@_edge
def recommend_command(dataset, metric, k, seed, dim, check, out_dir, as_json, quiet):
    from vdb.eval.datasets import load_dataset
    ds = load_dataset(dataset, dim=dim)
    if check:
        payload, text = _recommend_checked(ds, metric, k, seed, out_dir, progress=not quiet)
    else:
        payload, text = _recommend_only(ds, metric, k, seed)
    from vdb.eval.report import json_safe
    click.echo(json.dumps(json_safe(payload), indent=2, default=str) if as_json else text)


def _recommend_only(ds, metric: str, k: int, seed: int):
    from vdb.eval.metafeatures import compute_metafeatures
    from vdb.eval.recommend import recommend
    from vdb.eval.runner import resolve_metric
    mf = compute_metafeatures(ds.raw_base(), ds.raw_queries(), metric=resolve_metric(ds, metric),
                              base_labels=ds.base_labels, k=k, seed=seed)
    rec = recommend(mf, k=k)
    return ({"dataset": ds.name, "metafeatures": mf.as_dict(), "recommendation": rec.as_dict()},
            f"{ds.name} ({ds.n:,} x {ds.dim})\n{rec.render()}")


def _recommend_checked(ds, metric: str, k: int, seed: int, out_dir: str | None, *, progress: bool):
    from vdb.eval.report import write_outputs
    from vdb.eval.runner import EvalConfig, run_eval
    with tempfile.TemporaryDirectory(prefix="vdb-recommend-") as tmp:
        out = out_dir or tmp
        result = run_eval(ds, out, EvalConfig(k=k, metric=metric, quick=True, seed=seed, latency_queries=200,
                                              progress=progress))
        if out_dir:
            write_outputs(result, out, command=f"vdbctl recommend {ds.name} --check")
    text = f"{ds.name} ({ds.n:,} x {ds.dim})\n{result.recommendation.render()}"
    if result.check:
        c = result.check
        text += (f"\ncheck (quick sweep, {result.task}):\n  metric   recommended {c.recommended_metric}, best measured "
                 f"{c.best_metric} (cost {c.metric_cost:+.4f}); Iceberg l2/ip choice measured: {c.tree_metric}"
                 f"\n  family   recommended {c.recommended_family}, measured {c.best_family} ({c.best_point})"
                 f"\n  nprobe   recommended {c.recommended_nprobe}, measured at saturation {c.measured_nprobe}")
        text += "".join(f"\n  note: {n}" for n in c.notes)
    else:
        text += "\ncheck: the dataset has no labels or targets, so there is no task metric to check against"
    hybrid = result.modes.get("recommendation") if result.modes else None
    if hybrid:  # the dataset has texts: dense, BM25 and hybrid were measured on it
        text += f"\nsearch mode: {hybrid['mode']} ({hybrid['reason']})"
    return ({"dataset": ds.name, "metafeatures": result.metafeatures.as_dict(),
             "recommendation": result.recommendation.as_dict(),
             "check": result.check.as_dict() if result.check else None, "search_mode": hybrid}, text)
