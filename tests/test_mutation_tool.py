"""scripts/mutation.py's bookkeeping: a listed mutant is recognised by its function and its mutated line (not its number), and
the unit-test selections leave out only the named end-to-end runs."""
import pytest

from scripts import mutation, mutation_tables

DIFF = """--- uvc/x.py
+++ uvc/x.py
@@ -1,3 +1,3 @@
-    a = f(1)
+    a = f(2)
"""


def test_a_survivor_is_listed_only_by_its_function_and_its_mutated_line():
    table = {"m__mutmut_3": ("a = f(2)", "why")}
    assert mutation.listed(table, "m__mutmut_3", DIFF) == "why"
    assert mutation.listed(table, "m__mutmut_4", DIFF) == "why"  # renumbered by an edit: the same mutant
    assert mutation.listed(table, "n__mutmut_3", DIFF) is None  # another function
    assert mutation.listed(table, "m__mutmut_3", DIFF.replace("f(2)", "f(3)")) is None  # another line
    name, (line, reason) = next(iter(mutation.EQUIVALENT.items()))
    assert mutation.equivalence(name, f"-    old\n+    {line}\n") == reason


def test_the_unit_test_selections_are_every_test_of_the_file_but_the_whole_runs():
    rules = [t.split("::")[1] for t in mutation_tables.RULES_UNIT_TESTS]
    assert "test_digits_search_with_rules_logs_them_and_resumes_exactly" not in rules
    assert "test_no_gate_safety_moves_gates_to_the_end_of_the_search" in rules and len(rules) >= 16
    control = [t.split("::")[1] for t in mutation_tables.CONTROL_UNIT_TESTS]
    assert "test_run_length_invariance" not in control and "test_the_collapse_is_gone" not in control
    assert "test_one_update_flips_at_most_one_block" in control
    assert all(t.startswith("tests/test_search_control.py::test_") for t in mutation_tables.CONTROL_UNIT_TESTS)


def test_relist_classifies_the_survivors_again_without_running_them(tmp_path, monkeypatch):
    module = "uvc/x.py"
    monkeypatch.setattr(mutation, "source_hash", lambda m: "h")
    monkeypatch.setattr(mutation, "EQUIVALENT", {"m__mutmut_1": ("a = f(2)", "why")})
    survivor = {"mutant": "m__mutmut_7", "diff": DIFF, "reason": "not killed: needs a test"}
    previous = {"mutants": 3, "killed": 2, "survived": 1, "timeout": 0, "equivalent": 0, "source_sha256": "h",
                "survivors": [survivor]}
    again = mutation.relist(previous, module)
    assert again["survivors"][0]["reason"] == "why" and again["equivalent"] == 1 and again["killed"] == 2
    monkeypatch.setattr(mutation, "source_hash", lambda m: "changed")
    with pytest.raises(SystemExit, match="run it whole"):
        mutation.relist(previous, module)
