"""The per-step recurrence every prediction follows (docs/design.md §5.9): one optimizer step on
a scale-invariant tensor in the mean-field model, and its constant-lr equilibrium.

**The model.** w is scale-invariant, so its gradient g is orthogonal to w; the gradients are
noise-dominated: uncorrelated across steps, E‖g_t‖² = g̃_t²/‖w_t‖² with g̃ the scale-free gradient
norm. Every optimizer the theory knows builds its step from one linear buffer and one output
map, with weight decay λ_c coupled (added to the gradient, g' = g + λ_c·w) and λ_d decoupled::

    b_t = β·b_{t−1} + c·g'_t                     (momentum buffer / first moment / EMA)
    X_t = P·b_{t−1} + Q·g'_t                     (the direction: P, Q per family)
    u_t = out(X_t)                               (linear, Adam's normaliser, sign, Newton–Schulz)
    u_t ← u_t − ŵ⟨ŵ, u_t⟩                         (AdamP/SGDP on the tensors they project)
    w_{t+1} = (1 − η_t·λ_d)·w_t − η_t·u_t

The state is three expectations per tensor, S = ‖w_t‖², A = ⟨w_t, b_{t−1}⟩, B = ‖b_{t−1}‖²
(plus Adam's second moment v, per coordinate), and one step maps it exactly — in expectation,
with E[xy] for the noise written as the product of expectations (mean field; exact for the
linear maps, to O(1/numel) otherwise) — because g'_t enters only through E‖g_t‖² (the noise
is orthogonal to w and to the past) and the radial part λ_c·w. The output map enters through
three numbers:

- linear (SGD, SGDP), gain k: ⟨w,u⟩ = k⟨w,X⟩, ‖u‖² = k²‖X‖², ⟨u,b⟩ = k⟨X,b⟩;
- Adam: linear with k_t = 1/((1 − β1^t)(sqrt(v_t/(1 − β2^t)) + ε)), v_t = β2·v_{t−1} +
  (1 − β2)·‖g'_t‖²/numel (one second moment per tensor: noise of equal variance per element);
- normalized (Lion: sign; Muon: Newton–Schulz), u = s·F(X) with F homogeneous of degree 0:
  ‖u‖² = s²ν and, by Stein's lemma for Gaussian X, E⟨F(X), Y⟩ = (γ/σ_X)·E⟨X, Y⟩ for every Y
  jointly Gaussian with X, σ_X² = ‖X‖²/numel; so ⟨w,u⟩ = (sγ/σ_X)⟨w,X⟩, ⟨u,b⟩ = (sγ/σ_X)⟨X,b⟩.
  Sign: γ = sqrt(2/π), ν = numel. Newton–Schulz: `newton_schulz.update_stats`.

The angle of the step is atan2(η·‖u⊥‖, (1 − ηλ_d)‖w‖ − η⟨w,u⟩/‖w‖) with ‖u⊥‖² = ‖u‖² −
⟨w,u⟩²/‖w‖²: the lens's `angular_update` (docs/design.md §3.1).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace

import numpy as np

LINEAR, ADAM, NORMALIZED = "linear", "adam", "normalized"
WARM_UP_RECORDS = 20
OUTPUTS: tuple[str, ...] = (LINEAR, ADAM, NORMALIZED)


@dataclass(frozen=True)
class Dynamics:
    """One optimizer family's step on scale-invariant tensors (see the module docstring).

    Every array field broadcasts against [tensors] (or [records, tensors] when built per record;
    `at` picks one record's row). ``c_first`` / ``q_first``: the buffer and direction weights of
    the optimizer's first step (torch's SGD copies the gradient into an empty buffer, so c = 1
    there). ``scale``, ``gain``, ``norm_sq``: s, γ, ν of a normalized output (ignored by the
    others). ``project``: the radial part of u is removed; ``project_buffer``: the projected
    direction also replaces the buffer (SGDP without nesterov). ``power``: how the gradient
    scales with the norm in the update, 2 for linear outputs (Δθ ∝ η/‖w‖²), 1 for normalized
    and Adam's (Δθ ∝ η/‖w‖).
    """

    output: str
    beta: np.ndarray
    c: np.ndarray
    c_first: np.ndarray
    p: np.ndarray
    q: np.ndarray
    q_first: np.ndarray
    numel: np.ndarray
    scale: np.ndarray = 1.0  # type: ignore[assignment]
    gain: np.ndarray = 1.0  # type: ignore[assignment]
    norm_sq: np.ndarray = np.nan  # type: ignore[assignment]
    beta1: np.ndarray = 0.9  # type: ignore[assignment]
    beta2: np.ndarray = 0.999  # type: ignore[assignment]
    eps: np.ndarray = 0.0  # type: ignore[assignment]
    project: np.ndarray = False  # type: ignore[assignment]
    project_buffer: np.ndarray = False  # type: ignore[assignment]

    def __post_init__(self) -> None:
        if self.output not in OUTPUTS:
            raise ValueError(f"output must be one of {OUTPUTS}, not {self.output!r}")
        for f in fields(self):
            if f.name != "output":
                value = getattr(self, f.name)
                dtype = bool if f.name.startswith("project") else np.float64
                object.__setattr__(self, f.name, np.asarray(value, dtype=dtype))

    @property
    def any_projected(self) -> bool:
        return bool(self.project.any())

    @property
    def power(self) -> int:
        return 2 if self.output == LINEAR else 1

    def at(self, record: int) -> Dynamics:
        """The dynamics of one record, when the fields are [records, tensors]."""
        return replace(
            self,
            **{
                f.name: getattr(self, f.name)[record]
                for f in fields(self)
                if f.name != "output" and np.ndim(getattr(self, f.name)) == 2
            },
        )

    def filter_gains(self) -> tuple[np.ndarray, np.ndarray]:
        """(H, V): the buffer-and-direction filter's gain for a constant input,
        H = Q + P·c/(1 − β), and its noise power, V = Q² + P²c²/(1 − β²) (E‖X‖² = V·E‖g‖² for
        white noise g). Lemma 2.2's cross terms add up to the growth (H² − V)·E‖g‖² per step."""
        with np.errstate(divide="ignore", invalid="ignore"):
            h = self.q + self.p * self.c / (1.0 - self.beta)
            v = self.q**2 + self.p**2 * self.c**2 / (1.0 - self.beta**2)
        return h, v

    def cross_factor(self) -> np.ndarray:
        """κ: how much the momentum cross terms multiply the norm growth of uncorrelated steps
        of the same size; κ = H²/V for linear outputs and Adam, 1 + ρ(H²/V − 1) with
        ρ = γ²·numel/ν for normalized ones (Stein's gain), 1 where the update is projected."""
        h, v = self.filter_gains()
        with np.errstate(divide="ignore", invalid="ignore"):
            linear = h**2 / v
            rho = self.gain**2 * self.numel / self.norm_sq
        kappa = 1.0 + rho * (linear - 1.0) if self.output == NORMALIZED else linear
        return np.where(self.project, 1.0, kappa)


