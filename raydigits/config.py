"""`TrainConfig`: every trainer knob, its default and its intent. Unknown keys and bad values are
rejected with a message naming the key. Built from YAML, `--set key=value` overrides, or a Tune
trial's sampled dict."""

from __future__ import annotations

import re
import typing
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from . import env
from .errors import UserError
from .storage import local_path

DATA_ENV = env.DATA_ENV  # the default dataset folder, when set
DATA_PURPOSE = "the dataset is read from this machine's disk"


def default_data_dir() -> str:
    """Where the dataset is by default: $RAYDIGITS_DATA (a local path, `~` expanded), else
    data/mnist under the working dir (prepared there on first use)."""
    value = env.text(DATA_ENV)
    return "data/mnist" if value is None else str(local_path(value, DATA_ENV, DATA_PURPOSE))


def data_dir_path(value: str | None, what: str = "data_dir") -> Path:
    """A config's data_dir (or the default when None) as a local path: `~` expanded, file:// read,
    an object-store URI refused naming `what`."""
    return local_path(value, what, DATA_PURPOSE) if value else Path(default_data_dir())


def _local(value: str, purpose: str) -> Path:
    """A config's local path (a field validator's ValueError when it is not one)."""
    try:
        return local_path(value, "", purpose)
    except UserError as exc:
        raise ValueError(str(exc)) from None


def check_environment() -> None:
    """Every environment variable raydigits reads, checked (one line naming a bad one)."""
    env.check_environment()
    default_data_dir()


def _numeric(annotation) -> bool:
    """Whether a field holds a number (int or float, maybe optional or one of a union)."""
    args = typing.get_args(annotation) or (annotation,)
    return bool not in args and any(a in (int, float) for a in args)


def numeric_field(name: str) -> bool:
    """Whether TrainConfig's `name` holds a number."""
    field = TrainConfig.model_fields.get(name)
    return field is not None and _numeric(field.annotation)


def no_bool_for_number(cls, value, info):
    """A `field_validator("*", mode="before")`: YAML's true/false is no number (pydantic would take
    `num_samples: true` as 1 and `cpu: false` as 0.0)."""
    field = cls.model_fields.get(info.field_name)
    if isinstance(value, bool) and field is not None and _numeric(field.annotation):
        raise ValueError(f"expected a number, got {str(value).lower()} (a boolean)")
    return value


SEED_MAX = 2**32 - 2  # seeds reach numpy / scikit-learn (< 2**32), some as seed + 1
MAX_THREADS = 1024  # torch crashes (not errors) on absurd thread counts


