"""Typed run configuration: defaults < ``--config run.toml`` < command-line flags, validated once.

Every field is a flag of ``sb-accel train`` (``selectivity`` -> ``--selectivity``); a TOML file may
set any of them at the top level. Every value is checked against its field's type (an ``int``
field takes only integers, a ``bool`` field only ``true``/``false``, a ``float`` field integers or
floats, an ``Optional`` field also ``None``, a list field is checked per element) and then against
its range; ``inf`` and ``nan`` are refused in every ``float`` field. Invalid values raise
:class:`ConfigError` naming the key and the fix; unknown keys are named with the closest known one.
"""
from __future__ import annotations

import dataclasses
import difflib
import json
import math
import typing
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple, Union

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: the same parser as the tomli package (a dependency there)
    import tomli as tomllib  # type: ignore[no-redef]

from .strategy_options import DEFAULTS as STRATEGY_DEFAULTS

__all__ = ["TrainConfig", "ConfigError", "CHOICES", "choices", "CONFIG_NAME", "CHECKPOINT_NAME", "check_value",
           "check_keys", "load_values"]

CONFIG_NAME = "config.json"  # the resolved config the Trainer saves in every run directory
CHECKPOINT_NAME = "checkpoint.pt"  # the run's last good state (written atomically every epoch)

# The fields that take one of a few words (validated here; offered by the shell completion), besides
# ``strategy``, which takes a registered strategy (:func:`choices`).
CHOICES: Dict[str, Tuple[str, ...]] = {
    "history_mode": ("batch", "sequential"), "end_of_epoch": ("carry", "partial", "drop"),
    "lr_schedule": ("multistep", "cosine", "linear", "constant"), "engine_fallback": ("raise", "torch"),
    "ddp_history": ("global", "local"), "amp": ("off", "bf16", "fp16"), "augment": ("preset", "none"),
}


def choices(name: str) -> Tuple[str, ...]:
    """The words the field ``name`` takes (empty: any value). The strategies are the registry's
    (``@register_strategy``): asking for them loads the policies, so ``--help`` does not."""
    if name == "strategy":
        from .selection import list_strategies

        return tuple(list_strategies())
    return CHOICES.get(name, ())


class ConfigError(ValueError):
    """A configuration value is invalid; the message names the field and what is allowed."""


