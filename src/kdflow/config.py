"""The typed schema of params.yaml: every key, its default, and what is allowed.

A mistake in params.yaml becomes one line naming the key, the value and what is allowed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from kdflow.errors import ParamsError


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _check_name(registry_path: str, name: str) -> str:
    import importlib

    module, attr = registry_path.rsplit(".", 1)
    reg = getattr(importlib.import_module(module), attr)
    if name not in reg:
        raise ValueError(f"unknown {reg.kind}; valid: {', '.join(reg.names())}")
    return name


def _check_options(registry_path: str, where: str, options: dict[str, dict[str, Any]]) -> dict:
    """Validate per-method option blocks against the schema each method registers."""
    import importlib

    module, attr = registry_path.rsplit(".", 1)
    reg = getattr(importlib.import_module(module), attr)
    out = {}
    for name, block in options.items():
        _check_name(registry_path, name)
        schema = reg.schema(name)
        if schema is None:
            if block:
                raise ValueError(f"{name} takes no options")
            out[name] = {}
            continue
        try:
            out[name] = schema.model_validate(block or {}).model_dump()
        except ValidationError as exc:
            raise ParamsError(_format_error(exc, prefix=f"{where}.{name}")) from None
    return out


class DataConfig(Section):
    dataset: str = "fashion_mnist"
    root: str | None = None
    download: bool = False
    # class ids, or class names (an image folder's subfolder names, a dataset's class names)
    old_classes: list[int | str] = Field(default_factory=lambda: [0, 1, 2, 3, 4], min_length=2)
    new_classes: list[int | str] = Field(default_factory=lambda: [5, 6, 7, 8, 9])  # []: none

    val_fraction: float = Field(0.1, gt=0.0, lt=1.0)
    shots_per_class: int = Field(100, ge=1)
    max_train_per_class: int | None = Field(None, ge=2)
    max_test_per_class: int | None = Field(None, ge=1)
    image_size: int | None = Field(None, ge=4, le=1024)
    seed: int = 0

    @field_validator("dataset")
    @classmethod
    def _dataset(cls, v: str) -> str:
        return _check_name("kdflow.datasets.DATASETS", v)

    @field_validator("old_classes", "new_classes")
    @classmethod
    def _classes(cls, v: list[int | str]) -> list[int | str]:
        if len(v) == 1:
            raise ValueError("a task needs at least 2 classes (new_classes may be [] for none)")
        if any(isinstance(c, int) and c < 0 for c in v):
            raise ValueError("class ids must be >= 0")
        if len(set(v)) != len(v):
            raise ValueError("class ids must be distinct")
        return v

    @model_validator(mode="after")
    def _disjoint(self) -> DataConfig:
        both = sorted(set(self.old_classes) & set(self.new_classes))
        if both:
            raise ValueError(
                f"old_classes and new_classes overlap on {both}; they must be disjoint"
            )
        return self


class ModelConfig(Section):
    arch: str = "cnn"
    width: int = Field(32, ge=1, le=4096)
    depth: int = Field(3, ge=1, le=8)
    # first weights: null (random), a file under external/<role>/ (kdflow checkpoint or a state
    # dict, e.g. torchvision ImageNet weights), or models:/<name>@<alias>, runs:/<id>/<path>
    weights: str | None = Field(None, min_length=1)
    fine_tune: bool = True  # false: adopt a finished model (this task's classes) as is

    @field_validator("arch")
    @classmethod
    def _arch(cls, v: str) -> str:
        return _check_name("kdflow.models.MODELS", v)


class TrainConfig(Section):
    epochs: int = Field(8, ge=1)
    min_steps: int = Field(0, ge=0)
    label_fraction: float = Field(1.0, gt=0.0, le=1.0)
    batch_size: int = Field(128, ge=1)
    optimizer: Literal["sgd", "adamw"] = "adamw"
    lr: float = Field(3e-3, gt=0.0)
    momentum: float = Field(0.9, ge=0.0, lt=1.0)
    weight_decay: float = Field(5e-4, ge=0.0)
    schedule: Literal["cosine", "onecycle", "multistep", "constant"] = "cosine"
    milestones: list[float] = Field(default_factory=lambda: [0.5, 0.75])
    gamma: float = Field(0.1, gt=0.0, le=1.0)
    augment: bool = False
    augment_policy: Literal["pad_crop", "resized_crop"] = "pad_crop"  # CIFAR- / ImageNet-style
    hflip: bool = True  # horizontal flips when augmenting (off for digits, text, ...)
    workers: int = Field(0, ge=0, le=64)  # DataLoader worker processes (0: in the main process)
    label_smoothing: float = Field(0.0, ge=0.0, lt=1.0)
    grad_clip: float | None = Field(None, gt=0.0)
    select: Literal["best", "last"] = "best"
    device: Literal["auto", "cpu", "cuda", "mps"] = "auto"
    amp: bool = True
    channels_last: bool = True
    seed: int = 0

    @field_validator("milestones")
    @classmethod
    def _milestones(cls, v: list[float]) -> list[float]:
        if any(not 0.0 < m < 1.0 for m in v) or v != sorted(v):
            raise ValueError("milestones are increasing fractions of the run, each in (0, 1)")
        return v


class ModelsConfig(Section):
    teacher: ModelConfig = ModelConfig(arch="cnn", width=32, depth=3)
    student: ModelConfig = ModelConfig(arch="cnn", width=8, depth=3)


class TrainStages(Section):
    teacher: TrainConfig = TrainConfig(epochs=8, min_steps=1500, lr=0.01)
    student: TrainConfig = TrainConfig(epochs=15, min_steps=3000, lr=0.03)


class DistillConfig(Section):
    method: str = "kd"
    init: Literal["scratch", "student"] = "scratch"
    temperature: float = Field(1.0, gt=0.0, le=1000.0)
    alpha: float = Field(0.5, ge=0.0, le=1.0)
    cache_teacher: bool = True
    extra_teachers: list[str] = Field(default_factory=list)
    methods: dict[str, dict[str, Any]] = Field(default_factory=dict)
    train: TrainConfig = TrainConfig(epochs=15, min_steps=3000, lr=0.03)

    @field_validator("method")
    @classmethod
    def _method(cls, v: str) -> str:
        return _check_name("kdflow.losses.LOSSES", v)

    @field_validator("methods")
    @classmethod
    def _methods(cls, v: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        return _check_options("kdflow.losses.LOSSES", "distill.methods", v)

    @model_validator(mode="after")
    def _no_smoothing(self) -> DistillConfig:
        if self.train.label_smoothing:
            raise ValueError(
                "train.label_smoothing must be 0 for distillation: the teacher's soft targets "
                "already smooth the labels"
            )
        return self

    def options(self) -> dict[str, Any]:
        """The chosen method's options with defaults filled in."""
        from kdflow.losses import LOSSES

        schema = LOSSES.schema(self.method)
        if schema is None:
            return {}
        return schema.model_validate(self.methods.get(self.method, {})).model_dump()


