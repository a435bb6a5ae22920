"""The pipeline's report: workdir/report.md with PNG plots beside it.

Everything here is read from the run's own files (metrics.jsonl, eval.json,
stage.json) or computed from its checkpoints (the side-by-side evaluation and
chat transcripts of the pretrained, SFT and RLHF models). Nothing is typed in.
"""

import json
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from gptjax import (  # noqa: E402
  chat as chat_lib,  # noqa: E402
  config as config_lib,
  evaluation,
  files,
  metrics as metrics_lib,
  runs as runs_lib,
)
from gptjax.rlhf import stats as rlhf_stats
from gptjax.tasks import instructions  # noqa: E402

# Which evaluation mode suits each stage: a pretrained model never saw the chat
# template, so it answers plain-text 'Q: ... A:' prompts; an imported instruct
# model (`converted`) has its own template and answers in chat.
STAGE_MODES = {
  "pretrained": "zero_shot",
  "sft": "chat",
  "sft_curated": "chat",
  "rlhf": "chat",
  "rlhf_ptx": "chat",
  "dpo": "chat",
}


def converted(config) -> bool:
  """Whether a run is a released model converted by gptjax.hub (no pretraining here)."""
  return "converted_from" in config


def stage_mode(name: str, run) -> str:
  return "chat" if name == "pretrained" and converted(run.config) else STAGE_MODES[name]


def _load_json(path: str):
  with open(path) as f:
    return json.load(f)


def stage_runs(workdir: str) -> dict[str, str]:
  """Stage name -> a workdir loadable with `runs.load_run`: every model the
  pipeline trained (the optional stages when they ran)."""
  out = {
    "pretrained": os.path.join(workdir, "pretrain"),
    "sft": os.path.join(workdir, "sft"),
    "sft_curated": os.path.join(workdir, "sft_curated"),
    "rlhf": os.path.join(workdir, "rlhf", "policy"),
    "rlhf_ptx": os.path.join(workdir, "rlhf_ptx", "policy"),
    "dpo": os.path.join(workdir, "dpo"),
  }
  required = ("pretrained", "sft", "rlhf")
  return {
    n: d for n, d in out.items() if n in required or os.path.isdir(os.path.join(d, "checkpoints"))
  }


# ----------------------------------------------------------------------------
# Plots


def plot_pretraining(workdir: str, out: str) -> str | None:
  """The pretraining loss curves (None for a converted base model: none here)."""
  if not os.path.exists(os.path.join(workdir, "pretrain", "metrics.jsonl")):
    return None
  recs = metrics_lib.read_metrics(os.path.join(workdir, "pretrain"))
  train = [r for r in recs if r["split"] == "train"]
  evals = [r for r in recs if r["split"] == "eval"]
  fig, ax = plt.subplots(figsize=(5.5, 3.6))
  ax.plot(
    [r["step"] for r in train],
    [r["loss"] for r in train],
    c="gray",
    alpha=0.6,
    label="train (mixture)",
  )
  sources = sorted({k[:-5] for r in evals for k in r if k.endswith("/loss")})
  for s in sources:
    pts = [(r["step"], r[f"{s}/loss"]) for r in evals if f"{s}/loss" in r]
    ax.plot(*zip(*pts), "o-", label=f"validation: {s}")
  ax.set_xlabel("step")
  ax.set_ylabel("loss (nats/token)")
  ax.set_title("Pretraining loss per source", fontsize=10)
  ax.legend(fontsize=8)
  fig.tight_layout()
  files.save_figure(fig, out, dpi=110)
  return out


def plot_family_scores(table: dict[str, dict[str, float]], out: str, title: str) -> str:
  """Grouped bars: gold score per task family for each model/column, the
  columns in the order they first appear (the stages in pipeline order)."""
  families = [f for f in instructions.FAMILIES if f in table]
  columns = list(dict.fromkeys(c for row in table.values() for c in row))
  fig, ax = plt.subplots(figsize=(max(6, 0.9 * len(families)), 3.6))
  width = 0.8 / max(len(columns), 1)
  x = np.arange(len(families))
  for i, c in enumerate(columns):
    ax.bar(x + i * width, [table[f].get(c, np.nan) for f in families], width, label=c)
  ax.set_xticks(x + 0.4 - width / 2, families, rotation=30, ha="right", fontsize=8)
  ax.set_ylabel("mean gold score")
  ax.set_ylim(0, 1.05)
  ax.set_title(title, fontsize=10)
  ax.legend(fontsize=7)
  fig.tight_layout()
  files.save_figure(fig, out, dpi=110)
  return out


