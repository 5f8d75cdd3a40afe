"""A headless browser for the pages the pipeline serves: Debian's chromium, installed if need be."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest


def chromium() -> str:
    """The path of chromium, installing Debian's package when root can; skip where it cannot."""
    path = shutil.which("chromium")
    if path:
        return path
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        pytest.skip("chromium is not installed and this user cannot install it with apt-get")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    ok = subprocess.run("apt-get update -qq && apt-get install -y -qq chromium", shell=True,
                        env=env, capture_output=True, timeout=900).returncode == 0
    if not ok or not shutil.which("chromium"):
        pytest.skip("Debian's chromium package could not be installed here")
    return shutil.which("chromium")
