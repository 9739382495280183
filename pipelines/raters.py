"""Manage the raters who can sign in to the labeling app (salted scrypt hashes, never passwords).

    python -m pipelines.raters add alice [--admin] [--password-file F | --password-stdin] [--file datasets/raters.json]
    python -m pipelines.raters passwd alice | disable alice | enable alice | list

The password is the first line of --password-file, else of standard input when that is not a
terminal (or with --password-stdin); on a terminal it is asked for twice.  A running app sees
changes at the rater's next request (a disabled rater is signed out of everything at once).
"""

from __future__ import annotations

import argparse
import sys

from core.errors import UserError
from labeling_app.config import LabelConfig
from labeling_app.raters import RatersFile, read_password
from pipelines.cli import run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--file", default=LabelConfig().raters_file, help="raters file (default: %(default)s)")
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("add", "passwd"):
        p = sub.add_parser(name)
        p.add_argument("rater")
        src = p.add_mutually_exclusive_group()
        src.add_argument("--password-file", help="read the password from the first line of this file")
        src.add_argument("--password-stdin", action="store_true",
                         help="read the password from stdin (the default when stdin is not a terminal)")
        if name == "add":
            p.add_argument("--admin", action="store_true", help="may see the admin tab and export")
    for name in ("disable", "enable"):
        sub.add_parser(name).add_argument("rater")
    sub.add_parser("list")
    args = parser.parse_args(argv)
    raters = RatersFile(args.file)
    if args.command == "add":
        acc = raters.add(args.rater, read_password(args.rater, args.password_file, args.password_stdin), admin=args.admin)
        print(f"added {acc.rater_id}{' (admin)' if acc.admin else ''} to {raters.path}")
    elif args.command == "passwd":
        if raters.account(args.rater) is None:
            raise UserError(f"no rater {args.rater!r} in {raters.path}.", "add the rater first.")
        raters.set_password(args.rater, read_password(args.rater, args.password_file, args.password_stdin))
        print(f"new password set for {args.rater}")
    elif args.command in ("disable", "enable"):
        raters.set_disabled(args.rater, args.command == "disable")
        print(f"{args.command}d {args.rater}")
    else:
        for a in raters.accounts():
            flags = ", ".join(f for f, on in (("admin", a.admin), ("disabled", a.disabled)) if on)
            print(f"{a.rater_id}\t{flags or '-'}\tadded {a.created_at}")
    return 0


if __name__ == "__main__":
    sys.exit(run(main))
