"""The paper's figures from recorded runs: one function per figure, each returning a matplotlib
`Figure` built without pyplot (no GUI, no global state; rendered through Agg when saved), in one
colour-blind-safe style (Okabe–Ito colours, viridis for heat maps) sized for a paper page
(7 in wide, 8 pt text)::

    norm_growth(runs, by="class")     ‖w‖ per step, per invariance class / group / tensor / all
    effective_step(runs, by="class")  angular update and η/‖w‖² (log scale), lr changes marked
    paper_panel(runs)                 ‖w‖, effective step, loss and accuracy (when logged)
    cos_threshold(run, delta=None)    |cos(w, g)| per tensor against the test's δ/sqrt(dim)
    theory_overlay(run, by="class")   measured ‖w‖ and angular update against the recurrence that
                                      follows the schedule (analysis.predict) and equilibrium
    decay_split(run, by="class")      why the effective step fell: norm growth, lr, scale-free
                                      gradient (analysis.decay_split)
    step_heatmap(run)                 tensor × step heat map of the effective step
    metric_facets(runs, by="class")   small multiples (seaborn): a row per metric, a column per
                                      set of tensors, a colour per run
    save_figure(fig, "out/name", formats=("png", "pdf"))   -> [paths]

``runs`` is one `Run` or a sequence of them; with several, colour tells the runs apart (labels
from ``run.label``) and line style the tensor sets. A set's value per record is the plain mean
over its tensors (`analysis.reduce`); noisy per-step series are drawn faintly with a centred
rolling mean (``smooth`` records) on top. Skipped steps are left out. `style()` is the house
style as an rc context, for your own figures. No figure goes through pyplot: nothing is
registered with it and its state is never touched (only `metric_facets` imports seaborn, which
imports pyplot).
"""

from __future__ import annotations

# re-exported: the lr changes the figures mark
from stepsize_lens.analysis.summary import lr_changes
from stepsize_lens.plots._style import CLASS_COLORS, OKABE_ITO, save_figure, style
from stepsize_lens.plots.cosines import cos_threshold
from stepsize_lens.plots.curves import effective_step, norm_growth, paper_panel
from stepsize_lens.plots.facets import metric_facets
from stepsize_lens.plots.heatmap import step_heatmap
from stepsize_lens.plots.theory import decay_split, theory_overlay

__all__ = [
    "CLASS_COLORS",
    "OKABE_ITO",
    "cos_threshold",
    "decay_split",
    "effective_step",
    "lr_changes",
    "metric_facets",
    "norm_growth",
    "paper_panel",
    "save_figure",
    "step_heatmap",
    "style",
    "theory_overlay",
]
