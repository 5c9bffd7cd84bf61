"""`vdbctl cluster up|status|down|route`, `vdbctl snapshot` and `vdbctl restore` (registered on the vdbctl group
by vdb/cli.py; its group turns library errors into one `Error: ...` line). Ray is imported only when a command
needs a cluster.
"""
from __future__ import annotations

import json

import click

from vdb.cluster.spec import SPREADS, ClusterSpec

ADDRESS_HELP = "Ray cluster (host:port of its GCS; default: $RAY_ADDRESS)."


def _echo(obj) -> None:
    click.echo(json.dumps(obj, indent=2, sort_keys=True, default=str))


def _sets(pairs) -> dict:
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise click.BadParameter(f"{pair!r} is not KEY=VALUE", param_hint="--set")
        try:
            out[key.strip()] = json.loads(value)
        except ValueError:
            out[key.strip()] = value
    return out


def _join(address):
    from vdb.cluster import rayside
    rayside.connect(address)


@click.group("cluster")
def cluster_group() -> None:
    """Serve vdb from a Ray cluster: shards held by R replicas on different nodes, failover, a router.

    \b
    Example (3 Ray nodes, 2 shards, 2 replicas each, one router on the head node):
      vdbctl cluster up --address 10.0.0.5:6379 --data /var/lib/vdb --shards 2 --replicas 2 --routers 1
      vdbctl cluster status --address 10.0.0.5:6379
      python -c 'import vdb; print(vdb.Client("10.0.0.5:50050").list_collections())'
      vdbctl cluster down --address 10.0.0.5:6379
    """


@cluster_group.command("up")
@click.option("--address", envvar="RAY_ADDRESS", help=ADDRESS_HELP + " Without it: a local Ray in this "
              "process, serving in the foreground until SIGTERM/SIGINT.")
@click.option("--name", default="vdb", show_default=True, help="Cluster name (several may share a Ray cluster).")
@click.option("--data", "data_root", required=True, help="Directory on every node for the replicas' data.")
@click.option("--shards", type=click.IntRange(min=1), default=1, show_default=True)
@click.option("--replicas", type=click.IntRange(min=1), default=2, show_default=True,
              help="Copies of each shard (R).")
@click.option("--spread", type=click.Choice(sorted(SPREADS)), default="strict", show_default=True,
              help="strict: every replica of a shard on its own node; soft: best effort (one-node setups).")
@click.option("--replica-cpus", type=float, default=1.0, show_default=True, help="Ray CPUs per replica.")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address replicas and routers bind; 'node' binds each node's IP address.")
@click.option("--routers", type=click.IntRange(min=0), default=1, show_default=True,
              help="Router actors on the head node, on ports PORT, PORT+1, ...")
@click.option("--port", type=click.IntRange(0, 65535), default=50050, show_default=True)
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE", help="A vdb setting of every replica.")
@click.option("--wait", "wait_s", type=float, default=120.0, show_default=True, help="Seconds to wait for it.")
def up_command(address, name, data_root, shards, replicas, spread, replica_cpus, host, routers, port, sets,
               wait_s):
    """Start a cluster; print its shards, members and router addresses as JSON."""
    from vdb.cluster import deploy
    from vdb.config import load_settings
    settings = _sets(sets)
    load_settings(settings)  # unknown or bad settings fail here, not in every replica
    spec = ClusterSpec(data_root=data_root, name=name, shards=shards, replicas=replicas, spread=spread,
                       replica_cpus=replica_cpus, host=host, settings=settings)
    _join(address)
    _echo(deploy.up(spec, routers=routers, router_port=port, wait_s=wait_s))
    if not address:  # the local Ray lives in this process: serve until told to stop
        from vdb.service.server import wait_for_signal
        import ray
        click.echo(json.dumps({"ray_address": ray.get_runtime_context().gcs_address}), err=True)
        wait_for_signal()
        deploy.down(spec)


@cluster_group.command("status")
@click.option("--address", envvar="RAY_ADDRESS", required=True, help=ADDRESS_HELP)
@click.option("--name", default="vdb", show_default=True)
def status_command(address, name):
    """Print each shard's term, primary and in-sync set, every member and router, as JSON."""
    from vdb.cluster import deploy
    _join(address)
    _echo(deploy.status(deploy.find(name)))


