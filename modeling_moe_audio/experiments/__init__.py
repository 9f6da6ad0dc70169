"""Experiments on the built-in corpus at tiny scale: `demo` (MoE vs dense) and `ablation` (Tables 2 and 3), with
what they share in `tiny`."""
