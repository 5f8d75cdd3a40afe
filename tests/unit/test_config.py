"""Config validation: every mistake is one clear line naming the key, exit code 2, nothing started."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from pipeline.config import Config, ConfigError, load_config, parse_override
from tests.support.assets import ROOT
from tests.support.processes import run_pipeline, shm_segments


def write(tmp_path, text: str):
    p = tmp_path / "t.toml"
    p.write_text(text)
    return p


def error_of(tmp_path, text: str, *overrides: str) -> str:
    with pytest.raises(ConfigError) as e:
        load_config(write(tmp_path, text), list(overrides))
    msg = str(e.value)
    assert "\n" not in msg
    return msg


def test_defaults_give_a_synthetic_pipeline_with_default_layout():
    cfg = load_config(None, ["model.weights=none"])
    assert cfg.source.kind == "synthetic"
    assert cfg.edges.frames.policy == "latest" and cfg.edges.tensors.policy == "latest"
    allowed = sorted(os.sched_getaffinity(0))
    assert cfg.cores_of("capture") == allowed[:1]
    assert cfg.cores_of("inference") == (allowed[1:] or allowed[:1])


def test_unknown_key_names_key_and_allowed(tmp_path):
    msg = error_of(tmp_path, '[source]\nkind = "synthetic"\nwidht = 3\n')
    assert "source.widht: unknown key" in msg and "width" in msg


def test_unknown_section(tmp_path):
    msg = error_of(tmp_path, "[bogus]\nx = 1\n")
    assert "bogus" in msg and "unknown key" in msg and "edges" in msg


def test_wrong_type(tmp_path):
    msg = error_of(tmp_path, '[source]\nkind = "synthetic"\nfps = "fast"\n')
    assert msg.startswith("source.fps:") and "'fast'" in msg


def test_bad_policy_lists_allowed(tmp_path):
    msg = error_of(tmp_path, '[edges.frames]\npolicy = "newest"\n')
    assert "edges.frames.policy" in msg and "latest" in msg and "drop_new" in msg and "block" in msg


def test_core_that_does_not_exist(tmp_path):
    msg = error_of(tmp_path, "[inference]\ncores = [64]\n")
    assert "inference.cores: core 64 does not exist" in msg and "allowed" in msg


def test_impossible_topology_crop_bigger_than_resize(tmp_path):
    msg = error_of(tmp_path, "[preprocess]\nresize_size = 200\ncrop_size = 224\n")
    assert "preprocess.crop_size" in msg and "resize_size" in msg


def test_too_few_slots(tmp_path):
    msg = error_of(tmp_path, "[edges.tensors]\nslots = 1\n")
    assert msg.startswith("edges.tensors.slots:")


def test_unknown_source_kind(tmp_path):
    msg = error_of(tmp_path, '[source]\nkind = "webcam"\n')
    assert "source.kind" in msg and "camera" in msg


def test_missing_files_are_named(tmp_path):
    msg = error_of(tmp_path, '[source]\nkind = "video"\npath = "nope.mp4"\n')
    assert "source.path: no such video file" in msg and "nope.mp4" in msg
    msg = error_of(tmp_path, '[model]\nweights = "missing.pth"\n')
    assert "model.weights: no such file" in msg


def test_missing_camera_is_named(tmp_path):
    msg = error_of(tmp_path, '[source]\nkind = "camera"\ndevice = 57\n')
    assert "/dev/video57" in msg


def test_unknown_model(tmp_path):
    msg = error_of(tmp_path, '[model]\nname = "vgg16"\n')
    assert msg.startswith("model.name:") and "mobilenet_v2" in msg


def test_set_overrides_any_key_and_parses_toml_values(tmp_path):
    cfg = load_config(write(tmp_path, '[model]\nweights = "none"\n'),
                      ["source.fps=12.5", "edges.frames.policy=block", "preprocess.cores=[0]",
                       "name=lab", "model.jit=false"])
    assert cfg.source.fps == 12.5 and cfg.edges.frames.policy == "block"
    assert cfg.preprocess.cores == [0] and cfg.name == "lab" and cfg.model.jit is False


def test_paths_relative_to_config_file_and_to_cwd_for_set(tmp_path, monkeypatch):
    (tmp_path / "sub").mkdir()
    video = tmp_path / "sub" / "clip.mp4"
    video.write_bytes(b"x")
    cfg = load_config(write(tmp_path, '[source]\nkind = "video"\npath = "sub/clip.mp4"\n'
                                      '[model]\nweights = "none"\n'))
    assert cfg.source.path == str(video)
    monkeypatch.chdir(tmp_path / "sub")
    cfg = load_config(write(tmp_path, '[model]\nweights = "none"\n'),
                      ["source.kind=video", "source.path=clip.mp4"])
    assert cfg.source.path == str(video)


def test_bad_set_syntax():
    with pytest.raises(ConfigError):
        parse_override("no-equals-sign")


@pytest.mark.parametrize("cores", ["0", "0,1", "0,1,2,3", "2,5"])  # 1 core, 2, a Pi's 4, a cpuset
def test_every_shipped_config_fits_whatever_cores_there_are(cores, monkeypatch):
    """No shipped config pins a core the machine may lack: the pipeline lays them out itself."""
    monkeypatch.setenv("EDGE_PIPELINE_CORES", cores)
    allowed = {int(c) for c in cores.split(",")}
    for config in sorted((ROOT / "configs").glob("*.toml")):
        photos = ["source.path=photos"] if config.stem == "images" else []  # the user's, given
        cfg = load_config(config, photos, files=False)
        for inst in cfg.instances():
            assert set(cfg.cores_for(inst)) <= allowed, (config.name, inst.name)


def test_two_typos_are_both_named_with_the_key_meant():
    with pytest.raises(ConfigError) as e:
        load_config(None, ["source.kind=video", "source.path=x.mp4", "source.lop=true",
                           "source.realtim=false"], files=False)
    assert str(e.value).splitlines() == [
        "source.lop: unknown key (did you mean loop?) (and 1 more problem)",
        "  source.realtim: unknown key (did you mean realtime?)"]


def test_a_handful_of_problems_are_listed_and_the_rest_counted():
    wrong = ["source.fps=-1", "capture.cors=[0]", "preprocess.crop_size=1", "inference.workers=0",
             "model.top_k=0", "edges.frames.slots=1", "edges.tensors.polcy=block"]
    with pytest.raises(ConfigError) as e:
        load_config(None, ["model.weights=none", *wrong])
    first, *rest = str(e.value).splitlines()
    assert first == "source.fps: Input should be greater than or equal to 0 (got -1) (and 6 more problems)"
    assert len(rest) == 5 and rest[-1] == "  ... and 2 more"
    assert rest[0] == "  capture.cors: unknown key (did you mean cores?)"
    assert all(line.startswith("  ") and ": " in line for line in rest[:-1])


@pytest.mark.parametrize("override, expected", [
    ("edges.frames.policy=lates", "edges.frames.policy: Input should be 'latest', 'drop_new' or 'block' "
                                  "(got 'lates': did you mean latest?)"),
    ("source.kind=vidoe", "source.kind: must be one of synthetic, video, images, camera, picamera2 "
                          "(got 'vidoe': did you mean video?)"),
    ("sorce.fps=3", "sorce: unknown key (did you mean source?)"),
    ("model.runtime=onnx", "model.runtime: Input should be 'auto', 'torch', 'onnxruntime' or 'litert' "
                           "(got 'onnx': did you mean onnxruntime?)"),
])
def test_a_near_miss_is_answered_with_the_allowed_word_it_resembles(override, expected):
    with pytest.raises(ConfigError) as e:
        load_config(None, ["model.weights=none", override])
    assert str(e.value) == expected


def test_nothing_is_suggested_when_nothing_is_close_but_what_is_allowed_is_listed():
    with pytest.raises(ConfigError) as e:
        load_config(None, ["model.weights=none", "model.xyz=1"])
    assert str(e.value).startswith("model.xyz: unknown key (allowed here: name, weights, labels, ")
    with pytest.raises(ConfigError) as e:
        load_config(None, ["model.weights=none", "edges.frames.policy=sometimes"])
    assert "did you mean" not in str(e.value) and str(e.value).endswith("(got 'sometimes')")


def test_set_takes_a_list_entry_both_ways_and_errors_name_it_the_way_set_takes_it(tmp_path):
    path = write(tmp_path, MULTI.replace('host = "cam"\n', "") + '[model]\nweights = "none"\n')
    cfg = load_config(path, ["sources[1].fps=5", "sources.0.fps=7"])
    assert [s.fps for s in cfg.source_list] == [7, 5]
    cfg = load_config(path, ["sources[1]={kind='synthetic', id='c', fps=2}"])
    assert cfg.source_ids() == ["a", "c"] and cfg.sources[1].fps == 2
    with pytest.raises(ConfigError) as e:
        load_config(path, ["sources[1].fsp=5"])
    assert str(e.value) == "sources[1].fsp: unknown key (did you mean fps?)"
    with pytest.raises(ConfigError) as e:
        load_config(path, ["sources[1].kind=video"])
    key = str(e.value).split(":")[0]
    assert str(e.value) == f"{key}: required key is missing (give it in the config, or with --set " \
                           f"{key}=clip.mp4)"
    video = tmp_path / "clip.mp4"
    video.write_bytes(b"x")
    cfg = load_config(path, ["sources[1].kind=video", f"{key}={video}"])  # the key as printed
    assert cfg.sources[1].path == str(video)


@pytest.mark.parametrize("override, expected", [
    ("sources[0].path=x", "--set sources[0].path=x: sources is not a list here, so it has no entry 0 "
                          "(this config has one [source]: use source.path)"),
    ("sources[3].id=x", "--set sources[3].id=x: sources has 2 entries"),
    ("sources.path=x", "--set sources.path=x: give an entry of sources (e.g. sources[0].path)"),
    ("sources[0.path=x", "--set 'sources[0.path=x': expected KEY=VALUE with KEY like source.path or "
                         "sources[0].path"),
])
def test_set_on_an_entry_the_config_lacks_says_what_it_has(tmp_path, override, expected):
    text = '[source]\nkind = "synthetic"\n' if override.startswith("sources[0].") else MULTI
    with pytest.raises(ConfigError) as e:
        load_config(write(tmp_path, text), ["model.weights=none", override])
    assert str(e.value) == expected


def test_cli_prints_every_problem_and_exits_2():
    p = run_pipeline("video.toml", "--set", "source.lop=true", "--set", "edges.frames.polcy=block")
    assert p.returncode == 2 and p.stdout == ""
    assert p.stderr.splitlines() == [
        "pipeline-up: config error: source.lop: unknown key (did you mean loop?) (and 1 more problem)",
        "  edges.frames.polcy: unknown key (did you mean policy?)"]


def test_cli_config_error_exits_2_with_one_line_and_starts_nothing(tmp_path):
    cmd = [sys.executable, "-m", "pipeline.cli.up", str(ROOT / "configs" / "demo.toml"),
           "--name", "configerror", "--set", "edges.frames.policy=sometimes"]
    p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert p.returncode == 2
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("pipeline-up: config error: edges.frames.policy")
    assert "Traceback" not in p.stderr and p.stdout == ""
    # its own segments only: pipelines running beside the tests come and go meanwhile
    assert not [s for s in shm_segments() if "edge-pipeline-configerror-" in s]


def test_cli_missing_config_file():
    p = run_pipeline("does-not-exist.toml")
    assert p.returncode == 2 and "config file not found" in p.stderr


def test_config_roundtrips_through_json():
    cfg = load_config(None, ["model.weights=none", "source.width=320"])
    assert Config.model_validate_json(cfg.model_dump_json()) == cfg


def test_adaptive_sizes_must_be_largest_first(tmp_path):
    msg = error_of(tmp_path, "[adaptive]\nenabled = true\nsizes = [160, 192, 224]\n")
    assert "adaptive.sizes" in msg and "largest first" in msg


def test_adaptive_largest_size_is_the_crop_size(tmp_path):
    msg = error_of(tmp_path, "[adaptive]\nenabled = true\nsizes = [256, 224]\n")
    assert "adaptive.sizes" in msg and "preprocess.crop_size 224" in msg


def test_input_ring_dtype_lists_allowed(tmp_path):
    msg = error_of(tmp_path, '[preprocess]\ndtype = "float16"\n')
    assert "preprocess.dtype" in msg and "float32" in msg and "uint8" in msg


def test_delay_every_and_stall_bounds(tmp_path):
    assert "inference.delay_every" in error_of(tmp_path, "[inference]\ndelay_every = 0\n")
    assert "source.stall_ms" in error_of(tmp_path, '[source]\nkind = "synthetic"\nstall_ms = -1\n')


MULTI = """
[[sources]]
kind = "synthetic"
id = "a"
[[sources]]
kind = "synthetic"
id = "b"
host = "cam"
"""


def test_several_sources_and_workers_make_one_process_each(tmp_path):
    cfg = load_config(write(tmp_path, MULTI + "[inference]\nworkers = 3\ncores = [0]\n"
                            "[edges.frames]\nbind = \"tcp://*:5600\"\nconnect = \"tcp://{host}:5600\"\n"),
                      ["model.weights=none"])
    names = [i.name for i in cfg.instances()]
    assert names == ["inference.1", "inference.2", "inference.3", "preprocess.a", "preprocess.b",
                     "capture.a", "capture.b"]
    assert [i.name for i in cfg.instances("cam")] == ["capture.b"]
    assert [i.name for i in cfg.instances("local")] == names[:5] + ["capture.a"]
    assert cfg.frames_endpoints(1) == ("tcp://*:5601", "tcp://cam:5601")  # port + source index
    assert cfg.edge_name("frames", 0) == "frames.a" and cfg.hosts() == ["cam", "local"]
    assert {tuple(cfg.cores_for(i)) for i in cfg.instances() if i.kind == "inference"} == {(0,)}


@pytest.mark.parametrize("text, overrides, expected", [
    (MULTI, [], "source 'b' is captured on host 'cam' and inference runs on 'local'"),
    (MULTI.replace('id = "b"', 'id = "a"'), [], "sources.id: 'a' names two sources"),
    ('[source]\nkind = "synthetic"\n' + MULTI, [], "give either [source] or [[sources]]"),
    ("", ["edges.frames.bind=tcp://*:5600"], "edges.frames: give both bind"),
    ("", ["edges.frames.encoding=jpeg"], "jpeg applies to a tcp edge only"),
    ("", ["edges.tensors.bind=tcp://*:5600", "edges.tensors.connect=tcp://x:5600"],
     "only edges.frames can cross hosts"),
    ("", ["edges.frames.bind=udp://x:1"], "edges.frames.bind: 'udp://x:1' is not tcp://ADDRESS:PORT"),
    ("", ["inference.workers=0"], "inference.workers: Input should be greater than or equal to 1"),
    ("", ["inference.workers=50", "inference.cores=[0]"],
     "inference.workers: 50 workers on 1 inference core(s) cannot keep up"),
    ("", ["curve.keys=/nonexistent"], "curve.keys: CURVE secures tcp edges"),
    ("", ["edges.frames.bind=tcp://*:5600", "edges.frames.connect=tcp://x:5600",
          "curve.keys=/nonexistent"], "curve.keys: no such folder: /nonexistent"),
    (MULTI, ["sources.5.id=x"], "--set sources.5.id=x: sources has 2 entries"),
])
def test_scale_out_mistakes_are_one_line(tmp_path, text, overrides, expected):
    msg = error_of(tmp_path, text, "model.weights=none", *overrides)
    assert expected in msg, msg


def test_host_must_be_one_the_config_names(tmp_path):
    with pytest.raises(ConfigError) as e:
        load_config(write(tmp_path, "[source]\nhost = \"box\"\n[inference]\nhost = \"box\"\n"),
                    ["model.weights=none"], host="pi")
    assert str(e.value) == "--host pi: no stage runs on it (hosts in this config: box)"
    p = subprocess.run([sys.executable, "-m", "pipeline.cli.up", str(ROOT / "configs" / "two-hosts.toml"),
                        "--host", "nowhere"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert p.returncode == 2 and "--host nowhere: no stage runs on it" in p.stderr


def test_files_of_other_hosts_are_not_required_here(tmp_path):
    text = ('[source]\nkind = "video"\npath = "/elsewhere/cam.mp4"\nhost = "cam"\n'
            '[inference]\nhost = "box"\n[edges.frames]\nbind = "tcp://*:5600"\n'
            'connect = "tcp://{host}:5600"\n')
    cfg = load_config(write(tmp_path, text), ["model.weights=none"], host="box")
    assert [i.kind for i in cfg.instances("box")] == ["inference", "preprocess"]
    msg = error_of(tmp_path, text, "model.weights=none")  # all hosts here: the file must exist
    assert msg == "source.path: no such video file: /elsewhere/cam.mp4"


def test_the_pipeline_picks_a_worker_per_core_where_one_core_cannot_keep_up(tmp_path, monkeypatch):
    """Several sources, or a file read as fast as it decodes, with no layout in the config: a
    worker per core on every core, two frames in flight per worker. A live single source, an
    explicit layout, or consumers in the config keep the default: one worker off the first core."""
    from pipeline.config import CORES_ENV

    monkeypatch.setenv(CORES_ENV, "0,1,2,3")
    video = tmp_path / "clip.mp4"
    video.write_bytes(b"")
    one = ["source.kind=video", f"source.path={video}"]

    def layout(*sets: str) -> tuple[int, list[int], int]:
        config = load_config(None, list(sets), files=False)
        return config.inference.workers, config.cores_of("inference"), config.credits()

    assert layout(*one, "source.realtime=false") == (4, [0, 1, 2, 3], 4)  # slots cap the credits
    assert layout(*one, "source.realtime=false", "edges.frames.slots=8",
                  "edges.tensors.slots=8") == (4, [0, 1, 2, 3], 8)
    assert layout(*one, "source.realtime=true") == (1, [1, 2, 3], 1)
    assert layout(*one, "source.realtime=false", "inference.workers=1") == (1, [1, 2, 3], 1)
    assert layout(*one, "source.realtime=false", "inference.cores=[2, 3]") == (1, [2, 3], 1)
    assert layout(*one, "source.realtime=false", "edges.credits=1") == (4, [0, 1, 2, 3], 1)
    path = tmp_path / "three.toml"
    path.write_text("".join(f'[[sources]]\nkind = "synthetic"\nid = "s{i}"\nfps = 30\n' for i in range(3)))
    config = load_config(str(path), files=False)
    assert (config.inference.workers, config.cores_of("inference")) == (4, [0, 1, 2, 3])
    path.write_text(path.read_text() + '[[consumers]]\nkind = "print"\n')
    config = load_config(str(path), files=False)
    assert (config.inference.workers, config.cores_of("inference")) == (1, [1, 2, 3])
    monkeypatch.setenv(CORES_ENV, "0")
    assert layout(*one, "source.realtime=false") == (1, [0], 1)  # one core: nothing to spread


def test_a_box_told_to_read_frames_from_itself_is_warned(tmp_path):
    """two-hosts.toml as shipped connects the box to 127.0.0.1: right on one machine, a silent
    wait on two, so the box half says so; the cam half and a run of both halves do not."""
    from pipeline.cli.up import loopback_reader

    shipped = ROOT / "configs" / "two-hosts.toml"
    box = loopback_reader(load_config(shipped, host="box"), "box")
    assert box and "tcp://127.0.0.1:5550" in box and "edges.frames.connect" in box
    assert loopback_reader(load_config(shipped, host="cam"), "cam") is None
    assert loopback_reader(load_config(shipped), None) is None
    elsewhere = load_config(shipped, ["edges.frames.connect=tcp://192.168.1.20:5550"], host="box")
    assert loopback_reader(elsewhere, "box") is None