@dataclass
class State:
    """The mean-field state before a step: S = ‖w‖², A = ⟨w, b_{t−1}⟩, B = ‖b_{t−1}‖²,
    Adam's per-element second moment v, and the optimizer's step count t (first step: t = 1)."""

    sq: np.ndarray
    radial: np.ndarray
    buffer_sq: np.ndarray
    second: np.ndarray
    t: int

    @classmethod
    def fresh(cls, initial_sq: np.ndarray) -> State:
        sq = np.asarray(initial_sq, dtype=np.float64).copy()
        zero = np.zeros_like(sq)
        return cls(sq, zero.copy(), zero.copy(), zero.copy(), 1)


@dataclass
class StepOut:
    """What one step gives besides the new state: the angle between w_t and w_{t+1} (None when
    not asked for), and E‖g_t‖²."""

    angle: np.ndarray | None
    grad_sq: np.ndarray


class _Terms:
    """The products of a `Dynamics` one step needs, computed once per record."""

    def __init__(self, dyn: Dynamics, first: bool) -> None:
        c = dyn.c_first if first else dyn.c
        q = dyn.q_first if first else dyn.q
        p, beta = dyn.p, dyn.beta
        self.beta, self.c, self.p, self.q = beta, c, p, q
        self.bb, self.cc, self.bc2 = beta * beta, c * c, 2.0 * beta * c
        self.pp, self.qq, self.pq2 = p * p, q * q, 2.0 * p * q
        self.pb, self.qc, self.pc_qb = p * beta, q * c, p * c + q * beta
        self.output = dyn.output
        self.inv_numel = 1.0 / dyn.numel
        self.norm_gain = dyn.scale * dyn.gain
        self.norm_sq = dyn.scale**2 * dyn.norm_sq
        self.beta1, self.beta2, self.eps = dyn.beta1, dyn.beta2, dyn.eps
        self.projected = dyn.any_projected
        self.project = dyn.project
        self.into_buffer = dyn.project & dyn.project_buffer
        self.any_into_buffer = bool(self.into_buffer.any())