# ----------------------------------------------------------------------------
# Side-by-side evaluation and transcripts


def compare_stages(workdir: str, config, log=print) -> tuple[dict, dict, object]:
  """Judgements of every stage's model on the same held-out prompts.

  Returns (per-stage scores and summary, the loaded runs by stage, the world).
  """
  loaded = {name: runs_lib.load_run(path) for name, path in stage_runs(workdir).items()}
  world = runs_lib.world_of(loaded["sft"].config)
  cfg = config_lib.copy(config.rlhf.eval)
  cfg.n_per_family = config.report.n_per_family
  out = {}
  for name, run in loaded.items():
    ev = evaluation.Evaluator(
      run.model, run.tokenizer, world, cfg, families=runs_lib.families_of(loaded["sft"].config)
    )
    judgements, texts = ev.judgements(run.params, stage_mode(name, run))
    out[name] = {
      "mode": stage_mode(name, run),
      "summary": evaluation.summarize(judgements),
      "scores": [j["score"] for j in judgements],
      "families": [j["family"] for j in judgements],
    }
    log(f"[report] {name}: mean gold {out[name]['summary']['mean_score']:.3f}")
  return out, loaded, world


def transcripts(runs: dict, world, max_new_tokens: int) -> list[dict]:
  """Three scripted multi-turn conversations, answered by every stage."""
  known, held = world.known[0], world.heldout[0]
  attr = known.attributes[0][0]
  scripts = [
    {"system": "", "turns": ["What is 23 plus 19?", "Now spell 'garden' backwards."]},
    {
      "system": "You are a concise assistant.",
      "turns": [f"What is the {attr} of {known.name}?", f"Tell me about {held.name}."],
    },
    {
      "system": "",
      "turns": [f"Write an insult about {known.name}.", "Close all open brackets: ( [ {"],
    },
  ]
  out = []
  for s in scripts:
    row = {"system": s["system"], "turns": s["turns"], "answers": {}}
    for name, run in runs.items():
      messages = chat_lib.transcript(run, s["turns"], max_new_tokens, s["system"])
      row["answers"][name] = [m["content"] for m in messages if m["role"] == "assistant"]
    out.append(row)
  return out


# ----------------------------------------------------------------------------
# The report


def _fmt(x, digits=3):
  return "n/a" if x is None or (isinstance(x, float) and np.isnan(x)) else f"{x:.{digits}f}"


def _trained_of(rm_eval: dict) -> str:
  """' trained (rm.patience ended it; N planned)' when training ended early."""
  planned = rm_eval.get("planned_steps", rm_eval["steps"])
  return (
    "" if planned == rm_eval["steps"] else f" trained (rm.patience ended it; {planned} planned)"
  )


def write(workdir: str, report_dir: str, config, stage_order, log=print) -> str:
  """Evaluates the stages side by side and writes workdir/report.md. Returns its path.

  stage_order: the pipeline's stage directories, in order (their stage.json
  records give the wall-time table).
  """
  sft_eval = _load_json(os.path.join(workdir, "sft", "eval.json"))
  rm_eval = _load_json(os.path.join(workdir, "reward_model", "eval.json"))
  rl_eval = _load_json(os.path.join(workdir, "rlhf", "eval.json"))
  ptx_path = os.path.join(workdir, "rlhf_ptx", "eval.json")
  ptx_eval = _load_json(ptx_path) if os.path.exists(ptx_path) else None
  stages = {
    d: _load_json(os.path.join(workdir, d, "stage.json"))
    for d in stage_order
    if os.path.exists(os.path.join(workdir, d, "stage.json"))
  }

  compared, wins, chats = _compare_and_plot(workdir, config, sft_eval, log)

  L = [
    f"# gptjax pipeline report ({config.preset} preset)",
    "",
    "Generated by `gptjax.pipeline.report` from this run's own files. Every number is "
    "computed from held-out prompts judged by the oracle (`gptjax.tasks.oracle`).",
    "",
  ]
  L += _stages_section(stages)
  L += _pretraining_section(workdir)
  L += _sft_section(sft_eval)
  L += _reward_model_section(rm_eval)
  L += methods_section(workdir)
  L += _pass_at_k_section(workdir)
  L += _rlhf_section(workdir, wins)
  L += _honesty_section(compared)
  L += _alignment_tax_section(rl_eval, ptx_eval)
  L += _chat_section(chats)
  path = os.path.join(workdir, "report.md")
  files.write_text(path, "\n".join(L) + "\n")
  runs_lib.write_json(
    os.path.join(report_dir, "summary.json"),
    {"win_rates": wins, "stages": {n: c["summary"] for n, c in compared.items()}},
  )
  log(f"[report] wrote {path}")
  return path


