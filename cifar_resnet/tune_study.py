"""A tuning study's records: its spec (``STUDY/tune.json``), where Optuna keeps its trials
(the storage), its sampler and pruner, and what it found (``STUDY/best.toml``, the table).

    STUDY/tune.json          the spec: data, recipe, search space, sampler, pruner, storage
    STUDY/study.db           the default storage (SQLite)
    STUDY/trials/NNNN/       trial NNNN: a normal run folder; beside it NNNN.trial.toml (its
                             recipe), NNNN.trial.json (its number and sampled values) and
                             NNNN.train.log
    STUDY/best.toml          the best trial's recipe (``train --config`` reads it)
    STUDY/report.md          ``cifar-resnet report STUDY``
"""

from __future__ import annotations

import dataclasses
import json
import os
import warnings
from pathlib import Path
from typing import Any

from .config import TrainConfig, apply_overrides, config_to_toml
from .errors import OutputError, UsageError, require
from .files import write_text_atomic
from .tune_space import Param, space_from_dict

SPEC_VERSION = 1
SAMPLERS = ("tpe", "random", "grid")
PRUNERS = ("auto", "median", "halving", "none")
CONNECT_TIMEOUT = 5  # seconds to reach a database server before giving up
SQLITE_TIMEOUT = 60  # seconds a worker waits for another's write to the SQLite file
# The spec's fields that a continued study may change; the rest must match.
CHANGEABLE = ("trials", "jobs", "final_seeds")
# Where each machine finds things: machines joining one study may differ in these.
MACHINE_LOCAL = ("storage", "data", "data_dir", "cache_dir")


def optuna():
    """Optuna, quiet: what its log says of trials (a failed one with a traceback) and its
    experimental-feature warnings are ours to say, in one line each."""
    module = require("optuna", "tune")
    module.logging.set_verbosity(module.logging.ERROR)
    warnings.filterwarnings("ignore", category=module.exceptions.ExperimentalWarning)
    return module


def spec_path(study_dir: str | os.PathLike) -> Path:
    return Path(study_dir) / "tune.json"


def is_study(path: str | os.PathLike) -> bool:
    return spec_path(path).is_file()


def read_spec(study_dir: str | os.PathLike) -> dict[str, Any]:
    path = spec_path(study_dir)
    try:
        spec = json.loads(path.read_text())
    except FileNotFoundError:
        raise UsageError(
            f"{study_dir} holds no study (no tune.json); start one with tune"
        ) from None
    except (OSError, ValueError) as e:
        raise UsageError(f"cannot read {path}: {e}; it is damaged") from None
    if not isinstance(spec, dict) or spec.get("version") != SPEC_VERSION:
        raise UsageError(f"{path} is not a study spec of this version of cifar-resnet")
    return spec


def write_spec(study_dir: Path, spec: dict[str, Any]) -> None:
    write_text_atomic(spec_path(study_dir), json.dumps(spec, indent=2) + "\n")


def same_study(old: dict[str, Any], new: dict[str, Any], skip: tuple[str, ...] = ()) -> list[str]:
    """The spec fields in which ``new`` differs from the recorded ``old`` (the changeable ones
    and ``skip`` aside)."""
    skip = (*CHANGEABLE, *skip)
    return sorted(k for k in set(old) | set(new) if k not in skip and old.get(k) != new.get(k))


def params_of(spec: dict[str, Any]) -> list[Param]:
    return space_from_dict(spec["space"])


def base_config(spec: dict[str, Any]) -> TrainConfig:
    return apply_overrides(TrainConfig(), spec["recipe"], "tune.json")


def trial_config(spec: dict[str, Any], values: dict[str, Any]) -> TrainConfig:
    """A trial's recipe: the study's recipe, the sampled values, the validation split, and a
    test split cut to one image per class (trials are judged on validation, never on test)."""
    changes = {**values, "val_split": spec["val_split"], "limit_test": spec["test_images"]}
    return dataclasses.replace(base_config(spec), **changes).validate()


# --------------------------------------------------------------------------------------------
# Storage, sampler, pruner


def _hide_password(url: str) -> str:
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # not a URL SQLAlchemy parses: show it as given
        return url


def storage_url(storage: str | None) -> str | None:
    """``--storage`` as recorded: an RDB URL, an absolute journal-file path, or None for the
    default, the SQLite file inside the study folder (wherever the folder is moved)."""
    if not storage:
        return None
    if "://" in storage:
        return storage
    return str(Path(storage).expanduser().absolute())


