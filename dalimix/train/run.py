"""One run builder: data -> loaders -> model -> optimiser -> schedule -> resume -> `fit`.

`dalimix-train`, `dalimix-reproduce` and the profiler's model step build their runs here, so a trainer
feature lands once. A command line turns its flags into a `RunConfig` (the library's names for everything
a run is made of) and calls `build_run(config, ctx)`; the returned `Run` holds the loaders, the model, the
optimiser, the schedule, the scaler and the state to continue from, and `Run.fit()` trains. Errors name
the `RunConfig` field at fault (`dalimix.validation.ArgumentError`), so a command line can name its flag.
"""
from __future__ import annotations

import os
import random
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Optional, Sequence

import numpy as np
import torch
from torch import nn

from dalimix import validation as V
from dalimix.config import MixConfig
from dalimix.loader import DaliLoader
from dalimix.train.distributed import DistContext
from dalimix.train.ema import ModelEma
from dalimix.train.fit import fit
from dalimix.train.lr_schedule import step_schedule, warmup_cosine
from dalimix.train.models import build_model, with_manifold
from dalimix.train.optim import param_groups
from dalimix.train.resume import Resume
from dalimix.train.seen import SeenRecorder
from dalimix.train.state import FitConfig, TrainState

SCHEDULES = ("cosine", "step")


@dataclass
class RunConfig:
    """What one training run is made of. `train_data` / `val_data` are folders (or tar shards) as the
    pipelines take them; `classes` fixes the labels of both."""

    train_data: str
    val_data: str
    classes: Sequence[str]
    epochs: int
    batch_size: int
    # data
    val_batch_size: Optional[int] = None
    crop: int = 224                              # the train crop (and the val crop unless val_crop)
    val_crop: Optional[int] = None
    val_resize: Optional[int] = None            # default: val crop / 0.875
    scale: tuple[float, float] = (0.08, 1.0)
    train_file_list: Optional[str] = None        # a subset of train_data (relative path, label per line)
    val_file_list: Optional[str] = None          # ... of val_data
    device: str = "gpu"
    threads: int = 4
    prefetch: int = 2
    channels_last: bool = False
    decoder_options: Optional[dict] = None
    max_steps_per_epoch: Optional[int] = None
    max_val_steps: Optional[int] = None
    seed: int = 0
    # mixing and erasing in the loader, manifold mixup in the model
    mix: Optional[MixConfig] = None
    mix_off_epoch: Optional[int] = None
    re_prob: float = 0.0
    re_mode: str = "const"
    re_count: int = 1
    repeats: int = 1                             # repeated augmentation (copies per image per epoch)
    re_order: str = "after_mix"
    auto_augment: Optional[str] = None           # a per-sample policy (timm's or torchvision's name)
    color_jitter: Any = None
    interpolation: str = "bilinear"              # train resample and policy; the val resize is bicubic for "bicubic"
    model_ema: Optional[float] = None           # the weights' moving average: its decay per update
    model_ema_steps: int = 1                     # ... updated every this many optimizer steps
    manifold_alpha: float = 0.0
    manifold_layers: Optional[Sequence[str]] = None
    manifold_input: bool = True
    manifold_mode: str = "mixup"                 # or "cutmix": Feature CutMix at the drawn layer
    # model
    arch: str = "resnet50"
    width: int = 64                              # preact_resnet18's stem channels
    sync_bn: bool = False
    # optimisation
    lr: float = 0.1
    min_lr: float = 0.0
    momentum: float = 0.9
    nesterov: bool = True
    opt: str = "sgd"                             # sgd | adamw (torch's) | lamb (timm's)
    bce_loss: bool = False                       # per-class binary cross-entropy instead of (soft) cross-entropy
    bce_target_thresh: Optional[float] = None    # ... on targets binarised at this threshold
    drop_path: float = 0.0                       # stochastic depth (timm's drop_path_rate)
    weight_decay: float = 1e-4
    decay_norm_bias: bool = False
    warmup_epochs: float = 0.0
    schedule: str = "cosine"                     # or "step": times gamma at each of milestones
    milestones: Sequence[int] = ()
    gamma: float = 0.1
    clip_grad: Optional[float] = None
    amp: bool = False
    torch_threads: Optional[int] = None          # default on the CPU: the cores DALI leaves
    deterministic: bool = False
    # the run
    output: Optional[str] = None
    progress: bool = True
    print_freq: int = 10
    stop_epoch: Optional[int] = None
    dump_seen: Optional[str] = None              # a folder for each rank's record of what it read
    plot_title: str = ""
    tune_command: Optional[str] = None

    def __post_init__(self) -> None:
        V.one_of("schedule", self.schedule, SCHEDULES)
        V.one_of("device", self.device, ("gpu", "cpu"))
        if self.val_crop is None:
            self.val_crop = self.crop
        if self.val_resize is None:
            self.val_resize = int(round(self.val_crop / 0.875))


