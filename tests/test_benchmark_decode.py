"""experiments/benchmark.py --compare=hf_decode: gptjax's KV-cache decoding
against transformers' `generate` on the same weights (no timings asserted)."""

import json
import os

import pytest
from test_hub_convert import LLAMA, random_model

from gptjax.hub import families, workdir


@pytest.mark.slow
def test_hf_decode_benchmark_json_on_a_tiny_random_model(tmp_path):
  pytest.importorskip("transformers")
  from experiments import benchmark
  from gptjax.hub import convert

  m = families.with_max_len(random_model(LLAMA), 128)
  workdir.write(m, str(tmp_path / "run"))
  convert.convert(str(tmp_path / "run"), str(tmp_path / "hf"), log=lambda _: None)
  result = benchmark.bench_hf_decode(
    str(tmp_path / "run"), str(tmp_path / "hf"), batches=[1, 2], n_new=5, rounds=2
  )
  json.loads(json.dumps(result))  # serialisable
  assert result["mode"] == "hf_decode" and result["new_tokens"] == 5
  assert [b["batch"] for b in result["batches"]] == [1, 2]
  for b in result["batches"]:
    for who in ("gptjax", "transformers"):
      assert len(b[who]["step_s_rounds"]) == 2 and b[who]["tokens_per_s"] > 0
    assert len(b["ratio_rounds"]) == 2 and b["ratio"] > 0
    # the same float32 weights, greedy: the two implementations agree
    assert b["greedy_tokens_agreeing"] == 5
  assert os.path.isabs(result["workdir"])
