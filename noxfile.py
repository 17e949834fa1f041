"""Thin nox sessions: tests (every CPython >= 3.11 on this machine), lint, typecheck, bench.

Interpreters are discovered rather than listed, because pyenv's shims answer for
versions that are not selected; a session per interpreter that really runs.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess

import nox

nox.options.sessions = ["tests", "lint", "typecheck"]
nox.options.default_venv_backend = "venv"
nox.options.reuse_existing_virtualenvs = True


def _runs(python: str) -> bool:
    try:
        done = subprocess.run([python, "-c", "pass"], capture_output=True, timeout=30, check=False)
    except OSError:
        return False
    return done.returncode == 0


def _interpreters() -> list[str]:
    """Versions ("3.11", ...) of each CPython >= 3.11 found on PATH or under pyenv.

    A pyenv interpreter's directory is put on PATH so that nox resolves "3.x" to it.
    """
    found: list[str] = []
    pyenv_root = os.environ.get("PYENV_ROOT", os.path.expanduser("~/.pyenv"))
    for minor in range(11, 20):
        name = f"python3.{minor}"
        candidates = [shutil.which(name) or ""]
        candidates += sorted(
            glob.glob(os.path.join(pyenv_root, "versions", f"3.{minor}.*", "bin", name)),
            reverse=True,
        )
        for candidate in candidates:
            if candidate and _runs(candidate):
                bindir = os.path.dirname(candidate)
                os.environ["PATH"] = bindir + os.pathsep + os.environ.get("PATH", "")
                found.append(f"3.{minor}")
                break
    return found


PYTHONS = _interpreters()


PYPROJECT = nox.project.load_toml("pyproject.toml")


def _install(session: nox.Session, *groups: str, project: bool = True) -> None:
    """The project (editable) and its dependency groups, read by nox so any pip works."""
    requirements = nox.project.dependency_groups(PYPROJECT, *groups) if groups else ()
    session.install(*(["-e", "."] if project else []), *requirements)


@nox.session(python=PYTHONS)
def tests(session: nox.Session) -> None:
    """The default suite: unit, property and real-peer tests."""
    _install(session, "test", "bench")  # bench: the chart test needs matplotlib
    # Two workers (pytest-xdist): most tests wait on sockets, subprocesses and timeouts rather
    # than on the CPU, and one worker per core keeps the whole run under 10 minutes on 2 cores.
    session.run("pytest", "-n", "2", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    _install(session, "lint", project=False)
    session.run("ruff", "format", "--check", ".")
    session.run("ruff", "check", ".")


@nox.session
def typecheck(session: nox.Session) -> None:
    _install(session, "typecheck")
    session.run("mypy")


@nox.session
def bench(session: nox.Session) -> None:
    """Benchmarks report ratios against baselines measured in the same run."""
    _install(session, "bench")
    session.run("python", "benchmarks/verify.py")
    session.run("python", "benchmarks/handshake.py", *session.posargs)
    session.run("meshtls", "bench", "bulk")
    session.run("meshtls", "bench", "mesh", "--nodes", "10,50")
    session.run("meshtls", "bench", "messages")