@cluster_group.command("down")
@click.option("--address", envvar="RAY_ADDRESS", required=True, help=ADDRESS_HELP)
@click.option("--name", default="vdb", show_default=True)
@click.option("--purge", is_flag=True, help="Also delete the replicas' data directories.")
def down_command(address, name, purge):
    """Stop a cluster's routers, replicas and controller."""
    from vdb.cluster import deploy
    _join(address)
    deploy.down(deploy.find(name), purge=purge)
    _echo({"down": name, "purged": purge})


@cluster_group.command("route")
@click.option("--address", envvar="RAY_ADDRESS", required=True, help=ADDRESS_HELP)
@click.option("--name", default="vdb", show_default=True)
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=click.IntRange(0, 65535), default=50050, show_default=True)
def route_command(address, name, host, port):
    """Serve one more (stateless) router in the foreground, anywhere that reaches the Ray cluster."""
    from vdb.cluster import deploy, rayside
    from vdb.cluster.routing import make_router, router_settings
    from vdb.config import tune_process
    from vdb.service.server import serve
    _join(address)
    spec = deploy.find(name)
    settings = router_settings(spec, host=host, port=port)  # the replicas' keys (read-only too) and TLS
    tune_process(settings)
    serve(make_router(rayside.controller_peer(spec), spec), settings, what=f"router of cluster {name!r}",
          ready=lambda p: click.echo(json.dumps({"routing": f"{host}:{p}", "cluster": name}), err=True))


def _target(fn):
    fn = click.option("--address", envvar="RAY_ADDRESS", help=ADDRESS_HELP + " With --cluster.")(fn)
    fn = click.option("--cluster", "cluster_name", help="A running cluster (online, while it serves).")(fn)
    fn = click.option("--data", "data_dir", type=click.Path(file_okay=False),
                      help="A data directory (not open in a running server).")(fn)
    return click.option("--collection", required=True)(fn)


@click.command("snapshot")
@_target
@click.option("--out", required=True, help="A new directory, or a .tar file.")
def snapshot_command(collection, data_dir, cluster_name, address, out):
    """Take a consistent snapshot of a collection (writes may go on) with a checksum manifest.

    \b
    Example:
      vdbctl snapshot --data data/ --collection docs --out docs.tar
      vdbctl snapshot --cluster vdb --address 10.0.0.5:6379 --collection docs --out /backup/docs-0601.tar
    """
    if bool(data_dir) == bool(cluster_name):
        raise click.UsageError("give exactly one of --data and --cluster")
    if data_dir:
        import vdb
        from vdb.engine.snapshot import write_snapshot
        with vdb.connect(data_dir) as db:
            _echo({k: v for k, v in write_snapshot(db, collection, out).items() if k != "files"})
        return
    from vdb.cluster import deploy
    _join(address)
    _echo(deploy.snapshot(deploy.find(cluster_name), collection, out))


@click.command("restore")
@click.argument("snapshot")
@_target
def restore_command(snapshot, collection, data_dir, cluster_name, address):
    """Restore SNAPSHOT (a directory or .tar of `vdbctl snapshot`) as a new collection, verifying its
    checksums first; it equals its source at the snapshot's LSN.

    \b
    Example:
      vdbctl restore docs.tar --data other-node-data/ --collection docs
      vdbctl restore /backup/docs-0601.tar --cluster vdb --address 10.0.0.5:6379 --collection docs_0601
    """
    if bool(data_dir) == bool(cluster_name):
        raise click.UsageError("give exactly one of --data and --cluster")
    if data_dir:
        import vdb
        from vdb.cluster.clustersnap import restore_local
        with vdb.connect(data_dir) as db:
            _echo(restore_local(db, snapshot, collection))
        return
    import tempfile
    from vdb.cluster import deploy
    _join(address)
    with tempfile.TemporaryDirectory() as work:
        _echo(deploy.restore(deploy.find(cluster_name), snapshot, collection, work))
