"""The fused CPU kernel: its sums against float64 brute force (every dtype, row lengths that cut
rows into segments, missing gradients), W ← w' when kept, results independent of the thread
count, inputs checked before any thread starts; the loader never blocks a record, falls back
cleanly where nothing can be built, and a lens switches to the kernel once it is loaded."""

from __future__ import annotations

import threading
import types

import pytest
import torch

import stepsize_lens
from stepsize_lens.recording import cpu_kernel
from stepsize_lens.recording.snapshot import KERNEL_CHUNK, KERNEL_SEGMENT, kernel_tasks


@pytest.fixture
def kernel(cpu_kernel_loaded: bool) -> types.ModuleType:
    if not cpu_kernel_loaded:
        pytest.skip(f"the fused CPU kernel is unavailable: {cpu_kernel.status().error}")
    module = cpu_kernel.wait()
    assert module is not None
    return module


def _inputs(shapes, dtype, seed=0):
    gen = torch.Generator().manual_seed(seed)
    first = [torch.randn(s, generator=gen).to(dtype) for s in shapes]
    second = [torch.randn(s, generator=gen).to(dtype) for s in shapes]
    return first, second


def _plan(shapes):
    firsts, row = [], 0
    for rows, _ in shapes:
        firsts.append(row)
        row += rows
    tasks, starts = kernel_tasks(shapes, firsts)
    return tasks, starts, row


# (1, 0) and (0, 4): empty tensors, as a rank's empty shard of a sharded parameter
SHAPES = [(3, 5), (1, 1), (40, 27), (2, 2 * KERNEL_SEGMENT + 17), (1, 0), (0, 4), (5000, 9)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_pre_rows_match_float64_brute_force(kernel, dtype):
    w, g = _inputs(SHAPES, dtype)
    g[1] = torch.empty(0, dtype=dtype)  # a missing gradient
    tasks, starts, rows = _plan(SHAPES)
    out = torch.zeros((3, rows), dtype=torch.float64)  # rows of empty tensors stay 0
    kernel.pre_rows(w, g, tasks, starts, out, [])
    want = []
    for a, b in zip(w, g):
        a64 = a.double()
        b64 = torch.zeros_like(a64) if b.numel() == 0 else b.double()
        want.append(torch.stack([(a64 * b64).sum(1), (b64 * b64).sum(1), (a64 * a64).sum(1)]))
    want = torch.cat(want, 1)
    torch.testing.assert_close(out, want, rtol=1e-12, atol=1e-12)
    assert (out[:2, 3] == 0).all() and out[2, 3] > 0  # the missing gradient's row


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_pre_rows_with_sources_copy_w_in_the_same_pass(kernel, dtype):
    w, g = _inputs(SHAPES, dtype, seed=4)
    g[1] = torch.empty(0, dtype=dtype)
    held = [torch.full_like(a, 7) for a in w]
    tasks, starts, rows = _plan(SHAPES)
    copied, plain = (torch.zeros((3, rows), dtype=torch.float64) for _ in range(2))
    kernel.pre_rows(held, g, tasks, starts, copied, w)
    kernel.pre_rows(w, g, tasks, starts, plain, [])
    assert torch.equal(copied, plain)  # the sums read the sources
    assert all(torch.equal(h, a) for h, a in zip(held, w))  # and W ← w
    with pytest.raises(RuntimeError, match="source 0 must match"):
        kernel.pre_rows(held, g, tasks, starts, copied, [a.double() for a in w])


@pytest.mark.parametrize("keep", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_post_rows_form_the_update_in_float64_and_keep_w_after(kernel, dtype, keep):
    w, noise = _inputs(SHAPES, dtype, seed=1)
    after = [(a.float() + 1e-3 * n.float()).to(dtype) for a, n in zip(w, noise)]
    held = [a.clone() for a in w]
    tasks, starts, rows = _plan(SHAPES)
    out = torch.zeros((3, rows), dtype=torch.float64)  # rows of empty tensors stay 0
    kernel.post_rows(held, after, tasks, starts, out, keep)
    want = []
    for a, b in zip(w, after):
        a64, d = a.double(), b.double() - a.double()
        want.append(torch.stack([(a64 * a64).sum(1), (a64 * d).sum(1), (d * d).sum(1)]))
    torch.testing.assert_close(out, torch.cat(want, 1), rtol=1e-12, atol=1e-15)
    for h, a, b in zip(held, w, after):
        assert torch.equal(h, b if keep else a)


def test_results_do_not_depend_on_the_thread_count(kernel):
    w, g = _inputs(SHAPES, torch.float32, seed=2)
    tasks, starts, rows = _plan(SHAPES)
    outs = []
    before = torch.get_num_threads()
    try:
        for threads in (1, 2, 3):
            torch.set_num_threads(threads)
            out = torch.zeros((3, rows), dtype=torch.float64)
            kernel.pre_rows(w, g, tasks, starts, out, [])
            outs.append(out)
    finally:
        torch.set_num_threads(before)
    assert torch.equal(outs[0], outs[1]) and torch.equal(outs[0], outs[2])


def test_tasks_cover_every_element_once():
    shapes = [(3, 5), (2, 2 * KERNEL_SEGMENT + 17), (5000, 9), (1, KERNEL_SEGMENT), (1, 0), (0, 3)]
    tasks, starts, rows = _plan(shapes)
    covered = [torch.zeros(s, dtype=torch.int32) for s in shapes]
    for tensor, row0, row1, k0, k1, _ in tasks.tolist():
        covered[tensor][row0:row1, k0:k1] += 1
        assert (row1 - row0) * (k1 - k0) <= max(KERNEL_CHUNK, KERNEL_SEGMENT)
    assert all((c == 1).all() for c in covered)
    assert int(starts[-1]) == sum(r * k for r, k in shapes)
    assert (starts[1:] >= starts[:-1]).all()


def test_bad_inputs_are_refused_before_any_thread_starts(kernel):
    w, g = _inputs([(4, 6)], torch.float32)
    tasks, starts, rows = _plan([(4, 6)])
    out = torch.empty((3, rows), dtype=torch.float64)
    with pytest.raises(RuntimeError, match="out of bounds"):
        bad = tasks.clone()
        bad[0, 2] = 99
        kernel.pre_rows(w, g, bad, starts, out, [])
    with pytest.raises(RuntimeError, match="match the first"):
        kernel.pre_rows(w, [g[0].double()], tasks, starts, out, [])
    with pytest.raises(RuntimeError, match="float64"):
        kernel.pre_rows(w, g, tasks, starts, out.float(), [])
    with pytest.raises(RuntimeError, match="contiguous"):
        kernel.pre_rows([w[0].t()], [g[0].t()], tasks, starts, out, [])


def test_the_loader_never_blocks_and_reports_a_failure_once(capsys):
    gate = threading.Event()
    module = types.ModuleType("fake")

    def slow() -> tuple[types.ModuleType, str]:
        gate.wait(10)
        return module, "built"

    loader = cpu_kernel.Loader(slow)
    loader.start()
    assert loader.status.state == "loading" and loader.ready() is None  # no waiting
    gate.set()
    assert loader.wait(10) is module and loader.status.state == "ready"

    def broken() -> tuple[types.ModuleType, str]:
        raise OSError("disk full\nmore lines")

    for _ in range(2):
        failing = cpu_kernel.Loader(broken)
        assert failing.wait(10) is None
        assert failing.status.state == "failed"
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        "stepsize_lens: the fused CPU kernel could not be built (OSError: disk full); "
        "recording takes the slower eager path"
    ]


def test_no_compiler_means_the_eager_path_with_one_line(monkeypatch, tmp_path):
    monkeypatch.setenv("CXX", "no-such-compiler-here")
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))  # nothing cached there
    assert "no C++ compiler" in cpu_kernel.unavailable()
    with pytest.raises(cpu_kernel.Unavailable, match="no C\\+\\+ compiler"):
        cpu_kernel.load_or_build()
    assert not any(tmp_path.iterdir())


