"""The README documents what the code reads: its example config parses, every environment variable
the source reads is in its table, and its links stay inside the repository."""

from __future__ import annotations

import re
from pathlib import Path

from conveyor.config import load_file

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()


def test_the_example_config_file_is_valid(tmp_path):
    block = re.search(r"```toml\n# conveyor.toml\n(.*?)```", README, re.S)
    assert block is not None
    path = tmp_path / "conveyor.toml"
    path.write_text(block.group(1))
    doc = load_file(str(path))
    assert doc["master"]["bind"] == "127.0.0.1:7700" and doc["worker"]["modules"] == ["tasks"]


def test_every_environment_variable_is_in_the_table():
    read = set()
    for source in (ROOT / "src" / "conveyor").rglob("*.py"):
        read |= set(re.findall(r'"(CONVEYOR_[A-Z_]+)"', source.read_text()))
    table = README[README.index("### Environment variables"):]
    table = table[:table.index("\n\n", table.index("| variable"))]
    documented = set(re.findall(r"^\| `(CONVEYOR_[A-Z_]+)` \|", table, re.M))
    assert read and read == documented


def test_links_stay_inside_the_repository():
    links = re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", README)
    assert links
    for link in links:
        if link.startswith(("http://", "https://")):
            continue
        assert not link.startswith(("/", "..")), link
        assert (ROOT / link).resolve().is_relative_to(ROOT), link
    assert "../shared" not in README
