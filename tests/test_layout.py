"""The package's layout is its architecture: imports point one way, in no circle, and only the
protocol layer's internals modules touch another library's private names.

Read from the source (the AST of every module), so that an import added anywhere, even one
only for type checking or inside a function, is seen.
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterator
from pathlib import Path

from tests.support.bench import REPO

PACKAGE = REPO / "gsocket"

LAYERS = {
    "gsocket": 0,
    "gsocket.config": 0,
    "gsocket.errors": 0,
    "gsocket.metrics": 0,
    "gsocket.protocol": 1,
    "gsocket.contract": 2,
    "gsocket.handlers": 2,
    "gsocket.cluster": 2,
    "gsocket.frappe_ctx": 2,
    "gsocket.handlers_loader": 2,
    "gsocket.ops": 3,
    "gsocket.demo": 4,
    "gsocket.app": 4,
    "gsocket.cli": 5,
    "gsocket.__main__": 5,
}
"""Each module's layer (by its longest listed prefix); a module imports only from its own
layer or below: foundation (configuration, errors, counters) <- protocol <- contract,
handlers, cluster <- operations <- the application factory <- the command line."""

INTERNALS = "gsocket.protocol.internals"
"""The one place allowed to use another library's private names."""

LIBRARIES = ("socketio", "engineio", "gevent", "geventwebsocket", "redis", "pymysql", "json")

DOCUMENTED = frozenset({"_exit", "_replace", "_asdict", "_fields", "_make"})
"""Underscore names that are documented public API (``os._exit``, namedtuple methods)."""


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, ast.Module]:
    return {module_name(p): ast.parse(p.read_text(), str(p)) for p in PACKAGE.rglob("*.py")}


def imported(name: str, tree: ast.Module, known: set[str]) -> Iterator[str]:
    """The gsocket modules ``name`` imports (``from gsocket.x import y`` imports ``y`` when
    ``y`` is a module)."""
    package = name if name + ".__init__" in known else name.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("gsocket"):
                    yield alias.name
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            if not base.startswith("gsocket"):
                continue
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                yield sub if sub in known else base


def layer(name: str) -> int:
    best = max((p for p in LAYERS if name == p or name.startswith(p + ".")), key=len)
    return LAYERS[best]


def graph() -> dict[str, set[str]]:
    trees = modules()
    known = set(trees) | {n + ".__init__" for n in trees if (PACKAGE / "..").exists()}
    packages = {module_name(p) for p in PACKAGE.rglob("__init__.py")}
    known = set(trees) | {p + ".__init__" for p in packages}
    return {n: {m for m in imported(n, t, known) if m != n} for n, t in trees.items()}


def test_every_module_has_a_layer():
    assert all(layer(name) >= 0 for name in modules())


def test_imports_point_one_way():
    upward = sorted(
        f"{name} -> {target}"
        for name, targets in graph().items()
        for target in targets
        if layer(target) > layer(name)
    )
    assert upward == []


def test_no_import_cycle():
    edges = graph()
    cycles: list[list[str]] = []
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for target in sorted(edges.get(node, ())):
            if state.get(target) == 1:
                cycles.append([*stack[stack.index(target) :], target])
            elif target not in state:
                visit(target)
        stack.pop()
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node)
    assert cycles == []


def private_uses(tree: ast.Module) -> Iterator[str]:
    """Private names of another library a module reaches: ``from lib import _x`` or
    ``lib._x`` (a module of :data:`LIBRARIES`), a ``_x`` method defined in a subclass of a
    library class (an override of its private hook), and ``obj._x`` on anything but ``self``
    and ``cls`` (a library object's private attribute: ``ws._sock``)."""
    aliases: set[str] = set()
    library_names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in LIBRARIES:
            library_names.update(alias.asname or alias.name for alias in node.names)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] in LIBRARIES:
                    library_names.add((alias.asname or alias.name).split(".")[0])
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef) and any(
            (ast.unparse(base).split(".")[0] in library_names) for base in node.bases
        ):
            for item in node.body:
                if (
                    isinstance(item, ast.FunctionDef)
                    and item.name.startswith("_")
                    and not item.name.startswith("__")
                ):
                    yield f"{node.name}.{item.name} overrides a private hook"
        elif (
            isinstance(node, ast.Attribute)
            and node.attr.startswith("_")
            and not node.attr.startswith("__")
            and node.attr not in DOCUMENTED
            and not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"))
        ):
            yield ast.unparse(node)
        if isinstance(node, ast.ImportFrom) and node.module:
            root = node.module.split(".")[0]
            if root in LIBRARIES:
                if any(part.startswith("_") for part in node.module.split(".")):
                    yield node.module
                for alias in node.names:
                    if alias.name.startswith("_"):
                        yield f"{node.module}.{alias.name}"
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] in LIBRARIES:
                    aliases.add((alias.asname or alias.name).split(".")[0])
                    if any(part.startswith("_") for part in alias.name.split(".")):
                        yield alias.name


