"""The paper's experiments at laptop scale (docs/design.md §6).

`toys`: the 2D toy (`toy2d`, `toy2d_all`), plain vs momentum norm growth on a fixed gradient
sequence (`fixed_gradient_growth`) and the 3D scale-invariant Rosenbrock (`rosenbrock3d`,
`rosenbrock3d_all`). Pure numpy, float64, each well under a second.

`digits`: the small BatchNorm CNN on scikit-learn's bundled handwritten digits, trained with
SGD, SGD+momentum, SGDP, AdamW, AdamP and AdamC on the same seeds and data order, each recorded with
the lens (`train_digits_run`, `train_all`, tables over seeds).

`digits_schedules`: the digits CNN under warmup + cosine, warmup-stable-decay and cosine with
shuffled labels, with `analysis.predict`'s curves beside the measured ones (`predicted`).

`transformer`: a tiny GPT (`models.tiny_gpt`) on the standard library's source, AdamW, AdamP,
AdamC and Muon under warmup + cosine; the probe with and without QK-norm. `lr_schedules`: the
schedules as torch ``LambdaLR`` factors.

`findings_matrix`: small seeded runs over optimizers × lr schedules × weight-decay timescale ×
labels, each report checked against rules from the run's own ground truth (docs/findings.md).

`reproduce`: ``stepsize-lens reproduce {toy2d,toy3d,digits,schedules,transformer,all}`` — runs,
tables and figures into one folder (`figures/` in this repository). `figures`: the figures of
the toys, the seeds, the schedules and the transformer.
"""
