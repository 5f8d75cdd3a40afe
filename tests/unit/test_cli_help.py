"""What the commands say without a pipeline: every console script's --help describes it in whole
sentences, pipeline-clean --dry-run always says something, and pipeline-trace's plot shows an
empty queue panel as no queueing."""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys
import tomllib

import matplotlib
import numpy as np
import pytest

from tests.support.assets import ROOT

matplotlib.use("Agg")

SCRIPTS = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]


def run_script(name: str, *args: str) -> subprocess.CompletedProcess:
    """Console script `name` as pip installs it: its entry point called with sys.argv set."""
    module, func = SCRIPTS[name].split(":")
    code = f"import sys; sys.argv = {[name, *args]!r}; from {module} import {func}; sys.exit({func}())"
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                          timeout=60)


def test_the_installed_console_scripts_are_those_of_pyproject():
    installed = {e.name: e.value for e in importlib.metadata.entry_points(group="console_scripts")
                 if e.value.startswith(("pipeline.", "workers."))}
    assert installed == SCRIPTS, "reinstall: pip install -e . --no-deps"


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_help_describes_the_command_in_whole_sentences(name):
    p = run_script(name, "--help")
    assert p.returncode == 0 and not p.stderr, p.stderr
    assert p.stdout.startswith(f"usage: {name} ")
    paragraphs = p.stdout.split("\n\n")
    description = " ".join(paragraphs[1].split())  # after the usage: the description
    assert not description.endswith(":"), f"{name}: no description before the arguments"
    assert len(description) > 20 and description[-1] in ".)", f"{name}: cut short: {description!r}"
    assert description.count("(") == description.count(")"), f"{name}: cut short: {description!r}"


def test_clean_dry_run_says_what_it_would_remove_or_that_there_is_nothing():
    p = run_script("pipeline-clean", "--dry-run")
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    assert lines, "a dry run that prints nothing"
    would = [line for line in lines if line.startswith("would remove /dev/shm/edge-pipeline-")]
    assert would == lines or lines == [
        "nothing to remove: no shared-memory segment left behind by a stopped pipeline"], lines


def queue_axis(depths: list[int]):
    """The trace plot's queue panel drawn for frames that waited behind `depths` others."""
    import matplotlib.pyplot as plt

    from pipeline.observe.trace import queue_panel

    fig, ax = plt.subplots()
    rows = [{"queue": {"preprocess": 0, "inference": d}} for d in depths]
    queue_panel(ax, np.arange(len(rows)) / 30, rows)
    plt.close(fig)
    return ax


def test_the_trace_plots_queue_panel_without_queueing_says_so_on_a_0_to_1_axis():
    from pipeline.observe.trace import NO_QUEUEING

    for depths in ([0] * 30, []):
        ax = queue_axis(depths)
        assert ax.get_ylim() == (0, 1)
        assert [t.get_text() for t in ax.texts] == [NO_QUEUEING]
    ax = queue_axis([0, 3, 1, 0])
    assert ax.get_ylim()[0] == 0 and ax.get_ylim()[1] >= 3
    assert not ax.texts
