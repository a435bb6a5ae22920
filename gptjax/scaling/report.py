"""Plots and report.md of a scaling sweep, generated from its results and fits.

Every number in the report is read from the rows (done.json of each point)
and the fits (`gptjax.scaling.sweep.compute_fits`); the comparison with Kaplan et al.
2020 and Hoffmann et al. 2022 is worded from those numbers.
"""

from __future__ import annotations

import math
import os

import numpy as np

from gptjax import files
from gptjax.scaling import laws, probes as scaling_probes


def _plt():
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  return plt


def _size_colors(rows):
  plt = _plt()
  sizes = sorted(
    {r["size"] for r in rows}, key=lambda s: next(r["N"] for r in rows if r["size"] == s)
  )
  cmap = plt.get_cmap("viridis")
  return {s: cmap(i / max(len(sizes) - 1, 1)) for i, s in enumerate(sizes)}, sizes


def _budget_colors(rows):
  plt = _plt()
  budgets = sorted({r["budget"] for r in rows})
  cmap = plt.get_cmap("plasma")
  return {b: cmap(0.85 * i / max(len(budgets) - 1, 1)) for i, b in enumerate(budgets)}, budgets


def _loss(r):
  return r["final_eval"]["mixed/loss"]


def _fit_label(f, var):
  law = f["fit"]
  ci = f["ci"].get("alpha", [float("nan")] * 2)
  e = f"{law['E']:.2f} + " if law["E"] else ""
  return f"{e}{law['A']:.3g}/{var}^{law['alpha']:.3f}  (alpha 95% CI [{ci[0]:.3f}, {ci[1]:.3f}])"


def plots(rows, fits, curves, workdir) -> list[str]:
  """Writes the PNGs into workdir; returns their file names."""
  plt = _plt()
  colors, sizes = _size_colors(rows)
  bcolors, budgets = _budget_colors(rows)
  out = []
  for name, fn in (
    ("loss_vs_params.png", _plot_l_n),
    ("loss_vs_tokens.png", _plot_l_d),
    ("isoflop.png", _plot_isoflop),
    ("loss_vs_compute.png", _plot_compute),
    ("emergence.png", _plot_emergence),
    ("knowledge_vs_params.png", _plot_knowledge),
  ):
    fig = fn(rows, fits, curves, plt, colors, sizes, bcolors, budgets)
    if fig is None:
      continue
    fig.tight_layout()
    files.save_figure(fig, os.path.join(workdir, name), dpi=110)
    out.append(name)
  return out


def _plot_l_n(rows, fits, curves, plt, colors, sizes, bcolors, budgets):
  """L(N): every run, the fitted sizes circled, both fitted laws."""
  fig, ax = plt.subplots(figsize=(7, 5))
  for r in rows:
    ax.scatter(r["N"], _loss(r), color=bcolors[r["budget"]], s=18, alpha=0.5)
  for b in budgets:
    ax.scatter([], [], color=bcolors[b], s=18, label=f"run at C={b:.0e}")
  ln = [next(r for r in rows if r["name"] == n) for n in fits["L_N"]["runs"]]
  ax.scatter(
    [r["N"] for r in ln],
    [_loss(r) for r in ln],
    facecolor="none",
    edgecolor="k",
    s=70,
    label=f">= {fits['L_N'].get('min_tokens_per_param', 0):g} tokens/param "
    "at the largest D (fitted)",
  )
  xs = np.geomspace(min(r["N"] for r in rows) / 1.5, max(r["N"] for r in rows) * 1.5, 100)
  for key, style in (("offset", "-"), ("pure", "--")):
    f = fits["L_N"].get(key, {})
    if "fit" in f:
      ax.plot(xs, laws.PowerLaw(**f["fit"])(xs), "k" + style, lw=1, label=_fit_label(f, "N"))
  ax.set(
    xscale="log",
    xlabel="non-embedding parameters N",
    ylabel="validation loss (nats/token)",
    title="L(N): loss vs model size (fit: sizes not data-limited)",
  )
  ax.legend(fontsize=7, loc="best")
  return fig


