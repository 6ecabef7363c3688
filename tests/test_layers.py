"""The floors of the project hold: read from the source with `ast`, nothing imported.

From the ground up: utils/, data/ and models/ (helpers, datasets, ViTs); uvc/ (the method);
engine/ (the training recipe); then the entry points: joint_train.py, post_train.py,
baselines/, scripts/ and uvc's command-line modules. A module imports only from its own
floor or below, and no modules import each other, directly or round a longer circle.
"""
import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("utils", "data", "models", "configs", "uvc", "engine", "baselines", "scripts")
TOP_MODULES = ("joint_train", "post_train")
ENTRY_POINTS = {"baselines", "scripts", *TOP_MODULES}
# uvc's command lines (`python -m uvc.<name>`) sit on the top floor with the entry points
UVC_COMMANDS = {"uvc/evaluate.py", "uvc/export.py", "uvc/import_reference.py", "uvc/report.py",
                "uvc/report/__main__.py"}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def project_files() -> dict:
    """{module name: path} of every project module outside tests/."""
    files = [ROOT / f"{name}.py" for name in TOP_MODULES]
    for package in PACKAGES:
        files += sorted((ROOT / package).rglob("*.py"))
    return {module_name(p): p for p in files}


MODULES = project_files()


def imported(path: Path) -> set:
    """The project modules `path` imports anywhere in it (function bodies too), each resolved to
    the deepest module named: `from data import mnist` is data.mnist, `from data import DataError`
    is data."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the package, one level up per extra dot
                anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            targets = [f"{base}.{alias.name}" for alias in node.names]
        else:
            continue
        for target in targets:
            parts = target.split(".")
            deepest = next((".".join(parts[:n]) for n in range(len(parts), 0, -1)
                            if ".".join(parts[:n]) in MODULES), None)
            if deepest is not None and deepest != name:
                found.add(deepest)
    return found


GRAPH = {name: imported(path) for name, path in MODULES.items()}


def floor(module: str) -> str:
    return module.split(".")[0]


def crossings(importers, forbidden, exempt=lambda name: False) -> list:
    """`importer -> imported` for every import from a module under `importers` into `forbidden`."""
    return sorted(f"{name} -> {dep}" for name, deps in GRAPH.items()
                  if floor(name) in importers and not exempt(name)
                  for dep in deps if floor(dep) in forbidden)


def test_the_graph_sees_the_project():
    """The checks below read real imports: the floors are found and their known imports are seen."""
    assert {"utils.dist", "data.mnist", "models.vit", "uvc.search", "engine.loop", "joint_train"} <= set(MODULES)
    assert "engine.loop" in GRAPH["joint_train"] and "utils.dist" in GRAPH["engine.loop"]


def test_ground_floors_import_nothing_above_them():
    """utils/, data/ and models/ import nothing of the method, the recipe or the entry points."""
    assert crossings({"utils", "data", "models"}, {"uvc", "engine"} | ENTRY_POINTS) == []


def test_data_imports_nothing_from_utils():
    assert crossings({"data"}, {"utils"}) == []


def test_utils_imports_neither_data_nor_models():
    assert crossings({"utils"}, {"data", "models"}) == []


def test_uvc_never_imports_baselines_or_scripts():
    assert crossings({"uvc"}, ENTRY_POINTS) == []


def test_uvc_library_never_imports_engine_or_data():
    """The method runs on any model and loop; only uvc's command lines build data or run the loop."""
    def command(name: str) -> bool:
        relative = MODULES[name].relative_to(ROOT).as_posix()
        return relative in UVC_COMMANDS or MODULES[name].name == "__main__.py"
    assert crossings({"uvc"}, {"engine", "data"}, exempt=command) == []


def test_engine_never_imports_baselines_or_scripts():
    assert crossings({"engine"}, ENTRY_POINTS) == []


def test_no_import_cycles():
    """Depth-first search on the module graph; a back edge is a circle of imports."""
    state, cycles = {}, []

    def visit(name: str, stack: list) -> None:
        state[name] = "open"
        for dep in sorted(GRAPH.get(name, ())):
            if state.get(dep) == "open":
                cycles.append(" -> ".join(stack[stack.index(dep):] + [dep]))
            elif dep not in state:
                visit(dep, stack + [dep])
        state[name] = "done"

    for name in sorted(GRAPH):
        if name not in state:
            visit(name, [name])
    assert cycles == []
