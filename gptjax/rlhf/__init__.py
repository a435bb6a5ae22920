"""RLHF: PPO against the reward model with a per-token KL penalty to SFT.

ppo_math.py          pure functions: per-token rewards, GAE, clipped losses,
                     whitening, KL controllers
ppo.py               rollouts (generate + score), the policy and value updates
loop.py              the stage: iterations, PPO-ptx, iterated RM rounds,
                     evaluation and plots
stats.py             paired win rates and the over-optimisation curve
overoptimization.py  several runs' gold and proxy scores on one sqrt(KL) axis
"""
