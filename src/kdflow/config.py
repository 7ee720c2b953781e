"""The typed schema of params.yaml: every key, its type, its library default and its range.

Only the schema: reading the file, registry names and per-method options are checked in
``kdflow.params``, which is what stages and benchmarks call.
"""

from __future__ import annotations

import copy
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DataConfig(Section):
    dataset: str = "fashion_mnist"  # a name in kdflow.datasets.DATASETS
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
    # a name in kdflow.models.MODELS, timm:<name>, torchvision:<name>, or <package.module>:<Class>
    # (a module inside the repository, e.g. models_src/)
    arch: str = "cnn"
    kwargs: dict[str, Any] = Field(default_factory=dict)  # constructor arguments (prefixed forms)
    width: int = Field(32, ge=1, le=4096)
    depth: int = Field(3, ge=1, le=8)
    # first weights: null (random), a file under external/<role>/ (kdflow checkpoint or a state
    # dict, e.g. torchvision ImageNet weights), or models:/<name>@<alias>, runs:/<id>/<path>
    weights: str | None = Field(None, min_length=1)
    fine_tune: bool = True  # false: adopt a finished model (this task's classes) as is


class TrainConfig(Section):
    """How one training stage trains; ``train.defaults`` holds what the stages share."""

    epochs: int = Field(8, ge=1)  # passes over the data (evaluated after each)
    min_steps: int = Field(0, ge=0)  # floor on optimizer steps: small data makes more passes
    max_steps: int | None = Field(None, ge=1)  # ceiling on optimizer steps
    # early stopping: stop once validation accuracy has not improved by more than min_delta
    # for `patience` epochs (null: train the whole budget)
    patience: int | None = Field(None, ge=1)
    min_delta: float = Field(0.0, ge=0.0, lt=1.0)
    # then the learning rate falls to 0 over this share of the budget's passes before stopping
    # (a warmup-stable-decay cool-down: ~0.2 of the run matches a full cosine schedule)
    cooldown: float = Field(0.0, ge=0.0, le=1.0)
    # share of the budget always trained before early stopping may stop: a warm-up for slow
    # starters, whose validation accuracy sits at chance for a while
    stop_after: float = Field(0.0, ge=0.0, le=1.0)
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
    # hold the training split in device memory as uint8 (augment there): auto = when it takes
    # at most device_data_share of it (a GPU's total, the RAM available on CPU; not on CPU with
    # workers); on = always; off = read batches from disk (the same batches either way)
    device_data: Literal["auto", "on", "off"] = "auto"
    device_data_share: float = Field(0.25, gt=0.0, le=1.0)
    compile: bool = False  # torch.compile the trained model's forward
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

    @field_validator("device_data", mode="before")
    @classmethod
    def _yaml_on_off(cls, v: Any) -> Any:
        # YAML 1.1 (params.yaml, `dvc exp run -S`) reads a bare on/off as true/false
        return {True: "on", False: "off"}.get(v, v) if isinstance(v, bool) else v


class RoleTrainConfig(TrainConfig):
    """Training of the teacher or the student alone: also which labels it may use."""

    # share of the old task's training images whose label is used (stratified, data.seed);
    # the distilled student uses train.student's, so both see the same labels
    label_fraction: float = Field(1.0, gt=0.0, le=1.0)


class TransferTrainConfig(TrainConfig):
    """Transfer training: the new task has no validation split, so early stopping holds out
    a stratified share of the labelled shots to choose the number of epochs, then refits on
    every shot for that many."""

    holdout: float = Field(0.2, gt=0.0, lt=1.0)


class ModelsConfig(Section):
    teacher: ModelConfig = ModelConfig(width=32)
    student: ModelConfig = ModelConfig(width=8)


class TrainStages(Section):
    defaults: TrainConfig = TrainConfig()
    teacher: RoleTrainConfig = RoleTrainConfig()
    student: RoleTrainConfig = RoleTrainConfig()


