"""A PyTorch-eager GPT with gptjax's shapes: the peer that `benchmark --compare=torch` times.

Benchmark-only (PyTorch is in requirements-test.txt, never imported by gptjax/).

nanoGPT-style (Karpathy's model.py, the usual CPU baseline): pre-LayerNorm
blocks, one fused QKV Linear, `scaled_dot_product_attention(is_causal=True)`,
tanh-GELU MLP, a head tied to the token embedding, AdamW with weight decay on
matrices and embeddings only, global-norm clipping. Its initialisation is
gptjax's (`gptjax.model`): N(0, 0.02) matrices and token embeddings,
N(0, 0.01) position embeddings, N(0, 0.02 / sqrt(2 n_layer)) residual
projections, zero biases, LayerNorm scale 1; so the parameter count is equal
and the loss at init is ~ln(vocab). Mixed precision is PyTorch's usual
`torch.autocast('cpu', torch.bfloat16)` over float32 master weights.
"""

import contextlib
import math

import torch
import torch.nn.functional as F
from torch import nn


class Block(nn.Module):
  def __init__(self, d: int, n_head: int, d_ff: int):
    super().__init__()
    self.n_head = n_head
    self.ln_1 = nn.LayerNorm(d, eps=1e-5)
    self.c_attn = nn.Linear(d, 3 * d)
    self.attn_proj = nn.Linear(d, d)
    self.ln_2 = nn.LayerNorm(d, eps=1e-5)
    self.c_fc = nn.Linear(d, d_ff)
    self.mlp_proj = nn.Linear(d_ff, d)

  def forward(self, x):  # [B, T, D]
    B, T, D = x.shape
    q, k, v = self.c_attn(self.ln_1(x)).split(D, dim=2)
    q, k, v = (t.view(B, T, self.n_head, D // self.n_head).transpose(1, 2) for t in (q, k, v))
    y = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # [B, H, T, K]
    x = x + self.attn_proj(y.transpose(1, 2).contiguous().view(B, T, D))
    return x + self.mlp_proj(F.gelu(self.c_fc(self.ln_2(x)), approximate="tanh"))


class GPT(nn.Module):
  """tokens [B, T] -> logits [B, T, V]."""

  def __init__(
    self, vocab_size: int, max_len: int, n_layer: int, n_head: int, d_model: int, d_ff: int
  ):
    super().__init__()
    self.wte = nn.Embedding(vocab_size, d_model)
    self.wpe = nn.Embedding(max_len, d_model)
    self.blocks = nn.ModuleList(Block(d_model, n_head, d_ff) for _ in range(n_layer))
    self.ln_f = nn.LayerNorm(d_model, eps=1e-5)
    resid_std = 0.02 / math.sqrt(2 * n_layer)
    for name, p in self.named_parameters():
      if name.endswith("bias"):
        nn.init.zeros_(p)
      elif "ln_" in name:
        nn.init.ones_(p)
      elif name.startswith("wpe"):
        nn.init.normal_(p, std=0.01)
      elif name.endswith(("attn_proj.weight", "mlp_proj.weight")):
        nn.init.normal_(p, std=resid_std)
      else:
        nn.init.normal_(p, std=0.02)

  def forward(self, tokens):
    T = tokens.shape[1]
    x = self.wte(tokens) + self.wpe(torch.arange(T, device=tokens.device))
    for block in self.blocks:
      x = block(x)
    return self.ln_f(x) @ self.wte.weight.t()  # tied head


def from_config(m) -> GPT:
  """The peer of a gptjax `config.model` (vocab, lengths, widths; dtype is per step)."""
  return GPT(m.vocab_size, m.max_len, m.n_layer, m.n_head, m.d_model, m.d_ff)


def count_params(model: GPT) -> int:
  return sum(p.numel() for p in model.parameters())


def make_optimizer(model: GPT, t) -> torch.optim.Optimizer:
  """AdamW as gptjax's `train.make_optimizer`: decay on matrices and embeddings only."""
  decay = [p for p in model.parameters() if p.dim() >= 2]
  no_decay = [p for p in model.parameters() if p.dim() < 2]
  groups = [
    {"params": decay, "weight_decay": t.weight_decay},
    {"params": no_decay, "weight_decay": 0.0},
  ]
  return torch.optim.AdamW(groups, lr=t.lr, betas=(t.b1, t.b2))


def loss_fn(model: GPT, tokens, targets, bf16: bool) -> torch.Tensor:
  """Mean next-token cross-entropy; under autocast when `bf16` (loss in float32)."""
  ctx = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
  with ctx:
    logits = model(tokens)
  return F.cross_entropy(logits.float().flatten(0, 1), targets.flatten())


def train_step(model: GPT, opt, tokens, targets, *, bf16: bool, clip_norm: float) -> float:
  """One AdamW step (forward, backward, clip, update); returns the loss."""
  loss = loss_fn(model, tokens, targets, bf16)
  opt.zero_grad(set_to_none=True)
  loss.backward()
  torch.nn.utils.clip_grad_norm_(model.parameters(), clip_norm)
  opt.step()
  return loss.item()