@dataclass
class Run:
    """A training run, built and ready: `fit()` trains it to `config.epochs`."""

    config: RunConfig
    ctx: DistContext
    train_loader: DaliLoader
    val_loader: DaliLoader
    net: nn.Module                 # the bare network (what checkpoints hold)
    model: nn.Module               # what the training step calls (ManifoldMixup and/or DDP around net)
    optimizer: torch.optim.Optimizer
    scheduler: Any
    scaler: Any
    state: TrainState
    fit_config: FitConfig
    log: Callable[[str], None] = print
    run_info: dict[str, Any] = field(default_factory=dict)
    ema: Optional[ModelEma] = None  # the weights' moving average (--model-ema), evaluated beside the model

    @property
    def steps_per_epoch(self) -> int:
        return len(self.train_loader)

    def describe(self) -> str:
        """One line: the network, the data, the ranks and the mixing."""
        c = self.config
        mix = f"in-loader {c.mix!r}" if c.mix is not None else "none in the loader"
        layers = list(getattr(self.model, "eligible_layers", []) or
                      getattr(getattr(self.model, "module", None), "eligible_layers", []) or [])
        kind = "feature CutMix" if c.manifold_mode == "cutmix" else "manifold mixup"
        manifold = f", {kind} alpha={c.manifold_alpha} at {layers}" if c.manifold_alpha > 0 else ""
        return (f"{c.arch}: {len(c.classes)} classes, {self.run_info['train_images']} train / "
                f"{self.run_info['val_images']} val images, {self.ctx.world_size} rank(s) on {c.device}, "
                f"{self.steps_per_epoch} steps/epoch of {c.batch_size} per rank; mixing: {mix}{manifold}")

    def fit(self) -> dict[str, Any]:
        """Train from the state's epoch to the end; returns `fit`'s summary."""
        return fit(self.model, self.train_loader, self.val_loader, self.optimizer, ctx=self.ctx,
                   cfg=self.fit_config, scheduler=self.scheduler, scaler=self.scaler, state=self.state, log=self.log,
                   ema=self.ema)


def setup_torch(cfg: RunConfig, ctx: DistContext) -> None:
    """Seeds (one per rank), torch threads beside DALI's on the CPU, cuDNN's mode on the GPU."""
    random.seed(cfg.seed + ctx.rank)
    np.random.seed(cfg.seed + ctx.rank)
    torch.manual_seed(cfg.seed + ctx.rank)
    if cfg.torch_threads is not None:
        torch.set_num_threads(cfg.torch_threads)
    elif cfg.device == "cpu" and "OMP_NUM_THREADS" not in os.environ:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        # Oversubscribed cores slow CPU training down many times: the model gets what DALI leaves.
        torch.set_num_threads(max(1, cores // ctx.world_size - cfg.threads))
    if cfg.device == "gpu":
        torch.backends.cudnn.benchmark = not cfg.deterministic
        torch.backends.cudnn.deterministic = cfg.deterministic


def make_network(cfg: RunConfig, ctx: DistContext) -> tuple[nn.Module, nn.Module]:
    """(bare network on the run's device, the model the step calls: with manifold mixup when asked)."""
    net = build_model(cfg.arch, len(cfg.classes), width=cfg.width, crop=cfg.crop, drop_path=cfg.drop_path)
    if cfg.sync_bn and ctx.distributed:
        net = nn.SyncBatchNorm.convert_sync_batchnorm(net)
    net = net.to(ctx.device)
    if cfg.channels_last:
        net = net.to(memory_format=torch.channels_last)
    model = with_manifold(net, alpha=cfg.manifold_alpha, layers=cfg.manifold_layers,
                          include_input=cfg.manifold_input, num_classes=len(cfg.classes), mode=cfg.manifold_mode)
    return net, model


OPTIMIZERS = ("sgd", "adamw", "lamb")


def make_optimizer(net: nn.Module, cfg: RunConfig) -> torch.optim.Optimizer:
    """`cfg.opt`: SGD with momentum (Nesterov unless turned off), torch's AdamW, or timm's LAMB; no weight
    decay on 1-D parameters unless asked."""
    groups = param_groups(net, cfg.weight_decay, cfg.decay_norm_bias)
    V.one_of("opt", cfg.opt, OPTIMIZERS)
    if cfg.opt == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr)
    if cfg.opt == "lamb":
        try:
            from timm.optim import Lamb
        except ImportError:
            raise V.ArgumentError("opt", "opt: lamb is timm's LAMB; pip install 'dalimix[timm]'") from None
        return Lamb(groups, lr=cfg.lr)
    return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov and cfg.momentum > 0)


