"""The recipe on a released model (configs/pipeline.py:smollm2): a conversion
instead of pretraining, and every later stage on the task families the SFT
run names (`runs.families_of`).

The end-to-end run converts a random tiny Llama-family GGUF file (the
SmolLM2 preset's code path at test sizes; the real model's run is the
README's): every stage finishes, only the chosen families are ever asked,
and the report judges the imported model in its own chat template."""

import json
import os

import ml_collections
import pytest
from test_hub_convert import LLAMA, random_model, write_gguf

from configs import pipeline as pipeline_configs, sft as sft_configs
from gptjax import evaluation, runs
from gptjax.pipeline import stages as pipeline_lib
from gptjax.tasks import instructions, world as world_lib

FAMILIES = ("reverse", "count", "decline")


def test_families_of_reads_the_sft_section_and_names_unknown_ones():
  c = sft_configs.get_config("tiny")
  assert runs.families_of(c) == instructions.FAMILIES  # () = all
  c.sft.families = ("count", "sort")
  assert runs.families_of(c) == ("count", "sort")
  assert runs.families_of(ml_collections.ConfigDict({"model": {}})) == instructions.FAMILIES
  c.sft.families = ("count", "poetry")
  with pytest.raises(ValueError, match="unknown task family \\['poetry'\\].*arithmetic"):
    runs.families_of(c)


def test_evaluator_asks_only_its_families():
  cfg = sft_configs.get_config("tiny").eval
  cfg.n_per_family = 3
  world = world_lib.make_world(0)
  ev = evaluation.Evaluator(None, None, world, cfg, families=FAMILIES)
  assert [e.family for e in ev.examples] == [f for f in FAMILIES for _ in range(3)]
  every = evaluation.Evaluator(None, None, world, cfg)
  assert {e.family for e in every.examples} == set(instructions.FAMILIES)


def test_smollm2_preset_converts_and_restricts_families():
  c = pipeline_configs.get_config("smollm2")
  assert "pretrain" not in c and "sft_curated" not in c
  assert c.ptx_coef == 0 and c.convert.src == "smollm2"
  assert c.sft.sft.families == pipeline_configs.WORLD_FREE_FAMILIES
  assert "qa_known" not in c.sft.sft.families and "qa_unknown" not in c.sft.sft.families
  assert c.sft.eval.pretrained_modes == ("chat",)
  c.seed = 3  # every stage's seeds still derive from the top-level seed
  assert c.sft.seed == 3000 + sft_configs.get_config("tiny").seed
  assert c.rlhf.eval.seed == c.dpo.eval.seed == c.sft.eval.seed
  names = [s.name for s in pipeline_lib.stages(c, "/unused", None)]
  assert names == ["pretrain", "sft", "reward_model", "rlhf", "dpo", "best_of_n", "report"]


def converted_test_config(src: str) -> ml_collections.ConfigDict:
  """The smollm2 preset at test sizes, converting `src`."""
  c = pipeline_configs.get_config("smollm2")
  c.convert.src, c.convert.max_len = src, 192
  c.sft.sft.families = FAMILIES
  c.sft.sft.n_demos, c.sft.sft.n_heldout = 48, 8
  c.sft.train.steps, c.sft.train.eval_every, c.sft.train.ckpt_every = 4, 4, 4
  for e in (c.sft.eval, c.rlhf.eval, c.dpo.eval, c.best_of_n.eval):
    e.n_per_family, e.batch_size, e.max_new_tokens, e.n_degeneration = 2, 8, 8, 3
  for e in (c.rlhf.eval, c.dpo.eval, c.best_of_n.eval):
    e.n_boot, e.kl_samples = 100, 1
  c.best_of_n.best_of_n.ns = (1, 2)
  r = c.reward_model
  r.comparisons.n_prompts, r.comparisons.n_heldout, r.comparisons.max_new_tokens = 16, 8, 8
  r.rm.skip_tied_prompts = False  # a random model's answers all score 0: every pair ties
  p = c.rlhf.ppo
  p.iterations, p.rollout_batch, p.minibatches, p.epochs, p.max_new_tokens = 2, 8, 2, 1, 8
  p.kl_stop = 0.0
  c.report.n_per_family, c.report.chat_tokens = 1, 4
  for stage in (c.sft, c.reward_model, c.rlhf, c.dpo):
    stage.mesh.num_devices = 1
  return c


@pytest.mark.slow
def test_pipeline_on_a_converted_model(tmp_path):
  write_gguf(tmp_path / "tiny.gguf", random_model(LLAMA))
  workdir = str(tmp_path / "pipeline")
  config = converted_test_config(str(tmp_path / "tiny.gguf"))
  records = pipeline_lib.run(config, workdir, log=lambda _: None)
  assert list(records) == ["pretrain", "sft", "reward_model", "rlhf", "dpo", "best_of_n", "report"]
  assert all(r["done"] for r in records.values())
  base = runs.load_run(os.path.join(workdir, "pretrain"))
  assert base.config.converted_from.format == "gguf" and base.config.model.max_len == 192

  read = lambda *p: json.load(open(os.path.join(workdir, *p)))
  sft_eval = read("sft", "eval.json")
  assert set(sft_eval["pretrained"]) == {"chat", "degeneration"}  # asked in its own template
  assert set(sft_eval["sft"]["chat"]["families"]) == set(FAMILIES)
  asked = set()
  for split in ("train", "heldout"):
    with open(
      os.path.join(workdir, "reward_model", "comparisons", split, "comparisons.jsonl")
    ) as f:
      asked |= {json.loads(line)["family"] for line in f}
  assert asked == set(FAMILIES), asked
  rl_eval = read("rlhf", "eval.json")
  assert set(rl_eval["families"]) == set(FAMILIES)
  assert rl_eval["alignment_tax"]["pretraining_loss"] == {"sft": {}, "rlhf": {}}
  text = open(os.path.join(workdir, "report.md")).read()
  assert "## Base model (converted, not pretrained here)" in text
  assert "| pretrained | chat |" in text and "rlhf vs pretrained" in text
  assert "## Pretraining" not in text


def test_report_puts_the_largest_sampled_n_and_its_ceiling_beside_ppo(tmp_path):
  from gptjax.pipeline import report

  picks = {str(n): {"n": n} for n in (1, 4, 8)}
  (tmp_path / "best_of_n").mkdir()
  with open(tmp_path / "best_of_n" / "eval.json", "w") as f:
    json.dump({"n_samples": 8, "reward_model": picks, "oracle": picks}, f)
  labels = [label for label, _ in report.method_records(str(tmp_path))]
  assert labels == ["best-of-4 (RM)", "best-of-8 (RM)", "best-of-8 (oracle: ceiling)"]