def step(
    dyn: Dynamics | _Terms,
    state: State,
    lr: np.ndarray,
    coupled: np.ndarray,
    decoupled: np.ndarray,
    scale_free_sq: np.ndarray,
    angle: bool = True,
) -> StepOut:
    """Advance ``state`` by one optimizer step in place (module docstring); returns the step's
    angle (when ``angle``) and E‖g‖². ``lr`` η, ``coupled`` λ_c, ``decoupled`` λ_d,
    ``scale_free_sq`` g̃², each [tensors]. Undefined values (a zero norm, no gradient) propagate
    as NaN; call it under ``np.errstate(divide="ignore", invalid="ignore")`` as `integrate`
    does."""
    k = dyn if isinstance(dyn, _Terms) else _Terms(dyn, state.t == 1)
    s, a, b = state.sq, state.radial, state.buffer_sq
    grad_sq = scale_free_sq / s
    if coupled is not None:  # ‖g'‖², ⟨w, g'⟩ = λ_c·S, ⟨b_{t−1}, g'⟩ = λ_c·A
        g_sq = grad_sq + coupled * coupled * s
        w_g = coupled * s
        lca = coupled * a
        w_b = k.beta * a + k.c * w_g
        b_sq = k.bb * b + k.cc * g_sq + k.bc2 * lca
        w_x = k.p * a + k.q * w_g
        x_sq = k.pp * b + k.qq * g_sq + k.pq2 * lca
        x_b = k.pb * b + k.qc * g_sq + k.pc_qb * lca
    else:
        g_sq = grad_sq
        w_b = k.beta * a
        b_sq = k.bb * b + k.cc * g_sq
        w_x = k.p * a
        x_sq = k.pp * b + k.qq * g_sq
        x_b = k.pb * b + k.qc * g_sq
    if k.output == NORMALIZED:
        gain = k.norm_gain / np.sqrt(x_sq * k.inv_numel)
        w_u, u_sq, u_b = gain * w_x, k.norm_sq, gain * x_b
    elif k.output == ADAM:
        t = float(state.t)
        state.second = k.beta2 * state.second + (1.0 - k.beta2) * g_sq * k.inv_numel
        gain = 1.0 / ((1.0 - k.beta1**t) * (np.sqrt(state.second / (1.0 - k.beta2**t)) + k.eps))
        w_u, u_sq, u_b = gain * w_x, gain * gain * x_sq, gain * x_b
    else:
        w_u, u_sq, u_b = w_x, x_sq, x_b
    if k.projected:
        u_b = np.where(k.project, u_b - w_u * w_b / s, u_b)
        u_sq = np.where(k.project, u_sq - w_u * w_u / s, u_sq)
        w_u = np.where(k.project, 0.0, w_u)
        if k.any_into_buffer:
            b_sq = np.where(k.into_buffer, u_sq, b_sq)
            u_b = np.where(k.into_buffer, u_sq, u_b)
            w_b = np.where(k.into_buffer, 0.0, w_b)
    shrink = 1.0 - lr * decoupled if decoupled is not None else 1.0
    out_angle = None
    if angle:
        norm = np.sqrt(s)
        perp = lr * np.sqrt(np.maximum(u_sq - w_u * w_u / s, 0.0))
        out_angle = np.arctan2(perp, shrink * norm - lr * w_u / norm)
    lr_w_u = lr * w_u
    state.sq = shrink * (shrink * s - 2.0 * lr_w_u) + lr * lr * u_sq
    state.radial = shrink * w_b - lr * u_b
    state.buffer_sq = b_sq
    state.t += 1
    return StepOut(angle=out_angle, grad_sq=grad_sq)


