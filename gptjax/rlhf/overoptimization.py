"""Reward over-optimisation across RLHF runs (Gao et al. 2022).

One RLHF run traces a path through (sqrt(KL to SFT), proxy score, gold score)
over its PPO iterations; `stats.overoptimization_curve` bins one such path.
Runs that differ in beta (or in PPO-ptx, or in their reward model) walk
different distances from the SFT policy, and Gao et al. plot them on one
sqrt(KL) axis: the gold score rises, peaks and falls while the proxy keeps
rising. This module puts several runs' paths on one figure and says where
each turns over.

  result = compare(["runs/rlhf_b0.05", "runs/rlhf_b0.2"])   # pure: reads metrics
  plot(result, "overoptimization_runs.png")

`experiments/overoptimization.py` is the command line.
"""

import json
import os

from gptjax import files, metrics as metrics_lib
from gptjax.rlhf import stats as rlhf_stats


def load(run_dir: str) -> dict:
  """An RLHF workdir's config fields and per-iteration rollout statistics."""
  config_path = os.path.join(run_dir, "config.json")
  metrics_path = os.path.join(run_dir, "metrics.jsonl")
  for path in (config_path, metrics_path):
    if not os.path.exists(path):
      raise FileNotFoundError(
        f"{path} not found: {run_dir} is not an RLHF workdir "
        "(experiments.rlhf or a pipeline's rlhf stage writes one)"
      )
  with open(config_path) as f:
    config = json.load(f)
  if "ppo" not in config:
    raise ValueError(f"{config_path} has no 'ppo' section: {run_dir} is not an RLHF run")
  records = metrics_lib.read_metrics(metrics_path, "ppo")
  if not records:
    raise ValueError(f"{metrics_path} has no PPO iterations yet")
  ppo = config["ppo"]
  return {
    "dir": run_dir,
    "beta": float(ppo["beta"]),
    "kl_controller": ppo["kl_controller"],
    "ptx_coef": float(ppo.get("ptx_coef", 0.0)),
    "iteration": [int(r["step"]) for r in records],
    "sqrt_kl": [float(r["sqrt_kl"]) for r in records],
    "proxy": [float(r["rm_score"]) for r in records],
    "gold": [float(r["gold_score"]) for r in records],
  }


def label(run: dict) -> str:
  text = f"beta {run['beta']:g}" + (" (adaptive)" if run["kl_controller"] == "adaptive" else "")
  return text + (f", ptx {run['ptx_coef']:g}" if run["ptx_coef"] > 0 else "")


def compare(run_dirs: list[str], n_bins: int = 8) -> dict:
  """Each run's binned over-optimisation curve, peak and final point."""
  if not run_dirs:
    raise ValueError("compare() needs at least one RLHF workdir")
  runs = []
  for d in run_dirs:
    run = load(d)
    curve = rlhf_stats.overoptimization_curve(run["sqrt_kl"], run["proxy"], run["gold"], n_bins)
    runs.append(
      {
        **run,
        "label": label(run),
        "iterations": len(run["iteration"]),
        "curve": curve,
        "start_gold": curve["gold"][0],
        "final_sqrt_kl": curve["sqrt_kl"][-1],
      }
    )
  return {"runs": runs}


def summary_lines(result: dict) -> list[str]:
  """One line per run: where its gold score peaked and where it ended."""
  lines = []
  for r in result["runs"]:
    c = r["curve"]
    lines.append(
      f"{r['label']:<24} {r['iterations']:>4} iterations  gold {r['start_gold']:.3f} "
      f"-> peak {c['peak_gold']:.3f} at sqrt(KL) {c['peak_sqrt_kl']:.2f} "
      f"-> {c['final_gold']:.3f} at {r['final_sqrt_kl']:.2f}"
      f"{'  (turned over)' if c['turned_over'] else ''}"
    )
  return lines


def plot(result: dict, out: str) -> str:
  """Gold (left) and proxy (right) score against sqrt(KL), one colour per run."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
  for run in result["runs"]:
    c = run["curve"]
    for ax, raw, binned in ((axes[0], run["gold"], c["gold"]), (axes[1], run["proxy"], c["proxy"])):
      (line,) = ax.plot(run["sqrt_kl"], raw, "o", ms=2.5, alpha=0.25)
      ax.plot(c["sqrt_kl"], binned, "-", marker="s", ms=3, c=line.get_color(), label=run["label"])
    if c["turned_over"]:
      axes[0].plot(
        [c["peak_sqrt_kl"]], [c["peak_gold"]], "*", ms=11, c=line.get_color(), markeredgecolor="k"
      )
  axes[0].set_ylabel("gold score of rollouts (oracle)")
  axes[0].set_title("Gold score (star: where it peaks)", fontsize=10)
  axes[1].set_ylabel("reward-model score of rollouts")
  axes[1].set_title("Proxy score", fontsize=10)
  for ax in axes:
    ax.set_xlabel("sqrt(KL(policy || SFT)), nats^1/2")
    ax.legend(fontsize=8)
  fig.suptitle("Reward over-optimisation across runs (Gao et al. 2022)", fontsize=11)
  fig.tight_layout()
  files.save_figure(fig, out, dpi=110)
  return out


def write(result: dict, out_dir: str) -> tuple[str, str]:
  """overoptimization_runs.json and .png into out_dir."""
  os.makedirs(out_dir, exist_ok=True)
  json_path = os.path.join(out_dir, "overoptimization_runs.json")
  files.write_text(json_path, json.dumps(result, indent=2))
  return json_path, plot(result, os.path.join(out_dir, "overoptimization_runs.png"))
