"""The analyses of the paper's section 5, on dataset rows as `load_manifest` returns them (dicts with
`conversation`, `audio` and a category column such as the built-in corpus's `category`). Every analysis leaves the
model as it found it: training mode, `requires_grad` flags, `.grad` fields, config and parameter values.

- `routing`: expert activation by category (5.1, Figure 3) and load statistics;
- `gradients`: gradient cosine (eq. 11, Figure 4) and influence (eq. 12, Figure 5) between categories;
- `figures`: the heatmap and matrix plots; `report`: `run_analysis`, all of it into `analysis.json` and PNGs;
- `measuring`: what they share (rows by category, batches, the next-token loss, the measuring state).
"""
