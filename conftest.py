"""The repository importable under pytest, installed (`pip install -e .`) or not.

pytest puts this folder on sys.path for the tests themselves (a rootdir conftest);
PYTHONPATH carries it to the processes the tests start, since `python scripts/demo.py`
puts only scripts/ on sys.path."""
import os

ROOT = os.path.dirname(os.path.abspath(__file__))
os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (ROOT, os.environ.get("PYTHONPATH")) if p)
