"""The paper's experiments at laptop scale (DESIGN.md §6).

`toys`: the 2D toy (`toy2d`, `toy2d_all`), plain vs momentum norm growth on a fixed gradient
sequence (`fixed_gradient_growth`) and the 3D scale-invariant Rosenbrock (`rosenbrock3d`,
`rosenbrock3d_all`). Pure numpy, float64, each well under a second.
"""
