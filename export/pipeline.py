"""The export chain from one command: fine-tune -> distill -> quantize -> export, each stage cached by content.

    python export/build.py --target ov-int8 --finetune-data ../shared/data/medseg-dev --distill student --teacher lite_medsam --dry-run

A stage's key is a sha256 over everything its result depends on: the code-level stage name and format, its settings,
the content of its input data (every file of the dataset / pool folder) and the content of the checkpoint it starts
from, which for a later stage is the earlier stage's output. A finished stage writes `stage.json` (key, output file
and its sha256) into `<work>/<stage>-<key>/`; a rerun with the same inputs finds it and skips the stage, and any
changed input gives a new key and a new folder. An interrupted stage resumes from its own checkpoint (`last.pt`).
The last step (quantize + export) is `bundler.build_bundle`, skipped when the bundle folder already holds a
manifest with the same checkpoint sha256, target and options.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from sammed_edge.runtime.bundle import sha256_file

from .models import load_model
from .models.checkpoints import cache_dir
from .models.registry import MODELS

log = logging.getLogger(__name__)

STAGE_FORMAT = 1
STAGE_FILE = "stage.json"
MODEL_FILE = "model.safetensors"


def datasets_digest(folders: "Sequence[str | Path]") -> list[str]:
    """`tree_digest` of each dataset folder, in the given order (the order decides the split's rounds)."""
    return [tree_digest(folder) for folder in folders]


def tree_digest(folder: str | Path) -> str:
    """sha256 over every file below `folder`: relative path and content, in sorted order."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} is not a folder")
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(path.relative_to(folder).as_posix().encode() + b"\x00")
        digest.update(bytes.fromhex(sha256_file(path)))
    return digest.hexdigest()


def checkpoint_digest(checkpoint: str | Path) -> str:
    """sha256 of a checkpoint file, or of a registered model's fetched weights."""
    name = str(checkpoint)
    if name in MODELS and not Path(name).exists():
        fetch = MODELS[name].fetch_weights
        if fetch is None:
            raise ValueError(f"{name!r} has no weights to start from")
        return sha256_file(fetch())
    return sha256_file(checkpoint)


def save_model(model: torch.nn.Module, path: Path) -> Path:
    """The full float32 state dict as safetensors, written atomically (loadable by `load_model(path)`)."""
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, str(tmp))
    os.replace(tmp, path)
    return path


@dataclass
class Stage:
    """One cached step of the chain.

    Attributes:
        name: "finetune" or "distill".
        inputs: what the result depends on (settings, data digests, the starting checkpoint's digest).
        run: callable(folder, resume) -> path of the stage's full-model checkpoint.
        work: folder holding every stage's run folders.
    """

    name: str
    inputs: dict[str, Any]
    run: Callable[[Path, bool], Path]
    work: Path
    key: str = field(init=False)

    def __post_init__(self) -> None:
        payload = json.dumps({"stage": self.name, "format": STAGE_FORMAT, **self.inputs}, sort_keys=True, default=str)
        self.key = hashlib.sha256(payload.encode()).hexdigest()[:16]

    @property
    def folder(self) -> Path:
        return self.work / f"{self.name}-{self.key}"

    def finished(self) -> Path | None:
        """The output checkpoint of a finished run with this key whose content is intact, else None."""
        record = self.folder / STAGE_FILE
        if not record.is_file():
            return None
        data = json.loads(record.read_text())
        output = self.folder / data.get("output", MODEL_FILE)
        if data.get("key") != self.key or not output.is_file() or sha256_file(output) != data.get("sha256"):
            return None
        return output

    def status(self) -> str:
        if self.finished() is not None:
            return "cached"
        return "resume" if any(self.folder.rglob("last.pt")) else "run"

    def execute(self) -> Path:
        done = self.finished()
        if done is not None:
            log.info("%s: cached (%s)", self.name, self.folder)
            return done
        resume = self.status() == "resume"
        self.folder.mkdir(parents=True, exist_ok=True)
        log.info("%s: %s in %s", self.name, "resuming" if resume else "running", self.folder)
        output = self.run(self.folder, resume)
        record = {"key": self.key, "stage": self.name, "inputs": self.inputs, "output": output.name, "sha256": sha256_file(output)}
        (self.folder / STAGE_FILE).write_text(json.dumps(record, indent=1, default=str) + "\n")
        return output


