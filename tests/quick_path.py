"""What tests/test_quick_path.py needs to follow the docs as a new user would: the marked command
blocks of a markdown file, a fresh "clone" to run them in, and raters who answer through the
labeling app's HTTP API while ``make label`` serves.

A block is marked by the line ``<!-- quick-path: NAME -->`` right before its opening ```bash fence;
its commands are the block's lines with backslash continuations joined, comments and blank
lines dropped.  The commands run with bash in the clone exactly as written, but for the
substitutions the test names (the user's model folders, sizes) and a free port for the app.
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# What a fresh clone does not have: made by the stages (or by make install, which the fake venv
# stands in for).
NOT_CLONED = {".git", ".venv", "datasets", "runs", "reports", ".pytest_cache", "__pycache__"}


def marked_blocks(path: Path, name: str) -> list[list[str]]:
    """The commands of every ```bash block marked ``quick-path: name`` in ``path``, block by block."""
    lines = path.read_text().splitlines()
    marker = f"<!-- quick-path: {name} -->"
    blocks = []
    for i, line in enumerate(lines):
        if line.strip() != marker:
            continue
        assert lines[i + 1].strip() == "```bash", f"{path.name}: {marker} must stand right before a ```bash fence"
        end = lines.index("```", i + 2)
        blocks.append(commands(lines[i + 2:end]))
    assert blocks, f"{path.name} has no block marked {marker}"
    return blocks


def marked_swaps(path: Path, name: str) -> dict[str, dict[str, str]]:
    """The swap table marked ``quick-path: name`` in ``path`` (a first column of text as a block has it,
    a column per variant with its replacement, each cell in backticks): {variant: {old: new}}."""
    lines = path.read_text().splitlines()
    i = lines.index(f"<!-- quick-path: {name} -->")
    rows = []
    for line in lines[i + 1:]:
        if not line.startswith("|"):
            break
        rows.append([c.strip() for c in line.strip("|").split("|")])
    header, body = rows[0], rows[2:]
    assert body and all(c.startswith("`") and c.endswith("`") for r in body for c in r), f"{path.name}: {name}"
    return {variant: {r[0].strip("`"): r[j].strip("`") for r in body} for j, variant in enumerate(header) if j}


def commands(lines: list[str]) -> list[str]:
    joined, buf = [], ""
    for line in lines:
        buf += line.rstrip()
        if buf.endswith("\\"):
            buf = buf[:-1] + " "
            continue
        if buf.strip() and not buf.lstrip().startswith("#"):
            joined.append(buf.strip())  # as bash reads it: a trailing comment is a comment
        buf = ""
    return joined


def target(command: str) -> str:
    """The make target of a command line (``make finetune METHOD=dpok ...`` -> ``finetune``)."""
    words = shlex.split(command, comments=True)
    assert words[0] == "make", f"not a make command: {command}"
    return next(w for w in words[1:] if "=" not in w)


