"""The config schema: typed, validated, frozen, with PyTorch-BigGraph 1.0's key names and
defaults, so a PBG config file loads unchanged.

Sources: a PBG Python config (``def get_torchbiggraph_config(): return dict(...)``), or JSON /
YAML (which execute no code). Overrides: ``-p key=value`` with dotted paths
(``relations.0.operator=diagonal``, ``edge_paths=a,b``). Errors name the key's path:
``relations[0].operator: unknown 'foo'; expected one of ...``.
"""

import dataclasses
import importlib.util
import json
import math
import os
import re
import sys
import typing
import uuid
from dataclasses import dataclass, field, fields
from typing import Any, Dict, List, Optional

from .ops import COMPARATORS, LOSSES, OPERATORS

BUCKET_ORDERS = ("random", "affinity", "inside_out", "outside_in", "buffer")


from .errors import ConfigError  # noqa: F401  (re-exported: pbg_fast.config.ConfigError)


def _help(text: str, **kw) -> Any:
    return field(metadata={"help": text}, **kw)


@dataclass(frozen=True, kw_only=True)
class EntitySchema:
    num_partitions: int = _help("Number of partitions for this entity type (1 = unpartitioned). "
                                "All partitioned types must have the same number.")
    featurized: bool = _help("Whether entities of this type are sets of features.", default=False)
    dimension: Optional[int] = _help("Override the default dimension for this entity type.",
                                     default=None)


@dataclass(frozen=True, kw_only=True)
class RelationSchema:
    name: str = _help("A human-readable identifier for the relation type.")
    lhs: str = _help("The entity type of the left-hand side (a key of `entities`).")
    rhs: str = _help("The entity type of the right-hand side (a key of `entities`).")
    weight: float = _help("Multiplies the loss of this relation's edges.", default=1.0)
    operator: str = _help(f"Transform applied to the right-hand side: one of {OPERATORS}.",
                          default="none")
    all_negs: bool = _help("Use every entity of the partition as a negative.", default=False)


