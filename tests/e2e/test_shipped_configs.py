"""Every shipped config runs as it is on a fresh clone (the shipped clip and model, no
../shared, whatever cores this machine has), or, where it reads a camera this machine lacks,
stops in one line saying so and starts nothing."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import tomllib
from pathlib import Path

import cv2
import pytest

from tests.support.assets import BOTTLE, ROOT
from tests.support.processes import pipeline_cmd, read_jsonl, shm_segments

CONFIGS = sorted((ROOT / "configs").glob("*.toml"))
WATER_BOTTLE = 898  # what the shipped clip shows, in ImageNet's classes
RUN_S = 2  # seconds each config runs once it is ready (the model loaded): results from every source


def camera_here(kind: str) -> bool:
    """Whether this machine has what a camera source of `kind` reads."""
    if kind == "picamera2":
        return importlib.util.find_spec("picamera2") is not None
    return os.path.exists("/dev/video0")


def source_kinds(config: Path) -> list[str]:
    tree = tomllib.loads(config.read_text())
    return [s.get("kind", "synthetic") for s in tree.get("sources") or [tree.get("source", {})]]


def photos_from_the_clip(folder: Path, count: int = 6) -> list[Path]:
    """A folder of real photos: frames of the shipped clip, a second apart, as JPEG files."""
    folder.mkdir()
    video, files = cv2.VideoCapture(str(BOTTLE)), []
    for i in range(count):
        video.set(cv2.CAP_PROP_POS_FRAMES, 30 * i)
        ok, frame = video.read()
        assert ok, f"frame {30 * i} of {BOTTLE}"
        files.append(folder / f"bottle-{i}.jpg")
        cv2.imwrite(str(files[-1]), frame)
    video.release()
    return files


def ids_of(config: Path) -> list[str]:
    """The source ids results carry: each [[sources]] entry's id, else the one source's kind."""
    tree = tomllib.loads(config.read_text())
    return [s["id"] for s in tree["sources"]] if "sources" in tree else [tree["source"]["kind"]]


def test_the_files_shipped_configs_read_are_in_the_project():
    for config in CONFIGS:
        tree = tomllib.loads(config.read_text())
        for src in tree.get("sources") or [tree.get("source", {})]:
            if "path" in src:
                path = (config.parent / src["path"]).resolve()
                assert path.is_relative_to(ROOT) and path.is_file(), config.name


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.stem)
def test_every_shipped_config_runs_here_or_says_in_one_line_that_it_needs_a_camera(
        config, tmp_path, clean_machine):
    record = tmp_path / "results.jsonl"
    args = ["--name", f"shipped-{config.stem}", "--quiet", "--duration", str(RUN_S),
            "--record", str(record)]
    photos = photos_from_the_clip(tmp_path / "photos") if config.stem == "images" else []
    if photos:
        args += ["--set", f"source.path={photos[0].parent}"]
    p = subprocess.run(pipeline_cmd(config.name, *args), cwd=ROOT, capture_output=True, text=True,
                       timeout=300)
    if not all(camera_here(k) for k in source_kinds(config) if k in ("camera", "picamera2")):
        lines = p.stderr.strip().splitlines()
        assert p.returncode == 2 and len(lines) == 1 and "camera" in lines[0], p.stderr
        assert not record.exists()
        assert not [s for s in shm_segments() if f"edge-pipeline-shipped-{config.stem}-" in s]
        return
    assert p.returncode == 0, p.stderr
    results = [r for r in read_jsonl(record) if r.get("type") == "result"]
    assert results, p.stderr
    if photos:  # every photo once, each seen as the water bottle it shows
        assert sorted(os.path.basename(r["item"]) for r in results) == [f.name for f in photos]
    if photos or "video" in source_kinds(config):
        tops = [r["top"][0]["index"] for r in results]
        assert tops.count(WATER_BOTTLE) > 0.8 * len(tops), tops
        assert {r["source"] for r in results} == set(ids_of(config)), p.stderr


def test_images_toml_without_photos_says_how_to_give_them(tmp_path):
    p = subprocess.run(pipeline_cmd("images.toml"), cwd=ROOT, capture_output=True, text=True,
                       timeout=60)
    assert p.returncode == 2 and p.stdout == ""
    assert p.stderr == ("pipeline-up: config error: source.path: required key is missing (give it in "
                        "the config, or with --set source.path='photos/*.jpg')\n")