class DistillConfig(Section):
    method: str = "kd"  # a name in kdflow.losses.LOSSES
    init: Literal["scratch", "student"] = "scratch"
    cache_teacher: bool = True
    extra_teachers: list[str] = Field(default_factory=list)
    # per-method options (temperature, weights); kdflow.params fills in each method's defaults
    methods: dict[str, dict[str, Any]] = Field(default_factory=dict)
    train: TrainConfig = TrainConfig()

    @model_validator(mode="after")
    def _no_smoothing(self) -> DistillConfig:
        if self.train.label_smoothing:
            raise ValueError(
                "train.label_smoothing must be 0 for distillation: the teacher's soft targets "
                "already smooth the labels"
            )
        return self

    def options(self) -> dict[str, Any]:
        """The chosen method's options (validated, defaults filled, by ``kdflow.params``)."""
        return dict(self.methods.get(self.method, {}))


SOURCES = ("distilled", "teacher", "student")  # the old-task models a transfer can start from


class TransferConfig(Section):
    # the models carried to the new task: each runs every strategy (DVC stages
    # transfer@<source>-<strategy>); one name alone is read as a list of one (older params files)
    source: list[Literal["distilled", "teacher", "student"]] = Field(
        default_factory=lambda: ["distilled"], min_length=1
    )
    # the strategies that start from a source; the from-scratch baseline is its own stage
    # (transfer-scratch), run once whatever the sources, so it is not listed here
    strategies: list[str] = Field(
        default_factory=lambda: ["linear_probe", "finetune", "lp_ft", "lwf"], min_length=1
    )
    # per-strategy options; kdflow.params fills in each strategy's defaults
    options: dict[str, dict[str, Any]] = Field(default_factory=dict)
    train: TransferTrainConfig = TransferTrainConfig(select="last")  # no validation split

    @field_validator("source", mode="before")
    @classmethod
    def _sources(cls, v: Any) -> Any:
        """A single name is a list of one; an unknown name is named with what is allowed."""
        v = [v] if isinstance(v, str) else v
        if isinstance(v, list):
            unknown = [s for s in v if s not in SOURCES]
            if unknown:
                raise ValueError(f"unknown source {unknown[0]!r}; allowed: {', '.join(SOURCES)}")
            if len(set(v)) != len(v):
                raise ValueError("sources must be distinct")
        return v

    @field_validator("strategies")
    @classmethod
    def _distinct(cls, v: list[str]) -> list[str]:
        if len(set(v)) != len(v):
            raise ValueError("strategies must be distinct")
        return v

    def options_for(self, name: str) -> dict[str, Any]:
        return dict(self.options.get(name, {}))


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
    # null: derived from the stage, the params and the DVC experiment (one rendezvous each)
    rdzv_id: str | None = Field(None, pattern=r"^[A-Za-z0-9_.\-]+$")
    rdzv_timeout: int = Field(60, ge=1)  # seconds to wait for another node's endpoint
    # CPU threads per process (null: torch's default, one per core); a share of the cores
    # when experiments run side by side. A param: the thread count changes CPU results.
    threads: int | None = Field(None, ge=1, le=1024)

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
    system_metrics: bool = False  # MLflow's CPU/GPU/memory metrics for each stage run


# The training sections that take train.defaults for every key they do not set.
TRAINING_SECTIONS = (("train", "teacher"), ("train", "student"), ("distill", "train"),
                     ("transfer", "train"))  # fmt: skip


class Params(Section):
    data: DataConfig = DataConfig()
    models: ModelsConfig = ModelsConfig()
    train: TrainStages = TrainStages()
    distill: DistillConfig = DistillConfig()
    transfer: TransferConfig = TransferConfig()
    evaluate: EvaluateConfig = EvaluateConfig()
    tracking: TrackingConfig = TrackingConfig()
    compute: ComputeConfig = ComputeConfig()

    @model_validator(mode="before")
    @classmethod
    def _fill_training_defaults(cls, raw: Any) -> Any:
        """Each training section is ``train.defaults`` updated by what the section sets."""
        if not isinstance(raw, dict):
            return raw
        train = raw.get("train")
        defaults = train.get("defaults") if isinstance(train, dict) else None
        if not isinstance(defaults, dict) or not defaults:
            return raw
        raw = copy.deepcopy(raw)
        for outer, inner in TRAINING_SECTIONS:
            section = raw.setdefault(outer, {})
            if isinstance(section, dict) and isinstance(section.get(inner, {}), dict):
                section[inner] = {**defaults, **(section.get(inner) or {})}
        return raw
