"""pbg-fast: import-from-tsv | train | eval | export-to-tsv | config | demo."""

import argparse
import errno
import json
import logging
import os
import sys
import time

from . import build_info
from .config import load_config, schema_help
from .errors import DataError, UserError


def _config_args(p):
    p.add_argument("config", help="PBG config (.py with get_torchbiggraph_config, .json, .yaml)")
    p.add_argument("-p", "--param", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key (dotted path; lists comma-separated)")


class _Progress:
    """A tqdm bar per iteration (epoch x edge path x edge chunk) over its buckets, with edges/s
    and loss per edge; plain lines when tqdm is missing or stderr is not a terminal."""

    def __init__(self):
        try:
            from tqdm import tqdm
        except ImportError:
            tqdm = None
        self.tqdm = tqdm if sys.stderr.isatty() else None
        self.bar = None

    def __call__(self, rec):
        if rec["kind"] == "bucket":
            if self.tqdm is not None:
                if self.bar is None:
                    self.bar = self.tqdm(desc=f"epoch {rec['epoch']} chunk {rec['edge_chunk']}",
                                         unit="edge", unit_scale=True, leave=False)
                self.bar.update(rec["count"])
                self.bar.set_postfix(loss=f"{rec['loss'] / max(rec['count'], 1):.4f}",
                                     bucket=str(tuple(rec["bucket"])),
                                     io_wait=f"{rec['io_wait_seconds']:.2f}s")
            return
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        print(f"epoch {rec['epoch']} chunk {rec['edge_chunk']}: {rec['count']:,} edges, "
              f"loss {rec['loss'] / max(rec['count'], 1):.4f}/edge, "
              f"{rec['edges_per_s']:,.0f} edges/s training, {rec['seconds']:.2f} s wall, "
              f"{rec['partition_loads']} partition loads, I/O {rec['io_seconds']:.2f} s "
              f"({rec['io_wait_seconds']:.2f} s not hidden)", file=sys.stderr, flush=True)


def cmd_import(a):
    from .io.importer import import_from_tsv
    config = load_config(a.config, a.param)
    stats = import_from_tsv(
        config, a.edge_paths, lhs_col=a.lhs_col, rhs_col=a.rhs_col, rel_col=a.rel_col,
        weight_col=a.weight_col, delimiter=a.delimiter,
        relation_type_min_count=a.relation_type_min_count, entity_min_count=a.entity_min_count,
        skip_bad_lines=a.skip_bad_lines)
    print(json.dumps(dict(what="import", **stats.__dict__,
                          edges_per_s=stats.lines / max(stats.seconds, 1e-9))))


def cmd_train(a):
    config = load_config(a.config, a.param)
    progress = None if a.quiet else _Progress()
    if config.num_machines > 1:
        from .distributed.trainer import train_distributed
        recs = train_distributed(config, a.rank, seed=a.seed, progress=progress,
                                 bind_address=a.bind_address)
    else:
        if a.rank is not None:
            raise DataError("--rank: only for a distributed run (num_machines > 1)")
        from .train.trainer import train
        recs = train(config, seed=a.seed, progress=progress)
    for r in recs:
        print(json.dumps(r))


def cmd_partitionserver(a):
    from .distributed.trainer import serve_partitions
    config = load_config(a.config, a.param)
    n = serve_partitions(config, a.rank, seed=a.seed, bind_address=a.bind_address)
    print(json.dumps(dict(what="partitionserver", rank=a.rank, bytes_served=n)))


def cmd_eval(a):
    from .eval.link_prediction import evaluate
    if a.filter_edge_paths and not a.filtered:
        raise DataError("--filter-edge-paths: only meaningful with --filtered")
    config = load_config(a.config, a.param)
    t0 = time.perf_counter()
    res = evaluate(config, filtered=a.filtered, filter_paths=a.filter_edge_paths or ())
    for rel, m in res.items():
        print(json.dumps(dict(relation=rel, filtered=a.filtered, **m)))
    print(f"eval took {time.perf_counter() - t0:.1f} s", file=sys.stderr)


def cmd_export(a):
    from .export import export
    config = load_config(a.config, a.param)
    print(export(config, a.output, a.format))


def cmd_config(a):
    if a.config:
        print(load_config(a.config, a.param).to_json())
    else:
        print(schema_help())


def cmd_demo(a):
    from .demo import run_demo
    run_demo(quick=a.quick, workdir=a.workdir)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="pbg-fast", description=__doc__)
    parser.add_argument("--version", action="version", version=json.dumps(build_info()))
    sub = parser.add_subparsers(dest="cmd", required=True)

    p = sub.add_parser("import-from-tsv", help="import TSV edge lists (torchbiggraph_import_from_tsv)")
    _config_args(p)
    p.add_argument("edge_paths", nargs="+", help="input TSV files, one per config edge path")
    p.add_argument("-l", "--lhs-col", type=int, required=True)
    p.add_argument("-r", "--rhs-col", type=int, required=True)
    p.add_argument("--rel-col", type=int, default=None)
    p.add_argument("--weight-col", type=int, default=None)
    p.add_argument("--delimiter", default="\t")
    p.add_argument("--relation-type-min-count", type=int, default=1)
    p.add_argument("--entity-min-count", type=int, default=1)
    p.add_argument("--skip-bad-lines", action="store_true",
                   help="skip and count malformed lines instead of failing")
    p.set_defaults(fn=cmd_import)

    p = sub.add_parser("train", help="train (resumes from the checkpoint if there is one)")
    _config_args(p)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quiet", action="store_true")
    p.add_argument("--rank", type=int, default=None,
                   help="this machine's rank in a distributed run (num_machines > 1) launched "
                        "PBG's way, with distributed_init_method; torchrun sets it itself")
    p.add_argument("--bind-address", default=None,
                   help="distributed: the local address to serve on (default: the one that "
                        "reaches the rendezvous host); never all interfaces")
    p.set_defaults(fn=cmd_train)

    p = sub.add_parser("partitionserver",
                       help="a standalone partition server of a distributed run "
                            "(torchbiggraph_partitionserver)")
    _config_args(p)
    p.add_argument("--rank", type=int, required=True,
                   help="this server's rank among num_partition_servers")
    p.add_argument("--seed", type=int, default=0,
                   help="the trainers' --seed (initialises partitions the same way)")
    p.add_argument("--bind-address", default=None,
                   help="the local address to serve on (default: the one that reaches the "
                        "rendezvous host)")
    p.set_defaults(fn=cmd_partitionserver)

    p = sub.add_parser("eval", help="link-prediction metrics on the config's edge paths")
    _config_args(p)
    p.add_argument("--filtered", action="store_true",
                   help="rank against every entity, known true edges removed")
    p.add_argument("--filter-edge-paths", nargs="*", help="more edge paths of known true edges")
    p.set_defaults(fn=cmd_eval)

    p = sub.add_parser("export-to-tsv", help="export embeddings (tsv, npy or h5)")
    _config_args(p)
    p.add_argument("output")
    p.add_argument("--format", default="tsv", choices=["tsv", "npy", "h5"])
    p.set_defaults(fn=cmd_export)

    p = sub.add_parser("config", help="print the schema with help, or a config resolved")
    p.add_argument("config", nargs="?")
    p.add_argument("-p", "--param", action="append", default=[])
    p.set_defaults(fn=cmd_config)

    p = sub.add_parser("demo", help="build graphs, import, train, evaluate, print MRR and edges/s")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--workdir", default=None)
    p.set_defaults(fn=cmd_demo)

    a = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    try:
        a.fn(a)
    except UserError as e:
        return _fail(str(e))
    except OSError as e:
        # The environment refused a path the user gave (permissions, a full disk, a missing
        # directory): one line, like any user error. Another OSError without a path is a bug.
        if e.filename is not None:
            return _fail(f"{e.filename}: {e.strerror or e}")
        if e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM):
            return _fail(f"{os.strerror(e.errno)} ({e}); what was committed before is intact")
        raise
    except KeyboardInterrupt:
        print("pbg-fast: interrupted; the last committed checkpoint and any earlier output "
              "are intact", file=sys.stderr)
        return 130
    return 0


def _fail(message: str) -> int:
    """A user error: one line on stderr, exit status 2 (argparse's, for bad usage)."""
    print(f"pbg-fast: error: {' '.join(message.split())}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