@dataclass(frozen=True, kw_only=True)
class ConfigSchema:
    # model
    entities: Dict[str, EntitySchema] = _help("The entity types, by name.")
    relations: List[RelationSchema] = _help("The relation types; edge files reference them by index.")
    dimension: int = _help("The dimension of the embeddings.")
    init_scale: float = _help("Std of the normal initialisation of embeddings.", default=1e-3)
    max_norm: Optional[float] = _help("Rescale embeddings whose norm exceeds this.", default=None)
    global_emb: bool = _help("Add a learned per-entity-type vector to every embedding.",
                             default=True)
    comparator: str = _help(f"How the two sides are scored: one of {COMPARATORS}.", default="cos")
    bias: bool = _help("Use the first dimension as a bias added to the score.", default=False)
    loss_fn: str = _help(f"The loss: one of {LOSSES}.", default="ranking")
    margin: float = _help("Margin of the ranking loss.", default=0.1)
    regularization_coef: float = _help(
        "Coefficient of the regularizer on the positives' embeddings and relation parameters "
        "(0 = none).", default=0.0)
    regularizer: str = _help("The regularizer: N3 (sum of cubed moduli, Lacroix et al. 2018).",
                             default="N3")
    # data
    entity_path: str = _help("Directory with the entity count and name files.")
    edge_paths: List[str] = _help("Directories with partitioned edge lists.")
    checkpoint_path: str = _help("Directory for checkpoints; training resumes from them.")
    init_path: Optional[str] = _help("Directory with initial embeddings (warm start).", default=None)
    checkpoint_preservation_interval: Optional[int] = _help(
        "Every so many epochs, keep a snapshot of the checkpoint in epoch_<N>/.", default=None)
    # training
    num_epochs: int = _help("Passes over all the edges.", default=1)
    num_edge_chunks: Optional[int] = _help(
        "Parts each bucket is split into (default: enough to respect max_edges_per_chunk).",
        default=None)
    max_edges_per_chunk: int = _help("Upper bound on edges per chunk when num_edge_chunks is unset.",
                                     default=1_000_000_000)
    bucket_order: str = _help(f"Order of the buckets: one of {BUCKET_ORDERS}.", default="inside_out")
    workers: Optional[int] = _help("HOGWILD worker threads (default: CPU count).", default=None)
    batch_size: int = _help("Edges per batch.", default=1000)
    num_batch_negs: int = _help("Negatives per positive taken from its chunk of the batch.",
                                default=50)
    num_uniform_negs: int = _help("Negatives per chunk sampled uniformly from the partition.",
                                  default=50)
    disable_lhs_negs: bool = _help("No negatives on the left-hand side.", default=False)
    disable_rhs_negs: bool = _help("No negatives on the right-hand side.", default=False)
    lr: float = _help("Learning rate (row-wise Adagrad) of the embeddings.", default=1e-2)
    relation_lr: Optional[float] = _help("Learning rate of the relation parameters (default: lr).",
                                         default=None)
    eval_fraction: float = _help("Fraction of each bucket's edges held out for per-bucket eval.",
                                 default=0.05)
    eval_num_batch_negs: Optional[int] = _help("num_batch_negs during eval.", default=1000)
    eval_num_uniform_negs: Optional[int] = _help("num_uniform_negs during eval.", default=1000)
    # partition buffer (pbg_fast; PBG 1.0 swaps synchronously)
    partition_buffer_size: Optional[int] = _help(
        "Partitions of each partitioned entity type held in memory at once (at least what a "
        "bucket needs, 2). Default: as many as fit in partition_buffer_memory_gb.",
        default=None)
    partition_buffer_memory_gb: Optional[float] = _help(
        "Memory budget of the partition buffer in GiB (default: half of the memory available "
        "at start).", default=None)
    partition_io: str = _help(
        "'async': a thread prefetches the next bucket's partitions and writes finished ones "
        "back while training runs; 'sync': all partition I/O in the training thread.",
        default="async")
    # expert
    background_io: bool = _help("Deprecated in PBG; no effect.", default=False)
    verbose: int = _help("Logging verbosity.", default=0)
    hogwild_delay: float = _help("Seconds by which PBG delays workers but the first in epoch 1 "
                                 "(pbg_fast's threads need no delay; accepted and ignored).",
                                 default=2)
    dynamic_relations: bool = _help("One relation entry whose parameters serve many relation "
                                    "types (count in dynamic_rel_count.txt).", default=False)
    # distributed
    num_machines: int = _help("Machines for distributed training.", default=1)
    num_partition_servers: int = _help(
        "-1: each trainer also serves partitions from memory; 0: swap through the shared "
        "checkpoint_path; S > 0: S standalone servers (pbg-fast partitionserver --rank R).",
        default=-1)
    distributed_init_method: Optional[str] = _help("URI to rendezvous a distributed run.",
                                                   default=None)
    distributed_tree_init_order: bool = _help("Distributed bucket bootstrapping order.",
                                              default=True)
    distributed_timeout: float = _help(
        "Seconds any distributed call or wait may take (rendezvous, a partition or parameter "
        "transfer, waiting for a bucket or for the other trainers at an iteration's end) "
        "before the run stops with an error naming the peer.", default=600.0)
    distributed_lease: float = _help(
        "Seconds a trainer may stay silent (it heartbeats while training) before the lock "
        "server declares it dead and gives its unfinished buckets to the others.", default=60.0)
    param_sync_interval: float = _help(
        "Seconds between a trainer's background syncs of the shared parameters (relation "
        "operators, global embeddings, unpartitioned entity types) with the parameter "
        "server.", default=0.5)
    shared_param_merge: str = _help(
        "How the parameter server combines the trainers' changes to the dense shared "
        "parameters (relation operators, global embeddings): 'mean' divides each trainer's "
        "change by the number of trainers that can train at once, as data-parallel training "
        "averages gradients; 'sum' adds every change in full, as PyTorch-BigGraph does (on "
        "bench_distributed's graph it trained like that many times the learning rate on them, "
        "0.012 MRR lower). Optimizer states and unpartitioned entity tables (sparse rows) are "
        "always summed.", default="mean")
    num_gpus: int = _help("GPUs to train on.", default=0)
    num_groups_for_partition_server: int = _help("torch.distributed groups for partition servers.",
                                                 default=16)
    half_precision: bool = _help("Half-precision training (GPU only).", default=False)
    matmul_precision: str = _help(
        "Inputs of the bucket op's score and gradient products: fp32 (default), tf32 (GPU "
        "only: tensor cores, 10-bit mantissa) or bf16 (inputs rounded to bfloat16; on the GPU, "
        "or on a CPU with AVX512-BF16); accumulated in float32 either way.", default="fp32")

    # ---- helpers -------------------------------------------------------------------------------

    def entity_dimension(self, entity: str) -> int:
        return self.entities[entity].dimension or self.dimension

    def side_partitions(self, side: str) -> int:
        """Partitions on one side ('lhs' / 'rhs') of the buckets: the most of any relation's
        entity type there (buckets are lhs x rhs of these)."""
        return max(self.entities[getattr(r, side)].num_partitions for r in self.relations)

    @property
    def num_partitions(self) -> int:
        """The partition count shared by all partitioned entity types (1 if none)."""
        return max(e.num_partitions for e in self.entities.values())

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)

    # Keys this schema has beyond PyTorch-BigGraph 1.0's (from later PBG versions).
    NOT_IN_PBG_1_0 = ("regularization_coef", "regularizer", "num_gpus",
                      "num_groups_for_partition_server", "half_precision",
                      "partition_buffer_size", "partition_buffer_memory_gb", "partition_io",
                      "distributed_timeout", "distributed_lease", "param_sync_interval",
                      "shared_param_merge",
                      "matmul_precision")

    def to_pbg_dict(self) -> Dict[str, Any]:
        """The config as PyTorch-BigGraph 1.0's schema accepts it: keys it does not know are
        dropped when at their defaults, and refused otherwise (PBG would train differently)."""
        d = self.to_dict()
        defaults = {f.name: f.default for f in fields(ConfigSchema)}
        for key in self.NOT_IN_PBG_1_0:
            if d[key] != defaults[key]:
                raise ConfigError(f"{key}: PyTorch-BigGraph 1.0 has no such key; it can only "
                                  f"be left at {defaults[key]!r} in a config meant for PBG 1.0")
            del d[key]
        for name, e in d["entities"].items():
            if e.pop("dimension") is not None:
                raise ConfigError(f"entities[{name!r}].dimension: not in PBG 1.0")
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=4, sort_keys=True)