class TrainConfig(BaseModel):
    # allow_inf_nan=False: `lr: .inf`, `milestones: [1, .nan]` are mistakes, not values to train with
    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=(), allow_inf_nan=False)

    # --- data
    data_dir: str = Field(
        default_factory=default_data_dir
    )  # prepared store; a folder named 'mnist' is prepared on demand
    train_items: int = Field(0, ge=0)  # stratified subset of train for quick runs; 0 = all
    val_items: int = Field(0, ge=0)  # stratified subset of val; 0 = all
    img_size: int = Field(32, ge=16, le=1024)  # network input side; MobileNetV3 works from 32 px
    # --- augmentation (training only, batched on the device); strength scales all three
    aug_strength: float = Field(1.0, ge=0.0, le=3.0)  # 0 turns augmentation off
    aug_shift: float = Field(0.08, ge=0.0, le=0.5)  # max translation, fraction of the side
    aug_rotate: float = Field(10.0, ge=0.0, le=180.0)  # max rotation, degrees
    aug_scale: float = Field(0.10, ge=0.0, le=0.9)  # max relative zoom in/out
    # --- model
    model: str = "mobilenet_v3_small"  # any torchvision classification model by exact name
    pretrained: str | None = None  # None, 'imagenet' (local torch hub cache only) or a state-dict path
    dropout: float = Field(0.2, ge=0.0, lt=1.0)  # head dropout (where the model has one)
    # channel width multiplier of the models built to be scaled (models.WIDTH_MULT_MODELS: mobilenet_v2,
    # mobilenet_v3_small / large): 0.5 halves every layer's channels (about 1/3 the parameters and FLOPs),
    # what trades accuracy for latency in a search over architectures. 1.0 = the model as published
    width_mult: float = Field(1.0, gt=0.0, le=4.0)
    bn_momentum: float | None = Field(
        0.1, gt=0.0, le=1.0
    )  # torchvision's 0.01 makes early val meaningless; None keeps the model's
    # Precise BN: before every validation, recompute BatchNorm statistics exactly (a cumulative average)
    # for the current weights over a seeded, class-stratified sample of this many training images (the
    # whole split when it is smaller). Running averages lag the weights, so without this the validation
    # that ASHA ranks trials on can sit at chance after epoch 1 on small data. 0 = off.
    bn_recalibrate: int = Field(4096, ge=0)
    channels_last: bool = True  # NHWC memory format: MobileNetV3 steps ~40 % faster on CPU, faster on GPU too
    freeze_epochs: int = Field(0, ge=0)  # train only the classifier head for the first N epochs
    # --- optimisation
    epochs: int = Field(5, ge=1)
    batch_size: int = Field(128, ge=1)
    eval_batch_size: int = Field(512, ge=1)
    optimizer: str = "adamw"  # see raydigits.optim.list_optimizers()
    lr: float = Field(2e-3, gt=0.0)
    weight_decay: float = Field(1e-4, ge=0.0)
    momentum: float = Field(0.9, ge=0.0, lt=1.0)  # sgd only
    nesterov: bool = False  # sgd only
    betas: tuple[float, float] = (0.9, 0.999)  # adam, adamw, adabelief, ranger
    scheduler: str = "cosine"  # see raydigits.optim.list_schedulers(); 'none' keeps lr fixed
    warmup_epochs: float = Field(0.0, ge=0.0)  # linear warmup (per step), works with every scheduler
    warmup_start_factor: float = Field(0.1, gt=0.0, le=1.0)  # first warmup step at lr * this (never 0)
    min_lr: float = Field(0.0, ge=0.0)  # floor for cosine / cosine_restarts / rung_cosine / plateau
    step_size: float = Field(2.0, gt=0.0)  # step: epochs between decays
    gamma: float = Field(0.1, gt=0.0, le=1.0)  # step / multistep decay factor (a float)
    # multistep, rung_cosine: epochs (a search with early stopping fills rung_cosine's with its first rung)
    milestones: list[float] = Field(default_factory=lambda: [3.0, 6.0])
    restart_epochs: float = Field(2.0, gt=0.0)  # cosine_restarts: first cycle length (epochs)
    restart_mult: int = Field(2, ge=1)  # cosine_restarts: cycle length multiplier
    plateau_patience: int = Field(1, ge=0)  # plateau: epochs without improvement
    plateau_factor: float = Field(0.5, gt=0.0, lt=1.0)  # plateau: lr multiplier
    onecycle_pct_start: float = Field(0.3, gt=0.0, lt=1.0)
    # onecycle only: cycle momentum (sgd) or betas[0] (adam family) inversely to the lr, 0.95→0.85→0.95
    # (PyTorch's default). Off, so a configured or searched momentum / betas is what the optimiser uses.
    cycle_momentum: bool = False
    loss: str = "ce"  # see raydigits.optim.list_losses()
    label_smoothing: float = Field(0.0, ge=0.0, lt=1.0)
    class_weights: list[float] | None = None  # one weight per class, or None
    focal_gamma: float = Field(2.0, ge=0.0)  # focal loss focusing parameter
    clip_grad_norm: float = Field(0.0, ge=0.0)  # 0 = off; applied after unscaling, before the step
    amp: Literal["auto", "off", "bf16", "fp16"] = "auto"  # auto: bf16 on CUDA if supported, else fp16; off on CPU
    # --- run control
    monitor: Literal["val_acc", "val_loss"] = "val_acc"  # best checkpoint, plateau and early stopping
    early_stop_patience: int = Field(0, ge=0)  # 0 = off
    early_stop_min_delta: float = Field(0.0, ge=0.0)
    seed: int = Field(42, ge=0, le=SEED_MAX)
    device: str = "auto"  # auto, cpu, cuda, cuda:N
    cuda_graphs: bool = True  # CUDA: replay the fixed-shape train/eval steps as CUDA graphs (no per-step CPU cost)
    gpu_memory_fraction: float = Field(0.0, ge=0.0, le=1.0)  # CUDA: cap this process's share of GPU memory (0 = no cap)
    threads: int = Field(0, ge=0, le=MAX_THREADS)  # torch CPU threads; 0 = leave torch's choice

    _no_bool = field_validator("*", mode="before")(classmethod(no_bool_for_number))

    @field_validator("data_dir")
    @classmethod
    def _local_data_dir(cls, v: str):
        return str(_local(v, DATA_PURPOSE))

    @field_validator("pretrained")
    @classmethod
    def _local_weights(cls, v: str | None):
        return v if v in (None, "imagenet") else str(_local(v, "weights are read from this machine's disk"))

    @field_validator("optimizer", "scheduler", "loss")
    @classmethod
    def _known_name(cls, v: str, info):
        from . import optim

        valid = {"optimizer": optim.list_optimizers, "scheduler": optim.list_schedulers, "loss": optim.list_losses}[
            info.field_name
        ]()
        if v not in valid:
            raise ValueError(f"unknown {info.field_name} {v!r}; valid: {', '.join(valid)}")
        return v

    @field_validator("model")
    @classmethod
    def _known_model(cls, v: str):
        from .models import list_models

        if v not in list_models():
            raise ValueError(
                f"unknown model {v!r}; any torchvision classification model, e.g. "
                "mobilenet_v3_small, mobilenet_v3_large, resnet18, efficientnet_b0"
            )
        return v

    @field_validator("device")
    @classmethod
    def _device(cls, v: str):
        if v not in ("auto", "cpu", "cuda") and not (v.startswith("cuda:") and v[5:].isdigit()):
            raise ValueError(f"device must be auto, cpu, cuda or cuda:N, not {v!r}")
        return v

    @field_validator("betas")
    @classmethod
    def _betas(cls, v):
        if not all(0.0 <= b < 1.0 for b in v):
            raise ValueError(f"each beta must be in [0, 1), got {list(v)}")
        return v

    @field_validator("class_weights")
    @classmethod
    def _weights(cls, v):
        if v is not None and (not v or any(w < 0 for w in v) or not any(w > 0 for w in v)):
            raise ValueError(f"class weights must be >= 0 with at least one > 0, got {v}")
        return v

    @model_validator(mode="after")
    def _consistent(self):
        if self.width_mult != 1.0:
            from .models import WIDTH_MULT_MODELS

            if self.model not in WIDTH_MULT_MODELS:
                raise ValueError(
                    f"width_mult: {self.width_mult:g} given, but model {self.model} takes no width multiplier "
                    f"(only {', '.join(WIDTH_MULT_MODELS)} do); leave width_mult at 1.0 for it"
                )
        if self.warmup_epochs >= self.epochs:
            raise ValueError(f"warmup_epochs ({self.warmup_epochs}) must be below epochs ({self.epochs})")
        if self.freeze_epochs >= self.epochs and self.freeze_epochs:
            raise ValueError(f"freeze_epochs ({self.freeze_epochs}) must be below epochs ({self.epochs})")
        if sorted(self.milestones) != list(self.milestones):
            raise ValueError("milestones must be increasing")
        return self