def _plot_l_d(rows, fits, curves, plt, colors, sizes, bcolors, budgets):
  """L(D): loss against tokens per size, with the L(D) fits."""
  fig, ax = plt.subplots(figsize=(7, 5))
  for s in sizes:
    rs = sorted((r for r in rows if r["size"] == s), key=lambda r: r["tokens"])
    ax.plot(
      [r["tokens"] for r in rs],
      [_loss(r) for r in rs],
      "o-",
      color=colors[s],
      ms=4,
      label=f"{s} (N={rs[0]['N']:,})",
    )
  f_d = fits.get("L_D", {})
  if "runs" in f_d:
    ds = [next(r for r in rows if r["name"] == n)["tokens"] for n in f_d["runs"]]
    xs = np.geomspace(min(ds) / 1.5, max(ds) * 1.5, 100)
    for key, style in (("offset", "-"), ("pure", "--")):
      f = f_d.get(key, {})
      if "fit" in f:
        ax.plot(
          xs,
          laws.PowerLaw(**f["fit"])(xs),
          "k" + style,
          lw=1,
          label=f"{f_d['size']}: " + _fit_label(f, "D"),
        )
  ax.set(
    xscale="log",
    xlabel="training tokens D",
    ylabel="validation loss (nats/token)",
    title="L(D): loss vs training tokens, per model size",
  )
  ax.legend(fontsize=7)
  return fig


def _plot_isoflop(rows, fits, curves, plt, colors, sizes, bcolors, budgets):
  """IsoFLOP profiles with their parabolas, and the optimal N(C), D(C)."""
  iso = fits["isoflop"]
  fig, (ax, ax2) = plt.subplots(1, 2, figsize=(12, 5))
  for b, opt in zip(budgets, iso["optima"]):
    rs = sorted((r for r in rows if r["budget"] == b), key=lambda r: r["N"])
    ax.plot([r["N"] for r in rs], [_loss(r) for r in rs], "o", color=bcolors[b], label=f"C={b:.0e}")
    if "parabola_N" in opt:
      p = laws.Parabola(**opt["parabola_N"])
      xs = np.geomspace(math.exp(p.z_min) / 1.3, math.exp(p.z_max) * 1.3, 80)
      ax.plot(xs, p(xs), "-", color=bcolors[b], lw=1)
      if p.interior:
        ax.plot(p.x_opt, p.loss_opt, "*", color=bcolors[b], ms=14, mec="k")
  ax.set(
    xscale="log",
    xlabel="non-embedding parameters N",
    ylabel="validation loss",
    title="IsoFLOP profiles (parabola in log N; * = N_opt inside the range)",
  )
  ax.legend(fontsize=7)
  ok = [o for o in iso["optima"] if o["interior"]]
  if ok:
    C = np.array([o["C"] for o in ok])
    ax2.plot(C, [o["N_opt"] for o in ok], "o", color="C0", label="N_opt (non-embedding)")
    ax2.plot(C, [o["D_opt"] for o in ok], "s", color="C1", label="D_opt (tokens)")
    if np.isfinite(iso.get("a", float("nan"))):
      cs = np.geomspace(C.min() / 2, C.max() * 2, 50)
      ci = iso.get("ci", {})
      ax2.plot(
        cs,
        np.exp(iso["log_k_N"]) * cs ** iso["a"],
        "-",
        color="C0",
        label=f"N_opt ~ C^{iso['a']:.2f} (CI {_ci(ci.get('a'))})",
      )
      ax2.plot(
        cs,
        np.exp(iso["log_k_D"]) * cs ** iso["b"],
        "-",
        color="C1",
        label=f"D_opt ~ C^{iso['b']:.2f} (CI {_ci(ci.get('b'))})",
      )
    ax2.set(
      xscale="log",
      yscale="log",
      xlabel="compute C (FLOPs)",
      title="compute-optimal N and D (Chinchilla approach 2)",
    )
    ax2.legend(fontsize=7)
  return fig


