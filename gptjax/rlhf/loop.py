"""RLHF as a composition: SFT policy + reward model -> PPO -> evaluation.

`experiments/rlhf.py` is its command line. The loop per iteration is in
`gptjax.rlhf.ppo`; this module owns state, resume, metrics and evaluation.

Workdir layout:
  config.json, the tokenizer (tokenizer.model, or tokenizer.json for a converted model)
  checkpoints/        policy, critic (and reward model) TrainStates; meta has
                      the iteration and the KL controller's beta
  metrics.jsonl, tb/  one 'ppo' record per iteration
  eval.json           the policy vs SFT on held-out prompts (`dpo.versus_sft`:
                      win rate with a paired-bootstrap CI, W/T/L, per-family
                      answer rate, accuracy when answering, strict correct and
                      hallucination rates), KL to SFT and gold of T = 1
                      samples, alignment tax, over-optimisation, the KL stop
  curves.png, overoptimization.png
  rounds/<r>/         iterated RLHF: fresh comparisons, a held-out set sampled
                      apart, the retrained RM and its before/after accuracy

Rules fixed before any run (issue 15): rollout prompts come from the train
split's 'rl' half, never the RM's; the adaptive KL controller aims at
ppo.kl_target and a rollout whose KL exceeds ppo.kl_stop x kl_target stops
PPO (the hard stop) and the final policy is the last one whose rollout was
within that limit (the policy before the update that crossed it); otherwise
the last one reached; never chosen by gold; the logged explained variance uses the critic after the
iteration's updates.
"""

import dataclasses
import functools
import json
import math
import os
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from gptjax import (
  checkpoint as ckpt_lib,
  config as config_lib,
  evaluation,
  files,
  heads,
  losses,
  metrics as metrics_lib,
  model as model_lib,
  runs,
  sharding,
  tokenizer as tokenizer_lib,
  train,
)
from gptjax.data.packing import Pipeline
from gptjax.reward_model import training as rm_training
from gptjax.rlhf import dpo, ppo, ppo_math, stats
from gptjax.tasks import instructions, oracle
from gptjax.tasks.world import World


def validate(config) -> None:
  p = config.ppo
  for name in ("iterations", "rollout_batch", "max_new_tokens", "epochs", "minibatches", "rounds"):
    config_lib.require(
      isinstance(p[name], int) and p[name] > 0, f"ppo.{name}", p[name], "a positive integer"
    )
  config_lib.require(
    p.rollout_batch % p.minibatches == 0,
    "ppo.minibatches",
    p.minibatches,
    f"a divisor of ppo.rollout_batch={p.rollout_batch}",
  )
  config_lib.require(
    p.kl_controller in ("fixed", "adaptive"),
    "ppo.kl_controller",
    p.kl_controller,
    "'fixed', 'adaptive'",
  )
  config_lib.require(
    p.value_init in ("reward_model", "policy"),
    "ppo.value_init",
    p.value_init,
    "'reward_model', 'policy'",
  )
  config_lib.require(p.beta >= 0, "ppo.beta", p.beta, ">= 0")
  config_lib.require(p.get("kl_stop", 0) >= 0, "ppo.kl_stop", p.get("kl_stop"), ">= 0")
  config_lib.require(p.kl_target > 0, "ppo.kl_target", p.kl_target, "> 0")
  config_lib.require(p.ptx_coef >= 0, "ppo.ptx_coef", p.ptx_coef, ">= 0")
  config_lib.require(
    p.iterations % p.rounds == 0,
    "ppo.rounds",
    p.rounds,
    f"a divisor of ppo.iterations={p.iterations}",
  )
  config_lib.require(
    0 < p.lam <= 1 and 0 < p.gamma <= 1, "ppo.gamma/lam", (p.gamma, p.lam), "(0, 1]"
  )


def optimizer(config, lr: float):
  t = config_lib.copy(config.train)
  t.lr = lr
  t.steps = config.ppo.iterations * config.ppo.epochs * config.ppo.minibatches
  return train.make_optimizer(t)


@dataclasses.dataclass
class Models:
  policy: model_lib.Transformer
  value: heads.ScalarHeadModel
  reward: heads.ScalarHeadModel
  tokenizer: tokenizer_lib.ChatTokenizer
  world: World
  sft_config: ml_collections.ConfigDict
  rm_config: ml_collections.ConfigDict
  rm_dir: str
  ref_params: object = None  # the frozen SFT policy (the KL reference)
  cache_dir: str | None = None  # prepared pretraining data (PPO-ptx, alignment tax)
  families: tuple[str, ...] = instructions.FAMILIES  # the SFT run's (`runs.families_of`)