# Knobs that may change between two epochs of one run (population-based training perturbs them): a
# trainer whose config differs from a loaded checkpoint's in these trains on with its own values
# (trainer.Trainer.load_state_dict). Everything else (model, img_size, optimizer, batch_size, the
# lr schedule's shape...) is structural: the weights or the optimiser state would not fit it.
MUTABLE_KNOBS = (
    "lr",
    "weight_decay",
    "momentum",
    "nesterov",
    "betas",
    "label_smoothing",
    "focal_gamma",
    "clip_grad_norm",
    "aug_strength",
    "aug_shift",
    "aug_rotate",
    "aug_scale",
    "dropout",
    "bn_momentum",
)


def shown_key(part: object) -> str:
    """A key as a message shows it: as written, or quoted when it holds a line break or another
    control character (the message stays one line)."""
    text = str(part)
    return text if text.isprintable() else repr(text)


def format_validation_error(exc: ValidationError, prefix: str = "") -> str:
    parts = []
    for err in exc.errors():
        key = ".".join(shown_key(p) for p in err["loc"])
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        # a check of the whole model (no location) names the keys it concerns in its message
        parts.append(f"{prefix}{key}: {msg}" if key else f"{prefix}{msg}")
    return "; ".join(parts)


def make_config(values: dict, where: str = "config") -> TrainConfig:
    """Validate a dict into a TrainConfig, or raise UserError naming the key(s) at fault."""
    try:
        return TrainConfig(**values)
    except ValidationError as exc:
        raise UserError(f"{where}: {format_validation_error(exc)}") from None


