"""The synthetic world, instruction tasks, gold oracle, labeler and probes.

world         make_world, world_documents: fictional entities and the
              pretraining documents that state their facts.
instructions  make_examples, make_mixture, parse_prompt: task families with
              gold answers, demonstrations and disjoint train/heldout splits.
oracle        gold_score, classify: ground-truth scoring from prompt text.
labeler       rank, calibrate_noise, pairwise_agreement, validate_ranking:
              a noisy simulated labeler (~73% agreement).
probes        few_shot_prompt, zero_shot_prompt, fact_queries: plain-text
              probes for pretrained models.
"""

from gptjax.tasks.instructions import (
  FAMILIES,
  SPLITS,
  Example,
  make_examples,
  make_mixture,
  parse_prompt,
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