def _plot_compute(rows, fits, curves, plt, colors, sizes, bcolors, budgets):
  """Loss against compute along every run, with the frontier."""
  fig, ax = plt.subplots(figsize=(7, 5))
  all_c, all_l = [], []
  for r in sorted(rows, key=lambda r: (r["N"], r["tokens"])):
    c, l = curves[r["name"]]
    ax.plot(c, l, "-", color=colors[r["size"]], lw=1, alpha=0.8)
    ax.plot(c[-1:], l[-1:], "o", color=colors[r["size"]], ms=4)
    all_c += list(c)
    all_l += list(l)
  for s in sizes:
    ax.plot([], [], "-", color=colors[s], label=s)
  fc, fl = laws.frontier(all_c, all_l)
  ax.plot(fc, fl, "k--", lw=1.5, label="frontier (best loss at <= C)")
  ax.set(
    xscale="log",
    xlabel="compute C (FLOPs)",
    ylabel="validation loss",
    title="loss vs compute of every run (evaluations along training)",
  )
  ax.legend(fontsize=7)
  return fig


def _plot_emergence(rows, fits, curves, plt, colors, sizes, bcolors, budgets):
  """Emergence: exact match and gold log-prob of every probe against compute."""
  probes = sorted({k for r in rows for k in r["probes"]})
  fig, axes = plt.subplots(2, len(probes), figsize=(3.4 * len(probes), 6.4), squeeze=False)
  for j, name in enumerate(probes):
    for i, (metric, label) in enumerate(
      (("exact", "exact-match accuracy"), ("logprob", "gold log-prob / token"))
    ):
      a = axes[i, j]
      for s in sizes:
        rs = sorted(
          (r for r in rows if r["size"] == s and name in r["probes"]), key=lambda r: r["flops"]
        )
        a.plot(
          [r["flops"] for r in rs],
          [r["probes"][name][metric] for r in rs],
          "o-",
          color=colors[s],
          ms=4,
          lw=0.8,
          label=s if (i, j) == (0, 0) else None,
        )
      a.set_xscale("log")
      if metric == "exact":
        a.set_ylim(-0.05, 1.05)
      a.set_title(f"{name}: {label}", fontsize=9)
      a.set_xlabel("compute C (FLOPs)", fontsize=8)
  axes[0, 0].legend(fontsize=6)
  return fig


def _plot_knowledge(rows, fits, curves, plt, colors, sizes, bcolors, budgets):
  """Knowledge (world-fact recall) against parameters, per budget."""
  probes = sorted({k for r in rows for k in r["probes"]})
  if "facts" not in probes:
    return None
  fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4.5))
  for b in budgets:
    rs = sorted(
      (r for r in rows if r["budget"] == b and "facts" in r["probes"]), key=lambda r: r["N"]
    )
    a1.plot(
      [r["N"] for r in rs],
      [r["probes"]["facts"]["exact"] for r in rs],
      "o-",
      color=bcolors[b],
      label=f"C={b:.0e}",
    )
    a2.plot(
      [r["N"] for r in rs], [r["probes"]["facts"]["logprob"] for r in rs], "o-", color=bcolors[b]
    )
  a1.set(
    xscale="log",
    ylim=(-0.05, 1.05),
    xlabel="non-embedding parameters N",
    ylabel="fraction of world facts recalled (exact)",
    title="knowledge vs parameters",
  )
  a2.set(
    xscale="log",
    xlabel="non-embedding parameters N",
    ylabel="gold value log-prob / token",
    title="knowledge: continuous metric",
  )
  a1.legend(fontsize=7)
  return fig


def _ci(ci) -> str:
  if not ci or ci[0] is None or not np.isfinite(ci[0]):
    return "n/a"
  return f"[{ci[0]:.2f}, {ci[1]:.2f}]"