def test_switched_off_by_the_environment(monkeypatch):
    monkeypatch.setenv(cpu_kernel.ENV_SWITCH, "0")
    loader = cpu_kernel.Loader(lambda: pytest.fail("must not load"))
    assert loader.wait(1) is None and loader.status.state == "off"


def test_a_lens_records_eagerly_while_the_kernel_loads_then_switches(
    kernel, monkeypatch, cpu_kernel_loaded
):
    gate = threading.Event()
    used = []

    class Spy:
        def pre_rows(self, *args):
            used.append("pre")
            kernel.pre_rows(*args)

        def post_rows(self, *args):
            used.append("post")
            kernel.post_rows(*args)

    def slow() -> tuple[types.ModuleType, str]:
        gate.wait(10)
        return Spy(), "built"  # type: ignore[return-value]

    monkeypatch.setattr(cpu_kernel, "_loader", cpu_kernel.Loader(slow))
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    lens = stepsize_lens.attach(model, optimizer, path=None, schedule=1)

    def step() -> None:
        optimizer.zero_grad()
        model(torch.randn(4, 6)).square().mean().backward()
        optimizer.step()

    step()  # the kernel is still "building": eager
    assert used == []
    gate.set()
    cpu_kernel._loader.wait(10)
    step()
    assert used == ["pre", "post"]
    run = lens.run()
    lens.close()
    assert run.num_records == 2
    assert torch.isfinite(torch.as_tensor(run.metric("angular_update"))).all()


def test_kernel_and_eager_records_agree_on_a_model(kernel):
    """Same training, both paths: every metric agrees to float32 accuracy (the kernel's float64
    sums are the more exact of the two)."""
    runs = []
    for mode in ("eager", "kernel"):
        torch.manual_seed(3)
        model = torch.nn.Sequential(
            torch.nn.Conv2d(3, 8, 3),
            torch.nn.BatchNorm2d(8),
            torch.nn.ReLU(),
            torch.nn.Flatten(),
            torch.nn.Linear(8 * 6 * 6, 5),
        )
        optimizer = stepsize_lens.optim.SGDP(model.parameters(), lr=0.1, momentum=0.9)
        with cpu_kernel.forced(mode):
            lens = stepsize_lens.attach(model, optimizer, path=None, schedule=1)
            for _ in range(3):
                optimizer.zero_grad()
                torch.nn.functional.cross_entropy(
                    model(torch.randn(6, 3, 8, 8)), torch.randint(0, 5, (6,))
                ).backward()
                optimizer.step()
        runs.append(lens.run())
        lens.close()
    for name in runs[0].metric_names:
        torch.testing.assert_close(
            torch.as_tensor(runs[1].metric(name)),
            torch.as_tensor(runs[0].metric(name)),
            rtol=1e-4,
            atol=1e-7,
            equal_nan=True,
            msg=name,
        )
    for view in ("test_view", "applied_view"):
        assert (runs[0].view(view) == runs[1].view(view)).all()