# ---- parsing -----------------------------------------------------------------------------------


_MAX_INT = 2**62  # every int key ends in a C++ int64; nothing sensible comes near this


def _type_name(tp) -> str:
    return getattr(tp, "__name__", str(tp).replace("typing.", ""))


def _convert(value: Any, tp, path: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is typing.Union:  # Optional[X]
        if value is None:
            return None
        inner = [a for a in args if a is not type(None)][0]
        return _convert(value, inner, path)
    if origin in (list, List):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{path}: expected a list, got {value!r}")
        return [_convert(v, args[0], f"{path}[{i}]") for i, v in enumerate(value)]
    if origin in (dict, Dict):
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: expected a dict, got {value!r}")
        return {str(k): _convert(v, args[1], f"{path}[{k!r}]") for k, v in value.items()}
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: expected a mapping of {tp.__name__} keys, got {value!r}")
        return _build(tp, value, path)
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0"):
            return value.lower() in ("true", "1")
        raise ConfigError(f"{path}: expected a bool, got {value!r}")
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            raise ConfigError(f"{path}: expected an int, got {value!r}")
        try:
            out = int(value)
        except ValueError:
            raise ConfigError(f"{path}: expected an int, got {value!r}") from None
        if abs(out) > _MAX_INT:
            raise ConfigError(f"{path}: {value!r} is out of range (at most {_MAX_INT})")
        return out
    if tp is float:
        if isinstance(value, bool):
            raise ConfigError(f"{path}: expected a float, got {value!r}")
        try:
            out = float(value)
        except (TypeError, ValueError, OverflowError):
            raise ConfigError(f"{path}: expected a float, got {value!r}") from None
        if not math.isfinite(out):
            # nan / inf train to NaN (and a NaN model would rank every edge first).
            raise ConfigError(f"{path}: must be a finite number, got {value!r}")
        return out
    if tp is str:
        if hasattr(value, "value") and isinstance(value.value, str):  # PBG enums
            value = value.value
        if not isinstance(value, str):
            raise ConfigError(f"{path}: expected a string, got {value!r}")
        return value
    raise ConfigError(f"{path}: unsupported type {_type_name(tp)}")


def _build(cls, raw: Dict[str, Any], path: str):
    hints = typing.get_type_hints(cls)
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(raw) - set(known))
    if unknown:
        where = f"{path}." if path else ""
        raise ConfigError(f"{where}{unknown[0]}: unknown key; expected one of {sorted(known)}")
    kwargs = {}
    for name, f in known.items():
        key_path = f"{path}.{name}" if path else name
        if name in raw:
            kwargs[name] = _convert(raw[name], hints[name], key_path)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"{key_path}: missing required key")
    return cls(**kwargs)


