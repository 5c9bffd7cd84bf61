"""vdbctl: the command line. Thin over the library; errors become one line on stderr and a non-zero exit."""
from __future__ import annotations

import json
import logging
import sys
import time

import click
import numpy as np

from index.types import FALLBACK_NPROBE, MAX_SCAN_CODE_BYTES, BuildParams, SearchParams
from vdb.config import BY_NAME as SETTING
from vdb.errors import VdbError, translate

EXIT_ERROR = 1


class _Group(click.Group):
    """Turns every library error into `Error: <message>` and exit status 1, never a traceback."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except (click.ClickException, click.exceptions.Exit, click.exceptions.Abort, KeyboardInterrupt):
            raise
        except (VdbError, OSError, ValueError, KeyError) as e:
            err = translate(e) if not isinstance(e, OSError) else e
            raise click.ClickException(str(err)) from None
        except Exception as e:  # storage / index errors and anything they wrap
            from index.errors import VectorIndexError
            from storage.errors import StorageError
            if isinstance(e, (StorageError, VectorIndexError)):
                raise click.ClickException(str(translate(e))) from None
            raise


def _bar_factory(quiet: bool):
    if quiet:
        return None
    from tqdm import tqdm

    def make(stage: str, total: int):
        return tqdm(total=total, desc=stage, file=sys.stderr, mininterval=0.5, unit_scale=True, leave=False)
    return make


def _echo_json(obj) -> None:
    click.echo(json.dumps(obj, indent=2, sort_keys=True, default=_json_default))


def _json_default(o):
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def _parse_sets(pairs: tuple[str, ...]) -> dict:
    out = {}
    for pair in pairs:
        if "=" not in pair:
            raise click.BadParameter(f"{pair!r} is not KEY=VALUE", param_hint="--set")
        key, value = pair.split("=", 1)
        try:
            out[key.strip()] = json.loads(value)
        except ValueError:
            out[key.strip()] = value
    return out


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", count=True, help="Log more (-v info, -vv debug) on stderr.")
def cli(verbose: int) -> None:
    """vdb: a disk-resident SPANN vector database.

    \b
    Example:
      vdbctl build base.fvecs --out idx/ --metric l2
      vdbctl search idx/ --queries q.npy --top-k 10 --out res
      vdbctl info idx/
    """
    logging.basicConfig(level=[logging.WARNING, logging.INFO, logging.DEBUG][min(verbose, 2)],
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)


@cli.command()
@click.argument("input_path", metavar="INPUT", type=click.Path(dir_okay=False))
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False), help="Index directory to create.")
@click.option("--metric", type=click.Choice(["l2", "ip", "cosine"]), default="l2", show_default=True)
@click.option("--ids", "ids_path", type=click.Path(dir_okay=False), help=".npy of int64 external ids, one per row.")
@click.option("--dataset", default="train", show_default=True, help="HDF5 dataset to read (ann-benchmarks).")
@click.option("--head-ratio", type=float,
              help=f"Heads as a fraction of the vectors (default {BuildParams.head_ratio}).")
@click.option("--max-replicas", type=int,
              help=f"Postings per vector at most (default {BuildParams.max_replicas}; at most 4 at dim >= 768).")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE", help="Any other build parameter.")
@click.option("--overwrite", is_flag=True, help="Replace an existing index at --out (atomically).")
@click.option("--engine", type=click.Choice(["local", "ray"]), default="local", show_default=True,
              help="ray: assign and encode in a pool of Ray actors over input partitions (resumable); needs "
                   "`pip install 'vdb[ray]'`.")
@click.option("--address", help="Ray cluster to use (host:port of its GCS, or auto); default: start a local Ray.")
@click.option("--workers", type=click.IntRange(min=1), help="Ray actors (default: the cluster's CPUs).")
@click.option("-q", "--quiet", is_flag=True, help="No progress bars.")
def build(input_path, out_dir, metric, ids_path, dataset, head_ratio, max_replicas, sets, overwrite, engine,
          address, workers, quiet):
    """Bulk-build an index from a vector file; print a JSON summary.

    INPUT is .npy, .fvecs/.bvecs, .fbin/.u8bin/.i8bin (big-ann) or .hdf5/.h5 (ann-benchmarks, dataset "train").

    \b
    Example:
      vdbctl build sift_base.fvecs --out sift-idx/ --metric l2
      vdbctl build docs.npy --out docs-idx/ --metric cosine --ids doc_ids.npy --set candidates=48
      vdbctl build big.fbin --out big-idx/ --engine ray --address 10.0.0.5:6379
    """
    from index import BuildParams, build_index
    from vdb.inputs.readers import load_ids, open_vectors
    source = open_vectors(input_path, dataset=dataset)
    ids = load_ids(ids_path) if ids_path else None
    knobs = _parse_sets(sets)
    knobs["metric"] = metric
    if head_ratio is not None:
        knobs["head_ratio"] = head_ratio
    if max_replicas is not None:
        knobs["max_replicas"] = max_replicas
    params = BuildParams.from_dict({**BuildParams().to_dict(), **knobs})
    if engine == "ray":
        import functools
        from index.distributed import build_index_ray
        summary = build_index_ray(input_path, out_dir, ids=ids, params=params, address=address, workers=workers,
                                  overwrite=overwrite, progress=_bar_factory(quiet),
                                  reader=functools.partial(open_vectors, dataset=dataset))
    else:
        if address or workers:
            raise click.BadParameter("--address and --workers need --engine ray")
        summary = build_index(source, out_dir, ids=ids, params=params, overwrite=overwrite,
                              progress=_bar_factory(quiet))
    _echo_json(summary)


@cli.command()
@click.argument("index_dir", metavar="DIR", type=click.Path(file_okay=False))
@click.option("--queries", "queries_path", required=True, type=click.Path(dir_okay=False),
              help="Query vectors (.npy, .fvecs, .fbin, ...).")
@click.option("--top-k", "top_k", type=int, default=10, show_default=True)
@click.option("--nprobe", type=int, help="Postings probed per query (default: the nprobe the build calibrated for its target_recall, "
                   f"{FALLBACK_NPROBE} for an uncalibrated index).")
@click.option("--eps", type=float, help="Query-aware pruning: probe heads within (1+eps) of the nearest "
                                        f"(default {SearchParams.eps}).")
@click.option("--rerank-k", type=int,
              help=f"INT8 candidates re-ranked with float32 (default {SearchParams.describe_rerank()}).")
@click.option("--dataset", default="test", show_default=True, help="HDF5 dataset holding the queries.")
@click.option("--out", "out_prefix", help="Write PREFIX.ids.npy (int64 [nq, k]) and PREFIX.dist.npy.")
@click.option("--threads", type=int, default=1, show_default=True, help="Threads searching the batch.")
@click.option("--latency", is_flag=True, help="Also time each query alone (p50 / p99 / mean; after one warm-up).")
@click.option("--memory-budget-mb", "budget_mb", type=float,
              help=f"Serve from disk within this much RAM (O_DIRECT batch reads, a posting cache; "
                   f"default {SETTING['memory_budget_mb'].default}: mmap and the page cache).")
def search(index_dir, queries_path, top_k, nprobe, eps, rerank_k, dataset, out_prefix, threads, latency, budget_mb):
    """Search an index with a file of queries; write the answers, print a JSON summary.

    All queries run as one batch (QPS in the summary); --latency also runs each alone. Benchmarks against peers
    live in tools/bench_index.py.

    \b
    Example:
      vdbctl search sift-idx/ --queries sift_query.fvecs --top-k 10 --nprobe 16 --out res
      vdbctl search sift-idx/ --queries sift_query.fvecs --latency
    """
    from index import SpannIndex
    from vdb.inputs.readers import open_vectors
    queries = np.asarray(open_vectors(queries_path, dataset=dataset), dtype=np.float32)
    knobs = {k: v for k, v in (("nprobe", nprobe), ("eps", eps), ("rerank_k", rerank_k)) if v is not None}
    report: dict = {"queries": len(queries), "top_k": top_k, "threads": threads}
    budget_mb = SETTING["memory_budget_mb"].default if budget_mb is None else budget_mb
    with SpannIndex.open(index_dir, memory_budget_mb=budget_mb or None) as idx:
        t = time.perf_counter()
        ids, dists = idx.search(queries, top_k, threads=threads, **knobs)
        report["batch_qps"] = round(len(queries) / (time.perf_counter() - t), 1)
        if latency:
            report.update(_latency(idx, queries, top_k, knobs))
        if idx.disk is not None:
            report["device_reads"] = idx.disk.io_stats()
    if out_prefix:
        np.save(f"{out_prefix}.ids.npy", ids)
        np.save(f"{out_prefix}.dist.npy", dists)
    report["out"] = [f"{out_prefix}.ids.npy", f"{out_prefix}.dist.npy"] if out_prefix else None
    _echo_json(report)


def _latency(idx, queries: np.ndarray, top_k: int, knobs: dict) -> dict:
    idx.search(queries[:1], top_k, **knobs)  # warm up (JIT, page cache of the first postings)
    lat = np.empty(len(queries))
    for i in range(len(queries)):
        t = time.perf_counter()
        idx.search(queries[i], top_k, **knobs)
        lat[i] = time.perf_counter() - t
    return {"mean_latency_ms": round(lat.mean() * 1e3, 4), "p50_ms": round(float(np.percentile(lat, 50)) * 1e3, 4),
            "p99_ms": round(float(np.percentile(lat, 99)) * 1e3, 4)}


@cli.command()
@click.argument("index_dir", metavar="DIR", type=click.Path(file_okay=False))
def info(index_dir):
    """Print what an index holds as JSON: counts, posting lengths, bytes on disk and in RAM, build parameters.

    \b
    Example:
      vdbctl info sift-idx/
    """
    from index import SpannIndex
    with SpannIndex.open(index_dir) as idx:
        _echo_json(idx.info())


@cli.command("scan-codes")
@click.argument("index_dir", metavar="DIR", type=click.Path(file_okay=False))
@click.option("--bytes", "code_bytes", type=int, default=-1, show_default=True,
              help=f"PQ bytes per entry: -1 automatic (dim / 4), else 1..{MAX_SCAN_CODE_BYTES}.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the product quantizer's training.")
@click.option("--calibrate-only", is_flag=True,
              help="Keep the codes on disk and only calibrate through them (codes `vdbctl info` says are not calibrated).")
def scan_codes(index_dir, code_bytes, seed, calibrate_only):
    """Encode (or replace) the scan tier of a built index: PQ codes of every posting record, scanned in RAM when
    the index is served within a memory budget they fit. Print a JSON summary.

    Takes the directory exclusively: stop a server (or anything) that has it open first. An index calibrated
    at build time is calibrated again through the new codes.

    \b
    Example:
      vdbctl scan-codes sift-idx/
      vdbctl scan-codes sift-idx/ --bytes 64
      vdbctl scan-codes sift-idx/ --calibrate-only
    """
    from index.tierbuild import scan_codes_index
    _echo_json(scan_codes_index(index_dir, code_bytes, seed=seed, calibrate_only=calibrate_only))


@cli.command()
@click.argument("path", metavar="DIR", type=click.Path(file_okay=False, exists=True))
def check(path):
    """Verify every checksum and invariant, read-only; print a JSON report and exit 1 on any violation.

    DIR is a data directory (every collection is checked) or one index / collection directory. Nothing is
    written: the checkpoint is checked, the WAL after it is validated and decoded, and what the next open would
    do (drop a torn tail) is listed under "notes". A directory a running server holds is refused; repairing is
    `vdbctl repair`.

    \b
    Example:
      vdbctl check data/
      vdbctl check sift-idx/
    """
    from vdb.engine.database import check_path
    reports = check_path(path)
    _echo_json(reports)
    if not all(r["ok"] for r in reports):
        raise click.exceptions.Exit(1)


@cli.command()
@click.argument("path", metavar="DIR", type=click.Path(file_okay=False, exists=True))
def repair(path):
    """Mend a data directory where its own data allows; print what was done and lost; exit 1 if problems remain.

    A damaged WAL is truncated at the damage (the records after it are LOST, and the report says which LSNs);
    postings that fail their checksum are rebuilt from the full-precision rows. Damaged rows, heads or metadata
    cannot be rebuilt from the directory itself: they are reported (restore a snapshot). Stop the server first.

    \b
    Example:
      vdbctl check data/ || vdbctl repair data/
    """
    from vdb.engine.repair import repair_path
    reports = repair_path(path)
    _echo_json(reports)
    if not all(r["ok"] for r in reports):
        raise click.exceptions.Exit(1)


@cli.command()
@click.option("--data", "data_dir", required=True, type=click.Path(file_okay=False),
              help="Data directory (created if missing); holds every collection.")
@click.option("--host", help=f"Address to bind (default {SETTING['host'].default}: loopback only).")
@click.option("--port", type=int, help=f"gRPC port (default {SETTING['port'].default}; 0 picks a free one).")
@click.option("--api-key", help="Require `authorization: Bearer KEY` (or set VDB_API_KEY).")
@click.option("--read-only-api-key", help="A second key that may only read.")
@click.option("--tls-cert", type=click.Path(dir_okay=False, exists=True), help="PEM certificate (with --tls-key).")
@click.option("--tls-key", type=click.Path(dir_okay=False, exists=True), help="PEM private key.")
@click.option("--metrics-port", type=int, help="Serve Prometheus metrics on this port.")
@click.option("--attach", "attach", multiple=True, metavar="NAME=DIR",
              help="Serve a `vdbctl build` output directory as collection NAME (no re-ingest).")
@click.option("--config", "config_file", type=click.Path(dir_okay=False, exists=True),
              help="TOML file with a [vdb] table of settings.")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE", help="Any other setting (see vdb/config.py).")
def serve(data_dir, host, port, api_key, read_only_api_key, tls_cert, tls_key, metrics_port, attach, config_file,
          sets):
    """Run the gRPC server until SIGTERM/SIGINT (then drain, checkpoint and close).

    Health (grpc.health.v1) and server reflection are always on; health needs no API key.

    \b
    Example:
      vdbctl serve --data data/ --port 50051
      vdbctl serve --data data/ --attach sift=sift-idx/ --api-key s3cret --metrics-port 9100
    """
    import vdb
    from vdb.service.server import serve as run
    overrides = {**_parse_sets(sets), "host": host, "port": port, "api_key": api_key,
                 "read_only_api_key": read_only_api_key, "tls_cert": tls_cert, "tls_key": tls_key,
                 "metrics_port": metrics_port}
    db = vdb.connect(data_dir, config_file=config_file, **overrides)
    vdb.tune_process(db.settings)
    try:
        for spec in attach:
            name, _, path = spec.partition("=")
            if not path:
                raise click.BadParameter(f"{spec!r} is not NAME=DIR", param_hint="--attach")
            if name not in db.list_collections():
                db.attach_collection(name, path)
    except BaseException:
        db.close()
        raise
    run(db, db.settings, ready=lambda p: click.echo(json.dumps({"serving": f"{db.settings['host']}:{p}"}),
                                                      err=True))


@cli.command()
@click.option("--config", "config_file", required=True, type=click.Path(dir_okay=False, exists=True),
              help="cluster.toml: [router] host/port/overfetch and one [[shards]] address per shard.")
@click.option("--port", type=int, help="Override the router port (0 picks a free one).")
@click.option("--api-key", envvar="VDB_API_KEY", help="Require this key from clients.")
def route(config_file, port, api_key):
    """Serve one vdb.v1 endpoint over several `vdbctl serve` shards (id-hash sharding, scatter-gather search).

    \b
    Example cluster.toml:
      [router]
      port = 50050
      overfetch = 1.5
      [[shards]]
      address = "127.0.0.1:50061"
      [[shards]]
      address = "127.0.0.1:50062"
    \b
    Example:
      vdbctl route --config cluster.toml
    """
    from vdb.config import load_settings, tune_process
    from vdb.service.router import ClusterConfig, Router
    from vdb.service.server import serve as run
    config = ClusterConfig.load(config_file)
    settings = load_settings({"host": config.host, "port": config.port if port is None else port,
                              "workers": config.workers, "api_key": api_key or ""})
    tune_process(settings)
    run(Router(config), settings, what=f"router over {len(config.shards)} shards",
        ready=lambda p: click.echo(json.dumps({"routing": f"{config.host}:{p}", "shards": list(config.shards)}),
                                   err=True))


def _register_evaluator() -> None:
    from vdb.eval.commands import eval_command, recommend_command
    cli.add_command(eval_command)
    cli.add_command(recommend_command)


_register_evaluator()


def _register_cluster() -> None:
    from vdb.cluster.commands import cluster_group, restore_command, snapshot_command
    for command in (cluster_group, snapshot_command, restore_command):
        cli.add_command(command)


_register_cluster()


def main() -> None:
    cli(prog_name="vdbctl")


if __name__ == "__main__":
    main()