def _warm_up(
    dyn: _Terms,
    state: State,
    first_step: int,
    lr: np.ndarray,
    coupled: np.ndarray,
    decoupled: np.ndarray,
    scale_free_sq: np.ndarray,
    burn_in: int | None,
) -> None:
    """Fill the buffers of a run first recorded at ``first_step`` > 1 (see `integrate`)."""
    initial = state.sq.copy()
    if burn_in is None:
        memory = 1.0 / max(1e-12, 1.0 - float(np.nanmax(dyn.beta, initial=0.0)))
        burn_in = int(min(first_step - 1, math.ceil(10.0 * memory)))
    state.t = max(2, first_step - burn_in)
    for _ in range(burn_in):
        step(dyn, state, lr, coupled, decoupled, scale_free_sq)
        state.sq = initial.copy()
    if dyn.output == ADAM:  # its second moment at the stationary value, bias included
        per_element = (scale_free_sq / initial + coupled**2 * initial) * dyn.inv_numel
        state.second = per_element * (1.0 - dyn.beta2 ** (first_step - 1))
    state.t = first_step


@dataclass
class Trajectory:
    """The recurrence sampled at the records: ``sq`` = ‖w‖² before the recorded step,
    ``angle`` = that step's angular update, ``grad_sq`` = E‖g‖² there; each [records, tensors]."""

    sq: np.ndarray
    angle: np.ndarray
    grad_sq: np.ndarray