def _choice(value: str, choices, path: str) -> None:
    if value not in choices:
        raise ConfigError(f"{path}: unknown {value!r}; expected one of {', '.join(choices)}")


def _positive(value, path: str, allow_zero: bool = False) -> None:
    if value is not None and (value < 0 or (value == 0 and not allow_zero)):
        raise ConfigError(f"{path}: must be {'non-negative' if allow_zero else 'positive'}, "
                          f"got {value!r}")


# Entity type names become parts of file names (embeddings_<type>_<part>.v<N>.h5,
# entity_count_<type>_<part>.txt) and relation names fields of TSV exports: letters, digits
# and . _ - + @ : = (no path separator, no whitespace but plain spaces, not starting with '.').
_SAFE_NAME = re.compile(r"[^\W][\w.+@:= -]*\Z")


def _safe_name(name: str, path: str, what: str) -> None:
    if not _SAFE_NAME.match(name) or name != name.strip():
        raise ConfigError(f"{path}: {what} {name!r} is not safe as part of a file name or a TSV "
                          f"field; use letters, digits and . _ - + @ : = (not first: . or a "
                          f"space; no '/', tabs or newlines)")


def validate(c: ConfigSchema) -> ConfigSchema:
    """Value checks, and a clear refusal of what pbg_fast cannot honour yet."""
    if not c.entities:
        raise ConfigError("entities: must not be empty")
    if not c.relations:
        raise ConfigError("relations: must not be empty")
    for name in c.entities:
        _safe_name(name, f"entities[{name!r}]", "entity type name")
    for i, r in enumerate(c.relations):
        _safe_name(r.name, f"relations[{i}].name", "relation name")
    for name, e in c.entities.items():
        _positive(e.num_partitions, f"entities[{name!r}].num_partitions")
        if e.featurized:
            raise ConfigError(f"entities[{name!r}].featurized: featurized entities are not "
                              "supported by pbg_fast yet")
        if e.dimension is not None and e.dimension != c.dimension:
            raise ConfigError(f"entities[{name!r}].dimension: per-entity dimensions are not "
                              "supported by pbg_fast yet")
    parts = {e.num_partitions for e in c.entities.values() if e.num_partitions > 1}
    if len(parts) > 1:
        raise ConfigError(f"entities: all partitioned entity types must have the same "
                          f"num_partitions, got {sorted(parts)}")
    for i, r in enumerate(c.relations):
        p = f"relations[{i}]"
        _choice(r.operator, OPERATORS, f"{p}.operator")
        for side in ("lhs", "rhs"):
            if getattr(r, side) not in c.entities:
                raise ConfigError(f"{p}.{side}: unknown entity type {getattr(r, side)!r}; "
                                  f"expected one of {sorted(c.entities)}")
        _positive(r.weight, f"{p}.weight")
        if r.operator == "complex_diagonal" and c.dimension % 2:
            raise ConfigError(f"{p}.operator: complex_diagonal needs an even dimension, "
                              f"got {c.dimension}")
        if r.all_negs and not c.dynamic_relations and r.operator != "none" and not c.disable_rhs_negs:
            raise ConfigError(f"{p}.all_negs: with static relations all_negs needs operator "
                              f"'none' (the operator acts on every rhs negative); use "
                              f"dynamic_relations=True, where each direction takes its negatives "
                              f"on the side without the operator")
    if c.dynamic_relations and len(c.relations) != 1:
        raise ConfigError("relations: with dynamic_relations there must be exactly one relation")
    if c.dynamic_relations and c.global_emb:
        raise ConfigError("global_emb: cannot be used with dynamic_relations (PBG refuses it "
                          "too); set global_emb=False")
    _choice(c.comparator, COMPARATORS, "comparator")
    _choice(c.loss_fn, LOSSES, "loss_fn")
    _choice(c.bucket_order, BUCKET_ORDERS, "bucket_order")
    _choice(c.regularizer, ("N3",), "regularizer")
    _positive(c.regularization_coef, "regularization_coef", allow_zero=True)
    _positive(c.dimension, "dimension")
    _positive(c.init_scale, "init_scale")
    _positive(c.max_norm, "max_norm")
    _positive(c.batch_size, "batch_size")
    _positive(c.num_epochs, "num_epochs", allow_zero=True)
    _positive(c.num_edge_chunks, "num_edge_chunks")
    _positive(c.max_edges_per_chunk, "max_edges_per_chunk")
    _positive(c.workers, "workers")
    _positive(c.num_batch_negs, "num_batch_negs", allow_zero=True)
    _positive(c.num_uniform_negs, "num_uniform_negs", allow_zero=True)
    _positive(c.margin, "margin", allow_zero=True)
    _positive(c.hogwild_delay, "hogwild_delay", allow_zero=True)
    if c.workers is not None and c.workers > 1024:
        raise ConfigError(f"workers: at most 1024 threads, got {c.workers}")
    if c.batch_size > 1 << 31:
        raise ConfigError(f"batch_size: at most {1 << 31}, got {c.batch_size}")
    _positive(c.partition_buffer_size, "partition_buffer_size")
    _positive(c.partition_buffer_memory_gb, "partition_buffer_memory_gb")
    _choice(c.partition_io, ("async", "sync"), "partition_io")
    _positive(c.lr, "lr", allow_zero=True)
    _positive(c.relation_lr, "relation_lr", allow_zero=True)
    _positive(c.checkpoint_preservation_interval, "checkpoint_preservation_interval")
    if not 0 <= c.eval_fraction < 1:
        raise ConfigError(f"eval_fraction: must be in [0, 1), got {c.eval_fraction}")
    if c.disable_lhs_negs and c.disable_rhs_negs:
        raise ConfigError("disable_rhs_negs: cannot disable negatives on both sides")
    if c.num_batch_negs > 0 and c.batch_size % c.num_batch_negs:
        raise ConfigError(f"batch_size: must be a multiple of num_batch_negs "
                          f"({c.num_batch_negs}), got {c.batch_size}")
    if c.num_batch_negs == 0 and c.num_uniform_negs == 0:
        raise ConfigError("num_uniform_negs: with num_batch_negs = 0 it must be positive "
                          "(PBG uses it as the chunk size)")
    if not c.edge_paths:
        raise ConfigError("edge_paths: must not be empty")
    if c.num_machines < 1:
        raise ConfigError(f"num_machines: must be at least 1, got {c.num_machines}")
    if c.num_partition_servers < -1:
        raise ConfigError(f"num_partition_servers: -1 (one per trainer), 0 (swap through the "
                          f"shared checkpoint_path) or a count, got {c.num_partition_servers}")
    for key in ("distributed_timeout", "distributed_lease", "param_sync_interval"):
        if not getattr(c, key) > 0:
            raise ConfigError(f"{key}: must be positive, got {getattr(c, key)}")
    _choice(c.shared_param_merge, ("mean", "sum"), "shared_param_merge")
    if c.num_gpus not in (0, 1):
        raise ConfigError(f"num_gpus: 0 (CPU) or 1 (the GPU trainer); several GPUs are not "
                          f"supported yet, got {c.num_gpus}")
    if c.num_gpus and c.num_machines > 1:
        raise ConfigError("num_gpus: distributed training (num_machines > 1) runs on CPUs only "
                          "so far; set num_gpus: 0")
    if c.matmul_precision not in ("fp32", "tf32", "bf16"):
        raise ConfigError(f"matmul_precision: one of fp32, tf32, bf16, got "
                          f"{c.matmul_precision!r}")
    if c.matmul_precision == "tf32" and not c.num_gpus:
        raise ConfigError("matmul_precision: 'tf32' is for the GPU trainer (num_gpus: 1): a "
                          "tensor-core format; on the CPU use 'fp32' or 'bf16'")
    # Keys pbg_fast accepts at PBG's defaults but cannot honour at other values yet.
    not_yet = {
        "bias": (c.bias, False, "the bias dimension"),
        "half_precision": (c.half_precision, False, "half-precision training"),
    }
    for key, (value, default, what) in not_yet.items():
        if value != default:
            raise ConfigError(f"{key}: {what} is not supported by pbg_fast yet; "
                              f"leave it at {default!r}")
    return c