def parse_overrides(pairs: list[str] | None) -> dict:
    """`key=value` strings → dict; values parsed as YAML scalars/lists (`lr=1e-3`, `betas=[0.9,0.99]`)."""
    out = {}
    for pair in pairs or []:
        key, sep, raw = pair.partition("=")
        if not sep or not key.strip():
            raise UserError(f"--set {pair!r}: expected key=value")
        try:
            out[key.strip()] = yaml_value(raw) if raw != "" else None
        except yaml.YAMLError:
            out[key.strip()] = raw
    return out


MERGE_TAG = "tag:yaml.org,2002:merge"
# YAML 1.1 (PyYAML) reads 1e-3 as a string: a float needs a dot there. Numbers in exponent form
# without one (1e-3, 5E+2, -2e4) are read as floats, as YAML 1.2 and every other reader do.
EXPONENT_FLOAT = re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$")


class _UniqueKeyLoader(yaml.SafeLoader):
    """yaml.safe_load, but a key given twice in one mapping is an error (safe_load keeps the last),
    and 1e-3 is a float. Merge keys (`<<: *anchor`) work: the mapping's own keys override the
    merged ones, as YAML says; only its own keys are checked for repeats."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            if key_node.tag == MERGE_TAG:
                continue
            key = self.construct_object(key_node, deep=True)
            if key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"key {key!r} given twice", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep)


_UniqueKeyLoader.add_implicit_resolver("tag:yaml.org,2002:float", EXPONENT_FLOAT, list("-+0123456789"))


def yaml_value(text: str):
    """One YAML value as the search-space files read it (1e-3 a float)."""
    return yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass


def load_yaml_file(path: str | Path) -> dict:
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: no such file")
    if path.is_dir():
        raise UserError(f"{path}: is a folder, not a YAML file")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UserError(f"{path}: not a text file (not UTF-8 at byte {exc.start}); expected YAML") from None
    except OSError as exc:
        raise UserError(f"{path}: cannot read it ({exc.strerror or type(exc).__name__})") from None
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        what = " ".join(str(getattr(exc, "problem", None) or exc).split())  # one line, whatever the error
        raise UserError(f"{path}: malformed YAML{where}: {what}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a mapping of keys at the top level")
    return data


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> TrainConfig:
    values = load_yaml_file(path) if path else {}
    values.update(parse_overrides(overrides))
    return make_config(values, where=str(path) if path else "config")
