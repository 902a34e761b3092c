"""Scale invariance three ways: the paper's cosine test, a functional probe, and a census.

A tensor w is *layer* (whole-tensor) scale-invariant when the model's output does not change if
w is replaced by c·w for any c > 0, and *channel* scale-invariant when it does not change if each
row w_k (slice along dim 0: an output channel or neuron) is replaced by c_k·w_k for any
c_k > 0. Channel invariance implies layer invariance (take every c_k equal).

1. **The paper's test** (AdamP, Heo et al. ICLR 2021, Sec. 3; DESIGN.md §3), from the recorded
   cosines between w and its gradient g: an invariant w has ⟨w, g⟩ = 0, so with δ = 0.1

       channel view passes if  max_k |cos(w_k, g_k)| < δ / sqrt(numel / rows)
       else layer view passes if         |cos(w, g)| < δ / sqrt(numel)
       else neither.

   `paper_test` evaluates it vectorised (numpy or torch, no host sync); `recorded_test_views`,
   `pass_rates` and `classify_tensors` apply it to a recorded `Run`.
2. **The functional probe** `probe(model, example_inputs)`: ground truth without training. It
   rescales rows (random positive factors) or the whole tensor (one factor), runs the model
   forward in training mode, and compares outputs. See `probe` for the exact protocol.
3. **The census** `census(...)`: fractions of tensors and of parameters per class, overall and
   per module type; `print_census` renders it for ``stepsize-lens inspect``.
4. **Agreement** `agreement(run)`: the recorded test against the probe, per tensor, with the
   disagreements explained.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from stepsize_lens.run import VIEW_CHANNEL, VIEW_LAYER, VIEW_NONE, VIEW_UNTESTED

if TYPE_CHECKING:
    import pandas as pd

    from stepsize_lens.run import Run

DEFAULT_DELTA = 0.1
CLASSES: tuple[str, ...] = ("channel", "layer", "none")
CLASS_OF_CODE = {VIEW_CHANNEL: "channel", VIEW_LAYER: "layer", VIEW_NONE: "none"}
PROBE_VERDICT_COLUMN = "probe_verdict"


# --------------------------------------------------------------------------------------------
# The paper's cosine test
# --------------------------------------------------------------------------------------------


def paper_test(
    cos_grad: Any,
    channel_cos_grad_max: Any,
    numel: Any,
    rows: Any,
    ndim: Any,
    delta: float = DEFAULT_DELTA,
) -> Any:
    """The paper's scale-invariance test, elementwise over broadcastable arrays or tensors.

    Returns int8 view codes: ``VIEW_CHANNEL`` (1) if channel_cos_grad_max < δ/sqrt(numel/rows),
    else ``VIEW_LAYER`` (2) if |cos_grad| < δ/sqrt(numel), else ``VIEW_NONE`` (0);
    ``VIEW_UNTESTED`` (-1) where ndim < 2 (never tested) or where both cosines are NaN (a zero
    weight or gradient: the test is undefined). A NaN cosine fails its own view.

    With torch tensors the result is a torch tensor on ``cos_grad``'s device, computed without
    any device-to-host synchronisation (pass numel/rows/ndim as tensors on that device to also
    avoid host-to-device copies). Otherwise the result is a numpy array.
    """
    if isinstance(cos_grad, torch.Tensor) or isinstance(channel_cos_grad_max, torch.Tensor):
        return _paper_test_torch(cos_grad, channel_cos_grad_max, numel, rows, ndim, delta)
    cos = np.asarray(cos_grad, dtype=np.float64)
    chan = np.asarray(channel_cos_grad_max, dtype=np.float64)
    numel_f = np.maximum(np.nan_to_num(np.asarray(numel, dtype=np.float64), nan=1.0), 1.0)
    rows_f = np.maximum(np.nan_to_num(np.asarray(rows, dtype=np.float64), nan=1.0), 1.0)
    ndim_f = np.nan_to_num(np.asarray(ndim, dtype=np.float64), nan=0.0)
    with np.errstate(invalid="ignore"):
        channel_pass = chan < delta * np.sqrt(rows_f / numel_f)
        layer_pass = np.abs(cos) < delta / np.sqrt(numel_f)
    codes = np.where(channel_pass, VIEW_CHANNEL, np.where(layer_pass, VIEW_LAYER, VIEW_NONE))
    untested = (ndim_f < 2) | (np.isnan(cos) & np.isnan(chan))
    return np.where(untested, VIEW_UNTESTED, codes).astype(np.int8)


def _paper_test_torch(
    cos_grad: Any, channel_cos: Any, numel: Any, rows: Any, ndim: Any, delta: float
) -> torch.Tensor:
    reference = cos_grad if isinstance(cos_grad, torch.Tensor) else channel_cos
    device = reference.device
    dtype = torch.promote_types(reference.dtype, torch.float32)
    cos = torch.as_tensor(cos_grad, device=device, dtype=dtype)
    chan = torch.as_tensor(channel_cos, device=device, dtype=dtype)
    numel_t = torch.as_tensor(numel, device=device, dtype=dtype).clamp(min=1)
    rows_t = torch.as_tensor(rows, device=device, dtype=dtype).clamp(min=1)
    ndim_t = torch.as_tensor(ndim, device=device)
    channel_pass = chan < delta * torch.sqrt(rows_t / numel_t)
    layer_pass = cos.abs() < delta * torch.rsqrt(numel_t)
    codes = torch.where(
        channel_pass,
        VIEW_CHANNEL,
        torch.where(layer_pass, VIEW_LAYER, VIEW_NONE),
    )
    untested = (ndim_t < 2) | (torch.isnan(cos) & torch.isnan(chan))
    return torch.where(untested, VIEW_UNTESTED, codes).to(torch.int8)


def run_delta(run: Run, delta: float | None = None) -> float:
    """δ to use for a run: the argument, else the run's ``meta["delta"]``, else 0.1."""
    if delta is not None:
        return float(delta)
    stored = run.meta.get("delta")
    return float(stored) if isinstance(stored, (int, float)) else DEFAULT_DELTA


