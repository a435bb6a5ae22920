"""The synthetic world, instruction tasks, gold oracle, labeler and probes.

world         make_world, world_documents: fictional entities and the
              pretraining documents that state their facts.
instructions  the Family registry (register_family, REGISTRY, FAMILIES);
              make_examples, make_mixture, parse_prompt: problems with
              difficulty levels, gold answers, disjoint train/heldout splits.
writers       the pool of demonstration writers and their shares.
checks        text checks (numbers, refusals, "I don't know", values).
oracle        gold_score, classify, judge: the versioned rubric (RUBRIC_VERSION).
competence    pass_at_k, pass_at_k_table; fit_budget, length_report (tokens).
labeler       rank, calibrate_noise, pairwise_agreement, validate_ranking:
              a noisy simulated labeler (~73% agreement).
probes        few_shot_prompt, zero_shot_prompt, fact_queries: plain-text
              probes for pretrained models.
"""

from gptjax.tasks.competence import (
  chat_length,
  fit_budget,
  format_pass_at_k,
  length_report,
  pass_at_k,
  pass_at_k_table,
)
from gptjax.tasks.instructions import (
  FAMILIES,
  REGISTRY,
  SPLITS,
  Example,
  Family,
  make_examples,
  make_mixture,
  parse_prompt,
  register_family,
  split_of,
)
from gptjax.tasks.labeler import (
  calibrate_noise,
  expected_agreement,
  pairwise_agreement,
  rank,
  rank_batch,
  synthetic_candidates,
  synthetic_score_sample,
  validate_ranking,
)
from gptjax.tasks.oracle import classify, gold_score, judge
from gptjax.tasks.probes import (
  extract_answer,
  fact_queries,
  few_shot_probes,
  few_shot_prompt,
  recall_rate,
  zero_shot_prompt,
)
from gptjax.tasks.world import Entity, World, make_world, world_documents
from gptjax.tasks.writers import WRITER_SHARES, WRITERS