def integrate(
    steps: np.ndarray,
    dyn: Dynamics,
    lr: np.ndarray,
    coupled: np.ndarray,
    decoupled: np.ndarray,
    scale_free_sq: np.ndarray,
    initial_sq: np.ndarray,
    *,
    burn_in: int | None = None,
) -> Trajectory:
    """Run the recurrence over every optimizer step from the first record to the last.

    ``steps`` [R] are the recorded steps (increasing, non-skipped); ``lr``, ``coupled``,
    ``decoupled`` and ``scale_free_sq`` are [R, T] at those records, ``dyn`` per record
    ([R, T] fields) or constant, ``initial_sq`` [T] the measured ‖w‖² at the first record.

    **Between records** (a record every 10 or 100 steps later in a run) every unrecorded step
    is integrated too, with η, λ_c, λ_d and g̃² interpolated linearly in the step between the
    two records around it, and the family's other hyperparameters (momentum, betas, ...) held
    at the earlier record's values. A schedule that jumps between two records (a step decay)
    is therefore smeared over that gap; one that is smooth between records (warmup, cosine,
    linear decay, WSD's cool-down) is followed to first order in the gap.

    **Start.** When the first record is the optimizer's first step the buffers start empty
    (t = 1). A lens attached later finds them filled: then the buffers are warmed up with
    ``burn_in`` steps (default 10/(1 − β) capped at the steps before the first record) at the
    first record's hyperparameters with ‖w‖² held at its measured value, and t continues from
    the first record's step.

    Cost: O(steps × tensors), a few dozen vector operations per optimizer step.
    """
    steps = np.asarray(steps, dtype=np.int64)
    num = steps.size
    width = np.broadcast_shapes(np.shape(lr)[1:], np.shape(initial_sq))
    initial_sq = np.broadcast_to(np.asarray(initial_sq, dtype=np.float64), width)
    shape = (num, *width)
    out = Trajectory(np.full(shape, np.nan), np.full(shape, np.nan), np.full(shape, np.nan))
    if num == 0:
        return out
    per_record = any(np.ndim(getattr(dyn, f.name)) == 2 for f in fields(dyn) if f.name != "output")
    cache: dict[tuple[int, bool], _Terms] = {}

    def terms_at(i: int, first: bool) -> _Terms:
        key = (i if per_record else 0, first)
        if key not in cache:
            if len(cache) > 4:
                cache.clear()
            cache[key] = _Terms(dyn.at(i) if per_record else dyn, first)
        return cache[key]

    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        _run(steps, terms_at, lr, coupled, decoupled, scale_free_sq, initial_sq, burn_in, out)
    return out


def _nonzero(values: np.ndarray) -> np.ndarray | None:
    """None when every value is 0 (the step skips that decay's terms), else the values."""
    return None if not np.any(values) else values


def _run(steps, terms_at, lr, coupled, decoupled, scale_free_sq, initial_sq, burn_in, out) -> None:
    num = steps.size
    state = State.fresh(initial_sq)
    first_step = int(steps[0])
    if first_step > 1:
        head = slice(0, min(num, WARM_UP_RECORDS))  # g̃² of one minibatch is noisy
        with np.errstate(all="ignore"):
            typical = np.nanmean(scale_free_sq[head], axis=0)
        _warm_up(
            terms_at(0, False), state, first_step, lr[0], coupled[0], decoupled[0], typical, burn_in
        )
    for i in range(num):
        lc, ld = _nonzero(coupled[i]), _nonzero(decoupled[i])
        out.sq[i] = state.sq
        result = step(terms_at(i, state.t == 1), state, lr[i], lc, ld, scale_free_sq[i])
        out.angle[i] = result.angle
        out.grad_sq[i] = result.grad_sq
        if i + 1 == num:
            break
        gap = int(steps[i + 1] - steps[i])
        if gap < 2:
            continue
        terms = terms_at(i, False)
        d_lr, d_gt = (lr[i + 1] - lr[i]) / gap, (scale_free_sq[i + 1] - scale_free_sq[i]) / gap
        lc_next, ld_next = _nonzero(coupled[i + 1]), _nonzero(decoupled[i + 1])
        d_lc = None if lc is None and lc_next is None else (coupled[i + 1] - coupled[i]) / gap
        d_ld = None if ld is None and ld_next is None else (decoupled[i + 1] - decoupled[i]) / gap
        for j in range(1, gap):
            step(
                terms,
                state,
                lr[i] + d_lr * j,
                None if d_lc is None else coupled[i] + d_lc * j,
                None if d_ld is None else decoupled[i] + d_ld * j,
                scale_free_sq[i] + d_gt * j,
                angle=False,
            )


@dataclass
class Equilibrium:
    """The constant-lr steady state of `step` (docs/design.md §5.9): ``angle`` θ_eq, ``sq``
    ‖w‖²_eq, ``rate`` the relaxation rate of ``order``-th power of ‖w‖² (the distance
    ‖w‖^(2·order) − ‖w_eq‖^(2·order) shrinks as exp(−rate·t)), ``decay`` λ' the decay per unit lr
    acting on ‖w‖ there, and ``exponent`` e with θ ∝ ‖w‖^(−2e) at a given lr (1 for linear
    outputs, ½ for Adam's and normalized ones). NaN where there is no weight decay."""

    angle: np.ndarray
    sq: np.ndarray
    rate: np.ndarray
    decay: np.ndarray
    order: float
    exponent: float


