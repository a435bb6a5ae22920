"""Command-line helpers shared by the absl entry points in experiments/.

`app.run(main, flags_parser=cli.parse_flags)` turns a bad config override into
one line that names the field, instead of a three-exception traceback from
inside ml_collections:

  $ python -m experiments.pretrain --config.model.n_layerz=4
  FATAL Flags parsing error: --config.model.n_layerz=4: unknown config field
  n_layerz; did you mean "n_layer" instead of "n_layerz"?
"""

import sys

from absl import flags


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