def make_criterion(cfg: RunConfig) -> Optional[Callable[[torch.Tensor, torch.Tensor], torch.Tensor]]:
    """The training loss: None for the default (soft-target cross-entropy, or cross-entropy on int labels),
    or per-class binary cross-entropy (ResNet Strikes Back) with `bce_target_thresh` binarising the targets."""
    if not cfg.bce_loss:
        return None
    from dalimix.losses import BinarySoftTargetCrossEntropy

    return BinarySoftTargetCrossEntropy(target_threshold=cfg.bce_target_thresh)


def make_scheduler(optimizer: torch.optim.Optimizer, cfg: RunConfig, steps_per_epoch: int) -> Any:
    """The per-step LR schedule: warmup then cosine to `min_lr`, or warmup then steps at `milestones`."""
    warmup = int(round(cfg.warmup_epochs * steps_per_epoch))
    if cfg.schedule == "step":
        return step_schedule(optimizer, steps_per_epoch, cfg.milestones, cfg.gamma, warmup)
    return warmup_cosine(optimizer, total_steps=cfg.epochs * steps_per_epoch, warmup_steps=warmup,
                         min_lr_ratio=cfg.min_lr / cfg.lr)


def _pipelines() -> tuple[Callable[..., Any], Callable[..., Any]]:
    from dalimix.pipelines.imagenet import train_pipeline, val_pipeline

    return train_pipeline, val_pipeline


def make_loaders(cfg: RunConfig, ctx: DistContext, *, resume: Optional[Resume] = None,
                 resume_settings: Mapping[str, Any] = (), resume_prefix: str = "resume",
                 factories: Optional[tuple[Callable[..., Any], Callable[..., Any]]] = None
                 ) -> tuple[DaliLoader, DaliLoader, int]:
    """(train loader at the run's next epoch, val loader, the first epoch the train pipeline was built at)."""
    train_factory, val_factory = factories or _pipelines()
    device_id = ctx.device.index if cfg.device == "gpu" else None
    extra = {"file_list": cfg.train_file_list} if cfg.train_file_list else {}

    def build(first_epoch: int, checkpoint: Optional[bytes]) -> Any:
        return train_factory(cfg.train_data, batch_size=cfg.batch_size, crop=cfg.crop, device=cfg.device,
                             num_threads=cfg.threads, mix=cfg.mix, shard_id=ctx.rank, num_shards=ctx.world_size,
                             seed=cfg.seed, device_id=device_id, scale=tuple(cfg.scale),
                             channels_last=cfg.channels_last, re_prob=cfg.re_prob, re_mode=cfg.re_mode,
                             re_count=cfg.re_count, repeats=cfg.repeats, re_order=cfg.re_order,
                             auto_augment=cfg.auto_augment, color_jitter=cfg.color_jitter,
                             interpolation=cfg.interpolation,
                             classes=list(cfg.classes), first_epoch=first_epoch,
                             checkpoint=checkpoint, max_batches_per_epoch=cfg.max_steps_per_epoch,
                             prefetch_queue_depth=cfg.prefetch, decoder_options=cfg.decoder_options or None,
                             **extra)

    if resume is None:
        train, first_epoch = DaliLoader(build(0, None)), 0
    else:
        train, first_epoch = resume.train_loader(build, ctx=ctx, settings=dict(resume_settings),
                                                 prefix=resume_prefix)
    if train.classes != list(cfg.classes):
        raise RuntimeError(f"class folders changed while listing {cfg.train_data}")
    if cfg.mix_off_epoch is not None and train.schedule is not None:
        train.set_mix(False, from_epoch=cfg.mix_off_epoch)  # the pipeline is not rebuilt
    val = DaliLoader(val_factory(cfg.val_data, batch_size=cfg.val_batch_size or cfg.batch_size, crop=cfg.val_crop,
                                 resize=cfg.val_resize, device=cfg.device, num_threads=cfg.threads,
                                 shard_id=ctx.rank, num_shards=ctx.world_size, device_id=device_id,
                                 channels_last=cfg.channels_last, classes=list(cfg.classes),
                                 max_batches_per_epoch=cfg.max_val_steps, prefetch_queue_depth=cfg.prefetch,
                                 interpolation="bicubic" if cfg.interpolation == "bicubic" else "bilinear",
                                 **({"file_list": cfg.val_file_list} if cfg.val_file_list else {})))
    return train, val, first_epoch


