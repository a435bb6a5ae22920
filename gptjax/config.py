"""Config checks shared by every experiment: unknown fields, bad values, saving.

Configs are `ml_collections.ConfigDict`s built by `configs/<experiment>.py`.
A run starts only after its config passes `validate`, so a typo fails in the
first second with the field's name rather than an hour into training.
"""

import json
import os
from typing import Any

import ml_collections

from gptjax import files


def unknown_fields(
  config: ml_collections.ConfigDict, reference: ml_collections.ConfigDict, prefix: str = "config"
) -> list[str]:
  """Dotted names present in `config` but absent from `reference`."""
  out = []
  for key in config.keys():
    name = f"{prefix}.{key}"
    if key not in reference:
      out.append(name)
    elif (
      isinstance(config[key], ml_collections.ConfigDict)
      and isinstance(reference[key], ml_collections.ConfigDict)
      and key not in _FREE_FORM
    ):
      out.extend(unknown_fields(config[key], reference[key], name))
  return out


_FREE_FORM = {"mixture"}  # dict-valued fields whose keys are data, not schema


def check_fields(config: ml_collections.ConfigDict, reference: ml_collections.ConfigDict) -> None:
  bad = unknown_fields(config, reference)
  if bad:
    raise ValueError(
      f"Unknown config field(s): {', '.join(bad)}. Check the spelling; "
      f"allowed at that level: {_siblings(reference, bad[0])}"
    )


def _siblings(reference: ml_collections.ConfigDict, dotted: str) -> list[str]:
  node = reference
  for part in dotted.split(".")[1:-1]:
    node = node[part]
  return sorted(node.keys())


def require(condition: bool, field: str, value: Any, allowed: str) -> None:
  """Raises ValueError naming the field, its value and what is allowed."""
  if not condition:
    raise ValueError(f"config.{field}={value!r} is invalid; allowed: {allowed}")


def validate_train(t: ml_collections.ConfigDict) -> None:
  for name in (
    "steps",
    "batch_size",
    "grad_accum",
    "log_every",
    "eval_every",
    "ckpt_every",
    "keep_checkpoints",
  ):
    require(
      isinstance(t[name], int) and t[name] > 0, f"train.{name}", t[name], "a positive integer"
    )
  require(t.warmup_steps >= 0, "train.warmup_steps", t.warmup_steps, ">= 0")
  require(t.lr > 0, "train.lr", t.lr, "> 0")
  require(0 <= t.min_lr_ratio <= 1, "train.min_lr_ratio", t.min_lr_ratio, "[0, 1]")
  require(t.clip_norm > 0, "train.clip_norm", t.clip_norm, "> 0")
  require(
    t.batch_size % t.grad_accum == 0,
    "train.grad_accum",
    t.grad_accum,
    f"a divisor of train.batch_size={t.batch_size}",
  )


def copy(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """A deep, unlocked copy: editing it never changes `config` (nor its references)."""
  return ml_collections.ConfigDict(config.to_dict())


def save(config: ml_collections.ConfigDict, workdir: str, name: str = "config.json") -> str:
  """Writes the resolved config as JSON into the workdir (atomically); returns the path."""
  path = os.path.join(workdir, name)
  files.write_text(path, config.to_json(indent=2, sort_keys=True))
  return path


def load(path: str) -> ml_collections.ConfigDict:
  with open(path) as f:
    return ml_collections.ConfigDict(json.load(f))


# Fields a resumed run may change: how long it runs, how often it logs, evaluates
# and saves, and where it runs (the mesh). Everything else decides what is
# computed, so changing it would silently mix two experiments in one workdir.
SAFE_TO_CHANGE = (
  "train.steps",
  "train.log_every",
  "train.eval_every",
  "train.ckpt_every",
  "train.keep_checkpoints",
  "train.measure_peak",
  "ppo.iterations",
  "mesh.*",
)


def changed_fields(old: dict, new: dict, prefix: str = "") -> list[str]:
  """Dotted names whose values differ between two config dicts (added and removed too)."""
  out = []
  for key in sorted(set(old) | set(new)):
    name = f"{prefix}{key}"
    a, b = old.get(key, _MISSING), new.get(key, _MISSING)
    if isinstance(a, dict) and isinstance(b, dict) and key not in _FREE_FORM:
      out.extend(changed_fields(a, b, name + "."))
    elif _json(a) != _json(b):
      out.append(name)
  return out


_MISSING = "<absent>"


def _json(v) -> str:
  return json.dumps(v, sort_keys=True, default=str)  # tuples and lists alike


def _safe(name: str) -> bool:
  return any(name == s or (s.endswith(".*") and name.startswith(s[:-1])) for s in SAFE_TO_CHANGE)


def check_unchanged(config: ml_collections.ConfigDict, workdir: str) -> None:
  """Raises ValueError naming the fields that differ from the config.json a previous
  run left in `workdir`, except those in SAFE_TO_CHANGE. No config.json: nothing to check."""
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    return
  with open(path) as f:
    old = json.load(f)
  new = json.loads(config.to_json(sort_keys=True))
  unsafe = [n for n in changed_fields(old, new) if not _safe(n)]
  if unsafe:
    shown = ", ".join(f"config.{n} ({_get(old, n)} -> {_get(new, n)})" for n in unsafe[:6])
    more = f" and {len(unsafe) - 6} more" if len(unsafe) > 6 else ""
    raise ValueError(
      f"{workdir} holds a run with another config: {shown}{more}. Resuming it would mix "
      "two experiments; use another --workdir, or restore those values. Safe to change "
      f"on resume: {', '.join(SAFE_TO_CHANGE)}."
    )


def _get(d: dict, dotted: str):
  for part in dotted.split("."):
    if not isinstance(d, dict) or part not in d:
      return _MISSING
    d = d[part]
  return d