@dataclass
class TrainConfig:
    # data
    dataset: str = "cifar10"
    data_dir: Optional[str] = None
    download: bool = False
    train_subset: int = 0          # 0: all training examples
    test_subset: int = 0           # 0: the whole test set
    augment: str = "preset"        # "preset" (paper's per-dataset setting) or "none"
    # model
    model: str = "small_cnn"
    width: int = 0                 # model width override (0: the model's default)
    # strategy (a registered one; its knobs' defaults are the strategy options', STRATEGY_DEFAULTS)
    strategy: str = "sb"
    selectivity: float = STRATEGY_DEFAULTS.selectivity
    beta: Optional[float] = STRATEGY_DEFAULTS.beta
    history: int = 0  # R, the losses SB's CDF covers; 0: automatic (twice the selection batch, at least 1024)
    floor: float = STRATEGY_DEFAULTS.floor
    history_mode: str = STRATEGY_DEFAULTS.history_mode
    prime_epochs: Optional[int] = STRATEGY_DEFAULTS.prime_epochs  # None: the strategy's registered default
    stale_n: int = STRATEGY_DEFAULTS.stale_n
    kath18_multiplier: int = STRATEGY_DEFAULTS.kath18_multiplier
    kath18_replacement: bool = STRATEGY_DEFAULTS.kath18_replacement  # with replacement, as Katharopoulos & Fleuret's code
    infobatch_ratio: float = STRATEGY_DEFAULTS.infobatch_ratio
    infobatch_anneal: float = STRATEGY_DEFAULTS.infobatch_anneal
    selection_batch_size: int = 0  # 0: automatic (CUDA: 1024; CPU: batch_size x the policy's candidate multiplier)
    end_of_epoch: str = "carry"
    # optimisation
    epochs: int = 10
    batch_size: int = 128
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4
    lr_schedule: str = "multistep"
    milestones: List[float] = field(default_factory=lambda: [0.3, 0.6, 0.8])  # fractions of epochs
    gamma: float = 0.2
    warmup_epochs: float = 0.0
    label_smoothing: float = 0.0
    # selection engine
    engine: str = "auto"             # auto: torch-graph fp16 on CUDA, torch fp32 on CPU (train.selector.resolve_engine)
    precision: str = "auto"          # auto: the engine's default precision
    # Stale snapshots hurt SB (delayed feedback: the snapshot keeps choosing what the live model
    # has since learned): one step behind changes 9% of the keep decisions (INT8 itself 0.3%), and
    # CIFAR-10 20k subset, 6 epochs, INT8 selection refreshed every 1/2/5/50 steps reached
    # 60.6/58.8/55.1/44.1% vs 60.5% live. None: the engine's default on the device
    # (engines.schedule.CADENCES, chosen by measurement: every step; checks every 25th cheap ONNX
    # Runtime refresh on CPU, every 10th elsewhere).
    refresh_every_steps: Optional[int] = None
    refresh_every_epoch: bool = True
    refresh_validate_every: Optional[int] = None  # check every N-th cheap refresh against torch (rebuilds always)
    # ONNX Runtime INT8: recalibrate every N refreshes (0: when a check fails; None: the model's recipe,
    # engines/recipes/: 100 by default, 500 for small_cnn)
    int8_recalibrate_every: Optional[int] = None
    refresh_background: bool = False
    engine_fallback: str = "raise"   # "raise" or "torch"
    pipeline: bool = False           # select the next candidate batches in a background thread
    pipeline_depth: int = 2
    ddp_history: str = "global"      # under torchrun: one SB loss history over all ranks, or "local" per rank
    engine_threads: int = 0          # CPU threads for the selection engine (0: backend default)
    # device and run
    device: str = "auto"
    threads: int = 0                 # torch CPU threads (0: torch default)
    amp: str = "off"                 # off | bf16 | fp16 (training forward autocast)
    channels_last: bool = True       # NHWC memory format: ~1.8x faster convolution forwards on CPU (oneDNN)
    seed: int = 0
    eval_every_steps: int = 0        # 0: evaluate at every epoch end only
    log_every_steps: int = 50
    run_dir: str = "runs/latest"
    checkpoint: bool = True
    progress: bool = True

    def __post_init__(self) -> None:
        hints = _type_hints()
        for f in dataclasses.fields(self):
            setattr(self, f.name, check_value(f.name, getattr(self, f.name), hints[f.name]))
        self.validate()

    # --- validation -------------------------------------------------------------------------
    def validate(self) -> None:
        def need(cond: bool, name: str, msg: str) -> None:
            if not cond:
                raise ConfigError(f"{name}: {msg} (got {getattr(self, name)!r})")

        need(self.strategy in choices("strategy"), "strategy", f"must be one of {', '.join(choices('strategy'))}")
        need(0.0 < self.selectivity <= 1.0, "selectivity",
             "must be in (0, 1]; 0.33 keeps about a third of the examples")
        need(self.beta is None or self.beta >= 0, "beta", "must be >= 0")
        need(self.history >= 0, "history", "must be >= 0 (0: twice the selection batch, at least 1024)")
        need(0.0 <= self.floor <= 1.0, "floor", "must be in [0, 1]")
        need(self.history_mode in CHOICES["history_mode"], "history_mode", "must be 'batch' or 'sequential'")
        need(self.prime_epochs is None or self.prime_epochs >= 0, "prime_epochs", "must be >= 0")
        need(self.stale_n >= 1, "stale_n", "must be >= 1")
        need(self.kath18_multiplier >= 1, "kath18_multiplier", "must be >= 1")
        need(0.0 <= self.infobatch_ratio < 1.0, "infobatch_ratio", "must be in [0, 1)")
        need(0.0 <= self.infobatch_anneal <= 1.0, "infobatch_anneal", "must be in [0, 1]")
        need(self.selection_batch_size >= 0, "selection_batch_size", "must be >= 0 (0: automatic)")
        need(self.end_of_epoch in CHOICES["end_of_epoch"], "end_of_epoch", "must be carry, partial or drop")
        need(self.epochs >= 1, "epochs", "must be >= 1")
        need(self.batch_size >= 1, "batch_size", "must be >= 1")
        need(self.lr > 0, "lr", "must be a positive number")
        need(0.0 <= self.momentum < 1.0, "momentum", "must be in [0, 1)")
        need(self.weight_decay >= 0, "weight_decay", "must be >= 0")
        need(self.lr_schedule in CHOICES["lr_schedule"], "lr_schedule",
             "must be multistep, cosine, linear or constant")
        need(all(m > 0 for m in self.milestones), "milestones",
             "must be positive: fractions of the run (< 1) or epoch numbers (>= 1)")
        need(self.gamma > 0, "gamma", "must be a positive number (0.2: the LR drops 5x per milestone)")
        need(0 <= self.warmup_epochs < self.epochs, "warmup_epochs", "must be in [0, epochs)")
        need(0.0 <= self.label_smoothing < 1.0, "label_smoothing", "must be in [0, 1)")
        need(self.engine_fallback in CHOICES["engine_fallback"], "engine_fallback", "must be 'raise' or 'torch'")
        need(self.refresh_every_steps is None or self.refresh_every_steps >= 0, "refresh_every_steps",
             "must be >= 0 (0: only per epoch; unset: the engine's default)")
        need(self.refresh_validate_every is None or self.refresh_validate_every >= 1, "refresh_validate_every",
             "must be >= 1 (1: check every refresh; unset: the engine's default)")
        need(self.int8_recalibrate_every is None or self.int8_recalibrate_every >= 0, "int8_recalibrate_every",
             "must be >= 0 (0: only when a check fails; unset: the model's recipe)")
        need(self.pipeline_depth >= 1, "pipeline_depth", "must be >= 1")
        need(self.ddp_history in CHOICES["ddp_history"], "ddp_history",
             "must be 'global' (every rank scores against all ranks' losses) or 'local'")
        need(self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:"), "device",
             "must be auto, cpu, cuda or cuda:N")
        need(self.threads >= 0 and self.engine_threads >= 0, "threads", "must be >= 0")
        need(self.amp in CHOICES["amp"], "amp", "must be off, bf16 or fp16")
        need(self.eval_every_steps >= 0, "eval_every_steps", "must be >= 0")
        need(self.log_every_steps >= 1, "log_every_steps", "must be >= 1")
        need(self.train_subset >= 0 and self.test_subset >= 0, "train_subset", "must be >= 0")
        need(self.augment in CHOICES["augment"], "augment", "must be 'preset' or 'none'")
        need(self.width >= 0, "width", "must be >= 0")
        need(bool(self.run_dir.strip()), "run_dir", "must name a directory")
        need(bool(self.dataset.strip()), "dataset", "must name a dataset or a .npz file")
        self._validate_engine()

    def _validate_engine(self) -> None:
        """The engine spec, checked here so that a typo fails before any file or model is made."""
        from .engines import EngineSpecError, parse_engine_spec  # the registry imports no backend

        if self.engine == "auto":
            return  # resolved per device when the run starts
        try:
            parse_engine_spec(self.engine, None if self.precision == "auto" else self.precision)
        except EngineSpecError as exc:
            raise ConfigError(f"engine/precision: {exc}") from None

    # --- derived values ---------------------------------------------------------------------
    @property
    def milestone_epochs(self) -> Tuple[float, ...]:
        """Milestones in epochs: values < 1 are fractions of the run."""
        return tuple(m * self.epochs if m < 1 else m for m in self.milestones)

    # --- I/O ----------------------------------------------------------------------------------
    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def field_names(cls) -> List[str]:
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "TrainConfig":
        """A config from ``values`` (keys are field names); unknown keys and wrong types raise
        :class:`ConfigError` naming the key."""
        check_keys(values)
        return cls(**values)

    @classmethod
    def from_toml(cls, path: str | Path, overrides: Optional[Dict[str, Any]] = None) -> "TrainConfig":
        """The TOML file's values, then ``overrides`` (command-line flags) on top."""
        return cls.from_dict({**load_values(path), **(overrides or {})})

    def replace(self, **changes: Any) -> "TrainConfig":
        return dataclasses.replace(self, **changes)