def fresh_state(config, sft_params, value_params, rm_params, tx_p, tx_v) -> dict:
  # Copies: the train steps donate their state, and the reference policy and
  # the reward model must not share buffers with what is donated.
  copy = lambda tree: jax.tree_util.tree_map(jnp.array, tree)
  policy_params, value_params = copy(sft_params), copy(value_params)
  return {
    "policy": train.TrainState(
      step=jnp.array(0, jnp.int32),
      params=policy_params,
      opt_state=tx_p.init(policy_params),
      rng=jax.random.PRNGKey(config.seed),
    ),
    "value": train.TrainState(
      step=jnp.array(0, jnp.int32),
      params=value_params,
      opt_state=tx_v.init(value_params),
      rng=jax.random.PRNGKey(config.seed + 1),
    ),
    "rm": copy(rm_params),
    # The last policy whose rollout KL was within the hard stop's limit (SFT at
    # first): what PPO returns if a later rollout crosses the limit.
    "within": copy(sft_params),
  }


def initial_value_params(config, models: Models, sft_params, rm_params):
  if config.ppo.value_init == "reward_model":
    return rm_params
  head = heads.init_head(models.value, jax.random.PRNGKey(config.seed + 1))
  return heads.from_lm_params(sft_params, head)


def prompts_for(config, models: Models, iteration: int) -> tuple[list, list[str]]:
  """The iteration's training prompts (chat template), a pure function of the
  iteration, from the train split's 'rl' half: never a prompt the reward
  model was trained on (`rm_training.prompt_part`)."""
  examples = rm_training.examples_for(
    models.world,
    config.ppo.rollout_batch,
    seed=config.ppo.seed * 100_003 + iteration,
    split="train",
    part="rl",
    families=models.families,
  )
  prompts = [e.prompt for e in examples]
  return [evaluation.chat_prompt_ids(models.tokenizer, p) for p in prompts], prompts


def kl_limit(ppo_config) -> float:
  """The hard stop: PPO stops iterating once a rollout's KL to SFT (nats per
  response) exceeds ppo.kl_stop x ppo.kl_target (inf when kl_stop is 0)."""
  p = ppo_config
  return p.kl_stop * p.kl_target if p.get("kl_stop", 0) > 0 else math.inf


def run(
  config,
  workdir: str,
  sft_dir: str | None = None,
  rm_dir: str | None = None,
  log=print,
  cache_dir: str | None = None,
) -> dict:
  """PPO from the SFT policy against the reward model; returns eval.json's dict."""
  sft_dir = os.path.abspath(sft_dir or config.sft)
  rm_dir = os.path.abspath(rm_dir or config.reward_model)

  def resolve(c):
    c = config_lib.copy(c)
    c.sft, c.reward_model = sft_dir, rm_dir
    return c, load_models(c, sft_dir, rm_dir, cache_dir)

  with runs.prepare_stage(
    config, workdir, validate=validate, resolve=resolve, tokenizer_from=sft_dir, log=log
  ) as stage:
    config, workdir, (models, rm_params) = stage.config, stage.workdir, stage.upstream
    state, it = train_ppo(config, models, rm_params, workdir, log)
    train.check_stop(
      "rlhf", f"after iteration {it}, before the evaluation", workdir, unit="iteration"
    )
    export_policy(workdir, models.sft_config, state["policy"].params, it)
    result = evaluate(config, models, models.ref_params, state["policy"].params, workdir, log)
    plot(workdir)
  return result


def load_models(config, sft_dir: str, rm_dir: str, cache_dir: str | None):
  """(Models, reward-model params) from the SFT and reward-model workdirs."""
  sft = runs.load_run(sft_dir)
  rm_model, rm_params, rm_config = rm_training.load_reward_model(rm_dir)
  value_model = (
    rm_model if config.ppo.value_init == "reward_model" else heads.ScalarHeadModel(sft.model.cfg)
  )
  models = Models(
    sft.model,
    value_model,
    rm_model,
    sft.tokenizer,
    runs.world_of(sft.config),
    sft.config,
    rm_config,
    rm_dir,
    ref_params=sft.params,
    cache_dir=cache_dir,
    families=runs.families_of(sft.config),
  )
  return models, rm_params


