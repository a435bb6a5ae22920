"""Command-line helpers shared by the absl entry points in experiments/.

`app.run(main, flags_parser=cli.parse_flags)` turns a bad config override into
one line that names the field, instead of a three-exception traceback from
inside ml_collections:

  $ python -m experiments.pretrain --config.model.n_layerz=4
  FATAL Flags parsing error: --config.model.n_layerz=4: unknown config field
  n_layerz; did you mean "n_layer" instead of "n_layerz"?

`run(main)` does that and also reports the errors a user causes (a missing
or foreign workdir, an invalid config value, a corrupted checkpoint) as one
line, and Ctrl-C (after the train loop has saved) as exit status 130 -- no
traceback. GPTJAX_TRACEBACK=1 shows the traceback too.

SIGTERM (what Slurm, Kubernetes and preemptible VMs send before killing a
job) stops a run the same way as Ctrl-C: checkpoint, then exit 130. So does
SIGINT to a run started in the background (`cmd &`), which a shell would
otherwise start with SIGINT ignored.
"""

import os
import signal
import sys

from absl import app, flags

from gptjax import config as config_lib


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
  except (AttributeError, KeyError, TypeError, ValueError) as e:
    # ml_collections wraps the KeyError's repr: unescape it to plain text.
    msg = str(e).replace("\\n", " ").replace("\\'", "'").replace("\\\"", '"').strip("'\" ")
    msg = msg.replace(" Did you mean", "; did you mean")
    if isinstance(e, (AttributeError, KeyError)):
      msg = f"unknown config field {msg.replace(chr(39), '')}"
    arg = next((a for a in argv[1:] if a.startswith("--config.") and _field(a) in msg), None)
    if arg:
      msg = f"{arg}: {msg}"
  sys.stderr.write(f"FATAL Flags parsing error: {msg}\nPass --helpfull to see help on flags.\n")
  sys.exit(1)


def checked(config, get_reference):
  """`config` after checking that it has no field its preset's reference lacks.

  get_reference: the config file's `get_config` (experiments pass it, so the
  library never imports configs/). A hand-written config file with a typo'd
  field fails here, in the first second, naming the field.
  """
  config_lib.check_fields(config, get_reference(config.preset))
  return config


# Errors whose message is the whole story: gptjax raises them for bad input
# (config validation, workdirs, checkpoints) with the field or path named.
USER_ERRORS = (FileNotFoundError, FileExistsError, PermissionError, ValueError)


def _interrupt(signum, frame):
  raise KeyboardInterrupt(signal.Signals(signum).name)


def graceful_stop_signals() -> None:
  """SIGINT and SIGTERM raise KeyboardInterrupt, which every loop turns into a
  checkpoint of its last completed step. Main thread only."""
  signal.signal(signal.SIGINT, signal.default_int_handler)
  signal.signal(signal.SIGTERM, _interrupt)


def run(main) -> None:
  """`app.run(main)` with one-line user errors, a quiet Ctrl-C, and SIGTERM
  treated as Ctrl-C."""

  def wrapped(argv):
    graceful_stop_signals()
    try:
      return main(argv)
    except KeyboardInterrupt:
      sys.stderr.write("interrupted\n")
      sys.exit(130)
    except USER_ERRORS as e:
      if os.environ.get("GPTJAX_TRACEBACK"):
        raise
      sys.stderr.write(
        f"FATAL {type(e).__name__}: {e}\n(GPTJAX_TRACEBACK=1 shows where it was raised)\n"
      )
      sys.exit(1)

  app.run(wrapped, flags_parser=parse_flags)
