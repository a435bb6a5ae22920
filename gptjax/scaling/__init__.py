"""Scaling laws and emergence.

laws.py     compute accounting, power-law fits, IsoFLOP analysis, bootstrap
probes.py   emergence probes scored by exact match and by gold log-prob
grid.py     a grid of pretraining runs: points, shards, done.json (sweep and ablation)
sweep.py    the scaling sweep: (size, budget) points, L(N), L(D), IsoFLOP fits
report.py   the sweep's plots and report.md
code_probes.py     long-range, state-tracking and reasoning probes (held-out data)
ablation.py        the code-data ablation: code fraction x seeds, SFT, probes
ablation_report.py its statistics (means, intervals, verdicts), plots and report.md
"""