def study_storage(spec: dict[str, Any], study_dir: str | os.PathLike) -> str:
    """Where the study's trials are: its ``--storage``, or STUDY/study.db."""
    return spec["storage"] or "sqlite:///" + str((Path(study_dir) / "study.db").absolute())


def open_storage(url: str, heartbeat: int = 0, retry_failed: int = 0):
    """Optuna's storage for ``url``: RDBStorage for a database URL (with a heartbeat every
    ``heartbeat`` seconds, so that a killed worker's trial is marked failed, and retried
    ``retry_failed`` times), JournalStorage for a file path. One line, within seconds, when
    it cannot be reached."""
    op = optuna()
    if "://" not in url:
        return _journal(op, Path(url))
    kw: dict[str, Any] = {}
    if heartbeat:
        retry = op.storages.RetryHeartbeatStaleTrialCallback(max_retry=retry_failed)
        kw = dict(
            heartbeat_interval=heartbeat,
            heartbeat_stale_trial_callback=retry if retry_failed else None,
        )
    connect = {"timeout": SQLITE_TIMEOUT} if url.startswith("sqlite") else {}
    if url.startswith(("postgresql", "mysql")):
        connect = {"connect_timeout": CONNECT_TIMEOUT}
    shown = _hide_password(url)
    try:
        return op.storages.RDBStorage(
            url, engine_kwargs={"connect_args": connect, "pool_pre_ping": True}, **kw
        )
    except ImportError as e:
        driver = getattr(e.__cause__, "name", None) or e.name or "for it"
        raise UsageError(
            f"--storage {shown} needs the database driver {driver}; install it (postgresql://: "
            "pip install 'psycopg[binary]', mysql://: pip install mysqlclient)"
        ) from None
    except Exception as e:  # SQLAlchemy's errors: a bad URL, a server that does not answer
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        if type(e).__name__ in ("ArgumentError", "NoSuchModuleError"):
            raise UsageError(
                f"--storage {shown} is not a database URL Optuna takes ({first}); give "
                "postgresql://..., mysql://..., sqlite:///FILE or a journal file path"
            ) from None
        raise OutputError(
            f"cannot reach the study's storage {shown} ({first}); check the URL and that the "
            "database server runs and is reachable from this machine"
        ) from None


def _journal(op, path: Path):
    if not path.parent.is_dir():
        raise OutputError(
            f"cannot open the journal file {path}: its folder does not exist; create it on "
            "the shared file system, or give another --storage"
        )
    try:
        backend = op.storages.journal.JournalFileBackend(str(path))
        return op.storages.journal.JournalStorage(backend)
    except OSError as e:
        raise OutputError(f"cannot open the journal file {path}: {e.strerror or e}") from None


def has_heartbeat(storage) -> bool:
    """Whether a killed worker's trial is marked failed (Optuna's journal storage has no
    heartbeat: there it stays "running")."""
    rdb = optuna().storages.RDBStorage
    return isinstance(storage, rdb) and storage.heartbeat_interval is not None


def make_sampler(spec: dict[str, Any]):
    op, name = optuna(), spec["sampler"]
    if name == "random":
        return op.samplers.RandomSampler()
    if name == "grid":
        return op.samplers.GridSampler({p.name: list(p.choices) for p in params_of(spec)})
    # constant_liar: parallel workers do not all sample next to the same promising point.
    return op.samplers.TPESampler(constant_liar=True)


def make_pruner(spec: dict[str, Any]):
    op, name = optuna(), spec["pruner"]
    if name == "median":  # prunes below the median of the finished trials at that epoch
        return op.pruners.MedianPruner(n_startup_trials=spec.get("pruner_startup", 5))
    if name == "halving":
        return op.pruners.SuccessiveHalvingPruner()
    return op.pruners.NopPruner()


def check_choices(sampler: str, pruner: str, params: list[Param], config: TrainConfig) -> str:
    """Refuse a sampler or pruner the search cannot use; returns the pruner ("auto": median
    where the recipe evaluates every epoch or few, none where only at the end)."""
    if sampler not in SAMPLERS:
        raise UsageError(f"unknown sampler {sampler!r}; valid samplers: {', '.join(SAMPLERS)}")
    if pruner not in PRUNERS:
        raise UsageError(f"unknown pruner {pruner!r}; valid pruners: {', '.join(PRUNERS)}")
    ranges = [p.name for p in params if not p.choices]
    if sampler == "grid" and ranges:
        raise UsageError(
            f"the grid sampler takes choices only (NAME=A|B|C); {', '.join(ranges)} is a "
            "range: give its values, or use --sampler tpe or random"
        )
    if pruner == "auto":
        return "median" if config.eval_every else "none"
    if pruner != "none" and not config.eval_every:
        raise UsageError(
            f"--pruner {pruner} judges a trial after each evaluated epoch, but this recipe "
            "evaluates only after its last epoch (eval_every = 0, as the fast preset); add "
            "--eval-every 1, or --pruner none"
        )
    return pruner