def _param_array(run: Run, column: str, default: float) -> np.ndarray:
    values = run.data["params"].get(column) or [None] * run.num_tensors
    return np.array([default if v is None else v for v in values], dtype=np.float64)


def recorded_test_views(run: Run, delta: float | None = None) -> np.ndarray:
    """The paper's test per record and tensor, int8 [records, tensors], from the stored cosines.

    Recomputed with `paper_test` from ``cos_grad`` and ``channel_cos_grad_max`` so any δ can be
    used (default: the δ the run was recorded with). Skipped records keep their codes; callers
    that count passes leave them out.
    """
    return paper_test(
        run.metric("cos_grad"),
        run.metric("channel_cos_grad_max"),
        _param_array(run, "numel", 1.0),
        _param_array(run, "rows", 1.0),
        _param_array(run, "ndim", 0.0),
        delta=run_delta(run, delta),
    )


def view_counts(run: Run, delta: float | None = None, which: str = "test_view") -> pd.DataFrame:
    """Per tensor, how often each view was seen over the non-skipped records.

    ``which="test_view"`` recomputes the paper's test with δ (`recorded_test_views`);
    ``which="applied_view"`` reads what AdamP/SGDP applied. Columns: ``channel``, ``layer``,
    ``none`` (fractions of the known records), ``known`` (how many records had a code >= 0).
    Index: tensor names.
    """
    import pandas as pd

    if which == "test_view":
        views = recorded_test_views(run, delta)
    elif which == "applied_view":
        views = run.view("applied_view")
    else:
        raise ValueError(f"which must be 'test_view' or 'applied_view', not {which!r}")
    views = views[~run.skipped.astype(bool)]
    known = (views >= 0).sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        columns = {
            name: (views == code).sum(axis=0) / known for code, name in CLASS_OF_CODE.items()
        }
    frame = pd.DataFrame(
        {
            "channel": columns["channel"],
            "layer": columns["layer"],
            "none": columns["none"],
            "known": known,
        },
        index=pd.Index(run.tensor_names, name="tensor"),
    )
    return frame


def _majority(counts: pd.DataFrame) -> np.ndarray:
    # ties go to the weaker claim: none before layer before channel
    ordered = counts[["none", "layer", "channel"]].fillna(0.0).to_numpy()
    names = np.array(["none", "layer", "channel"], dtype=object)
    result = names[ordered.argmax(axis=1)]
    result[counts["known"].to_numpy() == 0] = "none"
    return result


def classify_tensors(run: Run, delta: float | None = None) -> pd.Series:
    """One class per tensor: ``"channel"``, ``"layer"`` or ``"none"`` (Series indexed by name).

    Uses the probe verdict stored in the params table (column ``probe_verdict``) where the run
    has one; otherwise the most frequent outcome of the paper's test (recomputed with δ) over
    the non-skipped records, ties going to the weaker class. 1-D tensors are ``"none"``.
    """
    import pandas as pd

    counts = view_counts(run, delta)
    classes = _majority(counts)
    ndim = _param_array(run, "ndim", 0.0)
    classes[ndim < 2] = "none"
    probe_column = run.data["params"].get(PROBE_VERDICT_COLUMN)
    if probe_column is not None:
        for index, verdict in enumerate(probe_column):
            if verdict in CLASSES:
                classes[index] = verdict
    return pd.Series(classes, index=pd.Index(run.tensor_names, name="tensor"), name="class")


def _pass_mask(views: np.ndarray, view: str) -> np.ndarray:
    if view == "any":
        return (views == VIEW_CHANNEL) | (views == VIEW_LAYER)
    if view == "channel":
        return views == VIEW_CHANNEL
    if view == "layer":
        return views == VIEW_LAYER
    if view == "none":
        return views == VIEW_NONE
    raise ValueError(f"view must be 'any', 'channel', 'layer' or 'none', not {view!r}")


def pass_rates(
    run: Run, delta: float | None = None, view: str = "any", window: int | None = None
) -> pd.DataFrame:
    """Per-tensor pass rate of the paper's test over time: DataFrame [records x tensors].

    At record r the value is (records passing) / (records tested) over the non-skipped records
    among the last ``window`` records up to r (``window=None``: all records so far, a running
    rate). ``view``: ``"any"`` (channel or layer view passed), ``"channel"``, ``"layer"`` (the
    layer view passed after the channel view failed) or ``"none"`` (neither passed). The test is
    recomputed from the stored cosines with δ (default: the run's δ). Untested tensors (1-D) and
    windows without a tested record are NaN. Index: ``step``; columns: tensor names.
    """
    import pandas as pd

    if window is not None and window < 1:
        raise ValueError(f"window must be a positive number of records, not {window}")
    views = recorded_test_views(run, delta)
    valid = (views >= 0) & ~run.skipped.astype(bool)[:, None]
    passed = _pass_mask(views, view) & valid
    cum_pass = np.cumsum(passed, axis=0, dtype=np.float64)
    cum_valid = np.cumsum(valid, axis=0, dtype=np.float64)
    if window is not None and window < len(views):
        cum_pass[window:] -= cum_pass[:-window].copy()
        cum_valid[window:] -= cum_valid[:-window].copy()
    with np.errstate(invalid="ignore", divide="ignore"):
        rates = np.where(cum_valid > 0, cum_pass / np.maximum(cum_valid, 1), np.nan)
    frame = pd.DataFrame(rates, index=pd.Index(run.steps, name="step"), columns=run.tensor_names)
    frame.columns.name = "tensor"
    return frame


# --------------------------------------------------------------------------------------------
# The functional probe
# --------------------------------------------------------------------------------------------

STRUCTURAL_EPS = 1e-30
_MAX_LOG_FACTOR = float(np.log(4.0))
_MIN_LOG_LAYER_FACTOR = float(np.log(1.5))