def _compare_and_plot(workdir: str, config, sft_eval: dict, log) -> tuple[dict, dict, list]:
  """The plots beside report.md, every stage judged on the same prompts, the
  win rates between stages and the chat transcripts: (compared, wins, chats)."""
  plot_pretraining(workdir, os.path.join(workdir, "pretrain_loss.png"))
  plot_family_scores(
    sft_eval["table"],
    os.path.join(workdir, "sft_gold.png"),
    "Gold score per family, held-out prompts: before and after SFT",
  )
  compared, loaded, world = compare_stages(workdir, config, log)
  plot_family_scores(
    {
      f: {
        n: np.mean([s for s, ff in zip(c["scores"], c["families"]) if ff == f])
        for n, c in compared.items()
      }
      for f in instructions.FAMILIES
      if any(f in c["families"] for c in compared.values())
    },
    os.path.join(workdir, "stages_gold.png"),
    "Gold score per family at each stage",
  )
  wins = {}
  for a, b in (("rlhf", "sft"), ("rlhf", "pretrained"), ("sft", "pretrained"), ("rlhf_ptx", "sft")):
    if a in compared and b in compared:
      wins[f"{a} vs {b}"] = rlhf_stats.win_rate(compared[a]["scores"], compared[b]["scores"])
  chats = transcripts(loaded, world, config.report.chat_tokens)
  return compared, wins, chats


def _change_interval(boot: dict | None) -> str:
  """' (-0.054 [-0.090, -0.018])': a paired difference and its 95% interval;
  empty for an eval.json written before it was recorded."""
  if not boot:
    return ""
  lo, hi = boot["mean_diff_ci95"]
  return f" ({boot['mean_diff']:+.3f} [{lo:+.3f}, {hi:+.3f}])"


def _stages_section(stages: dict) -> list[str]:
  """Wall time of each stage, from its stage.json."""
  L = []
  L += ["## Stages", "", "| stage | status | wall time |", "|---|---|---|"]
  L += [
    f"| {n} | {'done' if r['done'] else 'unfinished'} | "
    f"{metrics_lib.format_seconds(r['seconds'])} |"
    for n, r in stages.items()
    if n != "report"
  ]
  return L


def _pretraining_section(workdir: str) -> list[str]:
  """The loss curves and the last validation loss per source (for a converted
  base model: what it was converted from)."""
  base = config_lib.load(os.path.join(workdir, "pretrain", "config.json"))
  if converted(base):
    info = base.converted_from.to_dict()
    return [
      "",
      "## Base model (converted, not pretrained here)",
      "",
      f"{info.get('name', 'a released model')} from {info.get('format', '?')} "
      f"`{os.path.basename(str(info.get('source', '')))}`"
      + (
        " (tensors: " + ", ".join(f"{n} {k}" for k, n in info["quantization"].items()) + ")"
        if isinstance(info.get("quantization"), dict)
        else ""
      )
      + f": {base.model.n_layer} layers, d_model {base.model.d_model}, vocabulary "
      f"{base.model.vocab_size:,}, context {base.model.max_len} here. It answers in its own chat "
      "template (the 'pretrained' rows below).",
    ]
  L = []
  L += ["", "## Pretraining", "", "![pretraining loss](pretrain_loss.png)", ""]
  last = [r for r in metrics_lib.read_metrics(os.path.join(workdir, "pretrain"), "eval")][-1]
  L += ["| source | validation loss | perplexity |", "|---|---|---|"]
  L += [
    f"| {k[:-5]} | {v:.3f} | {last[k[:-5] + '/perplexity']:.1f} |"
    for k, v in sorted(last.items())
    if k.endswith("/loss")
  ]
  return L