def _fmt_fit(f, name) -> str:
  if not f or "fit" not in f:
    return f"{name}: not fitted ({(f or {}).get('error', 'too few runs')})"
  law, ci = f["fit"], f["ci"]
  a_ci = ci.get("alpha", [float("nan")] * 2)
  s = f"{name} = {law['alpha']:.3f}, 95% CI [{a_ci[0]:.3f}, {a_ci[1]:.3f}]"
  if law.get("at_bound"):
    s += (
      " **(at a bound of the search: alpha at its limit or E = 0, so these points do "
      "not identify E, A and alpha separately)**"
    )
  if law["n_points"] <= (3 if "E +" in name else 2):
    s += " (as many points as parameters: an interpolation, its interval is not informative)"
  if law["E"]:
    e_ci = ci.get("E", [float("nan")] * 2)
    s += f"; E = {law['E']:.3f} [{e_ci[0]:.3f}, {e_ci[1]:.3f}], A = {law['A']:.3g}"
  else:
    s += f"; A = {law['A']:.3g}"
  return s + f" (rmse {law['rmse']:.4f}, {law['n_points']} points, {f['n_boot_ok']} resamples)"


def _compare(value, ci, ref, name) -> str:
  """A sentence comparing a fitted exponent (with CI) with a published one."""
  if value is None or not np.isfinite(value):
    return f"{name} could not be fitted."
  lo, hi = ci if ci and ci[0] is not None else (float("nan"), float("nan"))
  if np.isfinite(lo) and lo <= ref <= hi:
    rel = "consistent with"
  elif value > ref:
    rel = f"{value / ref:.1f}x steeper than" if ref else "above"
  else:
    rel = f"{ref / value:.1f}x shallower than" if value > 0 else "below"
  return f"{name} = {value:.3f} (95% CI [{lo:.3f}, {hi:.3f}]) is {rel} the published {ref}."


def report(rows, fits, missing, plot_names, sweep) -> str:
  """report.md: what ran, the fitted laws, the comparison with the published
  exponents, emergence under two metrics, the plots and every run."""
  L = _report_header(rows, missing, sweep)
  L += _report_fits(fits)
  L += _report_optima(fits)
  L += _report_comparison(rows, fits)
  L += _report_rest(rows, plot_names)
  return "\n".join(L)


def _report_header(rows, missing, sweep) -> list[str]:
  """What ran, and how parameters, tokens and compute are counted."""
  L = []
  add = L.append
  Ns = [r["N"] for r in rows]
  Cs = [r["flops"] for r in rows]
  add("# Scaling sweep report\n")
  add(
    f"Preset `{sweep.preset}` (points derived from `configs/pretrain.py:{sweep.base_preset}`): "
    f"{len(rows)} finished runs, {len(missing)} missing or failed; "
    f"{len({r['size'] for r in rows})} model sizes with non-embedding N from {min(Ns):,} to "
    f"{max(Ns):,} ({math.log10(max(Ns) / min(Ns)):.1f} orders of magnitude), compute from "
    f"{min(Cs):.2e} to {max(Cs):.2e} FLOPs. Total wall time of the runs: "
    f"{sum(r['wall_s'] for r in rows) / 60:.1f} min.\n"
  )
  add(
    "**Accounting.** N = non-embedding parameters (Kaplan); n_params = all parameters; "
    "D = steps x batch x context tokens; C = D x (6 N_matmul + 12 n_layer d_model T) FLOPs, "
    "N_matmul = N + token embedding (the tied LM head is a matmul), attention term "
    "12 n_layer d_model T per token. Loss = validation loss per token, per source weighted "
    "by the mixture (`mixed`).\n"
  )
  if missing:
    add(
      "**Missing / failed points:** "
      + "; ".join(
        f"{m['name']} ({m['state']}{': ' + m['error'] if m['error'] else ''})" for m in missing
      )
      + "\n"
    )

  return L


