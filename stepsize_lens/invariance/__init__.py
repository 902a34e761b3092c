"""Scale invariance three ways: the paper's cosine test, a functional probe, and a census.

A tensor w is *layer* (whole-tensor) scale-invariant when the model's output does not change if
w is replaced by c·w for any c > 0, and *channel* scale-invariant when it does not change if each
row w_k (slice along dim 0: an output channel or neuron) is replaced by c_k·w_k for any
c_k > 0. Channel invariance implies layer invariance (take every c_k equal).

1. **The paper's test** (AdamP, Heo et al. ICLR 2021, Sec. 3; docs/design.md §3), from the recorded
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
   per module type (``stepsize-lens inspect`` renders it).
4. **Agreement** `agreement(run)`: the recorded test against the probe, per tensor, with the
   disagreements explained.

The outcome of the test is a `View` code where the run file stores it and a class word
(``"channel"``, ``"layer"``, ``"none"``; `CLASSES`) wherever people read it, including the
probe's per-tensor *verdict*; both come from `stepsize_lens._schema`.

Modules, bottom up: `_forward` (repeatable forwards, thread pool), `_group_search` (testing
tensors in groups), `recorded_test` (1), `functional_probe` (2), `census_table` (3, reads 1 and
2), `disagreement` (4, reads 1 and 2). Module names differ from the function names so that
``invariance.probe`` is always the function. Everything public is importable from here. This
package returns data only: the command line renders it.
"""

from __future__ import annotations

from stepsize_lens._schema import CLASS_OF_VIEW, CLASSES, DEFAULT_DELTA, PROBE_VERDICT_COLUMN
from stepsize_lens.invariance._forward import idle_threads, trial_forward
from stepsize_lens.invariance.census_table import CENSUS_COLUMNS, census
from stepsize_lens.invariance.disagreement import agreement, disagreements
from stepsize_lens.invariance.functional_probe import (
    PROBE_COLUMNS,
    STRUCTURAL_EPS,
    ProbeResult,
    probe,
    probe_param_columns,
)
from stepsize_lens.invariance.recorded_test import (
    classify_tensors,
    pass_rates,
    recorded_test_views,
    run_delta,
    view_counts,
)
from stepsize_lens.paper_test import paper_test

__all__ = [
    "CENSUS_COLUMNS",
    "CLASSES",
    "CLASS_OF_VIEW",
    "DEFAULT_DELTA",
    "PROBE_COLUMNS",
    "PROBE_VERDICT_COLUMN",
    "STRUCTURAL_EPS",
    "ProbeResult",
    "agreement",
    "census",
    "classify_tensors",
    "disagreements",
    "idle_threads",
    "paper_test",
    "pass_rates",
    "probe",
    "probe_param_columns",
    "recorded_test_views",
    "run_delta",
    "trial_forward",
    "view_counts",
]
