"""Find the fastest loader settings on the user's own data and device (`dalimix-profile --tune`).

The search is one pass of coordinate descent. It starts from the defaults (the settings the user runs now)
and takes the knobs in turn: DALI threads, prefetch depth, batch size per rank, and on a GPU the hardware
JPEG decoder's share (`hw_decoder_load`) and the decoder's memory padding / preallocation. For each knob it
builds one loader per candidate value (the other knobs at their best so far), measures them side by side
(a warm-up, then alternating rounds, median of the rounds, as `dalimix.tools.profiling` measures everything) and
keeps a new value only when it beats the current one by more than `margin`: shared machines drift 5-20%,
and a setting that only wins by noise is no advice. At the end the best settings and the defaults are
measured side by side once more; that ratio is the gain reported.

The whole search stays within its budget (`seconds`): the time left is shared out over the candidates still
to measure, loaders of settings that lost are closed at once, and a knob that no longer fits is skipped and
said so. The defaults and the best so far stay built, so the final comparison costs no rebuild.

The tuner takes a pipeline factory, `factory(**kwargs) -> PipelineSpec` (e.g.
`functools.partial(train_pipeline, data_dir, crop=224, device="cpu")`), and never imports `pipelines`
(docs/DESIGN.md). Settings are flat (`num_threads`, `prefetch_queue_depth`, `batch_size`, `hw_decoder_load`,
`device_memory_padding`, ...); the GPU decoder's reach the factory as one `decoder_options` dict, as
`train_pipeline` takes them (`factory_kwargs`). A knob the factory cannot take is skipped with that reason.
With a `step` (e.g. `dalimix.tools.profiling.ModelStep`) every batch also goes through a model's training step, so
the score is what training would reach, contention for CPU cores between DALI and the model included.
"""
from __future__ import annotations

import inspect
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping, Optional, Sequence

import numpy as np

from dalimix.atomic_files import save_figure
from dalimix.tools.profiling import Contender, cpu_cores

__all__ = ["Knob", "TuneResult", "search_space", "accepts", "factory_kwargs", "tune", "pipeline_call",
           "train_flags", "format_report", "plot_tuning", "max_image_size", "TRAIN_FLAGS", "DECODER_OPTIONS",
           "DALI_HW_DECODER_LOAD"]

DALI_HW_DECODER_LOAD = 0.65  # fn.decoders.image_random_crop's default share for the hardware JPEG decoder
DALI_MEMORY_PADDING = 16 * 2 ** 20  # ... and its default nvJPEG device memory padding (host: 8 MiB)
# Settings that go to the GPU decoder: the factory takes them in one `decoder_options` dict.
DECODER_OPTIONS = ("hw_decoder_load", "device_memory_padding", "host_memory_padding", "preallocate_width_hint",
                   "preallocate_height_hint")
# `dalimix-train` flags of single settings; the decoder's padding and preallocation are pairs (`train_flags`).
TRAIN_FLAGS = {"num_threads": "--threads", "batch_size": "--batch-size", "prefetch_queue_depth": "--prefetch",
               "hw_decoder_load": "--hw-decoder-load"}
# The order settings are printed in.
_ORDER = ("batch_size", "crop", "device", "dtype", "num_threads", "prefetch_queue_depth", "decoder_options",
          *DECODER_OPTIONS)


@dataclass(frozen=True, eq=False)
class Knob:
    """One setting to search: `candidates` are dicts of factory keyword arguments (`{}` leaves the
    factory's own default), `default` is the one the search starts from (one of them), `labels` say how
    each candidate is shown (default: its arguments)."""

    name: str
    candidates: tuple[Mapping[str, Any], ...]
    default: Mapping[str, Any]
    labels: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.candidates:
            raise ValueError(f"knob {self.name!r}: candidates must not be empty")
        if dict(self.default) not in [dict(c) for c in self.candidates]:
            raise ValueError(f"knob {self.name!r}: default {dict(self.default)} is not among its candidates")
        if self.labels and len(self.labels) != len(self.candidates):
            raise ValueError(f"knob {self.name!r}: {len(self.labels)} labels for {len(self.candidates)} candidates")

    @property
    def keywords(self) -> set[str]:
        """Every factory keyword some candidate sets."""
        return {k for c in self.candidates for k in c}

    def label(self, candidate: Mapping[str, Any]) -> str:
        """How `candidate` is shown in reports."""
        for c, text in zip(self.candidates, self.labels):
            if dict(c) == dict(candidate):
                return text
        if set(candidate) == {self.name}:
            return str(candidate[self.name])
        return ", ".join(f"{k}={v}" for k, v in candidate.items()) or "factory default"


