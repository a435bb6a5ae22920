"""RLHF: PPO against the reward model with a per-token KL penalty to SFT.

ppo_math.py          pure functions: per-token rewards, GAE, clipped losses,
                     whitening, KL controllers
ppo.py               rollouts (generate + score), the policy and value updates
loop.py              the stage: iterations, PPO-ptx, iterated RM rounds,
                     evaluation and plots
stats.py             paired win rates and the over-optimisation curve
overoptimization.py  several runs' gold and proxy scores on one sqrt(KL) axis
dpo.py               the DPO baseline (cDPO, IPO) on the RM's comparisons, and versus_sft
best_of_n.py         best-of-n baselines: SFT samples reranked by the RM and the oracle
"""