def _report_fits(fits) -> list[str]:
  """The fitted laws L(N), L(D) and the IsoFLOP exponents."""
  L = []
  add = L.append
  ln, ld = fits["L_N"], fits.get("L_D", {})
  add("## Fitted laws\n")
  limited = ", ".join(f"{k} ({v:.1f})" for k, v in ln.get("data_limited", {}).items())
  add(
    f"- L(N), each size at its largest token budget, sizes whose run there saw at least "
    f"{ln.get('min_tokens_per_param', 0):g} tokens per non-embedding parameter "
    f"({len(ln['runs'])} sizes, {_range(ln['tokens_per_param'])} tokens per parameter)"
    + (f"; left out as data-limited (tokens per parameter): {limited}" if limited else "")
    + ":"
  )
  add(f"  - {_fmt_fit(ln.get('offset'), 'E + A/N^alpha: alpha_N')}")
  add(f"  - {_fmt_fit(ln.get('pure'), 'Kaplan form A/N^alpha (E = 0): alpha_N')}")
  if "size" in ld:
    add(f"- L(D), size {ld['size']} (N = {ld['N']:,}) at {len(ld['runs'])} token budgets:")
    add(f"  - {_fmt_fit(ld.get('offset'), 'E + B/D^beta: alpha_D')}")
    add(f"  - {_fmt_fit(ld.get('pure'), 'Kaplan form B/D^beta (E = 0): alpha_D')}")
  else:
    add(f"- L(D): {ld.get('error', 'not fitted')}")
  for key, label in (("isoflop", "non-embedding N"), ("isoflop_all_params", "all parameters")):
    r = fits[key]
    ci = r.get("ci", {})
    add(
      f"- IsoFLOP (approach 2, N counted as {label}): N_opt ~ C^a with a = "
      f"{_num(r.get('a'))} (95% CI {_ci(ci.get('a'))}), D_opt ~ C^b with b = "
      f"{_num(r.get('b'))} (95% CI {_ci(ci.get('b'))}); {r.get('n_used', 0)} budgets with the "
      f"profile's minimum inside its sampled range, {r.get('n_boot_ok', 0)} bootstrap resamples."
    )
  return L


def _report_optima(fits) -> list[str]:
  """The IsoFLOP optimum of each budget, and tokens per parameter there."""
  L = []
  add = L.append
  iso = fits["isoflop"]
  add("")
  add(
    "| budget C | runs | N_opt (non-emb.) | D_opt | D_opt / N_opt | loss at optimum | "
    "optimum inside the sampled range |"
  )
  add("|---|---|---|---|---|---|---|")
  for o in iso["optima"]:
    if o["interior"]:
      add(
        f"| {o['C']:.2e} | {o['n_runs']} | {_num(o['N_opt'], ',.0f')} | "
        f"{_num(o['D_opt'], ',.0f')} | {_num(o['D_opt'] / o['N_opt'], '.1f')} | "
        f"{_num(o['loss_opt'], '.3f')} | yes |"
      )
    else:
      why = (
        "no: the parabola is not convex"
        if not np.isfinite(o["N_opt"]) and "parabola_N" in o
        else "no: fewer than 3 runs"
        if "parabola_N" not in o
        else "no: the minimum lies outside the sampled sizes (not used)"
      )
      add(f"| {o['C']:.2e} | {o['n_runs']} | - | - | - | - | {why} |")
  tp = fits["compute_optimal_tokens_per_param"]
  add(
    f"\nCompute-optimal tokens per parameter (median over budgets): "
    f"{_num(tp['median_non_embedding'], '.1f')} per non-embedding parameter, "
    f"{_num(tp['median_all_params'], '.1f')} per parameter counting embeddings "
    f"(Hoffmann et al.: ~{laws.HOFFMANN_TOKENS_PER_PARAM:.0f}).\n"
  )

  return L


