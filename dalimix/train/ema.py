"""An exponential moving average of the model's weights (`--model-ema`), evaluated beside the model.

torch's own `AveragedModel` with its EMA rule (`get_ema_multi_avg_fn`), BatchNorm buffers averaged too (as
torchvision's reference does): the average is `decay * ema + (1 - decay) * weights`, taken every `every`
optimizer steps (timm's meaning of the decay with `every=1`); the first update copies the weights.
"""
from __future__ import annotations

from typing import Any, Mapping

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from dalimix import validation as V


class ModelEma:
    """The moving average of `model` (the bare network), `.module` the averaged network to evaluate."""

    def __init__(self, model: nn.Module, decay: float, every: int = 1):
        if not 0.0 < float(decay) < 1.0:
            raise V.ArgumentError("model_ema", f"model_ema: the decay must lie in (0, 1), got {decay}")
        self.decay = float(decay)
        self.every = V.positive_int("model_ema_steps", every)
        self.averaged = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(self.decay), use_buffers=True)
        self.steps = 0

    @property
    def module(self) -> nn.Module:
        return self.averaged.module

    @torch.no_grad()
    def step(self, model: nn.Module) -> None:
        """Count one optimizer step of `model`; every `every`-th one updates the average."""
        self.steps += 1
        if self.steps % self.every == 0:
            self.averaged.update_parameters(model)

    def state_dict(self) -> dict[str, Any]:
        """Plain data for the checkpoint: the averaged weights and buffers, the step count, the settings."""
        return {"module": self.module.state_dict(), "n_averaged": int(self.averaged.n_averaged.item()),
                "steps": self.steps, "decay": self.decay, "every": self.every}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.module.load_state_dict(state["module"])
        self.averaged.n_averaged.fill_(int(state["n_averaged"]))
        self.steps = int(state["steps"])


def best_ema_checkpoint(checkpoint: Mapping[str, Any]) -> dict[str, Any]:
    """`best_ema.pt` from an epoch's checkpoint: its moving average as "model" (loads into the bare network as
    `best.pt` does), with the epoch, history and run info, without the optimiser, RNG and DALI states."""
    kept = {k: v for k, v in checkpoint.items() if k not in ("model", "ema", "optimizer", "dali", "rng")}
    return {**kept, "model": checkpoint["ema"]["module"], "ema_of": "model"}
