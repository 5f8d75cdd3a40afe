"""The benchmarks' `--markdown` tables are well formed: a header, a separator, a cell per column in
every row, and every row ending with its runtime, date and machine. Fixed figures, nothing timed."""

from __future__ import annotations

import re

import pytest

from tools.bench import ab, pipeline, scale
from tools.bench.kit import markdown, sections

CELL_SPLIT = re.compile(r"(?<!\\)\|")  # an escaped pipe stays inside its cell


def parse(text: str) -> tuple[list[str], list[list[str]]]:
    """Headers and rows of one markdown table, checking its shape on the way."""
    lines = text.strip().splitlines()
    assert len(lines) >= 3, text
    for line in lines:
        assert line.startswith("|") and line.endswith("|"), line
    cells = [[c.strip() for c in CELL_SPLIT.split(line)[1:-1]] for line in lines]
    headers, separator, rows = cells[0], cells[1], cells[2:]
    assert all(re.fullmatch(r"-{3,}", c) for c in separator) and len(separator) == len(headers)
    for row in rows:
        assert len(row) == len(headers), (headers, row)
        assert all(row), row  # an empty cell is written as a dash
    return headers, rows


def tables(lines: list[str]) -> list[str]:
    return [t for t in "\n".join(lines).split("\n\n") if t.strip()]


def assert_provenance(headers: list[str], rows: list[list[str]]) -> None:
    assert headers[-3:] == list(markdown.PROVENANCE)
    for row in rows:
        runtime, date, machine = row[-3:]
        assert re.match(r"(onnxruntime|torch|LiteRT)( \S+)?( vs (onnxruntime|torch|LiteRT)( \S+)?)?$",
                        runtime), runtime
        assert re.fullmatch(r"\d{4}-\d{2}-\d{2}", date) and "cores" in machine, row


def test_a_table_escapes_pipes_fills_empty_cells_and_refuses_a_short_row():
    text = markdown.table(["a", "b"], [["x|y", ""], [1, 2.5]])
    headers, rows = parse(text)
    assert headers == ["a", "b"] and rows == [["x\\|y", "–"], ["1", "2.5"]]
    with pytest.raises(ValueError):
        markdown.table(["a", "b"], [["only one"]])


def test_provenance_names_the_runtime_version_the_date_and_the_cores():
    runtime, date, machine = markdown.provenance("onnxruntime", date="2026-01-02", where="CPU X, 2 cores")
    assert runtime.startswith("onnxruntime ") and (date, machine) == ("2026-01-02", "CPU X, 2 cores")
    assert markdown.provenance("onnxruntime", "torch")[0].count(" vs ") == 1
    assert markdown.machine().endswith(" cores")


def test_litert_is_named_with_its_packages_version(monkeypatch):
    versions = {"ai-edge-litert": "2.3.0"}
    monkeypatch.setattr(markdown.metadata, "version", lambda name: versions[name])
    assert markdown.runtime("litert") == "LiteRT 2.3.0"
    assert pipeline.row_runtime("model_litert1") == "litert"
    assert pipeline.row_runtime("model_ort2") == "onnxruntime" and pipeline.row_runtime("model") == "torch"


def run(fps: float, inference_mb: float | None = None) -> dict:
    r = {"fps": fps, "frames": int(fps * 5), "cpu_pct": 100.0, "rss_mb": 300.0,
         "latency_ms": {"p50": 5.0, "p99": 7.0, "max": 9.0}, "age_ms": {"p50": 2.0, "p99": 3.0, "max": 4.0}}
    return r | ({"inference_rss_mb": inference_mb} if inference_mb else {})


def test_the_pipeline_bench_table_and_its_targets():
    res = {key: run(30.0 + i, 99.0 if key.startswith("pipeline") else None)
           for i, (key, _) in enumerate(pipeline.ROWS)}
    res["pipeline_fast"]["inference_rss_mb"] = 780.0
    res |= {"ratios": {"d/a": 0.97, "d/b": 0.8, "d/b_model_cores": 1.07, "d/c": 0.99, "d-ort/a": 7.3,
                       "d-ort/b-ort": 1.4},
            "paced_overhead_ms": {"p50": 3.9, "p99": 14.1}, "paced_overhead_ms_ort": {"p50": 1.5, "p99": 3.0},
            "paced_overhead_ms_ort_paced_model": {"p50": 1.0, "p99": 2.0},
            "ort_best": {"d": "pipeline_ort1w_fast", "b": "tutorial_ort1_fast"}}
    runs, targets = tables(pipeline.markdown_main(res))
    headers, rows = parse(runs)
    assert_provenance(headers, rows)
    assert len(rows) == len(pipeline.ROWS)
    by_run = {row[0]: row for row in rows}
    assert by_run["a. model only (ceiling)"][-3].startswith("torch")
    assert by_run["d-ort. pipeline, picked layout, fast"][-3].startswith("onnxruntime")
    assert by_run["a. model only (ceiling)"][3] == "–"  # a forward pass alone has no frame age
    headers, rows = parse(targets)
    assert_provenance(headers, rows)
    verdicts = {row[0]: row[2] for row in rows}
    assert verdicts["d-ort, fast / a (torch model alone) ≥ 5"] == "met"
    assert verdicts["d, 30 fps: e2e over a, p50 ≤ +3 ms, p99 ≤ +5 ms"] == "missed"