def train_ppo(config, models: Models, rm_params, workdir: str, log) -> tuple[dict, int]:
  """PPO iterations to ppo.iterations, resumable (train.Resumable): checkpoints
  hold the policy, critic and reward-model states and, in meta, the KL
  controller's beta. A stop is taken between iterations only, since the state
  is updated minibatch by minibatch. Returns (state, iterations done)."""
  p = config.ppo
  tx_p, tx_v = optimizer(config, p.policy_lr), optimizer(config, p.value_lr)
  mesh = sharding.make_mesh(config.mesh)
  replicated = NamedSharding(mesh, P())
  make = lambda: fresh_state(
    config,
    models.ref_params,
    initial_value_params(config, models, models.ref_params, rm_params),
    rm_params,
    tx_p,
    tx_v,
  )
  kl_ctl = ppo_math.kl_controller(p.kl_controller, p.beta, p.kl_target, p.kl_horizon)
  t = config.train
  with train.Resumable(
    "rlhf", workdir, keep=t.keep_checkpoints, every=t.ckpt_every, log=log, unit="iteration"
  ) as loop:
    abstract = jax.tree_util.tree_map(
      lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=replicated), jax.eval_shape(make)
    )
    restored = loop.restore(abstract)
    if restored is not None:
      box = {"state": restored[0], "stopped_at": restored[1].get("stopped_at")}
      start, kl_ctl.beta = int(restored[1]["iteration"]), float(restored[1]["beta"])
      log(
        f"[rlhf] resumed from {loop.checkpointer.directory} at iteration {start} "
        f"(beta {kl_ctl.beta:.4g})"
      )
    else:
      # on the mesh, replicated: a multi-host checkpoint holds only global arrays
      state = jax.tree_util.tree_map(lambda x: sharding.replicated_global(x, mesh), make())
      box, start = {"state": state, "stopped_at": None}, 0
      log(f"[rlhf] new run from SFT {config.sft} and reward model {config.reward_model}")
    body = _ppo_body(config, models, box, kl_ctl, tx_p, tx_v, loop, start, workdir, log)
    snapshot = lambda it: (
      box["state"],
      {"iteration": it, "beta": kl_ctl.beta, "stopped_at": box["stopped_at"]},
    )
    with jax.set_mesh(mesh):
      it = loop.run(start, p.iterations, body, snapshot)
  # The final policy is fixed in advance: the last one PPO reached, or if the
  # hard KL stop fired at iteration s, the last one within the limit (after
  # s - 1 updates); never chosen by gold.
  return box["state"], it if box["stopped_at"] is None else max(box["stopped_at"] - 1, 0)


