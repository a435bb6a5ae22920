"""The Colab notebook installs the JAX build of the runtime it runs on.

The decision (`gptjax.install`) is pure and runs before jax is imported;
these tests check the command chosen per platform, the detection, the stop
on a CPU fallback, and that the notebook's install cell uses them.
"""

import json
import subprocess

import pytest
from conftest import REPO

from gptjax import install

REQUIREMENTS = (REPO / "requirements.txt").read_text()
NOTEBOOK = REPO / "notebooks" / "gptjax_colab.ipynb"


def test_pinned_version_is_the_one_jaxlib_has():
  version = install.pinned_version(REQUIREMENTS)
  assert version == install.pinned_version(REQUIREMENTS, "jaxlib")
  assert version.count(".") == 2, version


@pytest.mark.parametrize(
  "platform, extra",
  [("cpu", None), ("gpu", "jax[cuda12]"), ("tpu", "jax[tpu]")],
)
def test_pip_command_per_platform(platform, extra):
  version = install.pinned_version(REQUIREMENTS)
  command = install.pip_command(platform, "req.txt", REQUIREMENTS, python="py")
  assert command[:7] == ["py", "-m", "pip", "install", "-q", "-r", "req.txt"]
  jax_specs = [a for a in command if a.startswith("jax")]
  if extra is None:
    assert jax_specs == []  # requirements.txt's jax + jaxlib: the CPU build
  else:
    assert jax_specs == [f"{extra}=={version}"]  # the same pinned version, accelerator build
  assert ("-f" in command) == (platform == "tpu")
  if platform == "tpu":
    assert command[command.index("-f") + 1] == install.LIBTPU_RELEASES


def test_bad_platform_and_missing_pin_are_named():
  with pytest.raises(ValueError, match=r"platform='cuda'"):
    install.pip_command("cuda", "req.txt", REQUIREMENTS)
  with pytest.raises(ValueError, match=r"pins no jax=="):
    install.pip_command("gpu", "req.txt", "numpy==2.0\njaxlib==0.10.2\n")


@pytest.mark.parametrize(
  "env, files, nvidia_smi, want",
  [
    ({}, set(), None, "cpu"),
    ({}, {"/dev/nvidia0"}, None, "gpu"),
    ({}, set(), "/usr/bin/nvidia-smi", "gpu"),
    ({}, {"/dev/accel0"}, None, "tpu"),  # TPU v2/v3 VM (Colab's TPU runtime)
    ({}, {"/dev/vfio/0"}, None, "tpu"),  # TPU v4 and later
    ({"TPU_ACCELERATOR_TYPE": "v5litepod-8"}, set(), None, "tpu"),
    ({"COLAB_TPU_ADDR": "10.0.0.2:8470"}, set(), None, "tpu"),
  ],
)
def test_detect_platform(env, files, nvidia_smi, want):
  got = install.detect_platform(env, exists=files.__contains__, which=lambda _: nvidia_smi)
  assert got == want


def test_an_accelerator_runtime_on_the_cpu_stops_with_a_message():
  with pytest.raises(RuntimeError, match=r"has a GPU but JAX found only CPU devices.*Restart"):
    install.check_devices("gpu", "cpu")
  with pytest.raises(RuntimeError, match=r"has a TPU"):
    install.check_devices("tpu", "cpu")
  assert install.check_devices("tpu", "tpu", "TPU v2") == "JAX runs on tpu (TPU v2)"
  assert install.check_devices("cpu", "cpu") == "JAX runs on cpu"


def code_cells() -> list[str]:
  nb = json.loads(NOTEBOOK.read_text())
  return ["".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code"]


def test_notebook_decides_before_importing_jax_and_checks_after():
  cells = code_cells()
  install_cell = next(i for i, c in enumerate(cells) if "pip_command" in c)
  first_jax = next(i for i, c in enumerate(cells) if "import jax" in c or "from jax" in c)
  assert install_cell < first_jax
  assert "check_devices(runtime" in cells[first_jax]


@pytest.mark.parametrize("platform", ["gpu", "tpu", "cpu"])
def test_notebook_install_cell_runs_the_chosen_command(platform, monkeypatch, tmp_path):
  """The install cell, executed with pip replaced by a recorder on a faked runtime."""
  cell = next(c for c in code_cells() if "pip_command" in c)
  calls = []
  monkeypatch.setattr(install, "detect_platform", lambda: platform)
  monkeypatch.setattr(subprocess, "run", lambda command, check: calls.append(command))
  monkeypatch.chdir(tmp_path)
  scope = {"install": True, "repo_dir": str(REPO)}
  exec(cell, scope)
  requirements = str(REPO / "requirements.txt")
  want = install.pip_command(platform, requirements, REQUIREMENTS) + ["-e", str(REPO)]
  assert calls == [want]
  assert scope["runtime"] == platform
