"""Group testing for the probe: find which tensors pass a rescaling test in few forwards.

`group_search(members, measure, limit)` classifies every member as passing (its rescaling
leaves the output within ``limit``) or failing, where ``measure(group)`` runs one forward with
every tensor of ``group`` rescaled at once, each by its own factors, and returns the relative
output change. A group that passes clears all its members in one forward. A failing group is
bisected (Hwang's generalised binary splitting): the half tested first either passes (then the
other half holds the failure) or fails (then it is searched and the other half goes back to the
pool untested), so one failing tensor among n costs about log2(n) forwards. The group size
follows the failure rate seen so far (a group that failed although the tensor its search
ended on passes alone counts as one failure): the whole pool while nothing has failed, single
tensors once half of what was judged failed, so a model where almost nothing passes costs
about one forward per tensor.

Every failure is measured on its tensor alone, so a failing tensor's change is exactly what
probing it alone gives. A passing tensor gets the change of the group it passed in: the output
moved by at most that much with the whole group rescaled. A group passes only with a margin,
at ``GROUP_MARGIN`` (1/4) of ``limit``; a group between that and ``limit`` is split, so that
effects of different tensors that partly cancel (their independent random factors would have
to conspire) cannot let a tensor that fails alone pass in its group. Near the limit, a group
of tensors that each pass alone is split down to single tensors.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

GROUP_MARGIN = 0.25


def _passes(change: float, limit: float, size: int) -> bool:
    """A tensor alone passes at ``limit``; a group only at ``GROUP_MARGIN * limit``."""
    return change <= (limit if size == 1 else GROUP_MARGIN * limit)  # NaN fails


def _group_size(passed: int, failed: int, pool: int) -> int:
    """Hwang's choice: a power of two near (good per bad) judged so far; the pool when no
    failure was seen, 1 once failures are at least as common as passes."""
    if failed == 0:
        return pool
    ratio = passed / failed
    size = 1
    while size * 2 <= ratio:
        size *= 2
    return min(size, pool)


def group_search(
    members: Sequence[str],
    measure: Callable[[list[str]], float],
    limit: float,
    *,
    expect_failures: bool = False,
) -> dict[str, tuple[float, bool]]:
    """``{member: (change, passed)}`` for every member (see the module docstring).

    ``expect_failures``: start as if one failure had been seen, with single tensors, and let
    the groups grow as tensors pass (for members that are likely to fail)."""
    results: dict[str, tuple[float, bool]] = {}
    pool = list(members)
    passed, failed = 0, int(expect_failures)

    def settle(group: list[str], change: float, ok: bool) -> None:
        nonlocal passed, failed
        for name in group:
            results[name] = (change, ok)
        if ok:
            passed += len(group)
        else:
            failed += len(group)

    while pool:
        size = _group_size(passed, failed, len(pool))
        group, pool = pool[:size], pool[size:]
        change = measure(group)
        if _passes(change, limit, len(group)) or len(group) == 1:
            settle(group, change, _passes(change, limit, len(group)))
            continue
        # group fails: binary search for one failing tensor, what stays unsearched goes back
        untested: list[str] = []
        measured_alone = False
        while len(group) > 1:
            first, second = group[: len(group) // 2], group[len(group) // 2 :]
            change = measure(first)
            if _passes(change, limit, len(first)):
                settle(first, change, True)
                group, measured_alone = second, False
            else:
                untested = second + untested
                group, measured_alone = first, True
        if not measured_alone:  # known to fail only as the rest of a failing group
            change = measure(group)
        settle(group, change, _passes(change, limit, 1))
        if results[group[0]][1]:  # the group failed, yet no tensor alone: smaller groups next
            failed += 1
        pool = untested + pool
    return results