def _unique(values: Iterable[int]) -> list[int]:
    return sorted({int(v) for v in values if int(v) >= 1})


def search_space(device: str, *, batch_size: int, num_threads: int, prefetch_queue_depth: int = 2,
                 thread_counts: Optional[Sequence[int]] = None, prefetch_depths: Optional[Sequence[int]] = None,
                 batch_sizes: Optional[Sequence[int]] = None, hw_decoder_loads: Optional[Sequence[float]] = None,
                 max_image: Optional[tuple[int, int]] = None) -> list[Knob]:
    """The knobs to search on `device` ("cpu" or "gpu"), starting from the given settings.

    Candidates unless given: DALI threads in powers of two from an eighth of the cores up to all of them,
    plus the core count and `num_threads`; prefetch depth 1-4; half, the same and double `batch_size`; on
    a GPU the hardware decoder's share 0, 0.3, DALI's 0.65, 0.8 and 0.95, and nvJPEG's buffers at DALI's
    defaults or padded and preallocated for `max_image` (width, height; see `max_image_size`).
    """
    if device not in ("cpu", "gpu"):
        raise ValueError(f"device must be 'cpu' or 'gpu', got {device!r}")
    for name, value in (("batch_size", batch_size), ("num_threads", num_threads),
                        ("prefetch_queue_depth", prefetch_queue_depth)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    cores = cpu_cores()
    if thread_counts is None:
        powers = [2 ** k for k in range(0, 12) if cores / 8 <= 2 ** k <= cores]
        thread_counts = [*powers, cores]
    if prefetch_depths is None:
        prefetch_depths = (1, 2, 3, 4)
    if batch_sizes is None:
        batch_sizes = (batch_size // 2, batch_size, batch_size * 2)
    knobs = []
    for name, values, default in (("num_threads", thread_counts, num_threads),
                                  ("prefetch_queue_depth", prefetch_depths, prefetch_queue_depth),
                                  ("batch_size", batch_sizes, batch_size)):
        values = _unique([*values, default])
        knobs.append(Knob(name, tuple({name: v} for v in values), {name: default}))
    if device == "gpu":
        loads = (0.0, 0.3, 0.8, 0.95) if hw_decoder_loads is None else hw_decoder_loads
        loads = sorted({float(v) for v in loads} - {DALI_HW_DECODER_LOAD})
        for v in loads:
            if not 0.0 <= v <= 1.0:
                raise ValueError(f"hw_decoder_loads must lie in [0, 1], got {v}")
        cands = [{}] + [{"hw_decoder_load": v} for v in loads]
        labels = [f"{DALI_HW_DECODER_LOAD} (DALI default)"] + [f"{v:g}" for v in loads]
        knobs.append(Knob("hw_decoder_load", tuple(cands), {}, tuple(labels)))
        width, height = max_image or (5980, 6430)  # DALI's ResNet-50 example's hints for ImageNet
        # Padding that holds the largest image decoded (RGB), so nvJPEG never reallocates; one value for
        # device and host, as `dalimix-train --decoder-memory-padding` sets both.
        mib = 2 ** 20
        padding = max(DALI_MEMORY_PADDING, -(-int(width) * int(height) * 3 // mib) * mib)
        padded = {"device_memory_padding": padding, "host_memory_padding": padding,
                  "preallocate_width_hint": int(width), "preallocate_height_hint": int(height)}
        knobs.append(Knob("decoder_memory", ({}, padded), {},
                          ("DALI defaults (16 MiB device, 8 MiB host padding, no preallocation)",
                           f"padded {padding // mib} MiB, preallocated for {width}x{height}")))
    return knobs


def max_image_size(files: Sequence[str], limit: int = 1000) -> Optional[tuple[int, int]]:
    """(width, height): the largest of each over up to `limit` of `files` spread evenly, read from image
    headers only (PIL); None when none can be read."""
    from PIL import Image

    if not files:
        return None
    picks = files if len(files) <= limit else [files[int(i)] for i in np.linspace(0, len(files) - 1, limit)]
    width = height = 0
    for path in picks:
        try:
            with Image.open(path) as im:
                width, height = max(width, im.size[0]), max(height, im.size[1])
        except Exception:  # noqa: BLE001 - unreadable files are the dataset scan's business
            continue
    return (width, height) if width and height else None


def factory_kwargs(settings: Mapping[str, Any]) -> dict[str, Any]:
    """Flat settings as the factory's keyword arguments: the decoder's (`DECODER_OPTIONS`) folded into one
    `decoder_options` dict, the others as they are."""
    out = {k: v for k, v in settings.items() if k not in DECODER_OPTIONS}
    decoder = {k: settings[k] for k in DECODER_OPTIONS if k in settings}
    if decoder:
        out["decoder_options"] = decoder
    return out


def accepts(factory: Callable[..., Any], keyword: str) -> bool:
    """Whether `factory` takes setting `keyword` as a keyword argument (or takes **kwargs); the decoder's
    settings need a `decoder_options` argument."""
    if keyword in DECODER_OPTIONS:
        keyword = "decoder_options"
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        return True  # cannot tell: try it, a failure is reported per candidate
    if keyword in params:
        return params[keyword].kind in (inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    return any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


@dataclass
class TuneResult:
    """What `tune` found: the defaults and the best settings, their rates side by side, every trial."""

    defaults: dict[str, Any]
    best: dict[str, Any]
    default_rate: float
    best_rate: float
    side_by_side: bool                  # the final defaults-vs-best comparison ran (else: from the stages)
    trials: list[dict[str, Any]] = field(default_factory=list)
    chosen: dict[str, str] = field(default_factory=dict)    # knob -> the label of the value kept
    skipped: dict[str, str] = field(default_factory=dict)   # knob -> why it was not searched
    seconds: float = 0.0                # wall time of the search
    budget: float = 0.0
    consumer: str = "loader only"
    final_runs: dict[str, list[float]] = field(default_factory=dict)
    # The search's pick when the final rounds did not confirm it (it beat the defaults by no more than the
    # margin side by side; `best` is then the defaults), with its rate there.
    unconfirmed: dict[str, Any] = field(default_factory=dict)
    unconfirmed_rate: Optional[float] = None

    @property
    def gain(self) -> float:
        """Best images/s over the defaults' (measured side by side where `side_by_side`)."""
        return self.best_rate / self.default_rate if self.default_rate > 0 else float("nan")

    @property
    def changed(self) -> dict[str, Any]:
        """The settings whose best value differs from the default."""
        keys = set(self.best) | set(self.defaults)
        return {k: self.best.get(k) for k in _ordered(keys) if self.best.get(k) != self.defaults.get(k)}

    def to_dict(self) -> dict[str, Any]:
        """Plain data for JSON."""
        return {"defaults": self.defaults, "best": self.best, "default_images_per_sec": round(self.default_rate, 1),
                "best_images_per_sec": round(self.best_rate, 1), "gain": round(self.gain, 3),
                "side_by_side": self.side_by_side, "changed": self.changed, "chosen": self.chosen,
                "skipped": self.skipped, "trials": self.trials, "final_runs": self.final_runs,
                "unconfirmed": self.unconfirmed,
                "unconfirmed_images_per_sec": (None if self.unconfirmed_rate is None
                                               else round(self.unconfirmed_rate, 1)),
                "seconds": round(self.seconds, 1), "budget": self.budget, "consumer": self.consumer}


def _ordered(keys: Iterable[str]) -> list[str]:
    keys = list(keys)
    return sorted(keys, key=lambda k: (_ORDER.index(k) if k in _ORDER else len(_ORDER), k))


def _merge(base: Mapping[str, Any], knob: Knob, candidate: Mapping[str, Any]) -> dict[str, Any]:
    out = {k: v for k, v in base.items() if k not in knob.keywords}
    out.update(candidate)
    return out


def _key(settings: Mapping[str, Any]) -> tuple:
    return tuple(sorted((k, repr(v)) for k, v in settings.items()))


def _depth(settings: Mapping[str, Any]) -> int:
    depth = settings.get("prefetch_queue_depth", 2)
    return max(depth.values()) if isinstance(depth, Mapping) else int(depth)


class _Unfit(Exception):
    """A candidate that cannot run on this data (e.g. a batch larger than the shard)."""


class _Search:
    """The contenders of one search: built on demand, kept while they may still win, closed after."""

    def __init__(self, factory: Callable[..., Any], make_loader: Callable[[Any], Iterable],
                 step: Optional[Callable[[Any], int]], setup: Optional[Callable[[Mapping[str, Any]], None]]):
        self.factory, self.make_loader, self.step, self.setup = factory, make_loader, step, setup
        self.alive: dict[tuple, Contender] = {}
        self.build_cost = 0.0  # the slowest build + warm-up seen (to judge whether a knob still fits)

    def contender(self, settings: Mapping[str, Any]) -> Contender:
        key = _key(settings)
        if key not in self.alive:
            settings = dict(settings)

            def make() -> Iterable:
                loader = self.make_loader(self.factory(**factory_kwargs(settings)))
                if hasattr(loader, "__len__") and len(loader) == 0:
                    raise _Unfit(f"no full batch of {settings.get('batch_size')} images per epoch in this data")
                return loader

            setup = (lambda: self.setup(settings)) if self.setup is not None else None
            label = " ".join(f"{k}={v}" for k, v in settings.items())
            self.alive[key] = Contender(label, make, step=self.step, setup=setup)
        return self.alive[key]

    def close_except(self, keep: Sequence[Mapping[str, Any]]) -> None:
        keys = {_key(s) for s in keep}
        for key in [k for k in self.alive if k not in keys]:
            self.alive.pop(key).close()

    def warm(self, settings: Mapping[str, Any]) -> None:
        """Build the contender and take its first batches (untimed)."""
        t0 = time.perf_counter()
        self.contender(settings).run(batches=1, record=False, skip=_depth(settings))
        self.build_cost = max(self.build_cost, time.perf_counter() - t0)


def tune(factory: Callable[..., Any], knobs: Sequence[Knob], *, seconds: float = 60.0, repeats: int = 3,
         margin: float = 0.03, step: Optional[Callable[[Any], int]] = None,
         setup: Optional[Callable[[Mapping[str, Any]], None]] = None,
         make_loader: Optional[Callable[[Any], Iterable]] = None, consumer: str = "loader only",
         progress: bool = True, log: Callable[[str], None] = print) -> TuneResult:
    """Search `knobs` for the settings under which `make_loader(factory(**settings))` (default: a
    `DaliLoader`) delivers the most images/s, within about `seconds` of wall time; see the module docstring.

    `step(batch) -> batch size` consumes each batch (default: the batch itself, waited for on the GPU);
    `setup(settings)` runs before each timed slice of a contender (e.g. torch threads beside its DALI threads).
    A candidate that fails to build or run is reported in the trials and passed over; the defaults must run.
    """
    if seconds <= 0:
        raise ValueError(f"seconds must be > 0, got {seconds}")
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    if margin < 0:
        raise ValueError(f"margin must be >= 0, got {margin}")
    if make_loader is None:
        from dalimix.loader import DaliLoader
        make_loader = DaliLoader
    from tqdm import tqdm

    if progress and log is print:
        log = tqdm.write  # lines above the progress bar, not through it
    tuning = _Tuning(_Search(factory, make_loader, step, setup), seconds=seconds, repeats=repeats, margin=margin,
                     consumer=consumer, log=log)
    stages = tuning.plan(factory, knobs)
    tuning.bar = tqdm(total=repeats * (sum(len(k.candidates) for k in stages) + 2), desc="tuning",
                      disable=not progress, leave=False)
    for i, knob in enumerate(stages):
        tuning.stage(knob, units=sum(len(k.candidates) for k in stages[i:]) + 2, first=i == 0)
    tuning.finish(stages)
    return tuning.result


class _Tuning:
    """One run of `tune`: the budget, the best settings so far, and the result being filled in."""

    def __init__(self, search: _Search, *, seconds: float, repeats: int, margin: float, consumer: str,
                 log: Callable[[str], None]):
        self.search, self.repeats, self.margin, self.log = search, repeats, margin, log
        self.t_start = time.perf_counter()
        self.deadline = self.t_start + seconds
        self.seconds = seconds
        self.result = TuneResult(defaults={}, best={}, default_rate=float("nan"), best_rate=float("nan"),
                                 side_by_side=False, budget=seconds, consumer=consumer)
        self.defaults: dict[str, Any] = {}
        self.best: dict[str, Any] = {}
        self.default_rate: Optional[float] = None
        self.bar: Any = None

    def plan(self, factory: Callable[..., Any], knobs: Sequence[Knob]) -> list[Knob]:
        """The knobs to search (those the factory takes, with more than one candidate); sets the defaults."""
        usable = []
        for knob in knobs:
            missing = sorted({"decoder_options" if k in DECODER_OPTIONS else k for k in knob.keywords
                              if not accepts(factory, k)})
            if missing:
                self.result.skipped[knob.name] = f"the pipeline factory takes no {', '.join(missing)} argument"
            else:
                usable.append(knob)
        for knob in usable:
            self.defaults.update(knob.default)
        self.result.defaults, self.best = dict(self.defaults), dict(self.defaults)
        for knob in usable:
            if len(knob.candidates) == 1:
                self.result.chosen[knob.name] = knob.label(knob.default)
        stages = [k for k in usable if len(k.candidates) > 1]
        if not stages:
            raise ValueError("nothing to tune: every knob was skipped or has a single candidate "
                             f"({'; '.join(f'{k}: {v}' for k, v in self.result.skipped.items()) or 'no knobs'})")
        return stages

    def stage(self, knob: Knob, *, units: int, first: bool) -> None:
        """Measure `knob`'s candidates side by side (the others at their best) and keep the winner."""
        now = time.perf_counter()
        weight = len(knob.candidates)
        share = max(0.0, self.deadline - now) * weight / units  # + the final defaults-vs-best round in units
        current = {k: self.best[k] for k in knob.keywords if k in self.best}
        cands = [dict(c) for c in knob.candidates]
        current_cand = next((c for c in cands if c == current), dict(knob.default))
        # Builds are the floor of a stage's cost (the current settings are built already): skip the knob
        # when even they no longer fit in what is left.
        left = max(0.0, self.deadline - now) - 2 * self.repeats * 0.05
        if not first and self.search.build_cost * (weight - 1) > left:
            self.result.skipped[knob.name] = f"the budget ({self.seconds:g} s) was spent"
            self.result.chosen[knob.name] = knob.label(current_cand)
            self.bar.update(self.repeats * weight)
            return
        runnable = self._measure(knob, cands, current_cand, share)
        rates = self._rates(knob, runnable)
        current_rate = rates[[c for c, _ in runnable].index(current_cand)]
        if self.default_rate is None:
            settings = [s for _, s in runnable]
            self.default_rate = rates[settings.index(self.defaults)] if self.defaults in settings else current_rate
        top = int(np.argmax(rates))
        winner = runnable[top][0] if rates[top] > current_rate * (1.0 + self.margin) else current_cand
        self.best = _merge(self.best, knob, winner)
        self.result.chosen[knob.name] = knob.label(winner)
        self.log(f"  {knob.name}: " + ", ".join(f"{knob.label(c)} {r:.0f}" for (c, _), r in zip(runnable, rates))
                 + f" img/s -> {knob.label(winner)}")
        self.search.close_except([self.best, self.defaults])

    def _drop(self, knob: Knob, cand: dict, current_cand: dict, settings: dict, exc: Exception,
              slices_left: int) -> None:
        """Record a candidate that failed and close its loader; the current settings must run."""
        if cand == current_cand:
            raise RuntimeError(f"the current settings {settings} do not run: {exc}") from exc
        failed = self.search.alive.pop(_key(settings), None)
        if failed is not None:
            failed.close()
        # A setting the data or the builder refuses (ValueError) is not applicable; others failed.
        note = f"not applicable: {exc}" if isinstance(exc, (_Unfit, ValueError)) else \
            f"failed: {type(exc).__name__}: {exc}"
        self.result.trials.append({"knob": knob.name, "label": knob.label(cand), "settings": settings,
                                   "images_per_sec": None, "runs": [], "note": note})
        self.bar.update(slices_left)

    def _measure(self, knob: Knob, cands: list[dict], current_cand: dict, share: float) -> list[tuple[dict, dict]]:
        """Warm every candidate, then alternate timed slices within `share` seconds; returns those that ran."""
        stage_t0 = time.perf_counter()
        runnable: list[tuple[dict, dict]] = []  # (candidate, settings)
        for cand in cands:
            settings = _merge(self.best, knob, cand)
            try:
                self.search.warm(settings)
                runnable.append((cand, settings))
            except Exception as exc:  # noqa: BLE001 - one bad candidate must not end the search
                self._drop(knob, cand, current_cand, settings, exc, self.repeats)
        self._first = {id(self.search.contender(s)): len(self.search.contender(s).samples) for _, s in runnable}
        slices = self.repeats * len(runnable)
        for r in range(self.repeats):
            order = runnable if r % 2 == 0 else runnable[::-1]  # alternate so drift hits everyone alike
            for cand, settings in list(order):
                left = share - (time.perf_counter() - stage_t0)
                try:
                    self.search.contender(settings).run(seconds=max(0.0, left / max(1, slices)),
                                                        skip=_depth(settings))
                except Exception as exc:  # noqa: BLE001 - e.g. out of memory at a larger batch
                    runnable.remove((cand, settings))
                    self._drop(knob, cand, current_cand, settings, exc, self.repeats - r)
                    slices -= self.repeats - r
                    continue
                slices -= 1
                self.bar.update()
        return runnable

    def _rates(self, knob: Knob, runnable: list[tuple[dict, dict]]) -> list[float]:
        """The median rate of each runnable candidate over this stage's slices, recorded as trials."""
        rates = []
        for cand, settings in runnable:
            c = self.search.contender(settings)
            runs = [s.images_per_sec for s in c.samples[self._first[id(c)]:]]
            rate = float(np.median(runs))
            rates.append(rate)
            self.result.trials.append({"knob": knob.name, "label": knob.label(cand), "settings": settings,
                                       "images_per_sec": round(rate, 1), "runs": [round(v, 1) for v in runs],
                                       "note": ""})
        return rates

    def finish(self, stages: Sequence[Knob]) -> None:
        """The final word: the best settings and the defaults side by side, in the time that is left."""
        result, defaults, best = self.result, self.defaults, self.best
        result.best = dict(best)
        if best != defaults:
            pair = [defaults, best]
            marks = {id(self.search.contender(s)): len(self.search.contender(s).samples) for s in pair}
            slices = 2 * self.repeats
            for r in range(self.repeats):
                for settings in (pair if r % 2 == 0 else pair[::-1]):
                    left = self.deadline - time.perf_counter()
                    self.search.contender(settings).run(seconds=max(0.0, left / max(1, slices)),
                                                        skip=_depth(settings))
                    slices -= 1
                    self.bar.update()
            contenders = {name: self.search.contender(s) for name, s in zip(("defaults", "best"), pair)}
            runs = {name: [x.images_per_sec for x in c.samples[marks[id(c)]:]] for name, c in contenders.items()}
            result.final_runs = {k: [round(v, 1) for v in vs] for k, vs in runs.items()}
            result.default_rate = float(np.median(runs["defaults"]))
            result.best_rate = float(np.median(runs["best"]))
            result.side_by_side = True
            if result.best_rate <= result.default_rate * (1.0 + self.margin):
                # The stages' winners do not beat the defaults side by side: advise no change.
                result.unconfirmed, result.unconfirmed_rate = dict(best), result.best_rate
                result.best, result.best_rate = dict(defaults), result.default_rate
                for knob in stages:
                    result.chosen[knob.name] = knob.label(next((dict(c) for c in knob.candidates
                                                                if all(defaults.get(k) == v for k, v in c.items())),
                                                               dict(knob.default)))
        else:  # the defaults won every stage: their rate is the first stage's
            result.default_rate = result.best_rate = float(self.default_rate)
            self.bar.update(2 * self.repeats)
        self.bar.close()
        self.search.close_except([])
        result.seconds = time.perf_counter() - self.t_start


def pipeline_call(data_dir: str, settings: Mapping[str, Any], fixed: Mapping[str, Any] = (),
                  name: str = "train_pipeline") -> str:
    """`settings` (and `fixed`, e.g. crop and device) as a call of the pipeline builder, ready to paste."""
    merged = factory_kwargs({**dict(fixed), **dict(settings)})
    args = [repr(str(data_dir))] + [f"{k}={merged[k]!r}" for k in _ordered(merged)]
    return f"{name}({', '.join(args)})"


def train_flags(settings: Mapping[str, Any]) -> tuple[str, list[str]]:
    """(`dalimix-train` flags for `settings`, the settings that have no flag)."""
    flags, unflagged = [], []
    rest = dict(settings)
    dev, host = rest.pop("device_memory_padding", None), rest.pop("host_memory_padding", None)
    width, height = rest.pop("preallocate_width_hint", None), rest.pop("preallocate_height_hint", None)
    for k in _ordered(rest):
        if k in TRAIN_FLAGS:
            flags.append(f"{TRAIN_FLAGS[k]} {rest[k]}")
        else:
            unflagged.append(f"{k}={rest[k]!r}")
    if dev is not None or host is not None:
        if dev == host:
            flags.append(f"--decoder-memory-padding {dev}")
        else:  # the flag sets both to one value
            unflagged += [f"device_memory_padding={dev!r}", f"host_memory_padding={host!r}"]
    if width is not None and height is not None:
        flags.append(f"--decoder-preallocate {width} {height}")
    elif width is not None or height is not None:
        unflagged += [f"preallocate_width_hint={width!r}", f"preallocate_height_hint={height!r}"]
    return " ".join(flags), unflagged


def format_report(result: TuneResult, data_dir: str, fixed: Mapping[str, Any] = ()) -> str:
    """The tuner's verdict in words: the best settings as a `train_pipeline(...)` call and `dalimix-train`
    flags, the gain over the defaults, what was tried and what was skipped."""
    lines = [f"tuning: {result.consumer}, {result.seconds:.0f}s of a {result.budget:g}s budget"]
    for knob in dict.fromkeys(t["knob"] for t in result.trials):
        tried = [t for t in result.trials if t["knob"] == knob]
        cells = [f"{t['label']}: " + (f"{t['images_per_sec']:.0f}" if t["images_per_sec"] is not None else t["note"])
                 for t in tried]
        lines.append(f"  {knob:<22}" + "; ".join(cells) + f"  -> {result.chosen.get(knob, '?')}")
    for knob, why in result.skipped.items():
        lines.append(f"  {knob:<22}not searched: {why}")
    how = "the defaults won every stage" if not result.side_by_side else \
        "measured side by side in the final rounds" + (", not confirmed" if result.unconfirmed else "")
    lines.append(f"defaults: {result.default_rate:.1f} img/s; best: {result.best_rate:.1f} img/s; gain "
                 f"{result.gain:.2f}x ({how})")
    if result.unconfirmed:
        picked = {k: v for k, v in result.unconfirmed.items() if result.defaults.get(k) != v}
        lines.append(f"the search's pick ({', '.join(f'{k}={v!r}' for k, v in picked.items())}) measured "
                     f"{result.unconfirmed_rate:.1f} img/s side by side with the defaults' {result.default_rate:.1f}: "
                     f"no more than the noise; keep the defaults:")
    elif not result.changed:
        lines.append("the defaults are the fastest settings measured; keep them:")
    else:
        lines.append("best settings (changed: " + ", ".join(f"{k}={v!r}" for k, v in result.changed.items()) + "):")
    lines.append(pipeline_call(data_dir, result.best, fixed))
    flags, _ = train_flags(result.best)
    _, todo = train_flags(result.changed)  # settings to change that dalimix-train cannot be told
    lines.append(f"dalimix-train {flags}" + (f"  # and {', '.join(todo)} in train_pipeline: dalimix-train has no "
                                            f"flag for that" if todo else ""))
    old, new = result.defaults.get("batch_size"), result.best.get("batch_size")
    if old and new and old != new:
        lines.append(f"note: batch size {old} -> {new} per rank changes the optimisation, not only the speed: scale "
                     f"--lr by {new / old:g} (linear rule) and check the model still fits in memory")
    return "\n".join(lines)


def plot_tuning(result: TuneResult, path: str, title: str = "") -> str:
    """A PNG bar chart of every candidate's images/s, grouped by knob, the kept value of each highlighted,
    and the final defaults vs best; returns `path`."""
    import matplotlib
    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    rows = [(f"{t['knob']}: {t['label']}"[:60], t["images_per_sec"] or 0.0,
             result.chosen.get(t["knob"]) == t["label"]) for t in result.trials]
    rows += [("final: defaults", result.default_rate, False), ("final: best", result.best_rate, True)]
    fig = Figure(figsize=(9, 0.35 * len(rows) + 1.5), dpi=100)
    ax = fig.subplots()
    y = np.arange(len(rows))
    bars = ax.barh(y, [r[1] for r in rows], color=["#55a868" if r[2] else "#8c8c8c" for r in rows])
    ax.bar_label(bars, fmt="%.0f", padding=2, fontsize=8)
    ax.set_yticks(y, [r[0] for r in rows], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("images / s" + ("" if result.consumer == "loader only" else f" ({result.consumer})"))
    ax.set_title(title or f"dalimix-profile --tune: gain {result.gain:.2f}x over the defaults")
    fig.tight_layout()
    return save_figure(fig, path)