# --- checking values -------------------------------------------------------------------------------
@cache
def _type_hints() -> Dict[str, Any]:
    return typing.get_type_hints(TrainConfig)


_KINDS = {bool: "a boolean", int: "an integer", float: "a float", str: "a string", list: "a list",
          tuple: "a list", dict: "a table", type(None): "nothing (None)"}
_EXPECTED = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}


def _kind(value: Any) -> str:
    return _KINDS.get(type(value), f"a {type(value).__name__}")


def check_value(name: str, value: Any, typ: Any) -> Any:
    """``value`` checked against the type annotation ``typ`` of the key ``name``.

    Returns the value to store (integers become floats in ``float`` fields, tuples become lists).
    ``bool`` is not an integer here: ``epochs = true`` is refused, as is ``checkpoint = "no"``.
    """
    if typing.get_origin(typ) is Union:  # Optional[X], the only union among the fields
        if value is None:
            return None
        return check_value(name, value, next(a for a in typing.get_args(typ) if a is not type(None)))
    if typing.get_origin(typ) in (list, List):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{name}: must be a list, e.g. {name} = [0.3, 0.6], got {value!r} ({_kind(value)})")
        (element,) = typing.get_args(typ)
        return [check_value(f"{name}[{i}]", v, element) for i, v in enumerate(value)]
    if typ is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if typ is float and isinstance(value, float) and not math.isfinite(value):
        # inf and nan are never a setting (and JSON cannot hold them): refused before anything is written
        raise ConfigError(f"{name}: must be a finite number, got {value!r}")
    if isinstance(value, typ) and not (typ is int and isinstance(value, bool)):
        return value
    raise ConfigError(f"{name}: must be {_EXPECTED.get(typ, typ.__name__)}, got {value!r} ({_kind(value)})"
                      f"{_type_hint(name, value, typ)}")


