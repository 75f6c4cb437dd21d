"""`edgeslim sweep`: convert a grid of compression settings and measure each file on the same axes.

    edgeslim sweep MODEL -o DIR --bits 8,6,4,3,2 --sparsity 0,0.5 --patterns unstructured,2:4 \\
        --allocate type,erank --jobs 2

Modules: `grid` (points, convert keywords, cache keys), `run` (phases, resumable cache),
`measure` (child processes: convert, `edgeslim eval`, speed and peak RSS), `worker` (the
children), `peers` (llama.cpp / mlx-lm files), `report` (table, Pareto fronts, the answer),
`charts` (PNG), `cli`.
"""