class _StateGuard:
    """Snapshot of what a training-mode forward can change: buffers, RNG, ``training`` flags.

    ``replay()`` puts buffers and RNG back to the snapshot before each forward, so every forward
    sees the same BatchNorm statistics and the same dropout masks; ``restore()`` also puts the
    modules' train/eval flags back. Buffers are restored into the original tensor objects with
    ``copy_``, so the model is bit-for-bit what it was.
    """

    def __init__(self, model: torch.nn.Module) -> None:
        import random

        self.modules = list(model.modules())
        self.training = [module.training for module in self.modules]
        self.buffers = [
            (module, name, buffer, buffer.detach().clone())
            for module in self.modules
            for name, buffer in module._buffers.items()
            if buffer is not None
        ]
        self.cpu_rng = torch.get_rng_state()
        self.cuda_rng = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None
        self.python_rng = random.getstate()
        self.numpy_rng = np.random.get_state()

    def _restore_rng(self) -> None:
        import random

        torch.set_rng_state(self.cpu_rng)
        if self.cuda_rng is not None:
            torch.cuda.set_rng_state_all(self.cuda_rng)
        random.setstate(self.python_rng)
        np.random.set_state(self.numpy_rng)

    def replay(self) -> None:
        with torch.no_grad():
            for module, name, buffer, saved in self.buffers:
                if module._buffers.get(name) is not buffer:
                    module._buffers[name] = buffer
                buffer.copy_(saved)
        self._restore_rng()

    def restore(self) -> None:
        self.replay()
        for module, training in zip(self.modules, self.training, strict=True):
            module.training = training


def _call(model: torch.nn.Module, inputs: Any) -> Any:
    if isinstance(inputs, dict):
        return model(**inputs)
    if isinstance(inputs, (tuple, list)):
        return model(*inputs)
    return model(inputs)


def _float_leaves(output: Any) -> list[torch.Tensor]:
    """Floating-point tensors of a (nested) output: tensors, tuples, lists, dicts."""
    if isinstance(output, torch.Tensor):
        if output.is_floating_point() or output.is_complex():
            return [output.detach().clone()]
        return []
    if isinstance(output, dict):
        return [leaf for value in output.values() for leaf in _float_leaves(value)]
    if isinstance(output, (tuple, list)):
        return [leaf for value in output for leaf in _float_leaves(value)]
    return []


def _relative_change(new: list[torch.Tensor], base: list[torch.Tensor]) -> float:
    """max over output tensors of max|y' - y| / max|y| (absolute change where y is all zero)."""
    worst = 0.0
    for a, b in zip(new, base, strict=True):
        if a.numel() == 0:
            continue
        a64, b64 = (
            a.to(torch.complex128 if a.is_complex() else torch.float64),
            b.to(torch.complex128 if b.is_complex() else torch.float64),
        )
        diff = (a64 - b64).abs().max().item()
        scale = b64.abs().max().item()
        change = diff / scale if scale > 0 else diff
        if change != change:  # NaN output: the comparison is undefined, report NaN
            return float("nan")
        worst = max(worst, change)
    return worst


def _cast_inputs(inputs: Any, dtype: torch.dtype) -> Any:
    if isinstance(inputs, torch.Tensor):
        return inputs.to(dtype) if inputs.is_floating_point() else inputs
    if isinstance(inputs, dict):
        return {key: _cast_inputs(value, dtype) for key, value in inputs.items()}
    if isinstance(inputs, (tuple, list)):
        return type(inputs)(_cast_inputs(value, dtype) for value in inputs)
    return inputs


def _negligible_eps(model: torch.nn.Module, eps: float) -> int:
    """Set every module's float ``eps`` attribute (normalisation layers) to ``eps``."""
    changed = 0
    rms_norm = getattr(torch.nn, "RMSNorm", None)
    for module in model.modules():
        value = getattr(module, "eps", None)
        if isinstance(value, float) or (
            value is None and rms_norm is not None and isinstance(module, rms_norm)
        ):
            module.eps = eps
            changed += 1
    return changed


def _factor_plan(
    seed: int, index: int, shape: Sequence[int], draws: int
) -> tuple[list[np.ndarray], list[float]]:
    """Random positive factors: rows log-uniform in [1/4, 4]; tensor in [1/4, 2/3]∪[1.5, 4]."""
    rng = np.random.default_rng([seed, index])
    view_shape = (shape[0],) + (1,) * (len(shape) - 1)
    rows = [
        np.exp(rng.uniform(-_MAX_LOG_FACTOR, _MAX_LOG_FACTOR, size=shape[0])).reshape(view_shape)
        for _ in range(draws)
    ]
    layer = [
        float(np.exp(rng.choice([-1.0, 1.0]) * rng.uniform(_MIN_LOG_LAYER_FACTOR, _MAX_LOG_FACTOR)))
        for _ in range(draws)
    ]
    return rows, layer


def _module_types(model: torch.nn.Module) -> dict[int, str]:
    owner: dict[int, str] = {}
    for module in model.modules():
        for param in module._parameters.values():
            if param is not None:
                owner.setdefault(id(param), type(module).__name__)
    return owner


class _Prober:
    """Runs perturbed forwards on one model (the float64 copy or the original)."""

    def __init__(self, model: torch.nn.Module, inputs: Any) -> None:
        self.model = model
        self.inputs = inputs
        self.params = dict(model.named_parameters())
        self.guard = _StateGuard(model)
        try:
            model.train()
            self.base = self.forward()
            if not self.base:
                raise ValueError("the model's output holds no floating-point tensor to compare")
            self.noise = _relative_change(self.forward(), self.base)
        except BaseException:
            self.guard.restore()
            raise

    def forward(self) -> list[torch.Tensor]:
        self.guard.replay()
        with torch.no_grad():
            return _float_leaves(_call(self.model, self.inputs))

    def change(self, name: str, factor: np.ndarray | float) -> float:
        param = self.params[name]
        saved = param.detach().clone()
        scale = torch.as_tensor(factor, dtype=param.dtype, device=param.device)
        try:
            with torch.no_grad():
                param.mul_(scale)
            return _relative_change(self.forward(), self.base)
        finally:
            with torch.no_grad():
                param.copy_(saved)

    def max_change(self, name: str, factors: Sequence[Any], stop_above: float | None) -> float:
        worst = 0.0
        for factor in factors:
            change = self.change(name, factor)
            if change != change:
                return float("nan")
            worst = max(worst, change)
            if stop_above is not None and worst > stop_above:
                break
        return worst

    def close(self) -> None:
        self.guard.restore()


