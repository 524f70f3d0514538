"""Checking what a checkpoint holds against what this program would have written, before any
of it is used: every tensor against a template (a fresh model's, optimizer's or RNG's), and
the run state's plain fields against their types. ``checkpoint.py`` calls these on every load
path; a mismatch is a one-line CheckpointError.

A tensor read from a file can claim any shape, dtype, strides and storage: a momentum buffer
of the wrong shape reaches the fused SGD kernel unchecked (memory corruption), a stride-0 or
out-of-bounds view reads past its storage. So a tensor is used only when it has the
template's shape and dtype, a plain strided layout (contiguous, or channels-last for 4-d),
strides that stay inside its storage, and, where the value matters, only finite values.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from .errors import CheckpointError, DivergedError


def _in_storage(t: torch.Tensor) -> bool:
    if any(s < 0 for s in t.stride()) or t.storage_offset() < 0:
        return False
    if t.numel() == 0:
        return True
    extent = 1 + sum((n - 1) * s for n, s in zip(t.shape, t.stride()))
    return (t.storage_offset() + extent) * t.element_size() <= t.untyped_storage().nbytes()


def tensor_problem(t: Any, like: torch.Tensor, *, exact_dtype: bool = True) -> str | None:
    """Why ``t`` cannot stand where ``like`` stands (None when it can)."""
    if not isinstance(t, torch.Tensor):
        return f"a {type(t).__name__}, not a tensor"
    if t.layout != torch.strided or t.is_quantized or t.is_conj() or t.is_neg():
        return f"a {t.layout} tensor"
    if tuple(t.shape) != tuple(like.shape):
        return f"shape {tuple(t.shape)}, expected {tuple(like.shape)}"
    dtype_ok = t.dtype == like.dtype or (
        not exact_dtype and t.is_floating_point() and like.is_floating_point()
    )
    if not dtype_ok:
        return f"dtype {t.dtype}, expected {like.dtype}"
    channels_last = t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last)
    if not (t.is_contiguous() or channels_last) or not _in_storage(t):
        return f"strides {t.stride()} that do not fit a plain tensor of its storage"
    if t.is_floating_point() and not bool(torch.isfinite(t).all()):
        return "non-finite values (NaN or inf)"
    return None


def check_tensors(
    state: Any, template: dict[str, torch.Tensor], what: str, *, exact_dtype: bool = True
) -> None:
    """Every tensor of ``state`` whose key ``template`` has fits it (missing and extra keys
    are left to ``load_state_dict``'s strict check)."""
    if not isinstance(state, dict):
        raise CheckpointError(f"{what} is a {type(state).__name__}, not a dict of tensors")
    for key, like in template.items():
        if key in state:
            why = tensor_problem(state[key], like, exact_dtype=exact_dtype)
            if why:
                raise CheckpointError(f"{what} does not fit the model ({key} has {why})")


def check_optimizer(state: Any, optimizer: torch.optim.Optimizer, what: str) -> None:
    """The saved optimizer state against ``optimizer``'s parameters: per-parameter tensors
    (momentum buffers) of each parameter's shape and dtype, scalar steps, scalar group
    values (the lr tensors)."""
    if not isinstance(state, dict) or not isinstance(state.get("state"), dict):
        raise CheckpointError(f"{what} is not an optimizer state (no 'state' dict)")
    fresh = optimizer.state_dict()
    params = [p for g in optimizer.param_groups for p in g["params"]]
    ids = [i for g in fresh["param_groups"] for i in g["params"]]
    by_id = dict(zip(ids, params))
    for index, entry in state["state"].items():
        if index not in by_id or not isinstance(entry, dict):
            raise CheckpointError(f"{what} holds state for {index!r:.20}, not a model parameter")
        _check_param_state(entry, by_id[index].detach(), f"{what}: parameter {index}")
    _check_groups(state.get("param_groups"), fresh["param_groups"], what)


def _check_param_state(entry: dict[str, Any], param: torch.Tensor, what: str) -> None:
    for key, value in entry.items():
        if value is None or (key == "step" and _number(value)):
            continue
        like = torch.zeros(()) if key == "step" else param
        why = tensor_problem(value, like, exact_dtype=key != "step")
        if why:
            raise CheckpointError(f"{what}'s {key} has {why}")


def _check_groups(groups: Any, fresh: list[dict[str, Any]], what: str) -> None:
    if not isinstance(groups, list) or len(groups) != len(fresh):
        raise CheckpointError(f"{what} does not have the model's {len(fresh)} parameter groups")
    for group, like in zip(groups, fresh):
        if not isinstance(group, dict):
            raise CheckpointError(f"{what} has a parameter group that is not a dict")
        for key, value in group.items():
            if isinstance(like.get(key), torch.Tensor) or isinstance(value, torch.Tensor):
                ref = like.get(key)
                ref = ref if isinstance(ref, torch.Tensor) else torch.zeros(())
                why = tensor_problem(value, ref)
                if why:
                    raise CheckpointError(f"{what}'s group value {key!r} has {why}")


def check_rng(rng: dict[str, Any], what: str) -> None:
    """The torch (and CUDA) generator states have the size and dtype this torch writes."""
    why = tensor_problem(rng.get("torch"), torch.get_rng_state())
    if why:
        raise CheckpointError(f"{what}'s torch RNG state has {why}; it cannot be resumed")
    if "cuda" in rng and torch.cuda.is_available():
        cuda = rng["cuda"]
        here = torch.cuda.get_rng_state_all()
        if not isinstance(cuda, list | tuple) or len(cuda) > len(here):
            raise CheckpointError(f"{what}'s CUDA RNG state does not fit this machine's GPUs")
        for t, like in zip(cuda, here):
            why = tensor_problem(t, like)
            if why:
                raise CheckpointError(f"{what}'s CUDA RNG state has {why}")


def _count(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def _number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def _rows(v: Any) -> bool:
    return isinstance(v, list) and all(isinstance(r, dict) for r in v)


def _sums(v: Any) -> bool:
    return isinstance(v, list) and len(v) == 3 and all(_number(x) for x in v)


# A run state's fields (run.RunState) and what each must be.
STATE_FIELDS = {
    "epoch": (_count, "a whole number >= 0"),
    "step": (_count, "a whole number >= 0"),
    "epoch_step": (_count, "a whole number >= 0"),
    "epoch_sums": (_sums, "a list of 3 numbers"),
    "epoch_seconds": (_number, "a number"),
    "best_val": (_number, "a number"),
    "wall_seconds": (_number, "a number"),
    "metrics": (_rows, "a list of rows"),
    "planned_steps": (_count, "a whole number >= 0"),
    "target_seconds": (_number, "a number"),
    "log_rows": (_rows, "a list of rows"),
}


def check_state(state: Any, what: str) -> None:
    """A checkpoint's run state: only known fields, each of its type."""
    if not isinstance(state, dict):
        raise CheckpointError(f"{what}'s run state is not a dict")
    for key, value in state.items():
        if key not in STATE_FIELDS:
            raise CheckpointError(f"{what}'s run state has unknown fields ({key!r:.40})")
        ok, expected = STATE_FIELDS[key]
        if not ok(value):
            raise CheckpointError(
                f"{what}'s run state field {key!r} is {value!r:.40}, expected {expected}"
            )


def _tensors(ckpt: dict[str, Any]):
    """(where, tensor) of every tensor a checkpoint's weights and optimizer state hold."""
    for part in ("model", "ema", "lookahead"):
        for key, t in (ckpt.get(part) or {}).items():
            yield f"{part} {key}", t
    for index, entry in (ckpt.get("optimizer") or {}).get("state", {}).items():
        for key, t in entry.items():
            yield f"optimizer {index} {key}", t


def check_finite(ckpt: dict[str, Any]) -> None:
    """DivergedError when a weight, buffer or optimizer tensor is NaN or infinite."""
    for where, t in _tensors(ckpt):
        if isinstance(t, torch.Tensor) and t.is_floating_point() and not t.isfinite().all():
            raise DivergedError(
                f"the weights became non-finite ({where}); nothing was saved, the last "
                "checkpoint holds the last finite weights: lower --lr or add warm-up"
            )


def validate_resume(
    ckpt: dict[str, Any], model: torch.nn.Module, optimizer: torch.optim.Optimizer
) -> None:
    """Everything a resume reads from ``ckpt`` against a fresh ``model`` and ``optimizer``
    (before any of it is loaded): the weights, the optimizer state (momentum buffers of each
    parameter's shape), the lookahead's slow weights, the EMA, the RNG states and the run
    state; a mismatch is a one-line CheckpointError."""
    template = model.state_dict()
    check_tensors(ckpt["model"], template, "the checkpoint's model", exact_dtype=False)
    check_optimizer(ckpt["optimizer"], optimizer, "the checkpoint's optimizer state")
    if "lookahead" in ckpt:
        slow = [t for t in template.values() if t.is_floating_point()]
        look = ckpt["lookahead"]
        if not isinstance(look, dict) or set(look) != {str(i) for i in range(len(slow))}:
            raise CheckpointError("the checkpoint's lookahead weights do not match the model")
        check_tensors(look, {str(i): t for i, t in enumerate(slow)}, "the checkpoint's lookahead")
    if "ema" in ckpt:
        check_tensors(ckpt["ema"], template, "the checkpoint's EMA", exact_dtype=False)
        n = ckpt.get("ema_n_averaged")
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise CheckpointError(f"the checkpoint's ema_n_averaged is {n!r:.40}, not a count")
    check_rng(ckpt["rng"], "the checkpoint")
    check_state(ckpt["state"], "the checkpoint")


def check_normalisation(mean: Any, std: Any, where: str) -> None:
    """mean and std: 3 finite numbers each, std positive (else a one-line CheckpointError)."""
    lists = isinstance(mean, list | tuple) and isinstance(std, list | tuple)
    values = [*mean, *std] if lists else []
    numbers = all(isinstance(v, int | float) and not isinstance(v, bool) for v in values)
    if len(values) != 6 or len(mean) != 3 or not numbers or not all(map(math.isfinite, values)):
        raise CheckpointError(f"{where} has a damaged normalisation (mean/std of 3 channels)")
    if min(std) <= 0:
        raise CheckpointError(f"{where} has a std of {list(std)}: every channel's must be > 0")
