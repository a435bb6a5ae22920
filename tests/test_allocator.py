"""gptjax.allocator: XLA's freed step buffer is reused instead of re-faulted."""

import subprocess
import sys

import pytest

from gptjax import allocator

N = 4096  # a [N, N] float32 matmul result: a 64 MB temporary buffer, 16,384 pages

# One process per setting (mallopt's arena limit only reaches threads that have
# not allocated yet, and JAX's threads start with its backend). Prints the
# page faults of the third call of a jitted function whose temporary buffer
# (x @ x.T, [N, N]) is allocated and freed by every call.
_PROBE = f"""
import resource, sys
from gptjax import allocator
if sys.argv[1] == "keep":
  assert allocator.keep_freed_memory()
import jax, jax.numpy as jnp
f = jax.jit(lambda x: jax.nn.softmax(x @ x.T, axis=-1) @ x)
x = jnp.ones(({N}, 64), jnp.float32) / 64
for _ in range(2):
  jax.block_until_ready(f(x))
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
jax.block_until_ready(f(x))
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _faults(mode: str) -> int:
  out = subprocess.run(
    [sys.executable, "-c", _PROBE, mode], capture_output=True, text=True, timeout=300, check=True
  )
  return int(out.stdout.split()[-1])


@pytest.mark.skipif(not allocator.is_glibc(), reason="mallopt is glibc's")
def test_kept_memory_serves_the_next_call_without_page_faults():
  pages = N * N * 4 // 4096
  default, kept = _faults("default"), _faults("keep")
  # glibc's default: the 64 MB buffer is a fresh mmap each call, every page faulted in.
  assert default > pages // 2, (default, pages)
  assert kept < pages // 20, (kept, pages)


def test_does_nothing_when_turned_off(monkeypatch):
  monkeypatch.setenv(allocator.ENV, "0")
  monkeypatch.setattr(allocator.ctypes, "CDLL", lambda *a: pytest.fail("libc was loaded"))
  assert allocator.keep_freed_memory() is False


def test_does_nothing_without_glibc(monkeypatch):
  monkeypatch.setattr(allocator, "is_glibc", lambda: False)
  monkeypatch.setattr(allocator.ctypes, "CDLL", lambda *a: pytest.fail("libc was loaded"))
  assert allocator.keep_freed_memory() is False