class ProbeResult:
    """Verdicts of `probe`, one row per parameter tensor in ``table`` (index: parameter name).

    Columns: ``shape``, ``numel``, ``ndim``, ``rows``, ``module_type``, ``tested`` (ndim >= 2),
    ``verdict`` ("channel" / "layer" / "none": the structural verdict), ``channel_change`` and
    ``layer_change`` (max relative output change under row / whole-tensor rescaling in the
    structural probe; ``layer_change`` is NaN when the channel test passed, since channel
    invariance implies layer invariance, and both are NaN for untested tensors),
    ``numerical_change`` (max relative change under the verdict's rescaling in the model as it
    is, with its real dtype and normalisation eps; NaN for non-invariant tensors) and
    ``approximate`` (numerical_change > numerical_tolerance: the invariance holds in structure
    but the real eps or precision bends it).
    """

    def __init__(self, table: pd.DataFrame, settings: dict[str, Any]) -> None:
        self.table = table
        self.settings = settings

    @property
    def tolerance(self) -> float:
        return float(self.settings["tolerance"])

    @property
    def numerical_tolerance(self) -> float:
        return float(self.settings["numerical_tolerance"])

    @property
    def verdicts(self) -> dict[str, str]:
        return dict(self.table["verdict"])

    def verdict(self, name: str) -> str:
        return str(self.table.at[name, "verdict"])

    def census(self, by: str = "module_type") -> pd.DataFrame:
        return census(self, by=by)

    def __repr__(self) -> str:
        counts = self.table["verdict"].value_counts()
        parts = ", ".join(f"{cls}={int(counts.get(cls, 0))}" for cls in CLASSES)
        return f"ProbeResult(tensors={len(self.table)}, {parts})"


def probe(
    model: torch.nn.Module,
    example_inputs: Any,
    *,
    names: Sequence[str] | None = None,
    draws: int = 3,
    tolerance: float | None = None,
    numerical_tolerance: float = 1e-3,
    structural: bool = True,
    structural_dtype: torch.dtype = torch.float64,
    seed: int = 0,
) -> ProbeResult:
    """Find which parameter tensors are scale-invariant by rescaling them and running the model.

    Protocol, per parameter tensor w with ndim >= 2 (1-D tensors are not tested, verdict "none"):

    - *channel test*: ``draws`` times, multiply each row w_k (slice along dim 0) by its own
      random factor c_k, log-uniform in [1/4, 4]; *layer test* (only if the channel test fails):
      ``draws`` times, multiply all of w by one factor in [1/4, 2/3] ∪ [1.5, 4].
    - each time, run the model forward in training mode on ``example_inputs`` (a tensor, a
      tuple of positional arguments, or a dict of keyword arguments) under ``torch.no_grad``,
      and measure the change of its output, max|y' - y| / max|y| over every floating-point
      tensor of the output (tuples, lists and dicts are walked).
    - a view passes when every draw changes the output by at most ``tolerance``.

    Every forward starts from the same buffers (BatchNorm running statistics,
    num_batches_tracked) and the same RNG state (torch CPU and CUDA, Python, numpy), so dropout
    draws the same masks; afterwards all parameters, buffers, RNG states and train/eval flags are
    restored bit for bit. Factors come from a private generator seeded with ``seed``.

    **Structural vs numerical.** Normalisation layers add eps to the variance, which makes
    invariance only approximate: a channel with a small variance barely normalises. The verdict
    is therefore *structural*: it probes a copy of the model in ``structural_dtype`` (float64)
    with every module's float ``eps`` set to 1e-30 (default ``tolerance``: 1e-6 in float64, 1e-3
    otherwise). The invariant tensors are then probed again in the model as it is (real dtype
    and eps) and that deviation is reported as ``numerical_change``. ``structural=False`` skips
    the copy and gives verdicts from the model as it is, against ``numerical_tolerance``.

    Why LayerNorm makes a linear layer *layer*- but not channel-invariant: for y = LN(W x), with
    LN normalising over the features (the rows of W), scaling all of W by c scales every
    feature by c, so the mean and the standard deviation over the features scale by c too and
    cancel. Scaling row k alone by c_k changes only feature k: the mean and standard deviation
    over the features move, and the other, unscaled features get normalised differently. BatchNorm
    normalises each channel over the batch, so every row cancels on its own: channel-invariant.

    A weight shared by several paths is invariant only if every path it feeds is normalised.
    Call ``probe`` outside a forward/backward pass (parameters are rescaled in place and put back).
    """
    import pandas as pd

    if draws < 1:
        raise ValueError(f"draws must be at least 1, not {draws}")
    all_params = dict(model.named_parameters())
    if names is None:
        selected = list(all_params)
    else:
        unknown = [name for name in names if name not in all_params]
        if unknown:
            raise KeyError(f"model has no parameter named {unknown[0]!r}")
        selected = list(names)
    owners = _module_types(model)
    plans = {
        name: _factor_plan(seed, index, tuple(all_params[name].shape), draws)
        for index, name in enumerate(selected)
        if all_params[name].ndim >= 2
    }
    if tolerance is None:
        tolerance = 1e-6 if structural and structural_dtype == torch.float64 else 1e-3

    verdict: dict[str, str] = {name: "none" for name in selected}
    channel_change = dict.fromkeys(selected, float("nan"))
    layer_change = dict.fromkeys(selected, float("nan"))
    numerical_change = dict.fromkeys(selected, float("nan"))
    noise = {"structural": float("nan"), "numerical": float("nan")}

    def judge(prober: _Prober, limit: float) -> None:
        for name, (row_factors, layer_factors) in plans.items():
            channel_change[name] = prober.max_change(name, row_factors, stop_above=limit)
            if channel_change[name] <= limit:
                verdict[name] = "channel"
                continue
            layer_change[name] = prober.max_change(name, layer_factors, stop_above=limit)
            verdict[name] = "layer" if layer_change[name] <= limit else "none"

    if structural:
        import copy

        twin = copy.deepcopy(model).to(structural_dtype)
        _negligible_eps(twin, STRUCTURAL_EPS)
        prober = _Prober(twin, _cast_inputs(example_inputs, structural_dtype))
        try:
            noise["structural"] = prober.noise
            judge(prober, tolerance)
        finally:
            prober.close()
            del twin, prober

    prober = _Prober(model, example_inputs)
    try:
        noise["numerical"] = prober.noise
        if structural:
            for name, (row_factors, layer_factors) in plans.items():
                if verdict[name] == "channel":
                    numerical_change[name] = prober.max_change(name, row_factors, None)
                elif verdict[name] == "layer":
                    numerical_change[name] = prober.max_change(name, layer_factors, None)
        else:
            judge(prober, numerical_tolerance)
            for name in plans:
                if verdict[name] != "none":
                    numerical_change[name] = (
                        channel_change[name] if verdict[name] == "channel" else layer_change[name]
                    )
    finally:
        prober.close()

    numerical = pd.Series(numerical_change, dtype=np.float64)
    table = pd.DataFrame(
        {
            "shape": [tuple(all_params[name].shape) for name in selected],
            "numel": [all_params[name].numel() for name in selected],
            "ndim": [all_params[name].ndim for name in selected],
            "rows": [
                all_params[name].shape[0] if all_params[name].ndim else 1 for name in selected
            ],
            "module_type": [owners.get(id(all_params[name]), "") for name in selected],
            "tested": [all_params[name].ndim >= 2 for name in selected],
            "verdict": [verdict[name] for name in selected],
            "channel_change": [channel_change[name] for name in selected],
            "layer_change": [layer_change[name] for name in selected],
            "numerical_change": numerical.to_numpy(),
            "approximate": (numerical > numerical_tolerance).to_numpy(),
        },
        index=pd.Index(selected, name="tensor"),
    )
    settings = {
        "draws": draws,
        "seed": seed,
        "tolerance": float(tolerance),
        "numerical_tolerance": float(numerical_tolerance),
        "structural": structural,
        "structural_dtype": str(structural_dtype).replace("torch.", ""),
        "structural_eps": STRUCTURAL_EPS,
        "noise_floor": noise["structural"],
        "numerical_noise_floor": noise["numerical"],
    }
    return ProbeResult(table, settings)