def _ppo_body(config, models: Models, box: dict, kl_ctl, tx_p, tx_v, loop, start, workdir, log):
  """The loop's body: iteration `it` -> it + 1 (a new reward model first, at a
  round's start in iterated RLHF), its 'ppo' record and progress line."""
  p = config.ppo
  ptx = Pipeline(models.sft_config, models.tokenizer, models.cache_dir) if p.ptx_coef > 0 else None
  policy_step = jax.jit(
    functools.partial(
      ppo.policy_update, policy=models.policy, tx=tx_p, clip_eps=p.clip_eps, ptx_coef=p.ptx_coef
    ),
    donate_argnums=(0,),
  )
  value_step = jax.jit(
    functools.partial(
      ppo.value_update, value_model=models.value, tx=tx_v, clip_eps=p.value_clip_eps
    ),
    donate_argnums=(0,),
  )
  per_round = p.iterations // p.rounds

  def body(it: int) -> None:
    if box["stopped_at"] is not None:
      return  # the hard KL stop fired: the loop runs out without changing the state
    state = box["state"]
    if p.rounds > 1 and it > 0 and it % per_round == 0:
      state["rm"] = retrain_reward_model(config, models, state, it // per_round, workdir, log)
    stats = iteration(config, models, state, it, kl_ctl.beta, policy_step, value_step, ptx)
    if stats.get("stopped"):
      box["stopped_at"] = it
      state["policy"] = dataclasses.replace(state["policy"], params=state["within"])
      log(
        f"[rlhf] hard KL stop at iteration {it + 1}: rollout KL {stats['kl']:.3f} > "
        f"{kl_limit(p):.3f} (ppo.kl_stop x ppo.kl_target); the policy after "
        f"{max(it - 1, 0)} updates, the last within the limit, is final"
      )
      loop.writer.write(it + 1, "ppo_stop", kl=stats["kl"], limit=kl_limit(p))
      return
    kl_ctl.update(stats["kl"], p.rollout_batch)
    stats["beta_next"] = kl_ctl.beta
    loop.writer.write(it + 1, "ppo", **stats)
    if (it + 1) % config.train.log_every == 0 or it == start:
      log(
        f"[rlhf] iter {it + 1:>4d}/{p.iterations}  rm {stats['rm_score']:+.3f}  gold "
        f"{stats['gold_score']:.3f}  kl {stats['kl']:.3f}  beta {stats['beta']:.4f}  "
        f"ent {stats['entropy']:.2f}  clip {stats['clip_frac']:.3f}  "
        f"ev {stats['explained_variance']:+.2f}  len {stats['response_length']:.1f}  "
        f"{stats['rollout_tokens_per_s']:,.0f} rollout tok/s  time: sampling "
        f"{stats['generate_s']:.1f}s scoring {stats['rollout_s'] - stats['generate_s']:.1f}s "
        f"updates {stats['update_s']:.1f}s"
      )

  return body


def iteration(
  config,
  models: Models,
  state: dict,
  it: int,
  beta: float,
  policy_step,
  value_step,
  ptx: Pipeline | None,
) -> dict:
  """One PPO iteration (rollout, then epochs x minibatches); updates `state` in place."""
  p = config.ppo
  prompt_ids, prompts = prompts_for(config, models, it)
  nets = ppo.Networks(
    policy=models.policy,
    value=models.value,
    reward=models.reward,
    policy_params=state["policy"].params,
    ref_params=models.ref_params,
    value_params=state["value"].params,
    rm_params=state["rm"],
  )
  rollout, timing = ppo.collect(
    nets,
    prompt_ids,
    ppo.RolloutSettings.from_config(p, models.tokenizer),
    rng=jax.random.fold_in(jax.random.PRNGKey(p.seed), it),
    beta=beta,
  )
  if float(rollout.kl.mean()) > kl_limit(p):
    return {"stopped": True, **ppo.rollout_stats(rollout)}
  if math.isfinite(kl_limit(p)):  # this policy is within the limit: keep it (updates donate it)
    state["within"] = jax.tree_util.tree_map(jnp.copy, state["policy"].params)
  rng = np.random.default_rng((p.seed, it))
  sums: dict[str, float] = {}
  n, t_update = 0, time.perf_counter()
  for epoch in range(p.epochs):
    for k, mb in enumerate(ppo.minibatches(rollout, rng, p.minibatches)):
      ptx_batch = None
      if ptx is not None:
        b = ptx.train_batch((it * p.epochs + epoch) * p.minibatches + k, p.ptx_batch_size)
        ptx_batch = {key: b[key] for key in ("tokens", "targets", "loss_mask")}
      state["policy"], s_p = policy_step(state["policy"], mb, ptx_batch)
      state["value"], s_v = value_step(state["value"], mb)
      if epoch == 0 and k == 0:
        first_ratio = float(s_p["ratio"])
      for key, v in {**jax.device_get(s_p), **jax.device_get(s_v)}.items():
        sums[key] = sums.get(key, 0.0) + float(v)
      n += 1
  timing["update_s"] = (
    time.perf_counter() - t_update
  )  # synchronous: each minibatch's stats are read
  texts = rollout.texts(models.tokenizer, models.tokenizer.end_turn_id)
  gold = [oracle.gold_score(pr, t, models.world) for pr, t in zip(prompts, texts)]
  out = {k: v / n for k, v in sums.items()}
  out["explained_variance"] = updated_explained_variance(models, state, rollout)
  out.update(ppo.rollout_stats(rollout), **timing)
  out.update(
    gold_score=float(np.mean(gold)),
    beta=beta,
    first_ratio=first_ratio,
    sqrt_kl=math.sqrt(max(out["kl"], 0.0)),
  )
  return out


@functools.partial(jax.jit, static_argnums=(0, 5))
def _values(value_model, params, tokens, token_mask, positions, n_response: int):
  return ppo.response_values(value_model, params, tokens, token_mask, positions, n_response)


def updated_explained_variance(models: Models, state: dict, rollout) -> float:
  """1 - Var(returns - V) / Var(returns) over the rollout's response tokens,
  with V from the critic AFTER this iteration's updates (the minibatch stats
  hold the rollout-time values, which say how good the critic was before)."""
  n = rollout.mask.shape[1]
  values = _values(
    models.value,
    state["value"].params,
    rollout.tokens,
    rollout.token_mask,
    rollout.positions,
    n,
  )
  return float(ppo_math.explained_variance(values, rollout.returns, rollout.mask))


MIN_VALIDATION_PROMPTS = 4  # a round early-stops only on at least this many prompts


def retrain_reward_model(
  config, models: Models, state: dict, round_index: int, workdir: str, log
) -> dict:
  """Iterated RLHF: the current policy answers fresh prompts (the train
  split's 'rm' half, never PPO's), the labeler ranks them (ties allowed), and
  the reward model continues training on them (from its current params) for
  ppo.rm_steps_per_round steps, early-stopped on a validation share of them;
  then it is renormalised on these samples (mean 0, std 1).

  Its accuracy is measured before and after on comparisons of the current
  policy on held-out-split prompts, sampled apart (rounds/<r>/heldout/): a
  truly held-out set. A round's comparisons and RM checkpoints live in
  rounds/<r>/, so an interrupted round resumes instead of starting over.
  """
  rc = config_lib.copy(models.rm_config)
  rdir = os.path.join(workdir, "rounds", str(round_index))
  with open(os.path.join(models.rm_dir, "comparisons", "train", "report.json")) as f:
    noise = json.load(f)["labeler_noise"]
  policy_run = runs.LoadedRun(
    models.sft_config,
    models.policy,
    state["policy"].params,
    models.tokenizer,
    int(state["policy"].step),
    f"{workdir}#policy",
  )
  c, rounds = rc.comparisons, config.ppo.rounds
  seed = c.seed + 7919 * round_index
  sample = lambda split, n, s, sub: rm_training._comparisons(
    rc, policy_run, models.world, split, n, s, os.path.join(rdir, sub), noise, log
  )[0]
  comps = sample("train", max(rc.train.batch_size, c.n_prompts // rounds), seed, "comparisons")
  heldout = sample("heldout", max(rc.train.batch_size, c.n_heldout), seed + 1, "heldout")
  used = rm_training.labelled_informative(comps)
  if not len(used):  # the labeler tied every answer: nothing to learn this round
    log(f"[rlhf] round {round_index}: the labeler preferred no answer; reward model kept")
    return state["rm"]
  fraction = rc.rm.get("validation_fraction", 0.1)
  if len(used) * fraction < MIN_VALIDATION_PROMPTS:  # too few to early-stop on: train them all
    log(f"[rlhf] round {round_index}: {len(used)} informative prompts, no validation split")
    fraction = 0.0
  train_c, validation = rm_training.split_validation(used, fraction)
  rc.rm.epochs = config.ppo.rm_steps_per_round * rc.train.batch_size / len(train_c)
  rc.eval.data_fractions = ()
  before = rm_training.evaluate_rm(models.reward, state["rm"], heldout)
  params, summary = rm_training.train_rm(
    rc, os.path.join(rdir, "rm"), models.reward, state["rm"], train_c, validation, log
  )
  scores = rm_training.score_all(models.reward, params, comps)
  params = rm_training.normalize(params, float(scores.mean()), float(scores.std()))
  after = rm_training.evaluate_rm(models.reward, params, heldout)
  keys = ("accuracy_vs_labeler", "accuracy_vs_gold")
  record = {
    "round": round_index,
    "train_prompts": len(train_c),
    "informative_pairs": rm_training.informative_pairs(train_c),
    "best_step": summary["best_step"],
    "before": {k: before[k] for k in keys},
    "after": {k: after[k] for k in keys},
  }
  runs.write_json(os.path.join(rdir, "eval.json"), record)
  log(
    f"[rlhf] round {round_index}: reward model retrained on {len(train_c)} new prompts "
    f"({record['informative_pairs']} informative pairs); held-out accuracy vs labeler "
    f"{before['accuracy_vs_labeler']:.3f} -> {after['accuracy_vs_labeler']:.3f}, vs gold "
    f"{before['accuracy_vs_gold']:.3f} -> {after['accuracy_vs_gold']:.3f}"
  )
  return params


def export_policy(workdir: str, sft_config, params, iteration: int) -> str:
  """Writes the final policy as a standard LM run in workdir/policy/ (config.json,
  the tokenizer's files, checkpoints/), so `runs.load_run`, chat and later stages load it
  like any SFT run. The optimizer state in it is fresh (only params matter)."""
  pdir = os.path.join(workdir, "policy")
  os.makedirs(pdir, exist_ok=True)
  config_lib.save(sft_config, pdir)
  tokenizer_lib.copy_files(workdir, pdir)
  tx = train.make_optimizer(sft_config.train)
  state = train.TrainState(
    step=jnp.array(iteration, jnp.int32),
    params=params,
    opt_state=tx.init(params),
    rng=jax.random.PRNGKey(0),
  )
  on = jax.tree_util.tree_leaves(params)[0].sharding
  if isinstance(on, NamedSharding):  # a multi-host save takes global arrays only
    state = jax.tree_util.tree_map(lambda x: sharding.replicated_global(x, on.mesh), state)
  checkpointer = ckpt_lib.Checkpointer(os.path.join(pdir, "checkpoints"), keep=1)
  if checkpointer.latest_step() != iteration:
    checkpointer.save(iteration, state, {"exported_from": workdir})
  checkpointer.close()
  return pdir


# ----------------------------------------------------------------------------
# Evaluation (held-out prompts; the oracle is the judge)


def pretraining_loss(models: Models, params, n_batches: int, batch_size: int = 8) -> dict:
  """Validation LM loss per pretraining source: the alignment tax on language modelling."""
  pipeline = Pipeline(models.sft_config, models.tokenizer, models.cache_dir)
  fn = jax.jit(lambda p, b: train.eval_step(p, b, loss_fn=losses.lm_loss_fn(models.policy)))
  out = {}
  for source in pipeline.sources:
    total = weight = 0.0
    for batch in pipeline.eval_batches(source, batch_size, n_batches):
      t, w, _ = jax.device_get(
        fn(params, {k: batch[k] for k in ("tokens", "targets", "loss_mask")})
      )
      total, weight = total + float(t), weight + float(w)
    out[source] = total / weight
  return out


def evaluate(config, models: Models, sft_params, rlhf_params, workdir: str, log) -> dict:
  """eval.json: the policy against SFT on the held-out prompts, greedy and
  judged by the oracle (the primary metric: `dpo.versus_sft`'s record, the one
  DPO and best-of-n write: win rate with a paired-bootstrap interval, W/T/L,
  per-family answer rate, accuracy when answering, strict correct and
  hallucination rates), KL to SFT and gold of T = 1 samples (secondary),
  honesty and refusals, the alignment tax and the over-optimisation curve."""
  ev = evaluation.Evaluator(
    models.policy,
    models.tokenizer,
    models.world,
    config.eval,
    families=models.families,
    stop_check=lambda: train.check_stop(
      "rlhf", "during the final evaluation", workdir, unit="iteration"
    ),
  )
  local = sharding.local_copy  # off the mesh
  params = {"sft": local(sft_params), "rlhf": local(rlhf_params)}
  judged = {name: ev.judgements(p, "chat") for name, p in params.items()}
  e = config.eval
  result = dpo.versus_sft(
    "rlhf", judged["sft"][0], judged["rlhf"][0], e.get("n_boot", 10_000), config.seed
  )
  sft_run = runs.LoadedRun(
    models.sft_config, models.policy, params["sft"], models.tokenizer, 0, config.sft
  )
  if e.get("kl_samples", 0) > 0:
    result["sampled"] = dpo.sampled_kl_and_gold(
      sft_run, params["rlhf"], models.world, ev.examples, e, config.seed
    )
  tax = {  # none without pretraining data (a converted model's run)
    name: pretraining_loss(models, p, e.ptx_eval_batches) if e.ptx_eval_batches > 0 else {}
    for name, p in params.items()
  }
  result["alignment_tax"] = {
    "pretraining_loss": tax,
    "few_shot_mean_score": {
      n: ev.evaluate_mode(p, "few_shot")["mean_score"] for n, p in params.items()
    },
    "ptx_coef": config.ppo.ptx_coef,
  }
  result["samples"] = {
    name: {
      ex.family: {"prompt": ex.prompt, "answer": t.strip(), "gold": ex.response}
      for ex, t in reversed(list(zip(ev.examples, texts)))  # the first per family wins
    }
    for name, (_, texts) in judged.items()
  }
  recs = metrics_lib.read_metrics(workdir, "ppo")
  if recs:
    result["overoptimization"] = stats.overoptimization_curve(
      [r["sqrt_kl"] for r in recs], [r["rm_score"] for r in recs], [r["gold_score"] for r in recs]
    )
    result["iterations"] = len(recs)
  stop = metrics_lib.read_metrics(workdir, "ppo_stop")
  result["kl_stop"] = {
    "target": config.ppo.kl_target,
    "limit": kl_limit(config.ppo),
    "stopped_at": stop[-1]["step"] - 1 if stop else None,
  }
  runs.write_json(os.path.join(workdir, "eval.json"), result)
  log_result(result, log)
  return result


def log_result(result: dict, log) -> None:
  """Two lines: win rate, gold, hallucination, alignment tax; over-optimisation."""
  b, tax = result["bootstrap_vs_sft"], result["alignment_tax"]["pretraining_loss"]
  kl = result.get("sampled", {}).get("kl_to_sft", float("nan"))
  log(
    f"[rlhf] win rate vs SFT {b['win_rate']:.3f} [{b['win_rate_ci95'][0]:.3f}, "
    f"{b['win_rate_ci95'][1]:.3f}] (W/T/L {b['wins']}/{b['ties']}/{b['losses']}, n={b['n']}); "
    f"KL to SFT {kl:.2f} nats; strict correct {result['sft']['correct_rate']:.3f} -> "
    f"{result['rlhf']['correct_rate']:.3f}; "
    f"gold {result['gold_mean']['sft']:.3f} -> {result['gold_mean']['rlhf']:.3f}; "
    f"hallucination {result['sft']['hallucination_rate']:.2f} -> "
    f"{result['rlhf']['hallucination_rate']:.2f}; pretraining loss "
    + (", ".join(f"{s} {tax['sft'][s]:.3f}->{tax['rlhf'][s]:.3f}" for s in tax["sft"]) or "n/a")
  )
  if "overoptimization" in result:
    o = result["overoptimization"]
    log(
      f"[rlhf] over-optimisation: gold peaks at {o['peak_gold']:.3f} at sqrt(KL) "
      f"{o['peak_sqrt_kl']:.2f}, ends at {o['final_gold']:.3f} "
      f"({'turned over' if o['turned_over'] else 'no turnover yet'})"
    )


def plot(workdir: str) -> None:
  """curves.png (RM score, gold, KL, beta per iteration) and overoptimization.png."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  recs = metrics_lib.read_metrics(workdir, "ppo")
  if not recs:
    return
  it = [r["step"] for r in recs]
  fig, axes = plt.subplots(1, 4, figsize=(14, 3.2))
  axes[0].plot(it, [r["rm_score"] for r in recs], label="reward-model score")
  axes[0].plot(it, [r["gold_score"] for r in recs], label="gold score")
  axes[0].set_xlabel("PPO iteration")
  axes[0].legend(fontsize=8)
  for ax, key, label in (
    (axes[1], "kl", "KL(policy || SFT), nats/response"),
    (axes[2], "entropy", "policy entropy (nats/token)"),
    (axes[3], "beta", "KL coefficient beta"),
  ):
    ax.plot(it, [r[key] for r in recs])
    ax.set_xlabel("PPO iteration")
    ax.set_ylabel(label)
  fig.tight_layout()
  files.save_figure(fig, os.path.join(workdir, "curves.png"), dpi=110)

  fig, ax = plt.subplots(figsize=(4.8, 3.6))
  x = [r["sqrt_kl"] for r in recs]
  curve = stats.overoptimization_curve(
    x, [r["rm_score"] for r in recs], [r["gold_score"] for r in recs]
  )
  for key, curve_key, label, marker in (
    ("rm_score", "proxy", "reward model (proxy)", "o"),
    ("gold_score", "gold", "gold", "s"),
  ):
    (line,) = ax.plot(x, [r[key] for r in recs], marker, ms=3, alpha=0.3)
    ax.plot(curve["sqrt_kl"], curve[curve_key], marker + "-", c=line.get_color(), label=label)
  if curve["turned_over"]:
    ax.axvline(curve["peak_sqrt_kl"], c="grey", ls=":", lw=1, label="gold peak")
  ax.set_xlabel("sqrt(KL to SFT)")
  ax.set_ylabel("mean score of rollouts")
  ax.set_title("Reward over-optimisation (Gao et al. 2022)", fontsize=10)
  ax.legend(fontsize=8)
  fig.tight_layout()
  files.save_figure(fig, os.path.join(workdir, "overoptimization.png"), dpi=110)