def _report_comparison(rows, fits) -> list[str]:
  """Fitted exponents against Kaplan et al. and Hoffmann et al., and why they differ."""
  L = []
  add = L.append
  ln, ld, iso = fits["L_N"], fits.get("L_D", {}), fits["isoflop"]
  add("## Comparison with Kaplan et al. 2020 and Hoffmann et al. 2022\n")
  pure_n = ln.get("pure", {})
  pure_d = ld.get("pure", {}) if isinstance(ld, dict) else {}
  add(
    "- "
    + _compare(
      pure_n.get("fit", {}).get("alpha"),
      pure_n.get("ci", {}).get("alpha"),
      laws.KAPLAN_ALPHA_N,
      "alpha_N (Kaplan form)",
    )
  )
  add(
    "- "
    + _compare(
      pure_d.get("fit", {}).get("alpha"),
      pure_d.get("ci", {}).get("alpha"),
      laws.KAPLAN_ALPHA_D,
      "alpha_D (Kaplan form)",
    )
  )
  add("- " + _compare(iso.get("a"), iso.get("ci", {}).get("a"), laws.HOFFMANN_A, "a (N_opt ~ C^a)"))
  add("- " + _compare(iso.get("b"), iso.get("ci", {}).get("b"), laws.HOFFMANN_B, "b (D_opt ~ C^b)"))
  add("")
  add("What differs at this scale, and why:\n")
  for line in _differences(rows, fits):
    add(f"- {line}")
  add("")

  return L


def _report_rest(rows, plot_names) -> list[str]:
  """Emergence under two metrics, the plots, and one row per run."""
  L = []
  add = L.append
  add("## Emergence: the same probes under two metrics\n")
  for line in _emergence(rows):
    add(f"- {line}")
  add("")
  add("## Plots\n")
  for name in plot_names:
    add(f"![{name}]({name})")
  add("\n## Runs\n")
  add("| run | N | D | C | steps | mixed val loss | tokens/s | wall s |")
  add("|---|---|---|---|---|---|---|---|")
  for r in sorted(rows, key=lambda r: (r["budget"], r["N"])):
    add(
      f"| {r['name']} | {r['N']:,} | {r['tokens']:,} | {r['flops']:.2e} | {r['steps']} | "
      f"{_loss(r):.4f} | {r.get('tokens_per_s', float('nan')):,.0f} | {r['wall_s']:.0f} |"
    )
  add("")
  return L


def _num(v, fmt=".3f") -> str:
  return "n/a" if v is None or not np.isfinite(v) else format(v, fmt)


def _range(values) -> str:
  v = [x for x in values if np.isfinite(x)]
  return f"{min(v):,.0f}-{max(v):,.0f}" if v else "n/a"


def _differences(rows, fits) -> list[str]:
  out = []
  ln = fits["L_N"]
  pure = ln.get("pure", {}).get("fit", {})
  off = ln.get("offset", {}).get("fit", {})
  Ns = [r["N"] for r in rows]
  emb_share = np.median([(r["n_params"] - r["N"]) / r["n_params"] for r in rows])
  out.append(
    f"Size range: N spans {min(Ns):,}-{max(Ns):,} non-embedding parameters, against "
    "~10^5-10^9 for Kaplan and ~7x10^7-1.6x10^10 for Hoffmann. The embeddings are "
    f"{100 * emb_share:.0f}% of all parameters here (median over runs), and the tied LM head "
    "is part of every run's compute, so counting N with or without embeddings moves the "
    "exponents (Pearce & Song 2024 trace Kaplan's N_opt ~ C^0.73 vs Hoffmann's C^0.5 to this "
    "choice at small scale); both countings are reported above."
  )
  if pure and off:
    out.append(
      f"Irreducible loss: with the offset E = {off['E']:.2f} nats the fitted alpha_N is "
      f"{off['alpha']:.3f}, without it (Kaplan's form) {pure['alpha']:.3f}. Kaplan's form "
      "folds the entropy of the text into the power law; over a short range of N the two "
      "differ strongly, and E is poorly constrained (see its interval)."
    )
  tpp = [t for t in ln.get("tokens_per_param", []) if np.isfinite(t)]
  if tpp:
    out.append(
      f"Convergence: the L(N) runs saw {min(tpp):,.0f}-{max(tpp):,.0f} tokens per parameter "
      "under a fixed cosine schedule, not training to convergence with early stopping as "
      "Kaplan did. A grid of compute budgets gives its largest models the fewest tokens, so "
      f"{len(ln.get('data_limited', {}))} sizes were left out of L(N) as data-limited and the "
      "fit covers only the smaller sizes; the small ones have passed several epochs of the "
      "small corpus, which can bias alpha_N either way."
    )
  D_max = max(r["tokens"] for r in rows)
  out.append(
    f"Data: the largest run read {D_max:,} tokens of a few-MB corpus (English prose, Python "
    "code and the synthetic world); repeated data and the world's templated facts make the "
    "text far more predictable than WebText/MassiveText, so losses and exponents are not "
    "comparable in absolute terms, only in shape."
  )
  iso = fits["isoflop"]
  if np.isfinite(iso.get("a", float("nan"))):
    tp = fits["compute_optimal_tokens_per_param"]["median_non_embedding"]
    out.append(
      f"Compute-optimal allocation: a = {iso['a']:.2f}, b = {iso['b']:.2f} "
      f"(a + b = {iso['a'] + iso['b']:.2f}; 1 if D_opt x N_opt ~ C exactly), "
      f"{tp:.0f} tokens per non-embedding parameter at the optimum. With {iso.get('n_used', 0)} "
      "budgets of a few runs each, only a narrow range of C is covered, so the intervals are "
      "wide; optima outside a profile's sampled range are extrapolations (see the table)."
    )
  return out