def test_library_private_names_only_in_the_internals_layer():
    found = sorted(
        f"{name}: {use}"
        for name, tree in modules().items()
        if not name.startswith(INTERNALS)
        for use in private_uses(tree)
    )
    assert found == []


def test_the_test_sees_what_it_looks_for():
    """The checks above find a cycle, an upward import and a private name when there is one."""
    tree = ast.parse("from gevent._tracer import GreenletTracer\nfrom gsocket.app import App\n")
    assert list(private_uses(tree)) == ["gevent._tracer"]
    assert set(imported("gsocket.protocol.x", tree, {"gsocket.app"})) == {"gsocket.app"}
    tree = ast.parse("import socketio\nclass S(socketio.Server):\n    def _h(self): ws._sock\n")
    assert sorted(private_uses(tree)) == ["S._h overrides a private hook", "ws._sock"]
    assert layer("gsocket.app") > layer("gsocket.protocol.server")


def top_imports(root: Path) -> Iterator[tuple[str, str]]:
    """``(file, module)`` for every import of the suite's, the scripts' or the benchmarks'
    own modules under ``root``."""
    for path in root.rglob("*.py"):
        if "node_modules" in path.parts:
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
                if isinstance(node, ast.ImportFrom) and not node.level
                else []
            )
            for name in names:
                if name.split(".")[0] in ("tests", "scripts", "benchmarks"):
                    yield str(path.relative_to(REPO)), name


def test_the_harness_is_shared_one_way():
    """tests/support is the harness: scripts and benchmarks use it, the suite never imports
    scripts or benchmarks, and the harness imports no test module (no circle between them)."""
    wrong = sorted(
        f"{file}: {name}"
        for root in ("tests", "scripts", "benchmarks")
        for file, name in top_imports(REPO / root)
        if (root == "tests" and name.split(".")[0] != "tests")
        or (root != "tests" and name.startswith("tests") and not name.startswith("tests.support"))
        or (
            file.startswith("tests/support")
            and name.startswith("tests")
            and not name.startswith("tests.support")
        )
    )
    assert wrong == []


SHARED_HARNESS = {
    "gsocket/demo/processes.py": {"Child", "wait_until", "log_tail", "tie_to_parent"},
    "gsocket/demo/ports.py": {
        "free_port",
        "port_is_free",
        "free_port_run",
        "port_is_open",
        "wait_for_port",
    },
    "gsocket/demo/redis_server.py": {"RedisServer", "redis_binary"},
}
"""The one implementation of each local-stack concept: a child process, a bounded poll, a free
port, the ``redis-server`` launcher.  In the package (the demo ships in the wheel and cannot
import tests/ or benchmarks/); the suite's support, the benchmarks and the scripts import it."""

COPY_NAMES = {name for names in SHARED_HARNESS.values() for name in names} | {
    "wait_for",
    "consecutive_free_ports",
    "bindable",
    "listening",
    "die_with_parent",
}
"""Names whose module-level definition elsewhere is a second copy (with the names the copies
had before there was one: ``wait_for``, ``consecutive_free_ports``, ``listening``...)."""


def harness_files() -> list[Path]:
    """Every module that starts local processes or waits for them: the demo, the suite's
    support and fixtures, the benchmarks and the scripts.  Test modules are left out: they use
    the harness, and some run the command under test with ``subprocess`` on purpose."""
    found = [*(REPO / "gsocket" / "demo").rglob("*.py"), *(REPO / "scripts").rglob("*.py")]
    found += [p for p in (REPO / "benchmarks").rglob("*.py") if "node_modules" not in p.parts]
    found += [
        p
        for p in (REPO / "tests").rglob("*.py")
        if "node_modules" not in p.parts and not p.name.startswith("test_")
    ]
    return sorted(found)


