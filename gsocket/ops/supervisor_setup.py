"""``gsocket setup supervisor`` and ``gsocket setup procfile``: run gsocket where Node ran.

A production bench runs its realtime process as the supervisord program
``<bench>-node-socketio`` in the group ``<bench>-web``, from the ``config/supervisor.conf``
that ``bench setup supervisor`` writes; a development bench runs it from the ``socketio:``
line of its ``Procfile``.  These commands write gsocket's program with the same priority,
start and restart policy (``startretries``), log folder and separate error log, a
``stopwaitsecs`` that covers gsocket's drain, and show the exact change to make in those
files (``--apply`` makes it, keeping a copy).
"""

from __future__ import annotations

import difflib
import math
import re
import shlex
import shutil
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from gsocket.config import Config

PROGRAM_FILE = "gsocket.conf"
SECTION = re.compile(r"^\s*\[(?P<name>[^\]]+)\]\s*$")
#: supervisord's attempts to start the program before it gives up (its default is 3): the
#: Node program bench writes has 10, so a bench whose Redis or web process comes up slowly
#: after a reboot still gets its realtime server.
START_RETRIES = 10
# Seconds on top of the drain for the bridge, the Socket.IO service task and the exit itself.
STOP_MARGIN = 5

PROGRAM_TEMPLATE = """\
; gsocket, the Python realtime server of this bench, in place of {name}-node-socketio.
; Written by `gsocket setup supervisor`.  On SIGTERM gsocket makes every client reconnect and
; lets running handlers finish for up to gsocket.drain_timeout ({drain:g} s); stopwaitsecs leaves
; room for that.  The server runs in a child of this program (--handover, hence killasgroup);
; to restart it without a moment when nobody listens:
;   supervisorctl signal HUP {name}-web:{program}
[program:{program}]
command={command}
priority=4
autostart=true
autorestart=true
startsecs=1
startretries={startretries}
stopsignal=TERM
stopwaitsecs={stopwaitsecs}
killasgroup=true
stdout_logfile={bench}/logs/{log}.log
stderr_logfile={bench}/logs/{log}.error.log
{user_line}directory={bench}
"""


@dataclass(frozen=True)
class Program:
    """What goes into gsocket's supervisord program.

    :param name: the bench's program-name prefix (``frappe-bench`` for ``frappe-bench-web``).
    :param bench: absolute bench folder.
    :param python: the interpreter that has gsocket installed.
    :param drain_timeout: ``gsocket.drain_timeout`` of the bench.
    :param user: the ``user=`` of the Node program it replaces, if any.
    :param startretries: the Node program's ``startretries``, else :data:`START_RETRIES`.
    :param process: with ``gsocket.processes`` above 1, which process of the cluster this
        program runs (``--process K``); its program is ``<name>-gsocket-K``.
    """

    name: str
    bench: Path
    python: str
    drain_timeout: float
    user: str | None = None
    startretries: int = START_RETRIES
    process: int | None = None

    @property
    def program(self) -> str:
        """The supervisord program name."""
        suffix = "" if self.process is None else f"-{self.process}"
        return f"{self.name}-gsocket{suffix}"

    @property
    def stopwaitsecs(self) -> int:
        """Seconds supervisord waits after SIGTERM: the drain plus a margin."""
        return math.ceil(self.drain_timeout) + STOP_MARGIN

    @property
    def command(self) -> str:
        """The command line supervisord runs."""
        return " ".join(
            shlex.quote(part)
            for part in (
                self.python,
                "-m",
                "gsocket",
                "serve",
                "--bench",
                str(self.bench),
                "--handover",
                *(() if self.process is None else ("--process", str(self.process))),
            )
        )

    def render(self) -> str:
        """The ``[program:<name>-gsocket]`` section, with its explanatory comment."""
        return PROGRAM_TEMPLATE.format(
            name=self.name,
            program=self.program,
            log="gsocket" if self.process is None else f"gsocket-{self.process}",
            command=self.command,
            drain=self.drain_timeout,
            stopwaitsecs=self.stopwaitsecs,
            startretries=self.startretries,
            bench=self.bench,
            user_line=f"user={self.user}\n" if self.user else "",
        )


@dataclass
class _Section:
    name: str | None
    lines: list[str]


def _sections(text: str) -> list[_Section]:
    """Split an INI text into sections, keeping every line (the head has no name).

    Comment lines right above a section header belong to that section: they describe it, and
    must go when it is replaced.
    """
    sections = [_Section(None, [])]
    for line in text.splitlines(keepends=True):
        match = SECTION.match(line)
        if match:
            previous = sections[-1].lines
            cut = len(previous)
            while cut and previous[cut - 1].lstrip().startswith((";", "#")):
                cut -= 1
            sections.append(_Section(match["name"].strip(), previous[cut:]))
            del previous[cut:]
        sections[-1].lines.append(line)
    return sections