PROBE_COLUMNS: tuple[str, ...] = (
    PROBE_VERDICT_COLUMN,
    "probe_channel_change",
    "probe_layer_change",
    "probe_numerical_change",
)


def probe_param_columns(
    model: torch.nn.Module, params: Sequence[torch.Tensor], result: ProbeResult
) -> dict[str, list[Any]]:
    """Params-table columns for a run from a probe of ``model``, in the order of ``params``.

    ``params`` are the tensors of the run's params table (optimizer order); each is matched to
    the model's parameter by identity, so tied weights find their probed name. Columns
    (`PROBE_COLUMNS`): ``probe_verdict`` (str, None for a tensor the probe did not see),
    ``probe_channel_change``, ``probe_layer_change``, ``probe_numerical_change`` (float, NaN when
    not measured).
    """
    name_of: dict[int, str] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        name_of.setdefault(id(param), name)
    table = result.table
    columns: dict[str, list[Any]] = {column: [] for column in PROBE_COLUMNS}
    sources = ("verdict", "channel_change", "layer_change", "numerical_change")
    for param in params:
        name = name_of.get(id(param))
        known = name is not None and name in table.index
        for column, source in zip(PROBE_COLUMNS, sources, strict=True):
            if not known:
                columns[column].append(None if source == "verdict" else float("nan"))
            elif source == "verdict":
                columns[column].append(str(table.at[name, source]))
            else:
                columns[column].append(float(table.at[name, source]))
    return columns


# --------------------------------------------------------------------------------------------
# Census
# --------------------------------------------------------------------------------------------

CENSUS_COLUMNS: tuple[str, ...] = (
    "tensors",
    "parameters",
    "tensors_channel",
    "tensors_layer",
    "tensors_none",
    "params_channel",
    "params_layer",
    "params_none",
    "params_invariant",
)


def _class_table(source: ProbeResult | Run | pd.DataFrame, delta: float | None) -> pd.DataFrame:
    """(class, numel, module_type) per tensor from a probe result, a run or a ready table."""
    import pandas as pd

    if isinstance(source, ProbeResult):
        table = source.table
        return pd.DataFrame(
            {
                "class": table["verdict"],
                "numel": table["numel"],
                "module_type": table["module_type"],
            }
        )
    if isinstance(source, pd.DataFrame):
        missing = {"class", "numel"} - set(source.columns)
        if missing:
            raise ValueError(f"census table lacks column(s) {', '.join(sorted(missing))}")
        frame = source.copy()
        if "module_type" not in frame.columns:
            frame["module_type"] = ""
        return frame[["class", "numel", "module_type"]]
    classes = classify_tensors(source, delta)
    params = source.data["params"]
    module_types = params.get("module_type") or [""] * source.num_tensors
    return pd.DataFrame(
        {
            "class": classes.to_numpy(),
            "numel": _param_array(source, "numel", 0.0),
            "module_type": [str(value or "") for value in module_types],
        },
        index=classes.index,
    )


