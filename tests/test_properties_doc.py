"""Every test that docs/properties.md names exists (parsed from the test files, no import)."""
import ast
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TEST_ID = re.compile(r"`(tests/[\w/]+\.py)::(\w+)`")


def named_tests(markdown: str):
    return TEST_ID.findall(markdown)


def defined_tests(path: Path) -> set:
    tree = ast.parse(path.read_text())
    return {node.name for node in ast.walk(tree)
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name.startswith("test_")}


def missing_tests(markdown: str, root: Path = REPO) -> list:
    missing = []
    for file, name in named_tests(markdown):
        path = root / file
        if not path.is_file() or name not in defined_tests(path):
            missing.append(f"{file}::{name}")
    return missing


def test_every_test_named_in_the_properties_table_exists():
    text = (REPO / "docs" / "properties.md").read_text()
    assert len(named_tests(text)) >= 20
    assert missing_tests(text) == []


def test_a_missing_test_id_is_reported():
    table = ("| a | `tests/test_properties_doc.py::test_every_test_named_in_the_properties_table_exists` |\n"
             "| b | `tests/test_properties_doc.py::test_that_was_renamed` |\n"
             "| c | `tests/no_such_file.py::test_x` |")
    assert missing_tests(table) == ["tests/test_properties_doc.py::test_that_was_renamed",
                                    "tests/no_such_file.py::test_x"]


def test_the_mutation_section_names_the_command_of_log_mutation_json():
    """docs/properties.md gives the command that makes log/mutation.json (it names every module
    covered), as the file records it: no module list or count typed by hand."""
    import json
    log = json.loads((REPO / "log" / "mutation.json").read_text())
    text = " ".join((REPO / "docs" / "properties.md").read_text().split())
    assert f"`{log['command']}`" in text
    assert log["command"].split()[2:] == log["modules"]