def harness_copies(file: str, tree: ast.Module) -> Iterator[str]:
    """What in one module repeats a shared harness concept: a module-level definition of one of
    :data:`COPY_NAMES`, a ``Popen`` (a child not started through ``Child``), a bind to port 0
    (a free port chosen by hand), a ``redis-server`` launched by hand (its ``--appendonly``
    option, or ``which("redis-server")``)."""
    own = SHARED_HARNESS.get(file, set())
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            if node.name.lstrip("_") in COPY_NAMES - own:
                yield f"defines {node.name}"
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            func = ast.unparse(node.func)
            first = node.args[0] if node.args else None
            if func.endswith("Popen") and file != "gsocket/demo/processes.py":
                yield f"line {node.lineno}: Popen"
            if (
                func.endswith(".bind")
                and isinstance(first, ast.Tuple)
                and len(first.elts) == 2
                and isinstance(first.elts[1], ast.Constant)
                and first.elts[1].value == 0
                and file != "gsocket/demo/ports.py"
            ):
                yield f"line {node.lineno}: binds port 0"
            if (
                func.endswith("which")
                and isinstance(first, ast.Constant)
                and first.value == "redis-server"
                and file != "gsocket/demo/redis_server.py"
            ):
                yield f"line {node.lineno}: looks for redis-server"
        elif isinstance(node, ast.List) and file != "gsocket/demo/redis_server.py":
            if any(isinstance(e, ast.Constant) and e.value == "--appendonly" for e in node.elts):
                yield f"line {node.lineno}: launches redis-server"


def test_each_harness_concept_has_one_implementation():
    """Child processes, waiting, ports and the redis-server launcher are written once, in
    gsocket.demo, and started through there by the demo, the suite, benchmarks and scripts."""
    copies = sorted(
        f"{path.relative_to(REPO)}: {copy}"
        for path in harness_files()
        for copy in harness_copies(
            str(path.relative_to(REPO)), ast.parse(path.read_text(), str(path))
        )
    )
    assert copies == []
    for file, names in SHARED_HARNESS.items():
        tree = ast.parse((REPO / file).read_text())
        defined = {
            n.name.lstrip("_") for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef))
        }
        assert names <= defined, file


def test_the_shared_harness_stands_alone():
    """The shared pieces import only the standard library, redis-py and each other (so that
    tests/support, benchmarks and scripts can use them without the server), and nothing in the
    package imports the suite, the benchmarks or the scripts (the wheel has none of them)."""
    shared = {module_name(REPO / file) for file in SHARED_HARNESS}
    allowed = set(sys.stdlib_module_names) | {"redis", "__future__"}
    wrong = sorted(
        f"{name} -> {target}"
        for name, tree in modules().items()
        if name in shared
        for node in ast.walk(tree)
        if isinstance(node, (ast.Import, ast.ImportFrom))
        for target in (
            [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
        )
        if target.split(".")[0] not in allowed and target not in shared
    )
    assert wrong == []
    upward = sorted(
        f"{file}: {name}"
        for file, name in top_imports(PACKAGE)
        if name.split(".")[0] in ("tests", "scripts", "benchmarks")
    )
    assert upward == []


def test_the_harness_check_sees_a_copy():
    """The check above finds each kind of copy when there is one."""
    tree = ast.parse(
        "import socket, subprocess, shutil\n"
        "def _free_port():\n    s = socket.socket()\n    s.bind(('127.0.0.1', 0))\n"
        "def wait_for(c, t): pass\n"
        "p = subprocess.Popen(['x'])\n"
        "b = shutil.which('redis-server')\n"
        "a = [b, '--port', '1', '--appendonly', 'no']\n"
    )
    assert list(harness_copies("benchmarks/x.py", tree)) == [
        "defines _free_port",
        "defines wait_for",
        "line 6: Popen",
        "line 7: looks for redis-server",
        "line 8: launches redis-server",
        "line 4: binds port 0",
    ]
    assert list(harness_copies("tests/support/x.py", ast.parse("def port_is_open(): pass"))) == [
        "defines port_is_open"
    ]
    assert list(harness_copies("gsocket/demo/ports.py", ast.parse("def free_port(): pass"))) == []
