"""Pieces of the gsocket benchmark harness driven by benchmarks/run.py.

The harness starts its children with gsocket's own local-stack pieces (``gsocket.demo``:
processes, ports, the redis-server launcher), so this checkout goes first on ``sys.path``:
the scripts are run as ``python benchmarks/x.py``, which puts only ``benchmarks/`` there, and
they measure this checkout's gsocket, never an installed one.
"""

import sys
from pathlib import Path

REPO = str(Path(__file__).resolve().parents[2])
if REPO not in sys.path:
    sys.path.insert(0, REPO)
