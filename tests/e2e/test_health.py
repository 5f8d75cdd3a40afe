"""The machine's health in the status, pipeline-top and Prometheus: what this machine tells (a
VM may have no thermal zone: then the figure is absent, not zero), and, through a stand-in sysfs
root laid out as a Raspberry Pi's, a temperature, a clock and the firmware's throttling word,
with a warning line when throttling starts."""

from __future__ import annotations

import glob
import os
import shutil
import signal
import subprocess
import time
import urllib.request

from prometheus_client.parser import text_string_to_metric_families
from rich.console import Console

from pipeline import attach
from pipeline.cli.top import render
from pipeline.observe.health import ROOT_ENV, THROTTLED_FILE, HealthReader
from tests.support.assets import ROOT
from tests.support.processes import pipeline_cmd


def test_what_this_machine_tells_and_nothing_it_does_not():
    h = HealthReader().read()
    zones = glob.glob("/sys/class/thermal/thermal_zone*/temp")
    readable = [z for z in zones if open(z).read().strip().lstrip("-").isdigit()] if zones else []
    assert ("cpu_temperature_c" in h) == bool(readable)
    if "cpu_temperature_c" in h:
        assert -40 < h["cpu_temperature_c"] < 130
    freqs = glob.glob("/sys/devices/system/cpu/cpu[0-9]*/cpufreq/scaling_cur_freq")
    assert ("cpu_frequency_mhz" in h) == bool(freqs)
    if "cpu_frequency_mhz" in h:
        assert 10 < h["cpu_frequency_mhz"] < 10000
    if not os.path.exists("/" + THROTTLED_FILE) and not shutil.which("vcgencmd"):
        assert "throttled" not in h  # not a Raspberry Pi
    assert all(v is not None for v in h.values())


def pi_sysfs(root) -> None:
    """The files a Raspberry Pi 4 has, with a Pi's formats: millidegrees, kHz, hex flags."""
    zone = root / "sys/class/thermal/thermal_zone0"
    zone.mkdir(parents=True)
    (zone / "type").write_text("cpu-thermal\n")
    (zone / "temp").write_text("48312\n")
    for cpu, khz in enumerate((1500000, 1500000, 600000, 600000)):
        d = root / f"sys/devices/system/cpu/cpu{cpu}/cpufreq"
        d.mkdir(parents=True)
        (d / "scaling_cur_freq").write_text(f"{khz}\n")
    throttled = root / THROTTLED_FILE
    throttled.parent.mkdir(parents=True)
    throttled.write_text("0\n")


def test_a_pis_temperature_clock_and_throttling_reach_status_metrics_and_a_warning(tmp_path,
                                                                                  clean_machine):
    pi_sysfs(tmp_path)
    reader = HealthReader(str(tmp_path))
    assert reader.read() == {"cpu_temperature_c": 48.3, "cpu_frequency_mhz": 1050.0, "throttled": 0,
                             "throttled_now": [], "throttled_since_boot": []}
    env = {**os.environ, ROOT_ENV: str(tmp_path)}
    proc = subprocess.Popen(pipeline_cmd("demo.toml", "--name", "healthlab", "--set",
                                         "model.runtime=onnxruntime", "--metrics-port", "0"),
                            cwd=ROOT, env=env, text=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    lines = []
    try:
        while not (lines and lines[-1].startswith("running:")):
            lines.append(proc.stderr.readline())
            assert lines[-1], "".join(lines)
        url = next(x for x in lines if x.startswith("metrics: ")).split()[1]
        # Under-voltage and throttled now, and under-voltage since boot (the firmware's word).
        (tmp_path / THROTTLED_FILE).write_text("10005\n")
        with attach("healthlab", status=True) as sub:
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline and not (
                    sub.last_status and sub.last_status["health"].get("throttled")):
                sub.receive(timeout=1)
            health = sub.last_status["health"]
        assert health["throttled_now"] == ["under-voltage", "throttled"]
        assert health["throttled_since_boot"] == ["under-voltage"]
        assert health["cpu_temperature_c"] == 48.3
        console = Console(record=True, width=200)
        console.print(render(sub.last_status))
        assert "machine: 48.3 °C, 1050 MHz, throttled now: under-voltage, throttled" in \
            console.export_text()  # pipeline-top
        families = {f.name: f for f in text_string_to_metric_families(
            urllib.request.urlopen(url, timeout=10).read().decode())}
        assert families["pipeline_cpu_temperature_celsius"].samples[0].value == 48.3
        assert families["pipeline_cpu_frequency_hertz"].samples[0].value == 1050e6
        assert families["pipeline_throttled"].samples[0].value == 1
        flags = {(s.labels["flag"], s.labels["when"]): s.value
                 for s in families["pipeline_throttled_flag"].samples}
        assert flags[("under-voltage", "now")] == 1 and flags[("soft temperature limit", "now")] == 0
        (tmp_path / THROTTLED_FILE).write_text("10000\n")
        time.sleep(2.5)
    finally:
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    warnings = [x for x in err.splitlines() if x.startswith("throttling: ")]
    assert warnings[0].startswith("throttling: under-voltage, throttled now (firmware flags 0x10005, "
                                  "CPU 48.3 °C)"), err
    assert warnings[1:] == ["throttling: ended"], warnings


def test_without_those_files_the_metrics_are_absent(tmp_path, clean_machine):
    """A machine that tells nothing: no health series at all, rather than zeros."""
    env = {**os.environ, ROOT_ENV: str(tmp_path)}  # an empty root
    proc = subprocess.Popen(pipeline_cmd("demo.toml", "--name", "nohealth", "--quiet", "--set",
                                         "model.runtime=onnxruntime", "--metrics-port", "0"),
                            cwd=ROOT, env=env, text=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    try:
        lines = [""]
        while not lines[-1].startswith("running:"):
            lines.append(proc.stderr.readline())
            assert lines[-1], "".join(lines)
        url = next(x for x in lines if x.startswith("metrics: ")).split()[1]
        time.sleep(2.5)  # a status or two
        text = urllib.request.urlopen(url, timeout=10).read().decode()
    finally:
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=30)
    names = {f.name for f in text_string_to_metric_families(text)}
    assert "pipeline_frames" in names
    assert not {n for n in names if n.startswith(("pipeline_cpu_", "pipeline_throttled"))}