def grid_size(params: list[Param]) -> int:
    size = 1
    for p in params:
        size *= len(p.choices)
    return size


def load_study(spec: dict[str, Any], storage):
    """The study in ``storage`` (created if new), with the spec's sampler and pruner."""
    op = optuna()
    return op.create_study(
        study_name=spec["study_name"],
        storage=storage,
        sampler=make_sampler(spec),
        pruner=make_pruner(spec),
        direction="maximize",
        load_if_exists=True,
    )


def join_study(study, spec: dict[str, Any]) -> None:
    """Record the spec in a new study; refuse to join one that searches something else."""
    mine = {k: v for k, v in spec.items() if k not in (*CHANGEABLE, *MACHINE_LOCAL)}
    theirs = study.user_attrs.get("cifar_resnet")
    if theirs is None:
        study.set_user_attr("cifar_resnet", mine)
        return
    differ = same_study(theirs, mine, MACHINE_LOCAL)
    if differ:
        raise UsageError(
            f"study {spec['study_name']!r} in that storage searches another recipe or space "
            f"({', '.join(differ)} differ); give the same flags, or another --study-name"
        )


# --------------------------------------------------------------------------------------------
# Counting, results


def counts(study) -> dict[str, int]:
    """Trials by state: complete, pruned, running, failed, waiting."""
    found: dict[str, int] = {}
    for t in study.get_trials(deepcopy=False):
        name = t.state.name.lower()
        found[name] = found.get(name, 0) + 1
    return found


def done(study) -> int:
    """Trials that count towards the study's total: finished or pruned."""
    c = counts(study)
    return c.get("complete", 0) + c.get("pruned", 0)


def best_recipe(spec: dict[str, Any], trial) -> str:
    """The best trial's recipe as TOML, with where it came from in comments."""
    config = dataclasses.replace(
        trial_config(spec, trial.params), limit_test=base_config(spec).limit_test
    )
    head = [
        f"# cifar-resnet tune: the best trial of study {spec['study_name']!r}: trial "
        f"{trial.number}, validation accuracy {trial.value:.2f}%",
        f"# sampled: {', '.join(f'{k} = {v!r}' for k, v in trial.params.items())}",
        f"# trained on the training images less a {spec['val_split']}-image validation split;"
        " `train --config best.toml --val-split 0` trains on all of them",
    ]
    return "\n".join(head) + "\n" + config_to_toml(spec["preset"], config)


def write_best(study_dir: Path, spec: dict[str, Any], study) -> Path | None:
    complete = [t for t in study.get_trials(deepcopy=False) if t.state.name == "COMPLETE"]
    if not complete:
        return None
    best = max(complete, key=lambda t: t.value)
    return write_text_atomic(study_dir / "best.toml", best_recipe(spec, best))


def top_table(study, spec: dict[str, Any], limit: int = 10) -> list[str]:
    """The best finished trials, best first, and the study's counts."""
    names = [p.name for p in params_of(spec)]
    trials = [t for t in study.get_trials(deepcopy=False) if t.state.name == "COMPLETE"]
    trials.sort(key=lambda t: -t.value)
    c = counts(study)
    lines = [
        f"study {spec['study_name']!r}: {c.get('complete', 0)} finished, "
        f"{c.get('pruned', 0)} pruned, {c.get('fail', 0)} failed, {c.get('running', 0)} "
        f"running (of {spec['trials']}); judged on {spec['val_split']} validation images",
        "| rank | trial | val acc % | " + " | ".join(names) + " | epochs | seconds |",
        "|---" * (len(names) + 5) + "|",
    ]
    for rank, t in enumerate(trials[:limit], 1):
        values = [_fmt(t.params.get(n)) for n in names]
        attrs = t.user_attrs
        lines.append(
            f"| {rank} | {t.number} | {t.value:.2f} | " + " | ".join(values) + " | "
            f"{attrs.get('epochs', '')} | {attrs.get('seconds', 0):.0f} |"
        )
    return lines


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)