def test_the_ab_table_names_each_configs_runtime():
    medians = ab.summary({"onnxruntime, fast": {"before": [{"fps": 200.0, "p50": 6.0, "p99": 8.0}],
                                                "after": [{"fps": 300.0, "p50": 13.0, "p99": 30.0}]},
                          "torch, 30 fps": {"before": [{"fps": 30.0, "p50": 24.0, "p99": 30.0}],
                                            "after": [{"fps": 30.0, "p50": 24.5, "p99": 31.0}]}})
    headers, rows = parse(ab.markdown_table(medians))
    assert_provenance(headers, rows)
    assert [row[0] for row in rows] == ["onnxruntime, fast", "torch, 30 fps"]
    assert rows[0][3] == "1.50" and rows[0][-3].startswith("onnxruntime")
    assert rows[1][-3].startswith("torch")


def test_the_scale_tables():
    grid = [{"sources": n, "workers": w, "fps": 30.0 * n, "served": 1.0, "worst_source_fps": 30.0,
             "worst_p99_ms": 20.0, "p50_ms": 7.0, "drops": 0, "cpu_pct": 50.0, "rss_mb": 400.0,
             "inference_rss_mb": 100.0} for n in (1, 4) for w in (1, 2)]
    edge = {"fps": 30.0, "latency_ms": {"p50": 7.0, "p99": 9.0}, "cpu_pct": 30.0}
    tcp = [edge | {"edge": "shared memory", "bytes_per_frame": 0, "mbit_s_at_30fps": 0.0, "encode_ms": 0.0,
                   "extra_p50_ms": 0.0, "extra_p99_ms": 0.0},
           edge | {"edge": "tcp jpeg q90", "bytes_per_frame": 17480, "mbit_s_at_30fps": 4.2,
                   "encode_ms": 0.59, "extra_p50_ms": 2.5, "extra_p99_ms": 3.5}]
    out = {"runtime": "onnxruntime", "grid": grid, "tcp": tcp}
    grid_table, tcp_table = tables(scale.markdown_tables(out))
    headers, rows = parse(grid_table)
    assert_provenance(headers, rows)
    assert len(rows) == 4 and rows[0][:2] == ["1", "1"]
    headers, rows = parse(tcp_table)
    assert_provenance(headers, rows)
    assert rows[0][1] == "–" and rows[1][1] == "17 480"


def test_the_runtimes_table_against_torch_one_thread_alone():
    def runs(fps1: float, fps2: float) -> dict:
        return {f"{kind}_{n}t": run(fps, 90.0 if kind == "pipeline" else None)
                | {"threads": n, "cores": [1] if n == 1 else [0, 1]}
                for kind in ("model", "pipeline") for n, fps in ((1, fps1), (2, fps2))}

    entries = {"torch": {"runs": runs(40.0, 60.0)}, "onnxruntime": {"runs": runs(200.0, 300.0)},
               "litert": {"runs": runs(160.0, 320.0)}}
    entries["onnxruntime"]["runs"]["pipeline_2t"] = {"error": "pipeline-up exited with 1 | boom",
                                                     "threads": 2, "cores": [0, 1]}
    out = sections.summarise(entries)
    assert out["baseline_fps"] == 40.0
    assert out["runtimes"]["litert"]["ratios"] == {"model_2t/1t": 2.0, "pipeline_2t/1t": 2.0}
    assert "pipeline_2t/1t" not in out["runtimes"]["onnxruntime"]["ratios"]  # its 2-thread run failed
    assert out["runtimes"]["onnxruntime"]["runs"]["model_1t"]["vs_baseline"] == 5.0
    out["runtimes"]["litert"] = {"missing": "not installed (pip install ai-edge-litert)"}
    out = sections.summarise(out["runtimes"])  # the same figures, LiteRT now missing

    (table,) = tables(sections.markdown_runtimes(out))
    headers, rows = parse(table)
    assert_provenance(headers, rows)
    assert headers[:9] == ["run", "threads", "cores", "fps", "p50 / p99 ms", "CPU %", "inf MB",
                           "× torch 1 thread alone (40.0 fps)", "2 threads / 1"]
    assert len(rows) == 4 + 4 + 1  # torch and onnxruntime: 2 kinds x 2 thread counts; LiteRT: one row
    by_run = {(row[0], row[1]): row for row in rows}
    torch_1 = by_run["torch, model alone (one pass)", "1"]
    assert torch_1[2:9] == ["1", "40.0", "5.0 / 7.0", "100", "300", "1.00", "–"]
    assert torch_1[-3].startswith("torch")
    ort_2 = by_run["onnxruntime, model alone (one pass)", "2"]
    assert ort_2[7:9] == ["7.50", "1.50"] and ort_2[-3].startswith("onnxruntime")
    assert by_run["onnxruntime, pipeline, fast (e2e)", "1"][6] == "90"  # the inference worker's RSS
    failed = by_run["onnxruntime, pipeline, fast (e2e)", "2"]
    assert failed[2] == "failed: pipeline-up exited with 1 \\| boom" and failed[3:9] == ["–"] * 6
    (missing,) = [row for row in rows if row[0].startswith("LiteRT")]
    assert missing[0] == "LiteRT: not installed (pip install ai-edge-litert)" and missing[1:-3] == ["–"] * 8
    assert missing[-3].startswith("LiteRT")

    text = sections.format_runtimes(out)
    assert "x base: fps over the baseline, torch's model alone with 1 thread in this run (40.0 fps)" in text
    assert any(line.startswith("LiteRT:") and "not installed" in line for line in text)
    assert any("failed: pipeline-up exited with 1" in line for line in text)
    assert not any(line.startswith("warning:") for line in text)
    out["runtimes"]["torch"]["runs"]["model_1t"]["cpu_pct"] = 60.0  # shared its core
    warning = sections.format_runtimes(out)[-1]
    assert warning.startswith("warning: the model alone with 1 thread got under 90% of a core (torch)")