def _option(section: _Section, key: str) -> str | None:
    for line in section.lines[1:]:
        k, sep, value = line.partition("=")
        if sep and k.strip() == key:
            return value.strip()
    return None


def bench_name(text: str | None, bench: Path) -> str:
    """The program-name prefix used in ``supervisor.conf``, else the bench folder's name."""
    if text:
        for section in _sections(text):
            for suffix in ("-node-socketio", "-frappe-web", "-gsocket"):
                if section.name and section.name.startswith("program:"):
                    program = section.name.removeprefix("program:")
                    if program.endswith(suffix):
                        return program.removesuffix(suffix)
    return bench.name


def node_option(text: str | None, name: str, key: str) -> str | None:
    """An option (``user``, ``startretries``) of the ``<name>-node-socketio`` program, or of an
    earlier gsocket program, which kept it."""
    if not text:
        return None
    for section in _sections(text):
        if section.name in (
            f"program:{name}-node-socketio",
            f"program:{name}-gsocket",
            f"program:{name}-gsocket-0",
        ):
            value = _option(section, key)
            if value:
                return value
    return None


def node_user(text: str | None, name: str) -> str | None:
    """The ``user=`` of the ``<name>-node-socketio`` (or existing gsocket) program."""
    return node_option(text, name, "user")


def node_startretries(text: str | None, name: str) -> int:
    """The Node program's ``startretries``, or :data:`START_RETRIES` when it has none."""
    value = node_option(text, name, "startretries")
    return int(value) if value and value.isdigit() else START_RETRIES


def _with_blank_line(lines: list[str]) -> list[str]:
    while lines and not lines[-1].strip():
        lines = lines[:-1]
    if lines and not lines[-1].endswith("\n"):
        lines = [*lines[:-1], lines[-1] + "\n"]
    return [*lines, "\n"]


def render_programs(programs: Sequence[Program]) -> str:
    """The programs' sections, one after the other, as ``config/gsocket.conf`` holds them."""
    return "\n".join(program.render() for program in programs)


def patch_supervisor_conf(text: str, programs: Program | Sequence[Program]) -> str:
    """Return ``supervisor.conf`` running gsocket instead of the Node realtime process.

    The Node program's section is replaced by gsocket's programs (earlier gsocket sections
    too, however many processes they ran, so the change can be made again after ``bench
    setup supervisor`` or a change of ``gsocket.processes``), and the ``<name>-web`` group
    lists gsocket's programs where it listed Node.
    """
    programs = [programs] if isinstance(programs, Program) else list(programs)
    name = programs[0].name
    node, group = f"program:{name}-node-socketio", f"group:{name}-web"
    ours = re.compile(rf"^program:{re.escape(name)}-gsocket(-\d+)?$")
    block = _sections(render_programs(programs))
    # The template's comment lines form the head section; they travel with the program.
    new_lines = [line for s in block for line in s.lines]
    names = [program.program for program in programs]
    out: list[str] = []
    placed = False
    for section in _sections(text):
        if section.name == node or (section.name and ours.match(section.name)):
            if not placed:
                out.extend(_with_blank_line(new_lines))
                placed = True
            continue
        if section.name == group:
            section = _Section(
                section.name, [_group_line(line, name, names) for line in section.lines]
            )
            if not placed:
                out.extend(_with_blank_line(new_lines))
                placed = True
        out.extend(section.lines)
    if not placed:
        out = _with_blank_line(out) + new_lines
    return "".join(out)


def _group_line(line: str, name: str, names: list[str]) -> str:
    key, sep, value = line.partition("=")
    if not sep or key.strip() != "programs":
        return line
    ours = re.compile(rf"^{re.escape(name)}-(node-socketio|gsocket(-\d+)?)$")
    programs: list[str] = []
    for p in (p.strip() for p in value.split(",") if p.strip()):
        programs.extend(names if ours.match(p) else [p])
    programs.extend(names)
    return f"{key}={','.join(dict.fromkeys(programs))}\n"


def show_diff(old: str, new: str, path: Path) -> str:
    """The change from ``old`` to ``new`` of ``path`` as a unified diff, for an operator to
    read before ``--apply`` (shared by ``setup supervisor`` and ``setup nginx``)."""
    return "".join(
        difflib.unified_diff(
            old.splitlines(keepends=True),
            new.splitlines(keepends=True),
            fromfile=str(path),
            tofile=f"{path} (gsocket)",
        )
    )


def apply_or_show(
    path: Path, text: str, patched: str, apply: bool, out: TextIO, intro: str
) -> None:
    """Rewrite a bench file (keeping its first original), or show the change to it.

    :param path: the bench's file (``config/supervisor.conf``, ``config/nginx.conf``).
    :param text: what it holds now.
    :param patched: what gsocket would write.
    :param apply: rewrite it; otherwise print ``intro`` and the diff for the operator.
    """
    if apply:
        backup = backup_file(path)
        path.write_text(patched)
        print(f"rewrote {path} (original kept as {backup})", file=out)
    else:
        print(intro, file=out)
        print(show_diff(text, patched, path), file=out)