def census(
    source: ProbeResult | Run | pd.DataFrame, by: str = "module_type", delta: float | None = None
) -> pd.DataFrame:
    """Fractions of tensors and of parameters per class, overall (row ``"all"``) and per ``by``.

    ``source``: a `ProbeResult`, a `Run` (classes from `classify_tensors`) or a DataFrame with
    columns ``class``, ``numel`` (and ``module_type``). Columns: ``tensors``, ``parameters``
    (counts), ``tensors_<class>`` (fraction of the scope's tensors in each class),
    ``params_<class>`` (fraction of its parameter count) and ``params_invariant`` (channel +
    layer). Rows after ``"all"`` are sorted by parameter count, largest first.
    """
    import pandas as pd

    table = _class_table(source, delta)
    if by not in table.columns:
        raise ValueError(f"cannot group a census by {by!r}")

    def summarise(part: pd.DataFrame) -> dict[str, float]:
        numel = part["numel"].astype(np.float64)
        total = float(numel.sum())
        row: dict[str, float] = {"tensors": len(part), "parameters": total}
        for cls in CLASSES:
            mask = part["class"] == cls
            row[f"tensors_{cls}"] = float(mask.mean()) if len(part) else float("nan")
        for cls in CLASSES:
            mask = part["class"] == cls
            row[f"params_{cls}"] = float(numel[mask].sum()) / total if total else float("nan")
        row["params_invariant"] = row["params_channel"] + row["params_layer"]
        return row

    rows = {"all": summarise(table)}
    grouped = sorted(table.groupby(by, sort=False), key=lambda item: -float(item[1]["numel"].sum()))
    for key, part in grouped:
        rows[str(key) or "(unknown)"] = summarise(part)
    frame = pd.DataFrame.from_dict(rows, orient="index")[list(CENSUS_COLUMNS)]
    frame["tensors"] = frame["tensors"].astype(np.int64)
    frame["parameters"] = frame["parameters"].astype(np.int64)
    frame.index.name = "scope" if by == "module_type" else by
    return frame


def _human_count(count: float) -> str:
    for limit, unit, suffix in ((1e9, 1e9, "G"), (1e6, 1e6, "M"), (1e4, 1e3, "k")):
        if count >= limit:
            return f"{count / unit:.1f}{suffix}"
    return f"{int(count):,}"


def print_census(table: pd.DataFrame, console: Any = None, title: str | None = None) -> None:
    """Render a `census` table with rich: per class, "% of parameters / % of tensors"."""
    from rich import box
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    out = Table(title=title, box=box.SIMPLE_HEAD, caption="cells: % of parameters / % of tensors")
    out.add_column(table.index.name or "scope", style="bold")
    out.add_column("tensors", justify="right")
    out.add_column("params", justify="right")
    for cls in CLASSES:
        out.add_column(cls, justify="right", style="bold" if cls != "none" else None)

    def pct(value: float, digits: int) -> str:
        return "-" if value != value else f"{100 * value:.{digits}f}"

    for scope, row in table.iterrows():
        out.add_row(
            str(scope),
            f"{int(row['tensors'])}",
            _human_count(float(row["parameters"])),
            *(
                f"{pct(row[f'params_{cls}'], 1)} / {pct(row[f'tensors_{cls}'], 0)}"
                for cls in CLASSES
            ),
            end_section=scope == "all",
        )
    console.print(out)


def print_probe(result: ProbeResult, console: Any = None) -> None:
    """Render the per-tensor probe verdicts with rich (tested tensors only)."""
    from rich import box
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    out = Table(title="probe verdicts (tensors with ndim >= 2)", box=box.SIMPLE_HEAD)
    out.add_column("tensor", overflow="fold", ratio=1)
    for column in ("module", "shape", "verdict", "chan Δ", "layer Δ", "eps Δ"):
        out.add_column(column, justify="left" if column == "module" else "right", no_wrap=True)

    def num(value: float) -> str:
        return "-" if value != value else f"{value:.1e}"

    for name, row in result.table[result.table["tested"]].iterrows():
        out.add_row(
            str(name),
            str(row["module_type"]),
            "x".join(str(size) for size in row["shape"]),
            str(row["verdict"]) + (" (approx.)" if row["approximate"] else ""),
            num(row["channel_change"]),
            num(row["layer_change"]),
            num(row["numerical_change"]),
        )
    console.print(out)


# --------------------------------------------------------------------------------------------
# `stepsize-lens inspect`: a model from a spec, probed on random inputs
# --------------------------------------------------------------------------------------------


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    line = text.splitlines()[0] if text else ""
    line = line[:200]
    return f"{type(exc).__name__}: {line}" if line else type(exc).__name__


def parse_input_shape(text: str | Sequence[int]) -> tuple[int, ...]:
    """``"3,32,32"``, ``"3x32x32"`` or ``(3, 32, 32)`` -> (3, 32, 32): one example, no batch dim."""
    from stepsize_lens.errors import UserInputError

    if isinstance(text, str):
        cleaned = text.strip().strip("()[]").replace("x", ",").replace(" ", ",")
        parts = [part for part in cleaned.split(",") if part]
        try:
            shape = tuple(int(part) for part in parts)
        except ValueError:
            raise UserInputError(
                f"input shape {text!r} is not a list of integers like 3,32,32"
            ) from None
    else:
        shape = tuple(int(size) for size in text)
    if not shape or any(size < 1 for size in shape):
        raise UserInputError(f"input shape {text!r} must be one or more positive integers")
    return shape


def resolve_model(spec: str) -> tuple[torch.nn.Module, tuple[int, ...] | None]:
    """Build the model named by ``spec``: a built-in name or ``package.module:factory``.

    The factory is called with no arguments. Returns the model and the built-in default input
    shape (None for a factory). Every failure raises `UserInputError` with one line.
    """
    import importlib
    import os
    import sys

    from stepsize_lens.errors import UserInputError
    from stepsize_lens.models import BUILTIN_MODELS

    if spec in BUILTIN_MODELS:
        factory, shape = BUILTIN_MODELS[spec]
        return factory(), shape
    if ":" not in spec:
        raise UserInputError(
            f"unknown model {spec!r}: use a built-in name ({', '.join(BUILTIN_MODELS)}) "
            "or package.module:factory"
        )
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise UserInputError(f"model spec {spec!r} must look like package.module:factory")
    cwd = os.getcwd()
    added = cwd not in sys.path
    if added:  # like `python -m`, let a module in the current folder be found
        sys.path.insert(0, cwd)
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        raise UserInputError(
            f"cannot import module {module_name!r} for model {spec!r}: {_first_line(exc)}"
        ) from None
    except Exception as exc:
        raise UserInputError(
            f"importing module {module_name!r} for model {spec!r} failed: {_first_line(exc)}"
        ) from None
    finally:
        if added and cwd in sys.path:
            sys.path.remove(cwd)
    target: Any = module
    for part in attr.split("."):
        if not hasattr(target, part):
            raise UserInputError(f"module {module_name!r} has no attribute {attr!r}")
        target = getattr(target, part)
    if not callable(target):
        raise UserInputError(
            f"{spec!r} is not callable (it is a {type(target).__name__}); name a factory function"
        )
    try:
        model = target()
    except Exception as exc:
        raise UserInputError(f"factory {spec!r} raised {_first_line(exc)}") from None
    if not isinstance(model, torch.nn.Module):
        raise UserInputError(
            f"factory {spec!r} returned a {type(model).__name__}, not a torch.nn.Module"
        )
    return model, None