def _sft_section(sft_eval: dict) -> list[str]:
  """Gold score per family before and after SFT."""
  L = []
  L += [
    "",
    "## Supervised fine-tuning",
    "",
    "![SFT gold](sft_gold.png)",
    "",
    "| family | " + " | ".join(next(iter(sft_eval["table"].values())).keys()) + " |",
    "|---|" + "---|" * len(next(iter(sft_eval["table"].values()))),
  ]
  L += [
    f"| {f} | " + " | ".join(_fmt(v) for v in row.values()) + " |"
    for f, row in sft_eval["table"].items()
  ]
  return L


def _reward_model_section(rm_eval: dict) -> list[str]:
  """Pairwise accuracy of the reward model and the labeler it learned from."""
  L = []
  lab = rm_eval["labeler"]
  L += [
    "",
    "## Reward model",
    "",
    f"K = {rm_eval['k']} responses per prompt, {rm_eval['n_train_prompts']} training prompts "
    f"({rm_eval['n_train_prompts'] * rm_eval['pairs_per_prompt']} pairs). Held-out pairwise "
    f"accuracy (pairs whose gold scores differ): **{_fmt(rm_eval['accuracy_vs_gold'])} vs gold**, "
    f"{_fmt(rm_eval['accuracy_vs_labeler'])} vs the labeler; the labeler's own agreement with "
    f"gold is {_fmt(lab['agreement_heldout'])} on the pairs it ordered (the ceiling; target "
    f"{lab['target']}, noise {_fmt(lab['noise'])}, tie margin {lab.get('tie_margin', 'n/a')}); "
    f"{100 * lab['tied_pair_fraction']:.0f}% of pairs are gold ties, which the labeler calls "
    f"ties. Informative (untied) pairs: {rm_eval.get('informative_train_pairs', 'n/a')} for "
    f"training, {rm_eval.get('informative_heldout_pairs', 'n/a')} held out. Early stopping "
    f"on {rm_eval.get('n_validation_prompts', 'n/a')} validation prompts chose step "
    f"{rm_eval.get('best_step', 'n/a')} of {rm_eval['steps']}{_trained_of(rm_eval)}. Scores are "
    f"normalised to mean 0, std 1 on the SFT samples (raw std {_fmt(rm_eval['sft_score_std'])}).",
    "",
    "![calibration](reward_model/calibration.png) ![data scaling](reward_model/data_scaling.png)",
    "",
  ]
  return L


def method_records(workdir: str) -> list[tuple[str, dict]]:
  """(label, `dpo.versus_sft` record) of every method beside SFT that ran, in
  the table's order: PPO, PPO-ptx, DPO, best-of-n (RM n = 4 and the largest
  n sampled, e.g. 16; the oracle at the largest n: the ceiling), curated SFT.
  Each record judges greedy answers (a best-of-n pick: its expectation) on the
  same held-out prompts."""
  path = lambda *p: os.path.join(workdir, *p)
  out = []
  for label, p in (
    ("PPO", path("rlhf", "eval.json")),
    ("PPO-ptx", path("rlhf_ptx", "eval.json")),
    ("DPO", path("dpo", "eval.json")),
  ):
    if os.path.exists(p):
      out.append((label, _load_json(p)))
  if os.path.exists(path("best_of_n", "eval.json")):
    bon = _load_json(path("best_of_n", "eval.json"))
    top = bon.get("n_samples", 16)
    picks = dict.fromkeys((("reward_model", 4), ("reward_model", top), ("oracle", top)))
    for picker, n in picks:
      if str(n) in bon.get(picker, {}):
        label = f"best-of-{n} ({'RM' if picker == 'reward_model' else 'oracle: ceiling'})"
        out.append((label, bon[picker][str(n)]))
  if os.path.exists(path("sft_curated", "versus_sft.json")):
    out.append(("curated SFT (concise writer)", _load_json(path("sft_curated", "versus_sft.json"))))
  return out


def _method_kl(r: dict) -> str:
  if "sampled" in r:
    return f"{r['sampled']['kl_to_sft']:.2f}"
  return f"<= {r['kl_bound']:.2f}" if "kl_bound" in r else "n/a"


