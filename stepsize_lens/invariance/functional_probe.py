"""The functional probe: which parameter tensors are scale-invariant, found by rescaling them.

Ground truth without training: `probe(model, example_inputs)` rescales rows (random positive
factors) or the whole tensor (one factor), runs the model forward in training mode, and
compares outputs (see `probe` for the exact protocol); tensors are rescaled in groups, and a
group that fails is bisected (`_group_search`). `probe_param_columns` turns a
`ProbeResult` into params-table columns for a run.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from stepsize_lens._schema import CLASSES, PROBE_VERDICT_COLUMN
from stepsize_lens.errors import UserInputError
from stepsize_lens.invariance._forward import (
    _call,
    _cast_inputs,
    _float_leaves,
    _relative_change,
    _StateGuard,
)
from stepsize_lens.invariance._group_search import group_search
from stepsize_lens.model_names import clean_name, unwrap_model

if TYPE_CHECKING:
    import pandas as pd


STRUCTURAL_EPS = 1e-30
_MAX_LOG_FACTOR = float(np.log(4.0))
_MIN_LOG_LAYER_FACTOR = float(np.log(1.5))


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


def _feeds_a_norm(model: torch.nn.Module) -> set[int]:
    """ids of the parameters of every module whose next leaf module (in registration order) is
    a normalisation layer (its class name has "Norm" in it: BatchNorm2d, LayerNorm, GroupNorm,
    RMSNorm, timm's BatchNormAct2d, ...): a guess at which tensors are invariant, used only to
    group them."""
    leaves = [module for module in model.modules() if not next(module.children(), None)]
    guessed: set[int] = set()
    for module, following in zip(leaves, leaves[1:], strict=False):
        if "norm" in type(following).__name__.lower():
            guessed.update(id(param) for param in module.parameters(recurse=False))
    return guessed


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
                raise UserInputError("the model's output holds no floating-point tensor to compare")
            self.noise = _relative_change(self.forward(), self.base)
        except BaseException:
            self.guard.restore()
            raise

    def forward(self) -> list[torch.Tensor]:
        self.guard.replay()
        with torch.no_grad():
            return _float_leaves(_call(self.model, self.inputs))

    def change(self, factors: dict[str, np.ndarray | float]) -> float:
        """Relative output change with every named tensor multiplied by its factor at once."""
        saved = []
        try:
            with torch.no_grad():
                for name, factor in factors.items():
                    param = self.params[name]
                    saved.append((param, param.detach().clone()))
                    param.mul_(torch.as_tensor(factor, dtype=param.dtype, device=param.device))
            return _relative_change(self.forward(), self.base)
        finally:
            with torch.no_grad():
                for param, value in reversed(saved):
                    param.copy_(value)

    def max_change(self, factors: dict[str, Sequence[Any]], stop_above: float | None) -> float:
        """Max change over the draws (draw d rescales every named tensor by its d-th factor);
        NaN at the first NaN; stops once above ``stop_above``."""
        worst = 0.0
        for draw in range(len(next(iter(factors.values())))):
            change = self.change({name: plan[draw] for name, plan in factors.items()})
            if change != change:
                return float("nan")
            worst = max(worst, change)
            if stop_above is not None and worst > stop_above:
                break
        return worst

    def screen(
        self,
        factors: dict[str, Sequence[Any]],
        limit: float,
        grouped: bool,
        likely: set[str] | frozenset[str] = frozenset(),
    ) -> dict[str, float]:
        """Per tensor, the max change over its draws, stopping at the first draw above
        ``limit`` (the tensor passes when it is at most ``limit``). Grouped: draw by draw, the
        tensors still passing are tested together (`group_search`); in the first draw the
        ``likely`` ones (guessed invariant) apart from the rest, which start one by one."""
        if not grouped:
            return {name: self.max_change({name: plan}, limit) for name, plan in factors.items()}
        worst = dict.fromkeys(factors, 0.0)
        alive = list(factors)
        for draw in range(len(next(iter(factors.values()), ()))):

            def rescaled(group: list[str], draw: int = draw) -> float:
                return self.change({name: factors[name][draw] for name in group})

            if draw == 0:
                found = group_search([n for n in alive if n in likely], rescaled, limit)
                unlikely = [n for n in alive if n not in likely]
                found.update(group_search(unlikely, rescaled, limit, expect_failures=True))
            else:  # every tensor left passed a draw
                found = group_search(alive, rescaled, limit)
            for name, (change, _) in found.items():
                worst[name] = change if change != change else max(worst[name], change)
            alive = [name for name in alive if found[name][1]]
        return worst

    def measure(
        self, factors: dict[str, Sequence[Any]], limit: float, grouped: bool
    ) -> dict[str, float]:
        """Per tensor, the max change over all its draws. Grouped: tensors are measured
        together, and a group whose change exceeds ``limit`` is split until each tensor above
        it is measured alone (`group_search`); a group stops at its first draw above ``limit``,
        a tensor alone runs every draw."""
        if not grouped:
            return {name: self.max_change({name: plan}, None) for name, plan in factors.items()}

        def rescaled(group: list[str]) -> float:
            stop = limit if len(group) > 1 else None
            return self.max_change({name: factors[name] for name in group}, stop)

        found = group_search(list(factors), rescaled, limit)
        return {name: change for name, (change, _) in found.items()}

    def close(self) -> None:
        self.guard.restore()


class ProbeResult:
    """Verdicts of `probe`, one row per parameter tensor in ``table`` (index: parameter name).

    Columns: ``shape``, ``numel``, ``ndim``, ``rows``, ``module_type``, ``tested`` (ndim >= 2),
    ``verdict`` (the probe's structural class: "channel", "layer" or "none"), ``channel_change`` and
    ``layer_change`` (max relative output change under row / whole-tensor rescaling in the
    structural probe; ``layer_change`` is NaN when the channel test passed, since channel
    invariance implies layer invariance, and both are NaN for untested tensors),
    ``numerical_change`` (max relative change under the verdict's rescaling in the model as it
    is, with its real dtype and normalisation eps; NaN for non-invariant tensors) and
    ``approximate`` (numerical_change > numerical_tolerance: the invariance holds in structure
    but the real eps or precision bends it).

    With ``grouped=True`` (the default) a failing tensor's change is measured on it alone, as
    ``grouped=False`` measures every tensor; a passing tensor's change is that of the group it
    passed in (all of the group rescaled at once), at most the tolerance it passed.
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
    grouped: bool = True,
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

    **Groups** (``grouped=True``, the default): one forward rescales several tensors at once,
    each by its own factors for that draw (the factors above). Draw by draw, the tensors still
    passing are tested together; a group passes at a quarter of the tolerance, a failing group
    is bisected until its failing tensors are measured alone (`_group_search.group_search`:
    generalised binary splitting, group size following the failure rate seen so far; in the
    first draw, tensors of a module followed by a normalisation layer are searched apart from
    the rest, which start one by one: a guess that saves forwards, never sets a verdict). Passing
    together implies passing alone unless the effects of several tensors cancel, which their
    independent random factors would have to arrange, so the verdicts are those of
    ``grouped=False`` (each tensor rescaled alone, draw by draw) in far fewer forwards when most
    tensors pass, and in a few more than one per tensor when almost none does.

    Every forward starts from the same buffers (BatchNorm running statistics,
    num_batches_tracked) and the same RNG state (torch CPU and CUDA, Python, numpy), so dropout
    draws the same masks; afterwards all parameters, buffers, RNG states and train/eval flags are
    restored bit for bit. Factors come from a private generator seeded with ``seed``.

    **Structural vs numerical.** Normalisation layers add eps to the variance, which makes
    invariance only approximate: a channel with a small variance barely normalises. The verdict
    is therefore *structural*: it probes a copy of the model in ``structural_dtype`` (float64)
    with every module's float ``eps`` set to 1e-30 (default ``tolerance``: 1e-6 in float64, 1e-3
    otherwise). The invariant tensors are then probed again in the model as it is (real dtype
    and eps, grouped the same way against ``numerical_tolerance``) and that deviation is
    reported as ``numerical_change``. ``structural=False`` skips
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
    model = unwrap_model(model)  # names as in the plain model, like the lens records them
    if draws < 1:
        raise UserInputError(f"draws must be at least 1, not {draws}")
    all_params = dict(model.named_parameters())
    selected = _selected(all_params, names)
    owners = _module_types(model)
    plans = _factor_plans(all_params, selected, seed, draws)
    if tolerance is None:
        tolerance = _default_tolerance(structural, structural_dtype)
    guessed = _feeds_a_norm(model)
    likely = {name for name in plans if id(all_params[name]) in guessed}
    verdicts = _Verdicts(selected, plans, grouped, likely)
    structural_noise = (
        _structural_pass(model, example_inputs, structural_dtype, verdicts, tolerance)
        if structural
        else float("nan")
    )
    numerical_noise = _numerical_pass(
        model, example_inputs, verdicts, structural, numerical_tolerance
    )
    table = _probe_table(all_params, owners, verdicts, numerical_tolerance)
    settings = {
        "draws": draws,
        "seed": seed,
        "tolerance": float(tolerance),
        "numerical_tolerance": float(numerical_tolerance),
        "structural": structural,
        "structural_dtype": str(structural_dtype).replace("torch.", ""),
        "structural_eps": STRUCTURAL_EPS,
        "noise_floor": structural_noise,
        "numerical_noise_floor": numerical_noise,
    }
    return ProbeResult(table, settings)


def _selected(all_params: dict[str, torch.nn.Parameter], names: Sequence[str] | None) -> list[str]:
    """The tensors to probe: ``names`` (each must name a parameter), else every parameter."""
    if names is None:
        return list(all_params)
    unknown = [name for name in names if name not in all_params]
    if unknown:
        raise KeyError(f"model has no parameter named {unknown[0]!r}")
    return list(names)


def _factor_plans(
    all_params: dict[str, torch.nn.Parameter], selected: list[str], seed: int, draws: int
) -> dict[str, tuple[list[np.ndarray], list[float]]]:
    """The rows' and the whole tensor's factors (`_factor_plan`) of every tested tensor
    (ndim >= 2), seeded by its place among the selected."""
    return {
        name: _factor_plan(seed, index, tuple(all_params[name].shape), draws)
        for index, name in enumerate(selected)
        if all_params[name].ndim >= 2
    }


def _default_tolerance(structural: bool, structural_dtype: torch.dtype) -> float:
    """1e-6 for the structural probe in float64, 1e-3 otherwise."""
    return 1e-6 if structural and structural_dtype == torch.float64 else 1e-3


class _Verdicts:
    """The verdict and the measured changes of every selected tensor, filled in by the passes
    of `probe` (untested tensors stay "none" and NaN)."""

    def __init__(
        self,
        selected: list[str],
        plans: dict[str, tuple[list[np.ndarray], list[float]]],
        grouped: bool,
        likely: set[str],
    ) -> None:
        self.selected = selected
        self.plans = plans
        self.grouped = grouped
        self.likely = likely
        self.verdict: dict[str, str] = {name: "none" for name in selected}
        self.channel_change = dict.fromkeys(selected, float("nan"))
        self.layer_change = dict.fromkeys(selected, float("nan"))
        self.numerical_change = dict.fromkeys(selected, float("nan"))

    def judge(self, prober: _Prober, limit: float) -> None:
        """The channel test on every tested tensor, the layer test on those it fails; the
        verdicts against ``limit``."""
        rows = {name: plan[0] for name, plan in self.plans.items()}
        self.channel_change.update(prober.screen(rows, limit, self.grouped, self.likely))
        failed = {
            name: self.plans[name][1] for name in rows if not self.channel_change[name] <= limit
        }
        for name in rows:
            if name not in failed:
                self.verdict[name] = "channel"
        self.layer_change.update(prober.screen(failed, limit, self.grouped, self.likely))
        for name in failed:
            self.verdict[name] = "layer" if self.layer_change[name] <= limit else "none"

    def measure_numerical(self, prober: _Prober, limit: float) -> None:
        """The change of the invariant tensors under their verdict's rescaling, in ``prober``'s
        model (the model as it is)."""
        invariant = {
            name: plan[0] if self.verdict[name] == "channel" else plan[1]
            for name, plan in self.plans.items()
            if self.verdict[name] != "none"
        }
        self.numerical_change.update(prober.measure(invariant, limit, self.grouped))

    def numerical_from_judged(self) -> None:
        """Without the structural probe: an invariant tensor's numerical change is the change
        of the test that judged it."""
        for name in self.plans:
            if self.verdict[name] != "none":
                self.numerical_change[name] = (
                    self.channel_change[name]
                    if self.verdict[name] == "channel"
                    else self.layer_change[name]
                )


def _structural_pass(
    model: torch.nn.Module,
    example_inputs: Any,
    structural_dtype: torch.dtype,
    verdicts: _Verdicts,
    tolerance: float,
) -> float:
    """The verdicts from a copy of ``model`` in ``structural_dtype`` with negligible eps;
    returns that copy's noise floor."""
    import copy

    twin = copy.deepcopy(model).to(structural_dtype)
    _negligible_eps(twin, STRUCTURAL_EPS)
    prober = _Prober(twin, _cast_inputs(example_inputs, structural_dtype))
    try:
        noise = prober.noise
        verdicts.judge(prober, tolerance)
        return noise
    finally:
        prober.close()
        del twin, prober


def _numerical_pass(
    model: torch.nn.Module,
    example_inputs: Any,
    verdicts: _Verdicts,
    structural: bool,
    numerical_tolerance: float,
) -> float:
    """The model as it is: the invariant tensors' numerical change after the structural pass,
    else the verdicts themselves; returns the model's noise floor."""
    prober = _Prober(model, example_inputs)
    try:
        noise = prober.noise
        if structural:
            verdicts.measure_numerical(prober, numerical_tolerance)
        else:
            verdicts.judge(prober, numerical_tolerance)
            verdicts.numerical_from_judged()
        return noise
    finally:
        prober.close()


def _probe_table(
    all_params: dict[str, torch.nn.Parameter],
    owners: dict[int, str],
    verdicts: _Verdicts,
    numerical_tolerance: float,
) -> pd.DataFrame:
    """`ProbeResult.table`: one row per selected tensor (``owners``: `_module_types`)."""
    import pandas as pd

    selected = verdicts.selected
    numerical = pd.Series(verdicts.numerical_change, dtype=np.float64)
    return pd.DataFrame(
        {
            "shape": [tuple(all_params[name].shape) for name in selected],
            "numel": [all_params[name].numel() for name in selected],
            "ndim": [all_params[name].ndim for name in selected],
            "rows": [
                all_params[name].shape[0] if all_params[name].ndim else 1 for name in selected
            ],
            "module_type": [owners.get(id(all_params[name]), "") for name in selected],
            "tested": [all_params[name].ndim >= 2 for name in selected],
            "verdict": [verdicts.verdict[name] for name in selected],
            "channel_change": [verdicts.channel_change[name] for name in selected],
            "layer_change": [verdicts.layer_change[name] for name in selected],
            "numerical_change": numerical.to_numpy(),
            "approximate": (numerical > numerical_tolerance).to_numpy(),
        },
        index=pd.Index(selected, name="tensor"),
    )


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
    for name, param in unwrap_model(model).named_parameters(remove_duplicate=False):
        name_of.setdefault(id(param), clean_name(name))
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