def _type_hint(name: str, value: Any, typ: Any) -> str:
    """A fix for the common slips: a quoted number or boolean, a fraction where an integer goes."""
    key = name.split("[")[0]
    if isinstance(value, str):
        text = value.strip().lower()
        if typ is bool and text in ("true", "false", "yes", "no", "on", "off", "1", "0"):
            word = "true" if text in ("true", "yes", "on", "1") else "false"
            return f"; write {key} = {word} (no quotes)"
        try:
            number = typ(value) if typ in (int, float) else None
        except ValueError:
            number = None
        if number is not None:
            return f"; write {key} = {number} (no quotes)"
    if typ is int and isinstance(value, float) and math.isfinite(value):
        return f"; use a whole number, e.g. {key} = {max(round(value), 1)}"
    if isinstance(value, dict):
        return f"; the config file is flat: put the keys of [{key}] at the top level"
    return ""


def check_keys(values: Mapping[str, Any]) -> None:
    """Refuse keys that are not config fields, naming the closest known key for each."""
    known = TrainConfig.field_names()
    unknown = [k for k in values if k not in known]
    if not unknown:
        return
    parts = []
    for key in unknown:
        close = difflib.get_close_matches(str(key).replace("-", "_"), known, n=1, cutoff=0.6)
        if isinstance(values[key], dict):
            parts.append(f"[{key}] (the config file is flat: put its keys at the top level)")
        else:
            parts.append(f"{key!r} (did you mean {close[0]!r}?)" if close else repr(key))
    raise ConfigError(f"unknown config keys: {', '.join(parts)}. The keys are the flags of "
                      "`sb-accel train --help` with '_' for '-'.")


# --- config files ------------------------------------------------------------------------------------
def load_values(path: str | Path) -> Dict[str, Any]:
    """The key/value pairs of a config file (``.json``: a saved run config; anything else: TOML),
    with their keys and types checked; errors name the file."""
    path = Path(path)
    if not path.is_file():
        what = "is a directory, not a file" if path.is_dir() else "not found"
        raise ConfigError(f"config file {path} {what}")
    try:
        text = path.read_text(encoding="utf-8")
        values = json.loads(text) if path.suffix == ".json" else tomllib.loads(text)
    except (tomllib.TOMLDecodeError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not valid {'JSON' if path.suffix == '.json' else 'TOML'}: {exc}") from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror or exc}") from None
    if not isinstance(values, dict):
        raise ConfigError(f"{path}: expected key/value pairs at the top level")
    try:
        check_keys(values)
        hints = _type_hints()
        return {k: check_value(k, v, hints[k]) for k, v in values.items()}
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