class TransferConfig(Section):
    source: Literal["distilled", "student", "teacher"] = "distilled"
    strategies: list[str] = Field(
        default_factory=lambda: ["scratch", "linear_probe", "finetune", "lp_ft", "lwf"],
        min_length=1,
    )
    options: dict[str, dict[str, Any]] = Field(default_factory=dict)
    train: TrainConfig = TrainConfig(
        epochs=30, min_steps=1000, batch_size=64, lr=0.01, select="last"
    )

    @field_validator("strategies")
    @classmethod
    def _strategies(cls, v: list[str]) -> list[str]:
        for name in v:
            _check_name("kdflow.strategies.STRATEGIES", name)
        if len(set(v)) != len(v):
            raise ValueError("strategies must be distinct")
        return v

    @field_validator("options")
    @classmethod
    def _options(cls, v: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        return _check_options("kdflow.strategies.STRATEGIES", "transfer.options", v)

    @model_validator(mode="after")
    def _lwf_without_augment(self) -> TransferConfig:
        if "lwf" in self.strategies and self.train.augment:
            raise ValueError(
                "train.augment must be false with lwf: its old-task targets are recorded on "
                "un-augmented images"
            )
        return self

    @model_validator(mode="after")
    def _all_shots_labelled(self) -> TransferConfig:
        if self.train.label_fraction != 1.0:
            raise ValueError(
                "train.label_fraction must be 1 for transfer: data.shots_per_class sets its labels"
            )
        return self

    def options_for(self, name: str) -> dict[str, Any]:
        from kdflow.strategies import STRATEGIES

        schema = STRATEGIES.schema(name)
        if schema is None:
            return {}
        return schema.model_validate(self.options.get(name, {})).model_dump()


class EvaluateConfig(Section):
    ece_bins: int = Field(15, ge=2, le=100)
    latency_repeats: int = Field(30, ge=3)
    throughput_batch: int = Field(256, ge=1)
    threads: int | None = Field(1, ge=1)
    onnx: bool = True


class ComputeConfig(Section):
    """How many processes a training stage runs on; more than one: torch.distributed.run."""

    nproc_per_node: int = Field(1, ge=1, le=1024)
    nnodes: int = Field(1, ge=1, le=4096)
    rdzv_endpoint: str | None = Field(None, pattern=r"^[A-Za-z0-9_.\-]+:[0-9]{1,5}$")
    rdzv_id: str = Field("kdflow", pattern=r"^[A-Za-z0-9_.\-]+$")
    rdzv_timeout: int = Field(60, ge=1)  # seconds to wait for another node's endpoint

    @model_validator(mode="after")
    def _multinode(self) -> ComputeConfig:
        if self.nnodes > 1 and not self.rdzv_endpoint:
            raise ValueError("nnodes > 1 needs rdzv_endpoint (host:port of the first node)")
        return self


class TrackingConfig(Section):
    uri: str | None = None
    experiment: str = Field("kdflow", min_length=1)
    log_models: bool = True
    register_models: bool = True


class Params(Section):
    data: DataConfig = DataConfig()
    models: ModelsConfig = ModelsConfig()
    train: TrainStages = TrainStages()
    distill: DistillConfig = DistillConfig()
    transfer: TransferConfig = TransferConfig()
    evaluate: EvaluateConfig = EvaluateConfig()
    tracking: TrackingConfig = TrackingConfig()
    compute: ComputeConfig = ComputeConfig()

    @model_validator(mode="after")
    def _same_labels(self) -> Params:
        a, b = self.train.student.label_fraction, self.distill.train.label_fraction
        if a != b:
            raise ValueError(
                f"train.student.label_fraction ({a}) and distill.train.label_fraction ({b}) "
                "differ; the student alone and the distilled student must see the same labels"
            )
        return self


def _allowed(loc: tuple, model: type[BaseModel] = Params) -> list[str]:
    """The keys allowed at ``loc`` (for 'unknown key' messages)."""
    for part in loc[:-1]:
        field = model.model_fields.get(str(part))
        ann = getattr(field, "annotation", None)
        if not (isinstance(ann, type) and issubclass(ann, BaseModel)):
            return []
        model = ann
    return list(model.model_fields)


def _format_error(exc: ValidationError, prefix: str = "") -> str:
    err = exc.errors()[0]
    loc = tuple(p for p in err["loc"] if p != "__root__")
    key = ".".join(str(p) for p in ((prefix,) if prefix else ()) + loc) or "(top level)"
    value = err.get("input")
    msg = err["msg"].removeprefix("Value error, ")
    if err["type"] == "extra_forbidden":
        allowed = _allowed(loc) if not prefix else []
        hint = f"; allowed keys here: {', '.join(allowed)}" if allowed else ""
        return f"params.yaml: unknown key {key} (value {value!r}){hint}"
    if err["type"] == "missing":
        return f"params.yaml: missing key {key}"
    if isinstance(value, dict):  # a rule across keys of a section: the message names them
        return f"params.yaml: {key}: {msg}"
    return f"params.yaml: {key} = {value!r} is not allowed: {msg}"


def parse_params(raw: Any) -> Params:
    """Validate a params mapping; raises ParamsError with one readable line."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ParamsError("params.yaml: the top level must be a mapping of sections")
    try:
        return Params.model_validate(raw)
    except ValidationError as exc:
        raise ParamsError(_format_error(exc)) from None


def load_params(path: str | Path = "params.yaml") -> Params:
    """Read and validate params.yaml (missing file -> all defaults is NOT assumed)."""
    path = Path(path)
    if not path.is_file():
        raise ParamsError(f"{path}: no such params file; run from the repository root")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or "invalid syntax"
        raise ParamsError(f"{path}: not valid YAML{where}: {problem}") from None
    return parse_params(raw)