def _emergence(rows) -> list[str]:
  out = []
  probes = sorted({k for r in rows for k in r["probes"]})
  rs = sorted(rows, key=lambda r: r["flops"])
  for name in probes:
    ex = np.array([r["probes"][name]["exact"] for r in rs if name in r["probes"]])
    lp = np.array([r["probes"][name]["logprob"] for r in rs if name in r["probes"]])
    c = np.array([r["flops"] for r in rs if name in r["probes"]])
    if len(ex) < 2:
      continue
    rho_lp = _spearman(np.log(c), lp)
    rho_ex = _spearman(np.log(c), ex)
    n_zero = int(np.sum(ex == 0))
    if ex.max() == 0:
      verdict = (
        "exact match is 0 for every run, while the gold answer's log-prob "
        f"{'rises' if rho_lp > 0.3 else 'does not clearly rise'} with compute "
        f"(Spearman {rho_lp:+.2f}, from {lp[np.argmin(c)]:.2f} to {lp[np.argmax(c)]:.2f} "
        "nats/token): progress invisible to the discontinuous metric"
        if rho_lp > 0.3
        else f"exact match is 0 for every run and the gold log-prob does not clearly rise "
        f"(Spearman {rho_lp:+.2f}): no measurable progress at this scale"
      )
    else:
      verdict = (
        f"exact match ranges {ex.min():.2f}-{ex.max():.2f} ({n_zero} of {len(ex)} runs "
        f"at 0; Spearman with log C {rho_ex:+.2f}), gold log-prob "
        f"{lp.min():.2f} to {lp.max():.2f} nats/token (Spearman {rho_lp:+.2f})"
      )
    out.append(f"**{name}** ({scaling_probes.PROBES.get(name, '')}): {verdict}.")
  out.append(
    "Reading (Schaeffer et al. 2023): where the continuous metric improves smoothly "
    "with compute while exact match stays flat and then jumps, the jump is a property "
    "of the all-or-nothing metric applied to a multi-token answer (per-token "
    "probability p gives exact match ~ p^L), not of the model. The probes use tens of "
    "queries each, so one query is several points of accuracy."
  )
  return out


def _spearman(x, y) -> float:
  x, y = np.asarray(x, float), np.asarray(y, float)
  if len(x) < 3 or np.all(y == y[0]):
    return 0.0
  rx, ry = np.argsort(np.argsort(x)), np.argsort(np.argsort(y))
  return float(np.corrcoef(rx, ry)[0, 1])
