"""The reward model: comparisons in, a calibrated scalar score out.

comparisons.py  K sampled answers per prompt, ranked by the simulated
                labeler; storage, trimming and pairwise accuracies
training.py     the stage: sample (or reuse) comparisons, train with the
                ranking loss on the shared loop, centre on SFT samples,
                evaluate against the labeler and the oracle
"""
