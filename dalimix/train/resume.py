"""Continuing a training run from a checkpoint: everything it restores, checked against this run.

`Resume.load(path)` reads a checkpoint (plain data only, see `dalimix.train.checkpoint`). Then:
- `train_loader(build, ...)` gives the train `DaliLoader` positioned at the next epoch, with the DALI
  augmentation state restored when the data settings match (else a fresh pipeline, with a warning saying
  which setting changed: the file order stays exact, the augmentation draws do not);
- `restore(model=..., optimizer=..., ...)` restores weights, optimizer, LR schedule (rescaled when the
  steps per epoch changed), AMP scaler and every rank's RNG, and returns the `TrainState` for `fit`;
- `later_work(output)` says what resuming into an output folder whose run went further would lose.
The pipeline itself is built by the caller's `build(first_epoch, dali_state)` (the library does not import
`pipelines`), so one object does the whole resume. No pipeline knowledge beyond `PipelineSpec`.
"""
from __future__ import annotations

import json
import os
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Optional

from torch import nn

from dalimix.train.checkpoint import checkpoint_epoch, load_checkpoint
from dalimix.train.lr_schedule import restore_schedule
from dalimix.train.rng import set_rng_state
from dalimix.train.state import TrainState
from dalimix.train.distributed import DistContext
from dalimix.loader import DaliLoader
from dalimix.spec import PipelineSpec

# Run settings (argument names) a DALI checkpoint belongs to: restoring it under others would replay the
# wrong augmentation stream.
DATA_SETTINGS = ("data", "device", "batch_size", "crop", "seed", "mixup_alpha", "cutmix_alpha", "cutmix_minmax",
                 "mix_prob", "switch_prob", "mix_mode", "label_smoothing", "re_prob", "re_mode", "re_count",
                 "re_order", "aa", "color_jitter", "interpolation", "aug_repeats",
                 "channels_last", "max_steps_per_epoch")


def _jsonable(v: Any) -> Any:
    return list(v) if isinstance(v, tuple) else v