def parse_config(raw: Dict[str, Any]) -> ConfigSchema:
    if not isinstance(raw, dict):
        raise ConfigError(f"config: expected a mapping of keys, got {type(raw).__name__}")
    return validate(_build(ConfigSchema, raw, ""))


# ---- loading and overrides ---------------------------------------------------------------------


def load_raw_config(path: str) -> Dict[str, Any]:
    """The raw dict of a PBG .py config (its get_torchbiggraph_config()), a .json or a .yaml."""
    if not os.path.isfile(path):
        raise ConfigError(f"{path}: no such config file")
    ext = os.path.splitext(path)[1].lower()
    if ext not in (".json", ".yaml", ".yml", ".py"):
        raise ConfigError(f"{path}: unknown config format {ext!r}; expected .py, .json or .yaml")
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise ConfigError(f"{path}: cannot read the config file: {e.strerror}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise ConfigError(f"{path}:{line}: not UTF-8 text (byte {e.start}: {e.reason}); "
                          f"save the config as UTF-8") from None
    if ext == ".json":
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as e:
            raise ConfigError(f"{path}:{e.lineno}: invalid JSON: {e.msg}") from None
    elif ext in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError:
            raise ConfigError(f"{path}: YAML configs need PyYAML (pip install pyyaml)") from None
        try:
            raw = yaml.safe_load(text)
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f"{path}:{mark.line + 1}" if mark is not None else path
            what = getattr(e, "problem", None) or str(e).splitlines()[0]
            raise ConfigError(f"{where}: invalid YAML: {what}") from None
    else:
        raw = _run_python_config(path, text)
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the config must be a mapping of keys, got "
                          f"{type(raw).__name__}")
    return raw


