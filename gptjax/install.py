"""Which JAX build a machine needs, decided before anything imports jax.

requirements.txt pins `jax` and `jaxlib`; jaxlib alone runs on the CPU. On a
TPU or GPU runtime (Colab's, say) installing only the requirements replaces
the runtime's accelerator build with that CPU-only set, and every run then
silently falls back to the CPU. So the notebook asks `pip_command` for the
install that matches the runtime: the same pinned version with its
accelerator extra, `jax[tpu]` (libtpu) or `jax[cuda12]` (the CUDA plugin
and libraries), resolved together with the requirements in one pip call.

Standard library only: this module must be importable before jax is
installed or imported (gptjax/__init__.py imports nothing).
"""

import os
import re
import shutil
import sys

PLATFORMS = ("tpu", "gpu", "cpu")
LIBTPU_RELEASES = "https://storage.googleapis.com/jax-releases/libtpu_releases.html"
EXTRA = {"tpu": "tpu", "gpu": "cuda12"}


def detect_platform(env=None, exists=os.path.exists, which=shutil.which) -> str:
  """'tpu', 'gpu' or 'cpu': the accelerator this machine has, without importing jax.

  TPU: a TPU VM's device files (/dev/accel0, /dev/vfio/0) or the variables
  Colab and Cloud TPU set (TPU_ACCELERATOR_TYPE, COLAB_TPU_ADDR,
  TPU_WORKER_HOSTNAMES). GPU: an NVIDIA device file or `nvidia-smi` on PATH.
  `env`, `exists` and `which` are injectable for tests.
  """
  env = os.environ if env is None else env
  tpu_vars = ("TPU_ACCELERATOR_TYPE", "COLAB_TPU_ADDR", "TPU_WORKER_HOSTNAMES")
  if any(env.get(v) for v in tpu_vars) or exists("/dev/accel0") or exists("/dev/vfio/0"):
    return "tpu"
  if exists("/dev/nvidia0") or which("nvidia-smi"):
    return "gpu"
  return "cpu"


def pinned_version(requirements_text: str, package: str = "jax") -> str:
  """The `package==X` pin of a requirements file. Raises ValueError naming the package."""
  m = re.search(rf"^{re.escape(package)}==([^\s#;]+)", requirements_text, re.MULTILINE)
  if not m:
    raise ValueError(f"requirements.txt pins no {package}==<version>")
  return m.group(1)


def pip_command(
  platform: str, requirements: str, requirements_text: str, python: str = sys.executable
) -> list[str]:
  """The one pip call that installs the requirements with the runtime's JAX build.

  Args:
    platform: 'tpu' | 'gpu' | 'cpu' (see `detect_platform`).
    requirements: path of requirements.txt, as pip should read it.
    requirements_text: its contents (for the pinned jax version).
  """
  if platform not in PLATFORMS:
    raise ValueError(f"platform={platform!r}; choose one of {PLATFORMS}")
  command = [python, "-m", "pip", "install", "-q", "-r", requirements]
  if platform == "cpu":
    return command
  version = pinned_version(requirements_text)
  command.append(f"jax[{EXTRA[platform]}]=={version}")
  if platform == "tpu":
    command += ["-f", LIBTPU_RELEASES]  # libtpu wheels of older versions live there
  return command


def check_devices(expected: str, found: str, device_kind: str = "") -> str:
  """A line describing the devices, or RuntimeError when an accelerator runtime
  ended up on the CPU (the silent fallback this module exists to prevent)."""
  if expected != "cpu" and found != expected:
    raise RuntimeError(
      f"This runtime has a {expected.upper()} but JAX found only {found.upper()} devices: "
      f"the {expected} build of jax did not load. Restart the runtime (Runtime > Restart "
      "session) and run the notebook again from the top; if it persists, reinstall with "
      "the command printed by the install cell."
    )
  return f"JAX runs on {found} ({device_kind})" if device_kind else f"JAX runs on {found}"
