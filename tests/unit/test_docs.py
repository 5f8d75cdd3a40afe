"""The README and docs/ say what is there: every relative link leads to a file (and a heading that
exists), every tools/ script and configs/ file they name exists, the configuration reference is
the one the schema generates, the README's test command is the one CI runs, and every drop reason
the code counts is documented."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

from tests.support.drop_reasons import reasons_in_code

ROOT = Path(__file__).resolve().parents[2]
DOCS = sorted([ROOT / "README.md", *(ROOT / "docs").glob("*.md")])
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
CODE_BLOCK = re.compile(r"^```.*?^```", re.MULTILINE | re.DOTALL)
MENTIONED = re.compile(r"(?<![\w./-])((?:tools|configs)/[\w./-]*?\.(?:py|toml))(?![\w])")


def _name(path: Path) -> str:
    return str(path.relative_to(ROOT))


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[`*_]", "", heading.strip().lower())
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    text = CODE_BLOCK.sub("", path.read_text())
    return {_slug(m) for m in re.findall(r"^#+\s+(.*)$", text, re.MULTILINE)}


@pytest.mark.parametrize("doc", DOCS, ids=_name)
def test_relative_links_lead_somewhere(doc: Path):
    text = CODE_BLOCK.sub("", doc.read_text())
    broken = []
    for target in LINK.findall(text):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
            continue
        file, _, anchor = target.partition("#")
        dest = (doc.parent / file).resolve() if file else doc
        if not dest.exists():
            broken.append(f"{target}: no file {dest.relative_to(ROOT) if ROOT in dest.parents else dest}")
        elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
            broken.append(f"{target}: no heading #{anchor} in {_name(dest)}")
    assert not broken, f"{_name(doc)} links to what is not there:\n" + "\n".join(broken)


@pytest.mark.parametrize("doc", DOCS, ids=_name)
def test_named_tools_and_configs_exist(doc: Path):
    missing = sorted({p for p in MENTIONED.findall(doc.read_text()) if not (ROOT / p).exists()})
    assert not missing, f"{_name(doc)} names files that do not exist: {missing}"


def _config_reference():
    spec = importlib.util.spec_from_file_location("config_reference", ROOT / "tools" / "config_reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_configuration_reference_is_current():
    tool = _config_reference()
    committed = tool.OUT.read_text() if tool.OUT.exists() else ""
    assert committed == tool.render(), (
        f"docs/configuration-reference.md differs from the config schema: run {tool.COMMAND}")


def test_the_configuration_reference_covers_every_key():
    from pipeline.config import schema

    text = (ROOT / "docs" / "configuration-reference.md").read_text()
    for section in ("capture", "preprocess", "inference", "model", "supervision", "adaptive", "curve"):
        model = type(getattr(schema.Config(), section))
        for key in model.model_fields:
            assert f"`{section}.{key}`" in text, f"{section}.{key} is not in the reference"


def test_the_readme_test_command_is_the_one_ci_runs():
    ci = (ROOT / ".ci" / "run").read_text().strip().splitlines()[-1]
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Two commands", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"^```\n(.*?)\n```", section, re.MULTILINE | re.DOTALL)
    assert len(blocks) == 2, f"the README's 'Two commands' has {len(blocks)} commands, not 2"
    assert blocks[1] == ci, f"the README's test command {blocks[1]!r} is not .ci/run's {ci!r}"
    assert blocks[0].startswith("python3 -m venv .venv && .venv/bin/pip install -e . && ")


def test_every_drop_reason_is_documented():
    reasons = reasons_in_code()
    assert {"latest", "torn", "stalled", "oversize", "decode"} <= reasons, reasons
    for doc in ("profiling.md", "protocol.md"):
        text = (ROOT / "docs" / doc).read_text()
        rows = set(re.findall(r"^\| `(\w+)` \|", text, re.MULTILINE))
        assert reasons <= rows, f"docs/{doc} does not document drop reasons {sorted(reasons - rows)}"


def test_the_readme_stays_short():
    lines = (ROOT / "README.md").read_text().count("\n")
    assert lines <= 260, (f"the README has {lines} lines: it is the overview (what it is, the two "
                          f"commands, the tour, what was verified); move the detail to docs/")