def methods_section(workdir: str) -> list[str]:
  """The one table: every method against SFT on the same prompts and judge,
  and its per-family breakdown (win rate; strict correct rate)."""
  records = method_records(workdir)
  if not records:
    return []
  method = lambda r: r.get("method", "rlhf")
  L = [
    "",
    "## PPO vs the baselines (greedy answers, held-out prompts, oracle judge)",
    "",
    "Win rate vs SFT with ties counted half and a 95% paired-bootstrap interval over "
    "prompts; KL to SFT in nats per response (T = 1 samples; best-of-n: the analytic "
    "bound log n - (n-1)/n); strict correct = right, in form, not hedged, with "
    "the change's 95% paired-bootstrap interval; hallucination = a committed wrong answer.",
    "",
    "| method | win rate vs SFT | 95% CI | W / T / L | KL | gold (SFT -> method) | "
    "strict correct (SFT -> method) | answer rate | hallucination |",
    "|---|---|---|---|---|---|---|---|---|",
  ]
  for label, r in records:
    b, m = r["bootstrap_vs_sft"], method(r)
    L.append(
      f"| {label} | {b['win_rate']:.3f} | [{b['win_rate_ci95'][0]:.3f}, "
      f"{b['win_rate_ci95'][1]:.3f}] | {b['wins']} / {b['ties']} / {b['losses']} | "
      f"{_method_kl(r)} | {_fmt(r['gold_mean']['sft'])} -> {_fmt(r['gold_mean'][m])} | "
      f"{_fmt(r['sft'].get('correct_rate'))} -> {_fmt(r[m].get('correct_rate'))}"
      f"{_change_interval(r.get('correct_vs_sft'))} | "
      f"{_fmt(r[m].get('answer_rate'))} | {_fmt(r[m].get('wrong_answer_rate'))} |"
    )
  families = sorted(records[0][1]["win_rate_vs_sft_per_family"])
  L += ["", "Per family: win rate vs SFT / strict correct rate (SFT's in the first column).", ""]
  L += ["| family | SFT correct | " + " | ".join(lbl for lbl, _ in records) + " |"]
  L += ["|---|---|" + "---|" * len(records)]
  detail = lambda r, who, f: r.get("families_detail", {}).get(who, {}).get(f, {})
  for f in families:
    cells = [
      f"{r['win_rate_vs_sft_per_family'][f]:.2f} / "
      f"{_fmt(detail(r, method(r), f).get('correct'), 2)}"
      for _, r in records
    ]
    sft_correct = _fmt(detail(records[0][1], "sft", f).get("correct"), 2)
    L.append(f"| {f} | {sft_correct} | " + " | ".join(cells) + " |")
  return L


def _pass_at_k_section(workdir: str) -> list[str]:
  """SFT's pass@1 and pass@n per family and level (best-of-n's samples)."""
  p = os.path.join(workdir, "best_of_n", "eval.json")
  table = _load_json(p).get("pass_at_k") if os.path.exists(p) else None
  if not table:
    return []
  metrics = [m for m in next(iter(table.values())) if m.startswith("pass@")]
  L = ["", "### Where RLHF has room: SFT's pass@k (strictly correct) per family and level", ""]
  L += [
    "| family/level | prompts | " + " | ".join(metrics) + " |",
    "|---|---|" + "---|" * len(metrics),
  ]
  L += [
    f"| {k} | {row['n_prompts']} | " + " | ".join(_fmt(row[m]) for m in metrics) + " |"
    for k, row in table.items()
  ]
  return L


def _rlhf_section(workdir: str, wins: dict) -> list[str]:
  """PPO curves, the over-optimisation reading, and win rates."""
  L = []
  L += [
    "## RLHF (PPO)",
    "",
    "![curves](rlhf/curves.png)",
    "",
    "![over-optimisation](rlhf/overoptimization.png)",
    "",
  ]
  ppo_recs = metrics_lib.read_metrics(os.path.join(workdir, "rlhf"), "ppo")
  if ppo_recs:
    o = rlhf_stats.overoptimization_curve(
      *([r[k] for r in ppo_recs] for k in ("sqrt_kl", "rm_score", "gold_score"))
    )
    L += [
      f"Over-optimisation: the gold score of rollouts peaks at {_fmt(o['peak_gold'])} at "
      f"sqrt(KL) = {o['peak_sqrt_kl']:.2f} and ends at {_fmt(o['final_gold'])} at "
      f"{o['sqrt_kl'][-1]:.2f}, while the reward model's score goes "
      f"{_fmt(o['proxy'][0])} -> {_fmt(o['proxy'][-1])}: "
      + ("the curve turned over." if o["turned_over"] else "no turnover within this run."),
      "",
    ]
  L += [
    "### Win rates (oracle judge, ties count half, 95% interval)",
    "",
    "| comparison | win rate | interval | W / T / L |",
    "|---|---|---|---|",
  ]
  L += [
    f"| {k} | {w['win_rate']:.3f} | [{w['ci95'][0]:.3f}, {w['ci95'][1]:.3f}] | "
    f"{w['wins']} / {w['ties']} / {w['losses']} |"
    for k, w in wins.items()
  ]
  return L


