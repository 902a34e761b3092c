"""``fused=True``: the multi-tensor code compiled by torch.compile in the background
(stepsize_lens/optim/_compiled.py), checked against the reference package ``adamp==0.3.0``.

The suite turns compilation off (tests/conftest.py); these tests turn it back on. Compiling
the step of the small CNN takes 5-30 s per optimizer on two CPUs, so the end-to-end tests are
marked slow; every compilation is reused by the later tests of the session (same signature).
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import threading

import pytest
import torch
import torch.nn.functional as F
from _optim_cases import (  # noqa: F401 (one_thread: an autouse fixture)
    OURS,
    REFERENCE,
    assert_close_params,
    config,
    data,
    model,
    one_thread,
)
from torch import nn

import stepsize_lens
from stepsize_lens.optim import SGDP, AdamP, _compiled


@pytest.fixture
def compiling(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(_compiled.ENV_VAR, "1")


def _calls(opt: torch.optim.Optimizer, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts the compiled step's calls from here on."""
    compiled = opt._kernels.compiled
    calls: list[int] = []
    fn = compiled._fn

    def spy(*args):
        calls.append(len(args[0]))
        return fn(*args)

    monkeypatch.setattr(compiled, "_fn", spy)
    return calls


@pytest.mark.slow
@pytest.mark.parametrize("config_name", ["nesterov", "weight_decay"])
@pytest.mark.parametrize("opt_name", ["AdamP", "SGDP"])
def test_compiled_step_follows_the_reference_with_channels_last_and_a_reloaded_state(
    opt_name, config_name, compiling, monkeypatch
):
    """Channels_last convolutions, a learning rate that changes every step (no recompilation:
    it is one of the step's scalars), and a state dict reloaded into a new optimizer mid-run."""
    if opt_name == "SGDP" and config_name == "weight_decay":
        kwargs = dict(config("SGDP", "momentum0.9")[0], weight_decay=1e-3)
    else:
        kwargs, _ = config(opt_name, config_name)
    x, y = data("cnn")
    net, twin = model("cnn"), model("cnn").to(memory_format=torch.channels_last)
    ref = REFERENCE[opt_name](net.parameters(), **kwargs)
    opt = OURS[opt_name](twin.parameters(), fused=True, **kwargs)
    F.cross_entropy(twin(x), y).backward()
    assert opt.fused_ready(timeout=None), "the step did not compile"
    calls = _calls(opt, monkeypatch)
    graphs = dict(torch._dynamo.utils.counters["stats"])
    for i in range(8):
        for n, o in ((net, ref), (twin, opt)):
            for group in o.param_groups:
                group["lr"] = kwargs["lr"] * (1 - i / 10)
            o.zero_grad()
            F.cross_entropy(n(x), y).backward()
            o.step()
        if i == 3:
            saved = opt.state_dict()
            opt = OURS[opt_name](twin.parameters(), fused=True, **kwargs)
            opt.load_state_dict(saved)
    assert len(calls) == 8  # every step ran compiled, the reloaded optimizer's too
    assert dict(torch._dynamo.utils.counters["stats"]) == graphs  # and nothing recompiled
    assert opt._kernels.compiled.statuses().count(_compiled.COMPILING) == 0
    assert_close_params(twin, net)
    views = [int(s["projection"]) for s in opt.state.values()]
    assert views.count(1) >= 2


@pytest.mark.slow
@pytest.mark.parametrize("opt_name", ["AdamP", "SGDP"])
def test_fused_steps_never_wait_for_the_compiler(opt_name, compiling, monkeypatch):
    """Until the compiled step is ready the fused optimizer runs the multi-tensor code, bit for
    bit; the compilation runs in a thread started by the first step."""
    release = threading.Event()
    original = _compiled.CompiledSteps._compile

    def held(self, *args):
        release.wait(timeout=300)
        original(self, *args)

    monkeypatch.setattr(_compiled.CompiledSteps, "_compile", held)
    cls = type(OURS[opt_name]([nn.Parameter(torch.zeros(2, 2))], lr=0.1))
    monkeypatch.setattr(cls, "_kernels", dataclasses.replace(cls._kernels))  # fresh compiles
    kwargs, _ = config(opt_name, "nesterov")
    x, y = data("cnn")
    net, twin = model("cnn"), model("cnn")
    fused = OURS[opt_name](net.parameters(), fused=True, **kwargs)
    multi = OURS[opt_name](twin.parameters(), foreach=True, **kwargs)
    for _ in range(3):
        for n, o in ((net, fused), (twin, multi)):
            o.zero_grad()
            F.cross_entropy(n(x), y).backward()
            o.step()
    for a, b in zip(net.parameters(), twin.parameters()):
        assert torch.equal(a, b)
    assert fused._kernels.compiled.statuses() == [_compiled.COMPILING]
    release.set()
    assert fused.fused_ready(timeout=300)
    calls = _calls(fused, monkeypatch)
    for n, o in ((net, fused), (twin, multi)):
        o.zero_grad()
        F.cross_entropy(n(x), y).backward()
        o.step()
    assert calls == [len(list(net.parameters()))]
    assert_close_params(net, twin)