@dataclass
class ChainOptions:
    """What the chain does before the export step.

    Attributes:
        teacher: starting model (registered name or checkpoint path).
        finetune_data: datasets of the fine-tuning stage, split by source in rounds (empty: no fine-tuning).
        finetune_epochs: its epochs.
        distill: registered student architecture (None: no distillation).
        student_overrides: settings of that architecture that differ from its registered ones.
        distill_data: datasets whose training and validation sources the distillation uses (default:
            finetune_data).
        pool: unlabeled images for distillation (None: none).
        distill_epochs, prompt_epochs: distillation stage-1 and stage-2 epochs.
        bf16: bfloat16 autocast in training.
        seed: training seed.
        work: folder of the stage runs (default `<weights cache>/pipeline`).
    """

    teacher: str = "lite_medsam"
    finetune_data: Sequence[Path] = ()
    finetune_epochs: int = 2
    distill: str | None = None
    student_overrides: dict[str, Any] = field(default_factory=dict)
    distill_data: Sequence[Path] = ()
    pool: Path | None = None
    distill_epochs: int = 6
    prompt_epochs: int = 0
    bf16: bool = True
    seed: int = 0
    work: Path | None = None


def plan(options: ChainOptions) -> list[Stage]:
    """The stages `options` ask for, keyed by content (nothing runs). A later stage's key covers the earlier key."""
    from .train import distill as distill_stage
    from .train import finetune as finetune_stage

    work = Path(options.work) if options.work is not None else cache_dir() / "pipeline"
    stages: list[Stage] = []
    start = {"checkpoint": options.teacher, "checkpoint_sha256": checkpoint_digest(options.teacher)}
    if options.finetune_data:
        settings = finetune_stage.Settings(model=str(options.teacher), seed=options.seed, bf16=options.bf16)
        data = [Path(folder) for folder in options.finetune_data]

        def run_finetune(folder: Path, resume: bool, settings=settings, data=data) -> Path:
            from safetensors.torch import load_file

            weights = finetune_stage.finetune(data, folder / "run", model=str(options.teacher), epochs=options.finetune_epochs,
                                              settings=settings, resume=resume)
            model = load_model(options.teacher)

            state = load_file(str(weights))
            model.load_state_dict({**model.state_dict(), **{k: v.float() for k, v in state.items()}})
            return save_model(model, folder / MODEL_FILE)

        stage = Stage("finetune", {**start, "data_sha256": datasets_digest(data), "epochs": options.finetune_epochs,
                                   "settings": settings.to_dict()}, run_finetune, work)
        stages.append(stage)
        start = {"checkpoint": f"finetune-{stage.key}", "upstream_key": stage.key}
    if options.distill is not None:
        if not options.distill_data and not options.finetune_data:
            raise ValueError("distillation needs a dataset: pass --finetune-data or --distill-data")
        data = [Path(folder) for folder in (options.distill_data or options.finetune_data)]
        settings = distill_stage.DistillSettings(teacher="custom", student=options.distill,
                                                 student_overrides=dict(options.student_overrides), epochs=options.distill_epochs,
                                                 seed=options.seed, bf16=options.bf16)
        upstream = stages[-1] if stages else None

        def run_distill(folder: Path, resume: bool, settings=settings, data=data, upstream=upstream) -> Path:
            from safetensors.torch import load_file

            teacher = load_model(upstream.execute() if upstream is not None else options.teacher)
            weights = distill_stage.distill(data, folder / "run", pool=options.pool, settings=settings, teacher=teacher,
                                            resume=resume, prompt_epochs=options.prompt_epochs)
            student = distill_stage.make_student(settings, teacher)

            state = load_file(str(weights))
            student.load_state_dict({**student.state_dict(), **{k: v.float() for k, v in state.items()}})
            return save_model(student, folder / MODEL_FILE)

        inputs = {**start, "data_sha256": datasets_digest(data), "pool_sha256": tree_digest(options.pool) if options.pool else None,
                  "prompt_epochs": options.prompt_epochs, "settings": dataclasses.asdict(settings)}
        stages.append(Stage("distill", inputs, run_distill, work))
    return stages


def bundle_is_current(out: Path, checkpoint: Path, target: str, exporter: dict[str, Any]) -> bool:
    """Whether `out` already holds a passed bundle of `checkpoint` for `target`, exported with `exporter` settings
    (the manifest's provenance.exporter)."""
    manifest = out / "manifest.json"
    if not manifest.is_file():
        return False
    data = json.loads(manifest.read_text())
    provenance = data.get("provenance", {})
    return (provenance.get("checkpoint", {}).get("sha256") == sha256_file(checkpoint)
            and data.get("target", {}).get("name") == target and provenance.get("exporter") == exporter
            and bool(data.get("verification", {}).get("passed")))


def describe(stages: list[Stage], target: str, out: Path) -> str:
    """The plan as text: one line per stage with its status (cached / resume / run), then the export step."""
    lines = ["plan:"]
    for index, stage in enumerate(stages, 1):
        lines.append(f"  {index}. {stage.name:<9} {stage.status():<7} {stage.folder}")
        for key, value in stage.inputs.items():
            if key != "settings":
                lines.append(f"       {key}: {value}")
    lines.append(f"  {len(stages) + 1}. export    {target} -> {out} (quantize, export, verify, gate)")
    return "\n".join(lines)