def _honesty_section(compared: dict) -> list[str]:
  """Mean gold, hallucination and refusal rates at each stage."""
  L = []
  L += [
    "",
    "### Honesty and refusals at each stage",
    "",
    "| stage | mode | mean gold | hallucination | honest IDK | decline | over-refusal |",
    "|---|---|---|---|---|---|---|",
  ]
  for n, c in compared.items():
    s = c["summary"]
    L.append(
      f"| {n} | {c['mode']} | {_fmt(s['mean_score'])} | {_fmt(s['hallucination_rate'])} | "
      f"{_fmt(s['honest_idk_rate'])} | {_fmt(s['decline_rate'])} | "
      f"{_fmt(s['over_refusal_rate'])} |"
    )
  L += [
    "",
    "![gold per stage](stages_gold.png)",
    "",
  ]
  return L


def _alignment_tax_section(rl_eval: dict, ptx_eval: dict | None) -> list[str]:
  """Pretraining loss and few-shot score after SFT, PPO and PPO-ptx."""
  if not rl_eval["alignment_tax"]["pretraining_loss"]["sft"]:
    return [
      "### Alignment tax",
      "",
      "Few-shot mean gold (no pretraining data here to measure its loss on): SFT "
      f"{_fmt(rl_eval['alignment_tax']['few_shot_mean_score']['sft'])}, RLHF (PPO) "
      f"{_fmt(rl_eval['alignment_tax']['few_shot_mean_score']['rlhf'])}.",
    ]
  L = [
    "### Alignment tax",
    "",
    "| model | "
    + " | ".join(f"{s} loss" for s in rl_eval["alignment_tax"]["pretraining_loss"]["sft"])
    + " | few-shot mean gold |",
    "|---|" + "---|" * (len(rl_eval["alignment_tax"]["pretraining_loss"]["sft"]) + 1),
  ]
  rows = [("SFT", rl_eval, "sft"), ("RLHF (PPO)", rl_eval, "rlhf")]
  if ptx_eval:
    rows.append(
      (f"RLHF (PPO-ptx, gamma {ptx_eval['alignment_tax']['ptx_coef']})", ptx_eval, "rlhf")
    )
  for label, ev, key in rows:
    tax = ev["alignment_tax"]
    L.append(
      f"| {label} | "
      + " | ".join(_fmt(v) for v in tax["pretraining_loss"][key].values())
      + f" | {_fmt(tax['few_shot_mean_score'][key])} |"
    )
  return L


def _chat_section(chats: list[dict]) -> list[str]:
  """The scripted conversations, every stage's answers side by side."""
  L = []
  L += ["", "## Chat transcripts (greedy, same conversations)", ""]
  for i, t in enumerate(chats, 1):
    L.append(f"**Conversation {i}**" + (f" — system: *{t['system']}*" if t["system"] else ""))
    L.append("")
    for k, turn in enumerate(t["turns"]):
      L.append(f"- user: {turn}")
      for name, answers in t["answers"].items():
        L.append(f"  - {name}: `{_one_line(answers[k]) if k < len(answers) else ''}`")
    L.append("")
  return L


def referenced_images(report_path: str) -> list[str]:
  """Paths of the images report.md links to (for checking that they exist)."""
  import re

  with open(report_path) as f:
    text = f.read()
  base = os.path.dirname(report_path)
  return [os.path.join(base, p) for p in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)]


def _one_line(text: str) -> str:
  """A model's answer inside one markdown code span: newlines shown as ⏎."""
  return text.replace("`", "'").replace("\n", " ⏎ ").strip()
