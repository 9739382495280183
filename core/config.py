"""Typed stage configs: frozen dataclasses loaded from YAML with dotted command-line overrides.

Each stage defines one frozen dataclass (nested where it helps).  An entry point does::

    cfg = load_config(RewardConfig, path="configs/reward.yaml", overrides=["train.lr=3e-4"])
    save_config(cfg, out_dir / "config.yaml")

Values are checked against the field types (``int``, ``float``, ``bool``, ``str``, ``Literal``,
``Optional``, tuples, nested dataclasses) and against the range a field declares
(``rounds: PositiveInt``, ``lr: PositiveFloat``, ``share: Share``: :class:`Bounds`); numbers must
be finite.  An unknown key or a wrong value is a :class:`UserError` naming the key and the
allowed values.  A key a section has dropped (its ``REMOVED`` table of :class:`Removed`) is an
error naming the key and why it went, unless it is set to the value that does what the code now
always does: a file written before the removal then still loads.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar, get_args, get_origin, get_type_hints

import yaml

from core.errors import UserError

T = TypeVar("T")


@dataclass(frozen=True)
class Bounds:
    """The range a number field accepts, declared in its type (``Annotated[int, Bounds(low=1)]``)
    and checked by the loader, so a count of 0 or a negative learning rate fails when the config
    loads, before any model or file is touched.  ``open_low`` / ``open_high``: ``low`` / ``high``
    itself is excluded."""

    low: float | None = None
    high: float | None = None
    open_low: bool = False
    open_high: bool = False

    def describe(self) -> str:
        low = None if self.low is None else f"{'>' if self.open_low else '>='} {self.low:g}"
        high = None if self.high is None else f"{'<' if self.open_high else '<='} {self.high:g}"
        if low and high:
            return f"in {'(' if self.open_low else '['}{self.low:g}, {self.high:g}{')' if self.open_high else ']'}"
        return low or high or "any number"

    def check(self, value: float, where: str) -> None:
        too_low = self.low is not None and (value <= self.low if self.open_low else value < self.low)
        too_high = self.high is not None and (value >= self.high if self.open_high else value > self.high)
        if too_low or too_high:
            kind = "a whole number" if isinstance(value, int) else "a number"
            raise UserError(f"{where}={value!r} must be {self.describe()}.", f"set {where} to {kind} {self.describe()}.")


@dataclass(frozen=True)
class Removed:
    """A key a config section no longer has, or one value a key no longer takes (the section's
    ``REMOVED: ClassVar[dict[str, Removed]]``, keyed ``name`` or ``name=value``).  ``keeps``: for a
    key, the value whose behaviour the code kept, accepted and ignored; ``why``: where the
    measurement that removed it is written up."""

    keeps: Any
    why: str


PositiveInt = Annotated[int, Bounds(low=1)]  # a count of things that must happen at least once
NonNegativeInt = Annotated[int, Bounds(low=0)]  # a count where 0 means none / off
PositiveFloat = Annotated[float, Bounds(low=0, open_low=True)]  # rates, scales, temperatures
NonNegativeFloat = Annotated[float, Bounds(low=0)]  # weights and decays where 0 turns a term off
Share = Annotated[float, Bounds(low=0, high=1)]  # a probability or a fraction


def check_bounds(cfg: Any, context: str = "") -> None:
    """Check a dataclass's fields against the :class:`Bounds` their types declare, for one built in
    code rather than by :func:`load_config` (which checks them as it builds): call it from
    ``__post_init__``.  A value out of range is the loader's :class:`UserError`, its problem led by
    ``context`` (e.g. ``"rater r1: "``)."""
    hints = get_type_hints(type(cfg), include_extras=True)
    for f in dataclasses.fields(cfg):
        if get_origin(hints[f.name]) is not Annotated or (value := getattr(cfg, f.name)) is None:
            continue
        inner, *extras = get_args(hints[f.name])
        if inner is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)  # as the loader reads it: the message then says "a number"
        for bounds in extras:
            if isinstance(bounds, Bounds):
                try:
                    bounds.check(value, f.name)
                except UserError as e:
                    raise UserError(f"{context}{e.problem}", e.fix) from None


def _set_dotted(tree: dict, dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node = tree
    for k in keys[:-1]:
        child = node.setdefault(k, {})
        if not isinstance(child, dict):
            raise UserError(f"override '{dotted}': '{k}' is a value, not a section.",
                            "override a leaf key, e.g. train.lr=1e-4.")
        node = child
    node[keys[-1]] = value


def _split_list(raw: str) -> list[str] | None:
    """``[a=1, b=[1, 2]]`` -> ``["a=1", "b=[1, 2]"]``: a list whose items hold brackets of their own
    (a workflow's ``dpok_args=[dpok.window=[0,8]]``), split at its top-level commas, which YAML's
    flow syntax cannot read unquoted; None when ``raw`` is no such list."""
    if not (raw.startswith("[") and raw.endswith("]")):
        return None
    items, depth, start = [], 0, 1
    for i, c in enumerate(raw[1:-1], 1):
        depth += {"[": 1, "]": -1}.get(c, 0)
        if depth < 0:
            return None
        if c == "," and depth == 0:
            items.append(raw[start:i].strip())
            start = i + 1
    items.append(raw[start:-1].strip())
    return None if depth else [item for item in items if item]


def _rejoin_lists(overrides: list[str] | tuple[str, ...]) -> list[str]:
    """Words a shell split inside one ``[...]`` or ``{...}`` value joined back with a space:
    ``make eval ARGS="models=[a=x, b=y]"`` reaches argv as ``models=[a=x,`` and ``b=y]``."""
    out: list[str] = []
    depth = 0
    for item in overrides:
        if depth > 0:
            out[-1] += " " + item
        else:
            out.append(item)
        if depth == 0:
            value = item.split("=", 1)[1] if "=" in item else ""
            if not value.startswith(("[", "{")):
                continue  # only a list or mapping value opens a join (a path may hold a bracket)
        else:
            value = item
        depth = max(depth + sum(value.count(c) for c in "[{") - sum(value.count(c) for c in "]}"), 0)
    return out


def parse_overrides(overrides: list[str] | tuple[str, ...]) -> dict:
    """``["a.b=1", "c=x"]`` -> ``{"a": {"b": 1}, "c": "x"}`` (values parsed as YAML scalars; a
    list value split by the shell at its spaces is joined back first)."""
    tree: dict = {}
    for item in _rejoin_lists(overrides):
        if "=" not in item:
            raise UserError(f"override '{item}' has no '='.", "write key=value, e.g. train.lr=1e-4.")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError:
            value = _split_list(raw.strip())
            value = raw if value is None else value
        if isinstance(value, bool) and raw.strip().lower() not in ("true", "false"):
            value = raw  # YAML 1.1 reads yes/no/on/off as booleans; the field type decides

        _set_dotted(tree, key.strip(), value)
    return tree


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _coerce(value: Any, typ: Any, where: str) -> Any:
    origin = get_origin(typ)
    if typ is Any:
        return value
    if origin is Annotated:
        inner, *extras = get_args(typ)
        value = _coerce(value, inner, where)
        for bounds in extras:
            if isinstance(bounds, Bounds) and value is not None:
                bounds.check(value, where)
        return value
    if dataclasses.is_dataclass(typ):
        if isinstance(value, typ):
            return value
        if not isinstance(value, dict):
            raise UserError(f"config key '{where}' must be a section (mapping), got {value!r}.",
                            f"see the fields of {typ.__name__}.")
        return _build(typ, value, f"{where}.")
    if origin is Literal:
        allowed = get_args(typ)
        if isinstance(value, bool) and value not in allowed:  # `key: no` in a YAML file
            value = next((w for w in (("yes", "on") if value else ("no", "off")) if w in allowed), value)
        if value not in allowed:
            raise UserError(f"config key '{where}' is {value!r}, not one of {list(allowed)}.",
                            f"set {where} to one of {list(allowed)}.")
        return value
    if origin in (typing.Union, types.UnionType):
        args = get_args(typ)
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, where)
            except UserError as e:
                errors.append(e)
        raise errors[0]
    if origin in (tuple, list):
        args = get_args(typ)
        if not isinstance(value, (list, tuple)):
            value = [value]
        if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0], f"{where}[{i}]") for i, v in enumerate(value))
        if origin is tuple and args:
            if len(args) != len(value):
                raise UserError(f"config key '{where}' needs {len(args)} values, got {len(value)}.",
                                f"give {where} {len(args)} values.")
            return tuple(_coerce(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
        inner = args[0] if args else Any
        out = [_coerce(v, inner, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(out) if origin is tuple else out
    if origin is dict:
        if not isinstance(value, dict):
            raise UserError(f"config key '{where}' must be a mapping, got {value!r}.",
                            f"write {where} as key: value pairs.")
        return dict(value)
    if typ is bool:
        if isinstance(value, str) and value.lower() in ("yes", "no", "on", "off"):
            value = value.lower() in ("yes", "on")
        if isinstance(value, bool):
            return value
        raise UserError(f"config key '{where}' must be true or false, got {value!r}.",
                        f"set {where}=true or {where}=false.")
    if typ is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise UserError(f"config key '{where}' must be an integer, got {value!r}.",
                        f"set {where} to a whole number.")
    if typ is float:
        if isinstance(value, str):  # YAML 1.1 reads "1e-4" (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            value = float(value)
            if value != value:  # NaN
                raise UserError(f"config key '{where}' is NaN.", f"set {where} to a finite number.")
            if math.isinf(value):  # no field reads infinity as "no limit"; it only overflows later
                raise UserError(f"config key '{where}' is {value}.", f"set {where} to a finite number.")
            return value
        raise UserError(f"config key '{where}' must be a number, got {value!r}.",
                        f"set {where} to a number, e.g. 1e-4.")
    if typ is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise UserError(f"config key '{where}' must be a string, got {value!r}.",
                        f"set {where} to a text value.")
    if typ is Path:
        return Path(str(value))
    return value


def _drop_removed(cls: type, values: dict, prefix: str, fields: set[str]) -> dict:
    """``values`` without the removed keys set to the value the code kept; any other value of one
    is an error naming it."""
    removed: dict[str, Removed] = getattr(cls, "REMOVED", {})
    out = {}
    for name, value in values.items():
        gone_value = removed.get(f"{name}={value}") if name in fields and isinstance(value, str) else None
        if gone_value is not None:
            raise UserError(f"config value {prefix}{name}={value} was removed: it was measured not to help "
                            f"({gone_value.why}).", f"set {prefix}{name} to another value, or leave it at its default.")
        gone = removed.get(name) if name not in fields else None
        if gone is None:
            out[name] = value
        elif value != gone.keeps:
            raise UserError(f"config key '{prefix}{name}' was removed: it was measured not to help ({gone.why}).",
                            f"delete {prefix}{name} from the config (set to {gone.keeps!r}, what runs now "
                            "always do, it is accepted and ignored).")
    return out


def _build(cls: type[T], values: dict, prefix: str = "") -> T:
    hints = get_type_hints(cls, include_extras=True)  # keeps the Bounds of Annotated fields
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    values = _drop_removed(cls, values, prefix, set(fields))
    unknown = sorted(set(values) - set(fields))
    if unknown:
        where = ", ".join(f"{prefix}{k}" for k in unknown)
        raise UserError(f"unknown config key(s): {where}.",
                        f"valid keys{' under ' + prefix.rstrip('.') if prefix else ''}: {sorted(fields)}.")
    kwargs = {}
    for name, value in values.items():
        kwargs[name] = _coerce(value, hints[name], f"{prefix}{name}")
    # Nested sections not given keep their defaults, but a partial section merges into them.
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as e:
        raise UserError(f"invalid config for {cls.__name__}: {e}.", "check the keys and values.") from None


def to_dict(cfg: Any) -> Any:
    """A plain YAML-able dict of a config (tuples become lists, paths strings)."""
    if dataclasses.is_dataclass(cfg):
        return {f.name: to_dict(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)}
    if isinstance(cfg, (list, tuple)):
        return [to_dict(v) for v in cfg]
    if isinstance(cfg, dict):
        return {k: to_dict(v) for k, v in cfg.items()}
    if isinstance(cfg, Path):
        return str(cfg)
    return cfg


def load_config(cls: type[T], path: str | Path | None = None,
                overrides: list[str] | tuple[str, ...] = ()) -> T:
    """Defaults of ``cls``, then the YAML file at ``path``, then ``key.sub=value`` overrides."""
    tree = to_dict(cls())
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise UserError(f"config file {path} does not exist.", "pass the path of a YAML file.")
        try:
            loaded = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            raise UserError(f"config file {path} is not valid YAML: {e}.", "fix its syntax.") from None
        if not isinstance(loaded, dict):
            raise UserError(f"config file {path} must hold a mapping at the top.",
                            "write key: value lines.")
        tree = _merge(tree, loaded)
    tree = _merge(tree, parse_overrides(overrides))
    return _build(cls, tree)


def replace_keys(cfg: T, values: dict[str, Any]) -> T:
    """``cfg`` with ``values`` set by ``dataclasses.replace``, keyed by dotted field paths
    (``{"reward.path": p}`` replaces ``cfg.reward`` by a copy with that ``path``)."""
    top: dict[str, Any] = {}
    for key, value in values.items():
        head, _, rest = key.partition(".")
        top[head] = replace_keys(top.get(head, getattr(cfg, head)), {rest: value}) if rest else value
    return dataclasses.replace(cfg, **top)


def with_overrides(cfg: T, overrides: list[str] | tuple[str, ...]) -> T:
    """``cfg`` (a config dataclass instance) with dotted ``key.sub=value`` overrides on top,
    checked as :func:`load_config` checks them: a workflow builds a stage's config with
    ``dataclasses.replace`` and the user's ``<stage>_args`` still win over what it set."""
    return _build(type(cfg), _merge(to_dict(cfg), parse_overrides(overrides)))


def save_config(cfg: Any, path: str | Path) -> Path:
    """Write the resolved config as YAML (atomically) and return its path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
    tmp.replace(path)
    return path


def save_round_config(cfg: Any, root: str | Path, stage: str) -> Path:
    """Save a stage's resolved config in a round's ``configs/`` folder as ``<stage>-<UTC time>.yaml``
    (a round keeps one per run of each stage that wrote to it)."""
    from datetime import datetime, timezone

    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    return save_config(cfg, Path(root) / "configs" / f"{stage}-{stamp}.yaml")
