"""The machine's health: CPU temperature, clock frequency and the Raspberry Pi firmware's
throttling flags, the usual reason a Pi in a shed got slow (heat, a weak power supply).

Read from sysfs once a second by the supervisor: `/sys/class/thermal/thermal_zone*/temp` (the
CPU's zone), `/sys/devices/system/cpu/cpu*/cpufreq/scaling_cur_freq`, and on a Pi the firmware's
`get_throttled` word, from `/sys/devices/platform/soc/soc:firmware/get_throttled` or else
`vcgencmd get_throttled`. Whatever a machine lacks (a VM has no thermal zone) is left out of the
result, never reported as zero.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
from typing import Any

ROOT_ENV = "EDGE_PIPELINE_SYSFS_ROOT"  # another root for the sysfs paths (a Pi's, copied)
THROTTLED_FILE = "sys/devices/platform/soc/soc:firmware/get_throttled"
# The firmware's bits: the low ones now, the same 16 bits higher "since boot".
FLAGS = {0: "under-voltage", 1: "arm frequency capped", 2: "throttled", 3: "soft temperature limit"}
CPU_ZONES = ("cpu", "soc", "x86_pkg_temp", "k10temp", "coretemp")


class HealthReader:
    """Reads the figures each call; remembers which sources exist, so a machine without them
    costs a few failed stats once, not every second."""

    def __init__(self, root: str | None = None):
        self.root = root if root is not None else os.environ.get(ROOT_ENV, "/")
        self.zone = self._cpu_zone()
        self.freqs = sorted(glob.glob(self._path("sys/devices/system/cpu/cpu[0-9]*/cpufreq/"
                                                 "scaling_cur_freq")))
        self.throttled_file = self._path(THROTTLED_FILE)
        self.vcgencmd = None if os.path.exists(self.throttled_file) or self.root != "/" \
            else shutil.which("vcgencmd")

    def _path(self, rel: str) -> str:
        return os.path.join(self.root, rel)

    def _cpu_zone(self) -> str | None:
        """The CPU's thermal zone: by its type, else the first (a Pi's zone0 is the CPU)."""
        zones = sorted(glob.glob(self._path("sys/class/thermal/thermal_zone[0-9]*")),
                       key=lambda z: int(z.rsplit("zone", 1)[1]))
        for zone in zones:
            kind = _read(os.path.join(zone, "type")) or ""
            if any(k in kind.lower() for k in CPU_ZONES):
                return os.path.join(zone, "temp")
        return os.path.join(zones[0], "temp") if zones else None

    def read(self) -> dict[str, Any]:
        """`cpu_temperature_c`, `cpu_frequency_mhz` (mean over the CPUs), `throttled` (the
        firmware's word, with `throttled_now` and `throttled_since_boot` as flag names): each
        only where the machine tells it."""
        out: dict[str, Any] = {}
        temp = _number(_read(self.zone)) if self.zone else None
        if temp is not None:
            out["cpu_temperature_c"] = round(temp / 1000, 1)
        freqs = [f for f in (_number(_read(p)) for p in self.freqs) if f is not None]
        if freqs:
            out["cpu_frequency_mhz"] = round(sum(freqs) / len(freqs) / 1000, 1)
        word = self._throttled()
        if word is not None:
            out["throttled"] = word
            out["throttled_now"] = [name for bit, name in FLAGS.items() if word >> bit & 1]
            out["throttled_since_boot"] = [name for bit, name in FLAGS.items() if word >> (bit + 16) & 1]
        return out

    def _throttled(self) -> int | None:
        text = _read(self.throttled_file)
        if text is None and self.vcgencmd:
            try:
                text = subprocess.run([self.vcgencmd, "get_throttled"], capture_output=True,
                                      text=True, timeout=2).stdout.strip().partition("=")[2]
            except (OSError, subprocess.SubprocessError):
                text = None
        if not text:
            return None
        try:
            return int(text, 16)  # "50005" from sysfs, "0x50005" from vcgencmd
        except ValueError:
            return None


def _read(path: str | None) -> str | None:
    if path is None:
        return None
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


def _number(text: str | None) -> float | None:
    try:
        return float(text) if text else None
    except ValueError:
        return None
