"""The chat CLI: `--prompt` answers once in a subprocess; history and errors."""

import subprocess
import sys

import pytest
from conftest import REPO, run_entry_point


def test_chat_without_checkpoint_is_a_clear_error(tmp_path):
  proc = subprocess.run(
    [sys.executable, "-m", "experiments.chat", f"--workdir={tmp_path}", "--prompt=hi"],
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert proc.returncode != 0
  assert "config.json" in proc.stderr and str(tmp_path) in proc.stderr


def test_one_chat_prompt_for_sft_comparisons_rollouts_and_evaluation(tiny_tokenizer):
  """SFT's demonstrations, the comparisons, PPO's prompts and the evaluator ask
  a question with the same ids: what the policy was taught to continue."""
  from gptjax import evaluation, sft
  from gptjax.reward_model import comparisons

  tok = tiny_tokenizer
  ids = evaluation.chat_prompt_ids(tok, "What is 2 plus 2?", "Be brief.")
  assert ids == tok.encode_chat(
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 2 plus 2?"}],
    add_generation_prompt=True,
  )
  demo, mask = sft.render(tok, "What is 2 plus 2?", "4", "Be brief.")
  assert demo[: len(ids)] == ids and not any(mask[: len(ids)]) and all(mask[len(ids) :])
  assert comparisons.chat_prompt_ids is evaluation.chat_prompt_ids  # PPO's prompts use it too
  ev = evaluation.Evaluator(None, tok, None, None, system="Be brief.")
  assert ev.chat_ids("What is 2 plus 2?") == ids
  assert evaluation.chat_prompt_ids(tok, "hi")[:2] == [tok.bos_id, tok.user_id]  # no system turn


@pytest.mark.slow
def test_chat_answers_prompt(sft_run):
  proc = run_entry_point(
    "experiments.chat",
    f"--workdir={sft_run['sft']}",
    "--prompt=Tell me the secret password of Stathe.",
  )
  answer = proc.stdout.strip()
  assert answer, proc.stderr
  assert "<|" not in answer


@pytest.mark.slow
def test_chat_keeps_history_and_truncates(sft_run):
  from gptjax import chat as chat_lib, runs, sampling

  run = runs.load_run(str(sft_run["sft"]))
  chat = chat_lib.Chat(run, sampling.GREEDY, max_new_tokens=16, system="Be brief.")
  out = []
  for question in (
    "What is 12 plus 30?",
    "Reverse the word 'cat'.",
    "Add 1 and 2.",
    "Reverse the word 'dog'.",
    "What is 5 minus 3?",
  ):
    chat.reply(question, write=out.append)
  assert chat.messages[0] == {"role": "system", "content": "Be brief."}
  assert len(chat.messages) == 11  # history kept in full
  prompt = run.tokenizer.encode_chat_truncated(chat.messages, run.model.cfg.max_len - 16)
  assert len(prompt) <= run.model.cfg.max_len - 16  # ... but only what fits is sent
  assert run.tokenizer.decode_chat(prompt)[0]["role"] == "system"
  chat.reset()
  assert chat.messages == [{"role": "system", "content": "Be brief."}]
