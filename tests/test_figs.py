"""Figs/README.md names every figure in Figs/ with the command that wrote it; a sweep figure's
command is the one its log/<stem>_sweep.json records (the figure and the table come from one run)."""
import json
import os
import re

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIGS = os.path.join(ROOT, "Figs")


def rows():
    text = open(os.path.join(FIGS, "README.md")).read()
    out = {}
    for line in text.splitlines():
        m = re.match(r"\| `([^`]+\.png)` \|(.*)\|(.*)\|$", line)
        if m:
            out[m.group(1)] = m.group(3)
    return out


def test_every_figure_has_a_row_with_a_command_and_every_row_a_figure():
    pngs = {f for f in os.listdir(FIGS) if f.endswith(".png")}
    table = rows()
    assert set(table) == pngs
    for name, command in table.items():
        assert "`python " in command, name


def test_a_sweep_figure_names_the_command_of_its_json():
    table = rows()
    for name, command in table.items():
        m = re.match(r"(\w+)_sweep_top1_vs_macs\.png$", name)
        if m:
            record = json.load(open(os.path.join(ROOT, "log", f"{m.group(1)}_sweep.json")))
            assert f"`{record['command']}`" in command, name
