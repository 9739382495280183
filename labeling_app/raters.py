"""Rater accounts: a JSON file of salted scrypt password hashes, and the login check.

The file (default ``datasets/raters.json``, git-ignored, mode 0600) looks like::

    {"version": 1, "raters": {"alice": {"kdf": "scrypt", "n": 16384, "r": 8, "p": 1,
                                        "salt": "<hex>", "hash": "<hex>", "admin": false,
                                        "disabled": false, "created_at": "..."}}}

It never holds a password.  ``python -m pipelines.raters add|disable|enable|list`` edits it; the
running app re-reads it when it changes, so a disabled rater is refused at the next request, not
at the next restart.  Gradio's built-in login has no rate limiting, so :class:`LoginThrottle`
delays further tries, per client address and per (client, name), after repeated wrong passwords.
"""

from __future__ import annotations

import fcntl
import getpass
import hashlib
import hmac
import json
import os
import re
import secrets
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator

from core.errors import UserError
from labeling_app.config import LoginConfig

RATER_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
MIN_PASSWORD_LENGTH = 8
# scrypt cost: 2^14 x 8 x 128 B = 16 MiB and ~50 ms per check on one core; enough to make an
# offline guess of a stolen file slow, cheap enough for a login.
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2 ** 14, 8, 1


@dataclass(frozen=True)
class RaterAccount:
    rater_id: str
    admin: bool
    disabled: bool
    created_at: str


def hash_password(password: str, salt: bytes | None = None, n: int = SCRYPT_N, r: int = SCRYPT_R,
                  p: int = SCRYPT_P) -> dict:
    salt = secrets.token_bytes(16) if salt is None else salt
    digest = hashlib.scrypt(password.encode(), salt=salt, n=n, r=r, p=p, maxmem=64 * 2 ** 20, dklen=32)
    return {"kdf": "scrypt", "n": n, "r": r, "p": p, "salt": salt.hex(), "hash": digest.hex()}


def check_password(password: str, record: dict) -> bool:
    if record.get("kdf") != "scrypt":
        return False
    try:
        digest = hashlib.scrypt(password.encode(), salt=bytes.fromhex(record["salt"]), n=int(record["n"]),
                                r=int(record["r"]), p=int(record["p"]), maxmem=64 * 2 ** 20, dklen=32)
    except (KeyError, ValueError):
        return False
    return hmac.compare_digest(digest.hex(), record["hash"])


def _validate_id(rater_id: str) -> str:
    if not RATER_ID_RE.match(rater_id or ""):
        raise UserError(f"rater id {rater_id!r} is not allowed.",
                        "use 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit.")
    return rater_id