def with_args(command: str, extra: str) -> str:
    """``command`` with ``extra`` appended inside its ARGS="..." (later keys win)."""
    if not extra:
        return command
    if 'ARGS="' not in command:
        return f'{command} ARGS="{extra}"'
    return re.sub(r'ARGS="([^"]*)"', lambda m: f'ARGS="{m.group(1)} {extra}"', command, count=1)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Clone:
    """A folder laid out as a fresh clone (every top-level entry of the repository linked, nothing
    the stages make), where ``make`` runs with a venv that is the test's own interpreter."""

    def __init__(self, where: Path, subs: dict[str, str]):
        self.dir = where
        self.subs = subs
        where.mkdir(parents=True)
        for entry in ROOT.iterdir():
            if entry.name not in NOT_CLONED:
                (where / entry.name).symlink_to(entry)
        venv = where.parent / f"{where.name}-venv"
        (venv / "bin").mkdir(parents=True)
        py = venv / "bin" / "python"
        py.write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
        py.chmod(0o755)
        # make install is done: its stamps newer than pyproject.toml, the spec the Makefile's default
        (venv / ".torch-spec").write_text(re.search(r"^TORCH_SPEC \?= (.+)$", (ROOT / "Makefile").read_text(),
                                                    re.M).group(1) + "\n")
        (venv / ".installed").touch()
        drop = ("ARGS", "CONFIG", "METHOD", "TORCH_SPEC", "MAKEFLAGS", "MAKELEVEL", "MFLAGS", "VENV", "PYTHONPATH")
        self.env = {**{k: v for k, v in os.environ.items() if k not in drop}, "VENV": str(venv),
                    "PYTHONUNBUFFERED": "1", "GRADIO_ANALYTICS_ENABLED": "False"}
        self.logs = where.parent / f"{where.name}-logs"
        self.logs.mkdir()
        self.steps: list[tuple[str, float]] = []

    def line(self, command: str) -> str:
        for old, new in self.subs.items():
            command = command.replace(old, new)
        return command

    def run(self, command: str, stdin: str | None = None, timeout: float = 300) -> str:
        """Run one doc line; its output, or a failure naming the line and the tail of its log."""
        line = self.line(command)
        log = self.logs / f"{len(self.steps):02d}-{target(command)}.log"
        t0 = time.monotonic()
        with open(log, "w") as out:
            proc = subprocess.Popen(["bash", "-c", line], cwd=self.dir, env=self.env, stdout=out,
                                    stderr=subprocess.STDOUT, stdin=subprocess.PIPE, text=True,
                                    start_new_session=True)
            try:
                proc.communicate(stdin, timeout=timeout)
            finally:  # a timeout (ours or pytest-timeout's) must not leave make's python running
                if proc.poll() is None:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
        self.steps.append((command, time.monotonic() - t0))
        text = log.read_text()
        assert proc.returncode == 0, f"step failed (exit {proc.returncode}): {line}\n{tail(text)}"
        return text

    def serve(self, command: str, label, timeout: float = 120) -> str:
        """Start a ``make label`` doc line, let ``label(url)`` answer through the app, stop it with
        Ctrl-C; the server's output."""
        port = free_port()
        line = self.line(with_args(command, f"server.port={port}"))
        log = self.logs / f"{len(self.steps):02d}-label.log"
        t0 = time.monotonic()
        with open(log, "w") as out:
            proc = subprocess.Popen(["bash", "-c", line], cwd=self.dir, env=self.env, stdout=out,
                                    stderr=subprocess.STDOUT, start_new_session=True)
        url = f"http://127.0.0.1:{port}/"
        try:
            wait_for(url, proc, log, timeout)
            label(url)
        finally:
            # Ctrl-C to the group we started (make and its python).  Gradio then waits ~5 s for
            # the raters' open connections; a second Ctrl-C, as an impatient lead types it, ends
            # that wait (every answer was saved when its "Saved" came back).
            for wait in (1, 20):
                if proc.poll() is None:
                    os.killpg(proc.pid, signal.SIGINT)
                    try:
                        proc.wait(timeout=wait)
                    except subprocess.TimeoutExpired:
                        pass
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        self.steps.append((command, time.monotonic() - t0))
        return log.read_text()


def wait_for(url: str, proc: subprocess.Popen, log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"make label exited with {proc.returncode}:\n{tail(log.read_text())}"
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except urllib.error.HTTPError:
            return  # it answers (the login page): up
        except (urllib.error.URLError, OSError):
            time.sleep(0.25)
    raise AssertionError(f"make label did not answer within {timeout:.0f} s:\n{tail(log.read_text())}")


def tail(text: str, n: int = 40) -> str:
    # progress bars redraw with \r: keep each line's last state
    return "\n".join(line.rsplit("\r", 1)[-1] for line in text.splitlines()[-n:])


# ---------------------------------------------------------------------------------------------
# Raters through the app's API (gradio_client, as tools/loadtest_label.py): each signs in and
# answers every binary item and ranking set the app hands them until it has none left.

def label_through_app(url: str, raters: dict[str, str], good) -> dict[str, int]:
    """``raters``: name -> password; ``good(prompt, file_name)``: the answer a person gives.
    Rankings put the good images first (rank 1), the others after (rank 2).  Answers counted."""
    from gradio_client import Client

    from labeling_app.views import shown_token

    counts = {"binary": 0, "ranking": 0}
    for name, password in raters.items():
        client = Client(url, auth=(name, password), verbose=False, download_files=False, ssl_verify=False)
        shown = client.predict(api_name="/next_binary")  # outputs: image, prompt, status, progress, reason
        while shown[0] is not None:
            prompt, files = item(shown[1])
            answer = "/good" if good(prompt, files[0]) else "/bad"
            shown = client.predict("", shown_token(shown[1]), api_name=answer)
            assert "Saved" in shown[2], f"{name}'s answer was not saved: {shown[2]}"
            counts["binary"] += 1
        shown = client.predict(api_name="/next_ranking")  # prompt, images x S, radios x S, status, progress
        while shown_token(shown[0]):
            prompt, files = item(shown[0])
            slots = (len(shown) - 3) // 2
            ranks = [1 if good(prompt, f) else 2 for f in files]
            if 1 not in ranks:  # no number left out: all bad is all equal
                ranks = [1] * len(ranks)
            shown = client.predict(shown_token(shown[0]), *ranks, *([None] * (slots - len(ranks))),
                                   api_name="/submit_ranking")
            assert "Saved" in shown[-2], f"{name}'s ranking was not saved: {shown[-2]}"
            counts["ranking"] += 1
        client.close()
    return counts


def item(prompt_html: str) -> tuple[str, list[str]]:
    """(prompt text, image file names) of the item a prompt output shows."""
    files = re.search(r'data-files="([^"]*)"', prompt_html).group(1).split("/")
    text = re.sub(r"<[^>]+>", "", prompt_html).strip()
    import html

    return html.unescape(text), files