@dataclass
class Resume:
    """A checkpoint to continue from (`path`, as `load_checkpoint` returns it in `checkpoint`)."""

    path: str
    checkpoint: dict

    @classmethod
    def load(cls, path: str, *, trust: bool = False) -> "Resume":
        """Read `path`; `CheckpointError` / `FileNotFoundError` name the file and the reason."""
        return cls(path=path, checkpoint=load_checkpoint(path, trust=trust))

    @property
    def start_epoch(self) -> int:
        """The epoch to run next (0-based)."""
        return int(self.checkpoint["epoch"]) + 1

    @property
    def args(self) -> dict[str, Any]:
        """The arguments of the run that wrote the checkpoint (empty when it recorded none)."""
        return dict((self.checkpoint.get("run_info") or {}).get("args") or {})

    @property
    def first_epoch(self) -> int:
        """The dataset epoch the checkpointed run's train pipeline was built to start at."""
        # "data_start_epoch": its name in checkpoints written before dalimix 0.2.
        return int(self.checkpoint.get("first_epoch", self.checkpoint.get("data_start_epoch", 0)))

    def later_work(self, output: Optional[str]) -> list[str]:
        """What the run in `output` holds beyond this checkpoint (resuming there would drop it): e.g.
        ["checkpoint.pt is at epoch 3", "metrics.jsonl logs epoch 3"]; empty when nothing."""
        if not output or not os.path.isdir(output):
            return []
        epoch = int(self.checkpoint["epoch"])
        ahead = []
        latest = os.path.join(output, "checkpoint.pt")
        if os.path.isfile(latest) and not os.path.samefile(latest, self.path):
            later = checkpoint_epoch(latest)
            if later is not None and later > epoch:
                ahead.append(f"checkpoint.pt is at epoch {later + 1}")
        try:
            with open(os.path.join(output, "metrics.jsonl")) as fh:
                logged = [json.loads(line)["epoch"] for line in fh if line.strip()]
        except (OSError, ValueError, KeyError, TypeError):
            logged = []
        if logged and max(logged) > epoch:
            ahead.append(f"metrics.jsonl logs epoch {max(logged) + 1}")
        return ahead

    def _dali_state(self, ctx: DistContext, settings: Mapping[str, Any]) -> tuple[Optional[bytes], str]:
        dali = self.checkpoint.get("dali") or []
        old = self.args
        changed = [k for k in DATA_SETTINGS if k in old and k in settings and old[k] != _jsonable(settings[k])]
        if len(dali) != ctx.world_size:
            return None, f"the checkpoint has {len(dali)} rank(s), this run {ctx.world_size}"
        if dali[ctx.rank] is None:
            return None, "the checkpoint holds no DALI state"
        if changed:
            return None, f"data settings changed: {', '.join(changed)}"
        return dali[ctx.rank], ""

    def train_loader(self, build: Callable[[int, Optional[bytes]], PipelineSpec], *, ctx: DistContext,
                     settings: Mapping[str, Any], prefix: str = "resume") -> tuple[DaliLoader, int]:
        """The train loader at `start_epoch` and the first epoch its pipeline was built at (for `FitConfig`).

        `build(first_epoch, dali_state)` makes the train pipeline; `settings` are this run's values of
        `DATA_SETTINGS` (the checkpoint's are compared with them).
        """
        state, why = self._dali_state(ctx, settings)
        if state is not None:
            try:
                spec = build(self.first_epoch, state)
                spec.pipeline.build()  # restores the state now, so that a bad checkpoint fails here, not mid-epoch
                loader = DaliLoader(spec)
                loader.epoch = self.start_epoch
                return loader, self.first_epoch
            except Exception as exc:  # noqa: BLE001 - fall back to a fresh pipeline, loudly
                why = f"restoring it failed: {exc}"
        if ctx.is_main:
            warnings.warn(f"{prefix}: not restoring the DALI augmentation state ({why}); the file order of each epoch "
                          f"is still exact, but crops, flips and mixing draws differ from an uninterrupted run",
                          stacklevel=2)
        return DaliLoader(build(self.start_epoch, None)), self.start_epoch

    def restore(self, *, model: nn.Module, optimizer: Any, ctx: DistContext, steps_per_epoch: int,
                scheduler: Any = None, scaler: Any = None, log: Callable[[str], None] = print,
                prefix: str = "resume", steps_note: str = "") -> TrainState:
        """Load weights, optimizer, schedule, scaler and RNG; return the state `fit` continues from.

        `model` is the bare network (before DDP / ManifoldMixup wrapping). A schedule written with other
        steps per epoch (another batch size or number of ranks) is rescaled to this run's, and `log` says so
        (`prefix` and `steps_note`, e.g. how the steps came about, go into that line).
        """
        ckpt = self.checkpoint
        try:
            model.load_state_dict(ckpt["model"])
        except RuntimeError as exc:
            raise ValueError(f"the checkpoint {self.path} does not fit this model: {str(exc).splitlines()[0]}") \
                from None
        optimizer.load_state_dict(ckpt["optimizer"])
        if scheduler is not None and ckpt.get("scheduler") is not None:
            stored = restore_schedule(scheduler, ckpt["scheduler"], epoch=self.start_epoch,
                                             steps_per_epoch=steps_per_epoch)
            if stored != self.start_epoch * steps_per_epoch:
                before = (ckpt.get("run_info") or {}).get("steps_per_epoch") or stored // max(1, self.start_epoch)
                note = f" {steps_note}" if steps_note else ""
                log(f"{prefix}: {before} -> {steps_per_epoch} steps per epoch{note}; the LR schedule is rescaled to "
                    f"{steps_per_epoch} steps per epoch, lr {optimizer.param_groups[0]['lr']:.4g} at epoch "
                    f"{self.start_epoch + 1}")
        if scaler is not None and ckpt.get("scaler"):
            scaler.load_state_dict(ckpt["scaler"])
        rngs = ckpt.get("rng") or []
        if len(rngs) == ctx.world_size:
            set_rng_state(rngs[ctx.rank])
        elif ctx.is_main:
            warnings.warn(f"resume: the checkpoint has RNG states of {len(rngs)} rank(s), this run has "
                          f"{ctx.world_size}; model-side random draws will differ", stacklevel=2)
        return TrainState.from_checkpoint(ckpt)