def _run_python_config(path: str, text: str) -> Dict[str, Any]:
    """Runs a PBG config module and returns get_torchbiggraph_config(); an exception in the
    user's code is reported at its line in the config file."""
    try:
        code = compile(text, path, "exec")
    except SyntaxError as e:
        raise ConfigError(f"{path}:{e.lineno}: invalid Python: {e.msg}") from None
    name = f"pbg_fast_config_{uuid.uuid4().hex}"
    spec = importlib.util.spec_from_loader(name, loader=None, origin=path)
    module = importlib.util.module_from_spec(spec)
    module.__file__ = path
    sys.modules[name] = module
    try:
        exec(code, module.__dict__)  # noqa: S102 - a PBG config is Python by design
        fn = getattr(module, "get_torchbiggraph_config", None)
        if not callable(fn):
            raise ConfigError(f"{path}: defines no get_torchbiggraph_config()")
        return fn()
    except ConfigError:
        raise
    except Exception as e:  # noqa: BLE001 - the user's code failed: say where
        tb = e.__traceback__
        line = None
        while tb is not None:
            if tb.tb_frame.f_code.co_filename == path:
                line = tb.tb_lineno
            tb = tb.tb_next
        where = f"{path}:{line}" if line else path
        raise ConfigError(f"{where}: the config raised {type(e).__name__}: {e}") from None
    finally:
        sys.modules.pop(name, None)


