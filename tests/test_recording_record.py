"""`Lens.latest`: the last record as a small typed object, and what the integrations read."""

from __future__ import annotations

import numpy as np
import torch
from _lens_models import small_model, train

import stepsize_lens
from stepsize_lens._schema import METRICS
from stepsize_lens.integrations import key_scalars


def test_latest_matches_the_last_row_of_the_run():
    model = small_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    lens = stepsize_lens.attach(model, optimizer, path=None, schedule=2)
    assert lens.latest() is None
    train(model, optimizer, 5)
    record = lens.latest()
    run = lens.run()
    assert record is not None and record.step == 4 and not record.skipped
    assert list(record.tensor_names) == run.tensor_names
    for name in METRICS:
        np.testing.assert_array_equal(record.metrics[name].numpy(), run.metric(name)[-1])
    np.testing.assert_array_equal(record.test_view.numpy(), run.view("test_view")[-1])
    np.testing.assert_array_equal(record.applied_view.numpy(), run.view("applied_view")[-1])
    kept = record.metrics["weight_norm"].clone()
    train(model, optimizer, 2)
    assert torch.equal(record.metrics["weight_norm"], kept)  # a copy: later records leave it
    assert lens.latest().step == 6
    lens.close()


def test_key_scalars_read_the_latest_record():
    model = small_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    lens = stepsize_lens.attach(model, optimizer, path=None, schedule=1)
    assert key_scalars(lens) == {}
    train(model, optimizer, 2)
    record = lens.latest()
    invariant = record.test_view > 0
    scalars = key_scalars(lens)
    want = float(record.metrics["angular_update"][invariant].double().mean())
    assert np.isclose(scalars["stepsize_lens/angular_update"], want)
    tested = int((record.test_view >= 0).sum())
    assert scalars["stepsize_lens/invariant_fraction"] == int(invariant.sum()) / tested
    lens.close()
