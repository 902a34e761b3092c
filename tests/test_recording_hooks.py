"""Hook plumbing: closures (gradients read after the step) and sparse gradients."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _lens_models import batches, small_model
from torch import nn

import stepsize_lens
from stepsize_lens.recording.hooks import closure_of, dense_grad


def test_closure_of_finds_positional_and_keyword_closures():
    optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1)

    def closure():
        return 0.0

    assert closure_of((optimizer, closure), {}) is closure
    assert closure_of((optimizer,), {"closure": closure}) is closure
    assert closure_of((optimizer,), {}) is None
    assert closure_of((), {}) is None


def test_dense_grad_reads_sparse_gradients_dense():
    embedding = nn.Embedding(5, 3, sparse=True)
    assert dense_grad(embedding.weight) is None
    embedding(torch.tensor([1, 3])).sum().backward()
    grad = dense_grad(embedding.weight)
    assert grad is not None and not grad.is_sparse
    assert torch.equal(grad, embedding.weight.grad.to_dense())


def test_closure_optimizer_lbfgs(tmp_path):
    model = small_model()
    optimizer = torch.optim.LBFGS(model.parameters(), lr=0.1, max_iter=3)
    lens = stepsize_lens.attach(model, optimizer, path=tmp_path / "run.pt", schedule=1)
    x, y = next(batches(1))

    def closure():
        optimizer.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        return loss

    for _ in range(3):
        optimizer.step(closure)
    lens.close()
    run = stepsize_lens.load(tmp_path / "run.pt")
    assert run.num_records == 3
    # the closure computes g inside step(): the lens reads it afterwards, so even the first
    # record (no gradient existed before step) has one, and it is the closure's last gradient
    assert np.isfinite(run.metric("grad_norm")).all()
    last = list(model.parameters())[-1]
    assert run.metric("grad_norm")[-1, -1] == pytest.approx(float(last.grad.norm()), rel=1e-6)
    assert (run.metric("update_norm")[:, 0] > 0).all()


def test_sparse_embedding_gradients_are_recorded(tmp_path):
    torch.manual_seed(0)
    embedding = nn.Embedding(6, 4, sparse=True)
    optimizer = torch.optim.SGD(embedding.parameters(), lr=0.1)
    lens = stepsize_lens.attach(embedding, optimizer, path=None, schedule=1)
    tokens = torch.tensor([0, 2, 2])
    embedding(tokens).pow(2).sum().backward()
    want = float(embedding.weight.grad.to_dense().norm())
    optimizer.step()
    run = lens.run()
    lens.close()
    assert run.metric("grad_norm")[0, 0] == pytest.approx(want, rel=1e-6)