class RatersFile:
    """Read and edit a raters file; reads are cached until the file's mtime changes."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._cache: tuple[float, int, dict] | None = None
        self._lock = threading.Lock()

    # -- reading ---------------------------------------------------------------------------

    def _load(self) -> dict:
        try:
            st = self.path.stat()
        except FileNotFoundError:
            return {"version": 1, "raters": {}}
        with self._lock:
            if self._cache is not None and self._cache[:2] == (st.st_mtime, st.st_size):
                return self._cache[2]
            try:
                data = json.loads(self.path.read_text())
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                raise UserError(f"raters file {self.path} is not valid JSON ({e}).",
                                "restore it from a backup, or move it away and add the raters again.") from None
            if not isinstance(data, dict) or not isinstance(data.get("raters"), dict):
                raise UserError(f"raters file {self.path} has no 'raters' mapping.",
                                "create it with `python -m pipelines.raters add <id>`.")
            self._cache = (st.st_mtime, st.st_size, data)
            return data

    def account(self, rater_id: str) -> RaterAccount | None:
        rec = self._load()["raters"].get(rater_id)
        if rec is None:
            return None
        return RaterAccount(rater_id, bool(rec.get("admin", False)), bool(rec.get("disabled", False)),
                            str(rec.get("created_at", "")))

    def accounts(self) -> list[RaterAccount]:
        return [self.account(r) for r in sorted(self._load()["raters"])]

    def verify(self, rater_id: str, password: str) -> bool:
        """True for an enabled rater with this password (constant time in the password)."""
        rec = self._load()["raters"].get(rater_id)
        if rec is None:
            # Spend the same time as a real check so response times do not reveal user names.
            check_password(password, _DUMMY_RECORD)
            return False
        ok = check_password(password, rec)
        return ok and not rec.get("disabled", False)

    def is_active(self, rater_id: str | None) -> bool:
        acc = self.account(rater_id) if rater_id else None
        return acc is not None and not acc.disabled

    def is_admin(self, rater_id: str | None) -> bool:
        acc = self.account(rater_id) if rater_id else None
        return acc is not None and acc.admin and not acc.disabled

    # -- editing ---------------------------------------------------------------------------

    @contextmanager
    def _editing(self) -> Iterator[dict]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        lock_path = self.path.with_name(f".{self.path.name}.lock")
        with open(lock_path, "a+") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                with self._lock:
                    self._cache = None
                data = self._load()
                data = {"version": 1, "raters": dict(data["raters"])}
                yield data
                tmp = self.path.with_name(f".{self.path.name}.tmp")
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                with os.fdopen(fd, "w") as f:
                    json.dump(data, f, indent=1, sort_keys=True)
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(tmp, self.path)
                with self._lock:
                    self._cache = None
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def add(self, rater_id: str, password: str, admin: bool = False, replace: bool = False) -> RaterAccount:
        _validate_id(rater_id)
        if len(password) < MIN_PASSWORD_LENGTH:
            raise UserError(f"the password for {rater_id} is shorter than {MIN_PASSWORD_LENGTH} characters.",
                            f"choose a password of {MIN_PASSWORD_LENGTH} or more characters.")
        with self._editing() as data:
            if rater_id in data["raters"] and not replace:
                raise UserError(f"rater {rater_id} already exists in {self.path}.",
                                "pick another id, or use `passwd` to set a new password.")
            data["raters"][rater_id] = {
                **hash_password(password), "admin": admin, "disabled": False,
                "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            }
        return self.account(rater_id)

    def set_password(self, rater_id: str, password: str) -> None:
        if len(password) < MIN_PASSWORD_LENGTH:
            raise UserError(f"the password is shorter than {MIN_PASSWORD_LENGTH} characters.",
                            f"choose a password of {MIN_PASSWORD_LENGTH} or more characters.")
        with self._editing() as data:
            rec = self._require(data, rater_id)
            rec.update(hash_password(password))

    def set_disabled(self, rater_id: str, disabled: bool) -> None:
        with self._editing() as data:
            self._require(data, rater_id)["disabled"] = disabled

    def set_admin(self, rater_id: str, admin: bool) -> None:
        with self._editing() as data:
            self._require(data, rater_id)["admin"] = admin

    def _require(self, data: dict, rater_id: str) -> dict:
        if rater_id not in data["raters"]:
            raise UserError(f"no rater {rater_id!r} in {self.path}.",
                            f"list them with `python -m pipelines.raters list --file {self.path}`.")
        data["raters"][rater_id] = dict(data["raters"][rater_id])
        return data["raters"][rater_id]


_DUMMY_RECORD = hash_password("not-a-password", salt=b"\0" * 16)


@dataclass
class _Strikes:
    failures: int = 0      # wrong passwords since the key was last forgotten
    last: float = 0.0      # time of the last one (clock seconds)
    until: float = 0.0     # no attempt for this key before this time


class LoginThrottle:
    """Growing delays after wrong passwords, kept per client address and per (client, name).

    Gradio's login has no rate limiting of its own.  A fixed lock per *name* would let anyone lock
    a rater out, and one client could still try many names; so every wrong password counts against
    two keys: the client (any names; ``free_per_client`` free tries) and the client with that name
    (``free_per_name`` free tries).  Past its free tries a key must wait ``base_delay_s``, doubled
    with each further wrong password (at most ``max_delay_s``), before its next attempt; a key's
    tries are forgotten ``forget_s`` after its last one, and a right password clears its
    (client, name) key.  Another client is never delayed: the right password from elsewhere works.
    """

    MAX_KEYS = 100_000  # memory bound: past it, keys with nothing left to remember are dropped

    def __init__(self, cfg: LoginConfig = LoginConfig(), clock=time.monotonic):
        self.cfg, self.clock = cfg, clock
        self._strikes: dict[tuple[str, ...], _Strikes] = {}
        self._lock = threading.Lock()

    def _keys(self, client: str, name: str) -> tuple[tuple[tuple[str, ...], int], ...]:
        return ((client,), self.cfg.free_per_client), ((client, name), self.cfg.free_per_name)

    def wait_s(self, client: str, name: str, now: float | None = None) -> float:
        """Seconds before ``client`` may try ``name`` (0: now)."""
        now = self.clock() if now is None else now
        with self._lock:
            return max([0.0] + [s.until - now for k, _ in self._keys(client, name)
                                if (s := self._strikes.get(k)) is not None])

    def record(self, client: str, name: str, ok: bool, now: float | None = None) -> None:
        now = self.clock() if now is None else now
        with self._lock:
            if ok:
                self._strikes.pop((client, name), None)
                return
            for key, free in self._keys(client, name):
                s = self._strikes.setdefault(key, _Strikes())
                if now - s.last > self.cfg.forget_s:
                    s.failures = 0
                s.failures += 1
                s.last = now
                if s.failures > free:
                    s.until = now + min(self.cfg.max_delay_s, self.cfg.base_delay_s * 2.0 ** (s.failures - free - 1))
            if len(self._strikes) > self.MAX_KEYS:
                self._strikes = {k: s for k, s in self._strikes.items()
                                 if now - s.last <= self.cfg.forget_s or s.until > now}


def make_auth(raters: RatersFile):
    """An async ``auth(username, password) -> bool`` for ``launch(auth=...)`` (the throttle sits
    in front of Gradio's login route, where the client address is known: labeling_app.web).

    Async because Gradio calls a plain function inside its event loop, and scrypt takes ~50 ms:
    the check runs in a worker thread so logins do not stall every other request.
    """
    import asyncio

    async def auth(username: str, password: str) -> bool:
        return await asyncio.to_thread(raters.verify, username, password)

    return auth


def _first_line(text: str, source: str) -> str:
    pw = text.split("\n", 1)[0].rstrip("\r")
    if not pw:
        raise UserError(f"no password in {source} (its first line is empty).",
                        "put the password on the first line.")
    return pw


def read_password(rater: str, password_file: str | None = None, from_stdin: bool = False) -> str:
    """A new password for ``rater``: the first line of ``password_file``, else of standard input
    when that is not a terminal (or ``from_stdin``), else asked for twice on the terminal."""
    if password_file:
        try:
            return _first_line(Path(password_file).read_text(), password_file)
        except OSError as e:
            raise UserError(f"cannot read the password file {password_file} ({e.strerror}).",
                            "pass PASSWORD_FILE=<a readable file holding the password>.") from None
    if from_stdin or not sys.stdin.isatty():
        # No terminal (make without one, a script, CI): the password comes piped in.
        return _first_line(sys.stdin.readline(), "standard input")
    pw = getpass.getpass(f"password for {rater}: ")
    if getpass.getpass("again: ") != pw:
        raise UserError("the two passwords differ.", "run the command again.")
    return pw

