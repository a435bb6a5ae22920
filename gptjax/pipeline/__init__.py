"""The whole recipe as resumable stages.

stages.py   pretrain -> SFT -> reward model -> RLHF (-> PPO-ptx) -> report,
            each skipped when done with the same config, locked while running
report.py   the stages side by side: tables, plots, transcripts -> report.md
"""