def test_a_compiler_that_fails_says_so_once_and_falls_back(compiling, monkeypatch, capsys):
    def broken(fn, **kwargs):
        def call(*args):
            raise RuntimeError("no working C++ compiler\nmore detail")

        return call

    monkeypatch.setattr(_compiled.torch, "compile", broken)
    monkeypatch.setattr(SGDP, "_kernels", dataclasses.replace(SGDP._kernels))
    p, q = nn.Parameter(torch.randn(4, 3)), nn.Parameter(torch.randn(4, 3))
    with torch.no_grad():
        q.copy_(p)
    opt = SGDP([p], lr=0.1, momentum=0.9, fused=True)
    ref = SGDP([q], lr=0.1, momentum=0.9, foreach=True)
    for _ in range(3):
        p.grad, q.grad = torch.ones(4, 3), torch.ones(4, 3)
        opt.step()
        ref.step()
    assert not opt.fused_ready(timeout=60)
    assert torch.equal(p, q)
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        "stepsize_lens: the fused step could not be compiled (RuntimeError: no working C++ "
        "compiler); fused=True steps take the multi-tensor path"
    ]


def test_a_model_whose_tensors_keep_changing_stops_compiling_after_a_few(
    compiling, monkeypatch, capsys
):
    compiled_calls = []

    def fake(fn, **kwargs):  # "compiles" at once and runs the eager code
        def call(*args):
            compiled_calls.append(len(args[0]))
            return fn(*args)

        return call

    monkeypatch.setattr(_compiled.torch, "compile", fake)
    monkeypatch.setattr(SGDP, "_kernels", dataclasses.replace(SGDP._kernels))
    params = [nn.Parameter(torch.randn(3, n + 2)) for n in range(_compiled.MAX_COMPILES + 3)]
    opt = SGDP(params, lr=0.1, momentum=0.9, fused=True)
    for n in range(len(params)):  # a different set of tensors with a gradient at every step
        for i, p in enumerate(params):
            p.grad = torch.randn(p.shape) if i <= n else None
        opt.step()
        assert opt.fused_ready(timeout=60) == (n < _compiled.MAX_COMPILES)
    assert len(opt._kernels.compiled.statuses()) == _compiled.MAX_COMPILES
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        f"stepsize_lens: the fused step met more than {_compiled.MAX_COMPILES} different sets "
        "of tensors; it compiles no more of them, they take the multi-tensor path"
    ]


def test_compilation_can_be_turned_off(monkeypatch):
    monkeypatch.setenv(_compiled.ENV_VAR, "0")
    monkeypatch.setattr(AdamP, "_kernels", dataclasses.replace(AdamP._kernels))
    p = nn.Parameter(torch.randn(4, 3))
    p.grad = torch.randn(4, 3)
    opt = AdamP([p], fused=True)
    opt.step()
    assert not opt.fused_ready(timeout=1)
    assert opt._kernels.compiled.statuses() == []


def test_nothing_to_compile_without_fused_groups_or_gradients(compiling, monkeypatch):
    monkeypatch.setattr(_compiled.torch, "compile", lambda *a, **k: pytest.fail("compiled"))
    monkeypatch.setattr(AdamP, "_kernels", dataclasses.replace(AdamP._kernels))
    assert AdamP([nn.Parameter(torch.randn(3, 3))], fused=False).fused_ready(timeout=None)
    assert AdamP([nn.Parameter(torch.randn(3, 3))], fused=True).fused_ready(timeout=None)


@pytest.mark.parametrize("factory", [AdamP, SGDP, stepsize_lens.optim.AdamC])
def test_constructing_an_optimizer_starts_no_thread_process_or_compiler(
    factory, compiling, monkeypatch
):
    monkeypatch.setattr(_compiled.torch, "compile", lambda *a, **k: pytest.fail("compiled"))
    threads = threading.active_count()
    model = nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4))
    opt = factory(model.parameters(), lr=0.1, fused=True)
    lens = stepsize_lens.attach(model, opt, path=None)
    assert threading.active_count() == threads
    assert multiprocessing.active_children() == []
    lens.close()


@pytest.mark.slow
@pytest.mark.parametrize("opt_name", ["AdamP", "SGDP"])
def test_torch_compile_of_the_step_matches_the_eager_step(opt_name):
    """``torch.compile(optimizer.step)`` by the user, as for torch's optimizers: the traced step
    takes the multi-tensor code's traced mode."""
    kwargs, _ = config(opt_name, "nesterov")
    x, y = data("cnn")
    net, twin = model("cnn"), model("cnn")
    eager = OURS[opt_name](net.parameters(), foreach=False, **kwargs)
    opt = OURS[opt_name](twin.parameters(), **kwargs)
    compiled_step = torch.compile(opt.step)
    for _ in range(6):
        for n, o, step in ((net, eager, eager.step), (twin, opt, compiled_step)):
            o.zero_grad()
            F.cross_entropy(n(x), y).backward()
            step()
    assert_close_params(twin, net)
    assert [int(s["projection"]) for s in opt.state.values()] == [
        int(s["projection"]) for s in eager.state.values()
    ]
