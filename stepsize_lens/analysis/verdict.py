"""The verdict a report opens with (docs/findings.md): two or three sentences that answer "is my
effective step healthy, and if not, why and what would change it", built only from the ranked
findings — their titles, the first sentence of their suggestions and their advice — so it
quotes the same numbers as the findings below it.

- **Not healthy** when a finding is a warning or critical: the first sentence is the title of
  the most severe one (among equals, the first in `findings.KINDS`: the cause of a smaller
  step, norm growth, before its context, the weight-decay timescale), the second its cause
  (the first sentence of its suggestion), the third the strongest advice line (the largest
  change of the mid-run angular update) of the first warning that has advice (a change in the
  user's own arguments whose effect the recurrence computed), or that no change within the
  plausible ranges has a material effect.
- **Healthy** otherwise: the first sentence says so, the second quotes the most informative
  finding about the effective step (at equilibrium, tracking a decaying schedule, the time to
  equilibrium, or why it fell with flat norms), the third that nothing needs changing.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Any

from stepsize_lens.analysis.finding import Finding

PROBLEMS: tuple[str, ...] = ("critical", "warning")
HEALTHY_CONTEXT: tuple[str, ...] = (
    "equilibrium_reached",
    "equilibrium_tracking",
    "equilibrium_time",
    "gradient_faded",
    "gradient_norm_rise",
)
"""Info kinds that say what the effective step did, most informative first."""
_SENTENCE_END = re.compile(r"(?<=[^\s.])[.:] (?=[A-Z`(])")


def _strength(advice: dict[str, Any]) -> float:
    """How much an advice line moves the mid-run angular update (|log ratio|)."""
    ratio = (advice.get("effect") or {}).get("angle_ratio") or 1.0
    return abs(math.log(ratio)) if ratio > 0 else 0.0


def _kind_order(kind: str) -> int:
    from stepsize_lens.analysis.findings import KINDS

    return KINDS.index(kind) if kind in KINDS else len(KINDS)


def _lower_first(text: str) -> str:
    """The title as part of a sentence: its first letter lowercased unless it is a name."""
    first = text.split(" ", 1)[0]
    if len(first) > 1 and (first[1:].lower() != first[1:] or "(" in first):
        return text  # AdamP, SGDP, ...: keep names as they are
    return text[:1].lower() + text[1:]


def first_sentence(text: str) -> str:
    """``text`` up to its first sentence end (". " or ": " before a capital), without it."""
    match = _SENTENCE_END.search(text)
    return (text[: match.start() + 1] if match else text).rstrip(".:")


def verdict(findings: Sequence[Finding | dict[str, Any]]) -> dict[str, Any]:
    """``healthy`` (bool), ``sentences`` (2 or 3), ``text`` (them joined) and ``kinds`` (the
    findings they come from), from findings ranked as `findings.find` returns them."""
    items = [f.to_dict() if isinstance(f, Finding) else dict(f) for f in findings]
    problems = sorted(
        (f for f in items if f["severity"] in PROBLEMS),
        key=lambda f: (PROBLEMS.index(f["severity"]), _kind_order(f["kind"])),
    )
    if problems:
        top = problems[0]
        sentences = [
            f"Not healthy: {_lower_first(top['title'])}.",
            f"Why: {_lower_first(first_sentence(top['suggestion']))}.",
        ]
        kinds = [top["kind"]]
        advised = next((f for f in problems if f.get("advice")), None)
        if advised is not None:
            best = max(advised["advice"], key=_strength)
            sentences.append(f"What would change it: {best['text']}.")
            if advised["kind"] not in kinds:
                kinds.append(advised["kind"])
        else:
            sentences.append(
                "No change of the optimizer's arguments within the plausible ranges has a "
                "material effect by the recurrence; the findings below say what to look at."
            )
        text = " ".join(sentences)
        return {"healthy": False, "sentences": sentences, "text": text, "kinds": kinds}
    context = next(
        (f for kind in HEALTHY_CONTEXT for f in items if f["kind"] == kind),
        None,
    )
    sentences = ["Healthy: no finding says the effective step is off."]
    kinds = []
    if context is not None:
        sentences.append(f"{context['title']}.")
        kinds.append(context["kind"])
    else:
        sentences.append("Nothing in the recorded norms, lr and updates calls for a comment.")
    sentences.append("Nothing needs changing.")
    return {"healthy": True, "sentences": sentences, "text": " ".join(sentences), "kinds": kinds}