def _override_value(value: str, tp, item: str):
    """The raw value of `-p key=value` for a field of type `tp`: lists comma-separated (as PBG's
    -p), JSON for lists / mappings / records written as JSON, null for an unset optional."""
    origin = typing.get_origin(tp)
    if origin is typing.Union:
        if value in ("null", "None"):
            return None
        tp = [a for a in typing.get_args(tp) if a is not type(None)][0]
        origin = typing.get_origin(tp)
    structured = origin in (list, List, dict, Dict) or dataclasses.is_dataclass(tp)
    if structured and value[:1] in ("[", "{"):
        try:
            return json.loads(value)
        except json.JSONDecodeError as e:
            raise ConfigError(f"-p {item}: invalid JSON value: {e.msg}") from None
    if origin in (list, List):
        return value.split(",") if value else []
    if structured:
        raise ConfigError(f"-p {item}: this key holds a mapping; give it as JSON "
                          f"({{...}}) or set its keys one by one (key.subkey=value)")
    return value


def apply_overrides(raw: Dict[str, Any], overrides: Optional[List[str]]) -> Dict[str, Any]:
    """``key=value`` with dotted paths through every kind of field: a record's keys
    (``lr``), a dict's entries (``entities.user.num_partitions``, creating a new entry when
    missing), a list's indices (``relations.0.operator``). Lists are comma-separated
    (``edge_paths=a,b``) or JSON; a mapping is JSON; ``null`` unsets an optional key."""
    raw = json.loads(json.dumps(raw, default=lambda o: getattr(o, "value", str(o))))
    for item in overrides or ():
        key, sep, value = item.partition("=")
        if not sep or not key or "" in key.split("."):
            raise ConfigError(f"-p {item}: expected key=value, with a dotted key path")
        path = key.split(".")
        target, tp = raw, ConfigSchema
        for i, part in enumerate(path):
            here = ".".join(path[: i + 1])
            last = i == len(path) - 1
            origin = typing.get_origin(tp)
            if dataclasses.is_dataclass(tp):
                hints = typing.get_type_hints(tp)
                if part not in hints:
                    raise ConfigError(f"-p {item}: {here}: unknown key; expected one of "
                                      f"{sorted(hints)}")
                tp = hints[part]
                if typing.get_origin(tp) is typing.Union and not last:  # Optional[record]
                    tp = [a for a in typing.get_args(tp) if a is not type(None)][0]
            elif origin in (list, List):
                try:
                    idx = int(part)
                    target[idx]
                except (ValueError, IndexError):
                    raise ConfigError(f"-p {item}: {'.'.join(path[:i]) or key} has no index "
                                      f"{part} (it has {len(target)} entries)") from None
                part, tp = idx, typing.get_args(tp)[0]
            elif origin in (dict, Dict):
                tp = typing.get_args(tp)[1]
            else:
                raise ConfigError(f"-p {item}: {'.'.join(path[:i])} is a "
                                  f"{_type_name(tp)}, it has no key {part!r}")
            if last:
                target[part] = _override_value(value, tp, item)
            else:
                child = target[part] if isinstance(target, list) else target.get(part)
                want = list if typing.get_origin(tp) in (list, List) else dict
                container = (dataclasses.is_dataclass(tp) or
                             typing.get_origin(tp) in (list, List, dict, Dict))
                if child is None or not container:
                    # Unset: the path creates it. A scalar key: the next step says its type.
                    child = target[part] = want()
                elif not isinstance(child, want):  # e.g. set to the wrong kind by an override
                    raise ConfigError(f"-p {item}: {here} is {json.dumps(child)[:60]}, not a "
                                      f"{'list' if want is list else 'mapping'}: it has no "
                                      f"{'index' if want is list else 'key'} "
                                      f"{path[i + 1]!r}")
                target = child
    return raw