def equilibrium(
    dyn: Dynamics,
    lr: np.ndarray,
    coupled: np.ndarray,
    decoupled: np.ndarray,
    scale_free_sq: np.ndarray,
) -> Equilibrium:
    """The fixed point of `step` at constant η, λ and g̃, to first order in ηλ.

    Per step the decay removes 2ηλ'‖w‖² and the update adds η²κ·E‖u‖² (the cross terms of the
    buffer, `Dynamics.cross_factor`), so 2λ'‖w‖² = ηκ·E‖u‖² and θ² = η²E‖u⊥‖²/‖w‖² = 2ηλ'/κ:

    - linear (SGD, SGDP): λ' = λ_d + λ_c·H, E‖u‖² = V·g̃²/‖w‖², so ‖w‖⁴ = ηVκg̃²/(2λ'); ‖w‖⁴
      relaxes at 4ηλ';
    - Adam: E‖u‖² = V·numel; decoupled λ' = λ_d gives ‖w‖² = ηVκ·numel/(2λ_d); coupled L2 acts
      through the normaliser as λ' = λ_c·H·sqrt(numel)·‖w‖/g̃, so 2(λ_d + λ_c·H·sqrt(numel)·x/g̃)·x²
      = ηVκ·numel with x = ‖w‖, solved by Newton's method; ‖w‖² relaxes at 2ηλ_d + 3ηλ_c·H·k;
    - normalized (Lion, Muon): E‖u‖² = s²ν, ‖w‖² = ηs²νκ/(2λ_d); ‖w‖² relaxes at 2ηλ_d.
    """
    h, v = dyn.filter_gains()
    kappa = dyn.cross_factor()
    lr = np.asarray(lr, dtype=np.float64)
    coupled = np.asarray(coupled, dtype=np.float64)
    decoupled = np.asarray(decoupled, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        if dyn.output == LINEAR:
            decay = decoupled + coupled * h
            sq = np.sqrt(lr * v * kappa * scale_free_sq / (2.0 * decay))
            angle = np.sqrt(2.0 * lr * decay / kappa)
            rate, order, exponent = 4.0 * lr * decay, 2.0, 1.0
        elif dyn.output == ADAM:
            target = lr * v * kappa * dyn.numel  # 2(λ_d + a·x)·x² = target, a = λ_c·H·sqrt(C)/g̃
            a = np.where(coupled > 0, coupled * h * np.sqrt(dyn.numel / scale_free_sq), 0.0)
            x = np.fmin(np.sqrt(target / (2.0 * decoupled)), np.cbrt(target / (2.0 * a)))
            for _ in range(60):
                f = 2.0 * (decoupled + a * x) * x * x - target
                x = x - f / (4.0 * decoupled * x + 6.0 * a * x * x)
            sq = x * x
            through_normaliser = np.where(a > 0, a * x, 0.0)
            decay = decoupled + through_normaliser
            angle = np.sqrt(2.0 * lr * decay / kappa)
            rate = 2.0 * lr * decoupled + 3.0 * lr * through_normaliser
            order, exponent = 1.0, 0.5
        else:
            decay = decoupled
            sq = lr * dyn.scale**2 * dyn.norm_sq * kappa / (2.0 * decay)
            angle = np.sqrt(2.0 * lr * decay / kappa)
            rate, order, exponent = 2.0 * lr * decay, 1.0, 0.5
    none = ~(decay > 0)
    angle, sq = np.where(none, np.nan, angle), np.where(none, np.nan, sq)
    return Equilibrium(angle, sq, np.where(none, 0.0, rate), decay, order, exponent)