def inspect_model(
    spec: str,
    input_shape: str | Sequence[int] | None = None,
    *,
    batch_size: int = 4,
    seed: int = 0,
    draws: int = 3,
) -> ProbeResult:
    """Build the model ``spec`` (see `resolve_model`), probe it on a random batch, return verdicts.

    The input is ``batch_size`` standard-normal examples of ``input_shape`` (default: the
    built-in model's). The model is built and the batch drawn under a fixed seed without
    touching the global RNG. Bad specs and shapes that do not fit raise `UserInputError`.
    """
    from stepsize_lens.errors import UserInputError

    if draws < 1:
        raise UserInputError(f"draws must be at least 1, not {draws}")
    if batch_size < 2:
        raise UserInputError(f"batch size must be at least 2, not {batch_size}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model, default_shape = resolve_model(spec)
    if input_shape is None:
        if default_shape is None:
            raise UserInputError(f"model {spec!r} is not built in: pass --input-shape like 3,32,32")
        shape = default_shape
    else:
        shape = parse_input_shape(input_shape)
    generator = torch.Generator().manual_seed(seed)
    inputs = torch.randn((batch_size, *shape), generator=generator)
    guard = _StateGuard(model)
    try:
        model.train()
        with torch.no_grad():
            _call(model, inputs)
    except Exception as exc:
        raise UserInputError(
            f"input shape {shape} (batch {batch_size}) does not fit model {spec!r}: "
            f"{_first_line(exc)}"
        ) from None
    finally:
        guard.restore()
    return probe(model, inputs, draws=draws, seed=seed)


def print_inspection(
    result: ProbeResult, spec: str = "", tensors: bool = False, console: Any = None
) -> None:
    """Print the census of a probe (and with ``tensors=True`` every verdict) for ``inspect``."""
    from rich.console import Console

    console = console or Console()
    if tensors:
        print_probe(result, console)
    table = census(result)
    title = f"scale-invariance census of {spec}" if spec else "scale-invariance census"
    print_census(table, console, title=title)
    overall = table.loc["all"]
    approximate = result.table.index[result.table["approximate"]].tolist()
    console.print(
        f"scale-invariant: {100 * overall['params_invariant']:.1f}% of parameters, "
        f"{100 * (overall['tensors_channel'] + overall['tensors_layer']):.1f}% of tensors "
        f"(structural verdicts: float64, eps -> {STRUCTURAL_EPS:g}, tolerance "
        f"{result.tolerance:g}; 1-D tensors are not tested)."
    )
    if approximate:
        console.print(
            f"{len(approximate)} invariant tensor(s) change the output by more than "
            f"{result.numerical_tolerance:g} under the real eps, e.g. {approximate[0]}."
        )


# --------------------------------------------------------------------------------------------
# Agreement: the recorded test against the probe
# --------------------------------------------------------------------------------------------


def _nanmedian(values: np.ndarray) -> float:
    finite = values[np.isfinite(values)]
    return float(np.median(finite)) if finite.size else float("nan")


def _explain(row: dict[str, Any], delta: float) -> str:
    """Why the recorded test and the probe disagree on one tensor (empty when they agree)."""
    import math

    probe_cls, recorded = row["probe"], row["recorded"]
    if row["tested_records"] == 0:
        return "no tested record (every record skipped or its cosines undefined)"
    if probe_cls == recorded:
        return ""
    rate = f"{100 * row['pass_rate']:.0f}%"
    if probe_cls in ("channel", "layer") and recorded == "none":
        k, wd, positive = row["radial_coef"], row["weight_decay"], row["radial_positive"]
        detail = (
            f"the test passed its view in only {rate} of records (median |cos(w, g)| "
            f"{row['median_abs_cos']:.2g} vs threshold {row['layer_threshold']:.2g})"
        )
        if wd > 0 and k > 0 and abs(k - wd) <= 0.25 * wd:
            return (
                f"{detail}: the gradient carries weight decay, <w,g>/|w|^2 = {k:.3g} matches "
                f"weight_decay {wd:.3g}, a radial term the loss-only gradient does not have"
            )
        if positive > 0.9 and k > 0:
            return (
                f"{detail}: the gradient points outward in {100 * positive:.0f}% of records "
                f"(<w,g>/|w|^2 = {k:.3g}), an L2 penalty in the loss or a non-invariant path "
                "mixed into the gradient (an extra loss term, a branch without normalisation, "
                "or a forward that differs from the probe's, e.g. eval-mode BatchNorm)"
            )
        numerical = row.get("numerical_change", float("nan"))
        eps_note = (
            f"; under the real eps the probe's output moves by {numerical:.2g}"
            if numerical == numerical
            else ""
        )
        return (
            f"{detail}: a non-invariant path mixed into the gradient, or normalisation eps on "
            f"low-variance channels making the invariance approximate{eps_note}"
        )
    if probe_cls == "channel" and recorded == "layer":
        return (
            f"the channel test failed (median max-row |cos| {row['median_channel_cos']:.2g} vs "
            f"threshold {row['channel_threshold']:.2g}) while the whole tensor passed: a few rows "
            "are not tangential, e.g. dead or low-variance channels where eps dominates"
        )
    if probe_cls == "none":
        chance = 100 * math.erf(delta / math.sqrt(2))
        return (
            f"the test passed in {rate} of records although rescaling changes the output on the "
            f"probe batch (a random gradient passes the layer view about {chance:.0f}% of the "
            "time): the gradient is nearly orthogonal to w in training, e.g. the tensor is "
            "approximately invariant there or the probe batch/mode differs from training"
        )
    return (
        f"the recorded test says {recorded} but rescaling per row changes the probe's output: "
        "rows happen to be orthogonal to their gradients in training, a stronger pattern than "
        "the structure guarantees"
    )


def agreement(
    run: Run, probe_result: ProbeResult | None = None, delta: float | None = None
) -> pd.DataFrame:
    """Per tensor (ndim >= 2), the recorded test against the probe verdict, explained.

    Probe verdicts come from ``probe_result`` (matched by tensor name) or the run's params
    column ``probe_verdict``. Columns: ``module_type``, ``probe``, ``recorded`` (most frequent
    test outcome), ``applied`` (most frequent view AdamP/SGDP applied; None if unknown),
    ``pass_rate`` (share of tested records passing the probe's view: channel for "channel",
    channel-or-layer otherwise), ``channel_rate``, ``layer_rate``, ``tested_records``,
    ``agree`` and ``explanation`` (why they differ: weight decay or another radial term in the
    gradient, eps, a non-invariant path, chance).
    """
    import pandas as pd

    from stepsize_lens.errors import UserInputError

    names = run.tensor_names
    numerical = [float("nan")] * len(names)
    if probe_result is not None:
        table = probe_result.table
        verdicts = [table.at[n, "verdict"] if n in table.index else None for n in names]
        numerical = [
            float(table.at[n, "numerical_change"]) if n in table.index else float("nan")
            for n in names
        ]
    elif PROBE_VERDICT_COLUMN in run.data["params"]:
        verdicts = list(run.data["params"][PROBE_VERDICT_COLUMN])
        stored = run.data["params"].get("probe_numerical_change")
        if stored is not None:
            numerical = [float("nan") if v is None else float(v) for v in stored]
    else:
        raise UserInputError(
            f"run {run.label!r} has no probe verdicts: pass a probe result or record with "
            "attach(..., probe_inputs=...)"
        )
    delta = run_delta(run, delta)
    counts = view_counts(run, delta)
    recorded = _majority(counts)
    applied_counts = view_counts(run, which="applied_view")
    applied = _majority(applied_counts)
    applied_known = applied_counts["known"].to_numpy() > 0

    valid = ~run.skipped.astype(bool)
    cos = run.metric("cos_grad")[valid]
    chan = run.metric("channel_cos_grad_max")[valid]
    with np.errstate(invalid="ignore", divide="ignore"):
        radial = cos * run.metric("grad_norm")[valid] / run.metric("weight_norm")[valid]
    wd_by_group = run.group_field("weight_decay")[valid] if valid.any() else np.zeros((0, 0))
    numel = _param_array(run, "numel", 1.0)
    rows_count = np.maximum(_param_array(run, "rows", 1.0), 1.0)
    ndim = _param_array(run, "ndim", 0.0)
    groups = _param_array(run, "group", 0.0).astype(int)
    module_types = run.data["params"].get("module_type") or [""] * len(names)

    records = []
    for t, name in enumerate(names):
        if ndim[t] < 2 or verdicts[t] not in CLASSES:
            continue
        probe_cls = verdicts[t]
        channel_rate = float(counts["channel"].iloc[t])
        layer_rate = float(counts["layer"].iloc[t])
        g = groups[t]
        wd = (
            _nanmedian(wd_by_group[:, g])
            if wd_by_group.ndim == 2 and g < wd_by_group.shape[1]
            else float("nan")
        )
        finite_radial = radial[:, t][np.isfinite(radial[:, t])]
        row: dict[str, Any] = {
            "tensor": name,
            "module_type": str(module_types[t] or ""),
            "probe": probe_cls,
            "recorded": str(recorded[t]),
            "applied": str(applied[t]) if applied_known[t] else None,
            "pass_rate": channel_rate if probe_cls == "channel" else channel_rate + layer_rate,
            "channel_rate": channel_rate,
            "layer_rate": layer_rate,
            "tested_records": int(counts["known"].iloc[t]),
            "median_abs_cos": _nanmedian(np.abs(cos[:, t])),
            "median_channel_cos": _nanmedian(chan[:, t]),
            "layer_threshold": delta / np.sqrt(max(numel[t], 1.0)),
            "channel_threshold": delta * np.sqrt(rows_count[t] / max(numel[t], 1.0)),
            "radial_coef": _nanmedian(radial[:, t]),
            "radial_positive": float((finite_radial > 0).mean()) if finite_radial.size else 0.0,
            "weight_decay": wd if wd == wd else 0.0,
            "numerical_change": numerical[t],
        }
        row["agree"] = bool(row["tested_records"] > 0 and row["probe"] == row["recorded"])
        row["explanation"] = _explain(row, delta)
        if row["applied"] is not None and row["applied"] != probe_cls:
            note = f"AdamP/SGDP mostly applied the {row['applied']} view"
            row["explanation"] = f"{row['explanation']}; {note}" if row["explanation"] else note
        records.append(row)
    columns = [
        "tensor",
        "module_type",
        "probe",
        "recorded",
        "applied",
        "pass_rate",
        "channel_rate",
        "layer_rate",
        "tested_records",
        "agree",
        "explanation",
    ]
    frame = pd.DataFrame.from_records(records, columns=columns + ["_"])[columns]
    return frame.set_index("tensor")


def disagreements(
    run: Run, probe_result: ProbeResult | None = None, delta: float | None = None
) -> pd.DataFrame:
    """The rows of `agreement` where the recorded test and the probe differ."""
    frame = agreement(run, probe_result, delta)
    return frame[~frame["agree"]]