def load_config(path: str, overrides: Optional[List[str]] = None) -> ConfigSchema:
    return parse_config(apply_overrides(load_raw_config(path), overrides))


def check_matches_checkpoint(config: ConfigSchema, saved: Dict[str, Any], source: str) -> None:
    """Refuses a config that would misread a checkpoint written with `saved` (its config as a
    raw dict, ours or PyTorch-BigGraph's): the model's shape and meaning must be the same."""
    def fail(key, ours, theirs):
        raise ConfigError(f"{key}: the config has {ours!r} but {source} was written with "
                          f"{theirs!r}; use the checkpoint's value, or a new checkpoint_path")

    def value(v):
        return getattr(v, "value", v)  # PBG enums

    for key in ("dimension", "comparator", "dynamic_relations", "global_emb", "bias"):
        if key in saved and value(saved[key]) != getattr(config, key):
            fail(key, getattr(config, key), value(saved[key]))
    ents = saved.get("entities")
    if isinstance(ents, dict):
        if sorted(ents) != sorted(config.entities):
            fail("entities", sorted(config.entities), sorted(ents))
        for name, e in ents.items():
            if isinstance(e, dict) and "num_partitions" in e and \
                    e["num_partitions"] != config.entities[name].num_partitions:
                fail(f"entities.{name}.num_partitions", config.entities[name].num_partitions,
                     e["num_partitions"])
    rels = saved.get("relations")
    if isinstance(rels, list):
        if len(rels) != len(config.relations):
            fail("relations", f"{len(config.relations)} relations", f"{len(rels)} relations")
        for i, (r, theirs) in enumerate(zip(config.relations, rels)):
            for key in ("operator", "lhs", "rhs"):
                if isinstance(theirs, dict) and key in theirs and \
                        value(theirs[key]) != getattr(r, key):
                    fail(f"relations.{i}.{key}", getattr(r, key), value(theirs[key]))


def schema_help() -> str:
    """The schema with help text, for `pbg-fast config`."""
    lines = []
    for cls, prefix in ((ConfigSchema, ""), (EntitySchema, "entities[*]."),
                        (RelationSchema, "relations[*].")):
        hints = typing.get_type_hints(cls)
        for f in fields(cls):
            default = "required" if f.default is dataclasses.MISSING else f"default {f.default!r}"
            lines.append(f"{prefix}{f.name} ({_type_name(hints[f.name])}, {default}): "
                         f"{f.metadata.get('help', '')}")
    return "\n".join(lines)
