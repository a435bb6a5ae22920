"""glibc's malloc told to keep the memory XLA:CPU frees, so each step reuses it.

XLA:CPU allocates an execution's temporary buffer (everything a train step
keeps between its forward and backward pass: 1.76 GB for the `small`
preset's step) with malloc and frees it when the execution ends. glibc
serves a block that large with a fresh `mmap` and returns it with `munmap`,
so every step touched 1.76 GB of new pages: ~450,000 page faults and ~0.9 s
of kernel time per 3.3 s step, paid mostly in the element-wise fusions
that first write those pages (0.88 s of them per step, 0.61 s without the
faults). Sampling and evaluation programs do the same on every call.

`keep_freed_memory()` sets three of malloc's parameters (`mallopt`):

  M_MMAP_MAX = 0        large blocks come from the heap, never from mmap
  M_ARENA_MAX = 1       every thread allocates from that one heap (a thread's
                        own arena cannot grow past 64 MB, and glibc falls back
                        to mmap when it must)
  M_TRIM_THRESHOLD      the heap is never shrunk, so a freed step buffer is
                        there for the next step

After the first step a train step then faults no page at all (measured on
the `small` step: 0 page faults and 0.02 s of kernel time per step, 15-20%
less wall time). The price is that a process's heap stays at its peak until
it exits, which a training or sampling process reaches anyway.

It must run before JAX starts its CPU backend (the first array or jit): a
thread that has already allocated keeps the arena it has. Every entry point
in experiments/ calls it through `gptjax.cli.run`; a notebook or script can
call it first thing. Elsewhere than Linux with glibc it does nothing, and
GPTJAX_KEEP_FREED_MEMORY=0 turns it off (glibc's defaults: freed memory goes
back to the kernel, at the price above).
"""

import ctypes
import ctypes.util
import os
import platform
import sys

# mallopt's parameter numbers (glibc's malloc.h).
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
M_ARENA_MAX = -8
_NEVER_TRIM = -1  # glibc stores it as a size_t: SIZE_MAX, i.e. never (2**31 - 1, the
# largest positive int, would trim a free top above 2 GiB, as two models in one process reach)

SETTINGS = ((M_MMAP_MAX, 0), (M_ARENA_MAX, 1), (M_TRIM_THRESHOLD, _NEVER_TRIM))
ENV = "GPTJAX_KEEP_FREED_MEMORY"
_active = False


def is_glibc() -> bool:
  return sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"


def keep_freed_memory() -> bool:
  """Sets SETTINGS with glibc's `mallopt`. Returns True if all were accepted;
  False, changing nothing, without glibc or with GPTJAX_KEEP_FREED_MEMORY=0."""
  global _active
  if os.environ.get(ENV) == "0" or not is_glibc():
    return False
  libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
  # mallopt returns 1 on success, 0 on an invalid value.
  _active = all(libc.mallopt(param, value) == 1 for param, value in SETTINGS)
  return _active


def active() -> bool:
  """Whether this process's malloc keeps freed memory (`keep_freed_memory` succeeded)."""
  return _active