def backup_file(path: Path) -> Path:
    """Keep the first original of a bench file as ``<name>.orig`` before it is rewritten (a
    second ``--apply`` keeps that first one, not gsocket's own earlier output)."""
    backup = path.with_name(path.name + ".orig")
    if not backup.exists():
        shutil.copy2(path, backup)
    return backup


def setup_supervisor(
    config: Config, apply: bool = False, python: str | None = None, out: TextIO = sys.stdout
) -> int:
    """Write ``config/gsocket.conf`` and show (or with ``apply`` make) the supervisor.conf change.

    :param config: the bench's configuration.
    :param apply: rewrite ``config/supervisor.conf``, keeping the first original as ``.orig``.
    :param python: interpreter for the command line; the running one by default.
    :returns: the exit status.
    """
    bench = config.bench_path
    conf_dir = bench / "config"
    conf_dir.mkdir(exist_ok=True)
    supervisor_conf = conf_dir / "supervisor.conf"
    text = supervisor_conf.read_text() if supervisor_conf.is_file() else None
    name = bench_name(text, bench)
    processes = range(config.processes) if config.processes > 1 else [None]
    programs = [
        Program(
            name=name,
            bench=bench,
            python=python or sys.executable,
            drain_timeout=config.drain_timeout,
            user=node_user(text, name),
            startretries=node_startretries(text, name),
            process=process,
        )
        for process in processes
    ]
    target = conf_dir / PROGRAM_FILE
    target.write_text(render_programs(programs))
    print(f"wrote {target}", file=out)
    if text is None:
        print(
            f"{supervisor_conf} does not exist (a development bench?): include {target} in "
            f"supervisord's configuration, or use `gsocket setup procfile --bench {bench}`",
            file=out,
        )
        return 0
    patched = patch_supervisor_conf(text, programs)
    if patched == text:
        print(f"{supervisor_conf} already runs gsocket; nothing to change", file=out)
        return 0
    apply_or_show(
        supervisor_conf,
        text,
        patched,
        apply,
        out,
        f"\nIn {supervisor_conf}, replace the [program:{name}-node-socketio] section by the "
        f"{'ones' if len(programs) > 1 else 'one'} in {target}, and list "
        f"{','.join(p.program for p in programs)} instead of {name}-node-socketio in "
        f"[group:{name}-web]; this is the change (--apply makes it for you):\n",
    )
    print(
        "Then load it: sudo supervisorctl reread && sudo supervisorctl update\n"
        "`bench setup supervisor` writes the Node program back: run "
        f"`gsocket setup supervisor --bench {bench} --apply` again after it.",
        file=out,
    )
    return 0


def procfile_line(bench: Path, python: str | None = None) -> str:
    """The ``socketio:`` line of a development bench's Procfile.

    ``bench start`` runs the Procfile from the bench folder, so an interpreter inside the
    bench (its ``env``) is named relative to it, like the bench's other Procfile lines.
    """
    interpreter = Path(python or sys.executable)
    if interpreter.is_relative_to(bench):
        interpreter = interpreter.relative_to(bench)
    parts = (str(interpreter), "-m", "gsocket", "serve", "--bench", ".")
    return "socketio: " + " ".join(shlex.quote(p) for p in parts)


def patch_procfile(text: str, line: str) -> str:
    """Return the Procfile with its ``socketio:`` process replaced by ``line`` (or added)."""
    lines = text.splitlines()
    replaced = [line if re.match(r"^\s*socketio\s*:", old) else old for old in lines]
    if replaced == lines and line not in lines:
        replaced.append(line)
    return "\n".join(replaced) + "\n"


def setup_procfile(
    config: Config, apply: bool = False, python: str | None = None, out: TextIO = sys.stdout
) -> int:
    """Show (or with ``apply`` write) the Procfile line that runs gsocket under ``bench start``.

    :returns: the exit status.
    """
    procfile = config.bench_path / "Procfile"
    line = procfile_line(config.bench_path, python)
    if not procfile.is_file():
        print(f"{procfile} does not exist; add this line to it:\n{line}", file=out)
        return 0
    text = procfile.read_text()
    patched = patch_procfile(text, line)
    if patched == text:
        print(f"{procfile} already runs gsocket", file=out)
    elif apply:
        backup = backup_file(procfile)
        procfile.write_text(patched)
        print(f"rewrote {procfile} (original kept as {backup}):\n{line}", file=out)
    else:
        print(f"In {procfile}, use this socketio line (--apply writes it):\n{line}", file=out)
    return 0
