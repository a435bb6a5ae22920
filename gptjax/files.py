"""Writing a file so that no reader, crash or sibling process sees it half-written.

`atomic_path(path)` yields a temporary name beside `path` that carries this
process's id and a random token (processes on different hosts of one job,
sharing the workdir over NFS, may well have the same pid: containers number
them alike); the block writes there, and the temporary is renamed over
`path` when the block completes (a rename within a directory is atomic on
POSIX). A crash leaves at worst a stray hidden temporary, never a torn file.
The processes of a multi-host job that each write the same result (every
process computes it; the copies are identical) never write into one
another's temporary: with one shared name, one process's rename used to
take the file from under the other's (a FileNotFoundError that killed the
job). Every file gptjax writes into a workdir or a cache goes through here.
"""

import contextlib
import os
import secrets
from typing import Iterator


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[str]:
  """Yields `<dir>/.<name>.<pid>-<token>.tmp<ext>` to write into; renames it to `path`
  when the block completes and removes it if the block raises. The temporary
  ends with `path`'s extension, from which writers such as np.save ('.npy'),
  np.savez ('.npz') and savefig ('.png') take the format."""
  path = os.fspath(path)
  directory, name = os.path.split(path)
  unique = f"{os.getpid()}-{secrets.token_hex(4)}"
  tmp = os.path.join(directory, f".{name}.{unique}.tmp{os.path.splitext(name)[1]}")
  try:
    yield tmp
    os.replace(tmp, path)
  finally:
    with contextlib.suppress(FileNotFoundError):
      os.remove(tmp)  # only when the block raised: the rename consumed it


def write_text(path: str | os.PathLike, text: str) -> None:
  """Writes `text` to `path` atomically."""
  with atomic_path(path) as tmp, open(tmp, "w") as f:
    f.write(text)


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
  """Writes `data` to `path` atomically."""
  with atomic_path(path) as tmp, open(tmp, "wb") as f:
    f.write(data)


def save_figure(fig, path: str | os.PathLike, dpi: int = 110) -> None:
  """Saves a matplotlib figure to `path` atomically (format from the extension)
  and closes it."""
  import matplotlib.pyplot as plt  # only the plotting stages need matplotlib

  with atomic_path(path) as tmp:
    fig.savefig(tmp, dpi=dpi)
  plt.close(fig)
