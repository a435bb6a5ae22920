"""Command-line helpers shared by the absl entry points in experiments/.

`app.run(main, flags_parser=cli.parse_flags)` turns a bad config override into
one line that names the field, instead of a three-exception traceback from
inside ml_collections:

  $ python -m experiments.pretrain --config.model.n_layerz=4
  FATAL Flags parsing error: --config.model.n_layerz=4: unknown config field
  n_layerz; did you mean "n_layer" instead of "n_layerz"?

`run(main)` does that and also reports the errors a user causes (a missing
or foreign workdir, an invalid config value, a corrupted checkpoint, a NaN
loss, a full disk) as one line, and a graceful stop as exit status 130 -- no
traceback. GPTJAX_TRACEBACK=1 shows the traceback too.

SIGTERM (what Slurm, Kubernetes and preemptible VMs send before killing a
job) and Ctrl-C stop a run gracefully: the handler only sets a flag
(`train.request_stop`), every loop checks it between steps, saves and exits
130 -- also when the signal comes during start-up (compilation), before
step 1. So does SIGINT to a run started in the background (`cmd &`), which a
shell would otherwise start with SIGINT ignored. A second signal aborts at
once, without saving.
"""

import errno
import os
import signal
import sys

from absl import app, flags

from gptjax import (
  allocator,
  checkpoint as ckpt_lib,
  config as config_lib,
  model as model_lib,
  train,
)


def _field(arg: str) -> str:
  """'--config.model.n_layer=4' -> 'n_layer'."""
  return arg.split("=", 1)[0].rsplit(".", 1)[-1]


def parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing with one-line errors; exits 1 on a bad flag."""
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    msg = str(e)
    if "Traceback" in msg:  # a config file's get_config raised: keep what it said
      lines = [l for l in msg.splitlines() if l.strip()]
      msg = f"{lines[0]} {lines[-1]}"
  except OSError as e:  # a --config file that does not exist or cannot be read
    msg = f"{e.strerror or e}: {e.filename or ''}".strip()
  except (AttributeError, KeyError, TypeError, ValueError) as e:
    # ml_collections wraps the KeyError's repr: unescape it to plain text.
    msg = str(e).replace("\\n", " ").replace("\\'", "'").replace("\\\"", '"').strip("'\" ")
    msg = msg.replace(" Did you mean", "; did you mean")
    if isinstance(e, (AttributeError, KeyError)):
      msg = f"unknown config field {msg.replace(chr(39), '')}"
    arg = next((a for a in argv[1:] if a.startswith("--config.") and _field(a) in msg), None)
    if arg:
      msg = f"{arg}: {msg}"
  msg = " ".join(msg.split())  # one line, whatever the exception's own layout
  sys.stderr.write(f"FATAL Flags parsing error: {msg}\nPass --helpfull to see help on flags.\n")
  sys.exit(1)


def checked(config, get_reference):
  """`config` after checking that it has no field its preset's reference lacks.

  get_reference: the config file's `get_config` (experiments pass it, so the
  library never imports configs/). A hand-written config file with a typo'd
  field fails here, in the first second, naming the field.
  """
  reference = get_reference(config.preset)
  if "model" in config and "model" in reference:
    # The architecture switches are optional fields of any model section
    # (absent = GPT-2): a config that sets them (`+llama`, a converted model)
    # is checked against a reference that has them.
    with reference.unlocked():
      for name in model_lib.ARCH_DEFAULTS:
        if name in config.model and name not in reference.model:
          reference.model[name] = config.model[name]
  config_lib.check_fields(config, reference)
  return config


# Errors whose message is the whole story: gptjax raises them for bad input
# (config validation, workdirs, checkpoints, a diverging run) with the field or
# path named.
USER_ERRORS = (
  FileNotFoundError,
  FileExistsError,
  PermissionError,
  ValueError,
  ckpt_lib.CheckpointError,
  train.NonFiniteLossError,
)
_DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


def _on_signal(signum, frame):
  name = signal.Signals(signum).name
  if train.stop_requested():
    raise KeyboardInterrupt(f"{name} again: aborted without saving")
  train.request_stop(name)
  sys.stderr.write(
    f"{name}: stopping after the step in progress, with a checkpoint "
    "(send it again to abort without saving)\n"
  )


def graceful_stop_signals() -> None:
  """SIGINT and SIGTERM request a graceful stop (`train.request_stop`); a second
  one raises KeyboardInterrupt. Main thread only."""
  train.clear_stop()
  signal.signal(signal.SIGINT, _on_signal)
  signal.signal(signal.SIGTERM, _on_signal)


def _disk_full(e: BaseException) -> OSError | None:
  """The ENOSPC/EDQUOT OSError behind `e` (an Orbax save wraps it), if any."""
  seen = set()
  while e is not None and id(e) not in seen:
    seen.add(id(e))
    if isinstance(e, OSError) and e.errno in _DISK_FULL:
      return e
    e = e.__cause__ or e.__context__
  return None


def _fatal(e: BaseException) -> None:
  full = _disk_full(e)
  if full is not None:
    where = f" writing {full.filename}" if full.filename else ""
    msg = f"FATAL OSError: the disk is full{where} ({full.strerror}). Free space and rerun."
  else:
    msg = f"FATAL {type(e).__name__}: {' '.join(str(e).split())}"
  sys.stderr.write(f"{msg}\n(GPTJAX_TRACEBACK=1 shows where it was raised)\n")
  sys.exit(1)


def run(main) -> None:
  """`app.run(main)` with one-line user errors and a graceful stop (SIGTERM,
  Ctrl-C) that exits 130; malloc keeps the memory XLA frees (before JAX
  starts: `gptjax.allocator`)."""
  allocator.keep_freed_memory()

  def wrapped(argv):
    graceful_stop_signals()
    try:
      return main(argv)
    except KeyboardInterrupt as e:
      sys.stderr.write(f"interrupted: {e}\n" if str(e) else "interrupted\n")
      sys.exit(130)
    except Exception as e:
      if os.environ.get("GPTJAX_TRACEBACK") or not (
        isinstance(e, USER_ERRORS) or _disk_full(e) is not None
      ):
        raise
      _fatal(e)
    finally:
      # What there was to save is saved. A stop signal arriving while the
      # interpreter shuts down (XLA's and Orbax's threads take a moment) would
      # otherwise meet Python's restored default handler and kill the process
      # (exit -2 / -15), which a scheduler reads as a crash.
      for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, signal.SIG_IGN)

  app.run(wrapped, flags_parser=parse_flags)