def build_run(cfg: RunConfig, ctx: DistContext, *, resume: Optional[Resume] = None,
              resume_settings: Mapping[str, Any] = (), resume_prefix: str = "resume",
              run_info: Optional[Mapping[str, Any]] = None, steps_note: str = "",
              log: Callable[[str], None] = print,
              factories: Optional[tuple[Callable[..., Any], Callable[..., Any]]] = None) -> Run:
    """Everything `cfg` describes, built on `ctx`'s device, continuing from `resume` when given.

    `resume_settings` are this run's values of `dalimix.train.resume.DATA_SETTINGS` (the DALI augmentation
    state is restored only when they match the checkpoint's); `run_info` is added to what summary.json and
    the checkpoints record; `steps_note` says how the steps per epoch came about when a resumed schedule is
    rescaled; `factories` replace the ImageNet (train, val) pipeline builders.
    """
    setup_torch(cfg, ctx)
    net, model = make_network(cfg, ctx)
    train_loader, val_loader, first_epoch = make_loaders(cfg, ctx, resume=resume, resume_settings=resume_settings,
                                                         resume_prefix=resume_prefix, factories=factories)
    if ctx.distributed:
        from torch.nn.parallel import DistributedDataParallel as DDP

        model = DDP(model, device_ids=[ctx.device.index] if cfg.device == "gpu" else None)
    steps = len(train_loader)
    optimizer = make_optimizer(net, cfg)
    scheduler = make_scheduler(optimizer, cfg, steps)
    scaler = torch.amp.GradScaler("cuda", enabled=cfg.amp) if cfg.device == "gpu" else None
    amp_dtype = (torch.float16 if cfg.device == "gpu" else torch.bfloat16) if cfg.amp else None
    state = TrainState()
    if resume is not None:
        state = resume.restore(model=net, optimizer=optimizer, scheduler=scheduler, scaler=scaler, ctx=ctx,
                               steps_per_epoch=steps, log=log, prefix=resume_prefix, steps_note=steps_note)
    ema = make_ema(net, cfg, resume, log=log, prefix=resume_prefix)
    info = {"arch": cfg.arch, "num_classes": len(cfg.classes), "num_params": sum(p.numel() for p in net.parameters()),
            "train_images": len(train_loader.source.files), "val_images": len(val_loader.source.files),
            "steps_per_epoch": steps, "global_batch_size": cfg.batch_size * ctx.world_size, **dict(run_info or {})}
    fit_config = FitConfig(
        epochs=cfg.epochs, output=cfg.output, amp_dtype=amp_dtype, manifold=cfg.manifold_alpha > 0,
        mix_off_epoch=cfg.mix_off_epoch, max_grad_norm=cfg.clip_grad, progress=cfg.progress,
        print_freq=cfg.print_freq, run_info=info, first_epoch=first_epoch, plot_title=cfg.plot_title,
        recorder=SeenRecorder() if cfg.dump_seen else None,
        recorder_path=os.path.join(cfg.dump_seen, f"rank{ctx.rank}_seen.json") if cfg.dump_seen else None,
        stop_epoch=cfg.stop_epoch, resumed_from=resume.path if resume is not None else None,
        criterion=make_criterion(cfg),
        tune_command=cfg.tune_command)
    return Run(config=cfg, ctx=ctx, train_loader=train_loader, val_loader=val_loader, net=net, model=model,
               optimizer=optimizer, scheduler=scheduler, scaler=scaler, state=state, fit_config=fit_config, log=log,
               run_info=info, ema=ema)


def make_ema(net: nn.Module, cfg: RunConfig, resume: Optional[Resume], *, log: Callable[[str], None] = print,
             prefix: str = "resume") -> Optional[ModelEma]:
    """The weights' moving average `cfg.model_ema` asks for, continued from the checkpoint's where it has one."""
    if cfg.model_ema is None:
        return None
    ema = ModelEma(net, cfg.model_ema, cfg.model_ema_steps)
    stored = resume.checkpoint.get("ema") if resume is not None else None
    if stored is not None:
        ema.load_state_dict(stored)
    elif resume is not None:
        log(f"{prefix}: the checkpoint holds no moving average of the weights; --model-ema starts one from the "
            f"resumed weights")
    return ema
