"""Scaling laws and emergence.

laws.py     compute accounting, power-law fits, IsoFLOP analysis, bootstrap
probes.py   emergence probes scored by exact match and by gold log-prob
sweep.py    the grid of (size, budget) runs: resumable, shardable; fits
report.py   the sweep's plots and report.md
"""
