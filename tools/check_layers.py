"""Check sqlog's layering rule (DESIGN.md, "Layout"): imports only point down, no import cycles,
and no module uses another module's underscore names.

For every .py file under sqlog/ (recursively, subpackages included) it reports:

1. upward import: a sqlog module importing one in a higher layer of LAYERS below. Every import
   counts: module level, under ``if TYPE_CHECKING:``, and inside functions (where cycles hide).
   A module missing from LAYERS is a violation too: add it to the table.
2. import cycle: any cycle among sqlog modules, also within one layer (one line per cycle).
3. private name: ``from .x import _name``, or ``expr._name`` where expr is not ``self``/``cls``
   (nor, inside class C, a parameter annotated as C). Dunders and ALLOWED are exempt.

Why: each layer can be read, tested and changed knowing only the layers below it, and a module's
underscore names stay free to change. Standard library only (``ast``).

Usage: python tools/check_layers.py [--root PATH] [--tests]. The default run checks sqlog/ only;
--tests also lists tests/ reaching into underscore names (rule 3), report only: those lines do
not change the exit status. Exit 0 when clean, else 1 and one ``file:line: what`` per violation.
"""

from __future__ import annotations

import argparse
import ast
import re
import sys
from pathlib import Path

PKG = "sqlog"
# Top to bottom; a module may import from its own layer or below. A name covers a module or a
# subpackage (server covers server/*). __init__ (the public API) sits under the front doors,
# which use it like any user does, and over everything it re-exports.
LAYERS = [
    ["cli"],
    ["server", "mirror", "aio"],  # optional front doors: Kafka protocol, Kafka bridge, asyncio
    ["__init__"],
    ["log"],
    ["producer", "consumer", "share", "table", "transactional"],  # transactional: the transactional producer
    ["writer", "reading"],  # reading: what consumer and share have in common (poll's checks, waits, deserializing)
    ["engine"],
    ["groups", "share_groups", "retention", "compaction", "topics", "check", "assignors", "liveness",
     "transactions"],  # + groups' splits
    ["partitions"],
    ["storage"],
    ["config", "types", "errors", "serde", "partitioner", "clock", "checksum", "filewatch"],
]
LAYER = {name: i for i, names in enumerate(LAYERS) for name in names}
ALLOWED = {  # underscore attributes that are public API, on any object or on one named module
    **dict.fromkeys(["_replace", "_make", "_asdict", "_fields", "_field_defaults"], "namedtuple's API"),
    "os._exit": "stdlib: leave a forked child without running the parent's atexit handlers",
    "sys._getframe": "stdlib: the caller's frame",
    "atexit._run_exitfuncs": "stdlib: tests run the exit handlers as a process would (--tests)",
    **dict.fromkeys(["KafkaError._PARTITION_EOF", "KafkaError._AUTO_OFFSET_RESET", "KafkaError._ALL_BROKERS_DOWN"],
                    "confluent-kafka's documented names of librdkafka's local error codes"),
}


def private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def short(mod: str) -> str:
    return "__init__" if mod == PKG else mod[len(PKG) + 1 :]


def layer(mod: str) -> int | None:
    """The layer of a module, or of the subpackage holding it; None when not in the table."""
    parts = short(mod).split(".")
    return next((LAYER[p] for n in range(len(parts), 0, -1) if (p := ".".join(parts[:n])) in LAYER), None)


def sqlog_imports(tree: ast.AST, me: str, is_pkg: bool, mods: set[str]):
    """Yield (node, imported sqlog module, name imported from it or None) for every import."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name.split(".")[0] == PKG:
                    yield node, owner(a.name, mods), None
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                pkg = me if is_pkg else me.rpartition(".")[0]
                for _ in range(node.level - 1):
                    pkg = pkg.rpartition(".")[0]
                base = f"{pkg}.{base}" if base else pkg
            if base.split(".")[0] != PKG:
                continue
            for a in node.names:
                sub = f"{base}.{a.name}"
                yield (node, sub, None) if sub in mods else (node, owner(base, mods), a.name)


def owner(name: str, mods: set[str]) -> str:
    """The module that name is, or the innermost package holding it."""
    while name not in mods and "." in name:
        name = name.rpartition(".")[0]
    return name


def reaches(node: ast.AST, cls: str | None = None, same: frozenset[str] = frozenset({"self", "cls"})):
    """Yield (line, text) for each ``expr._name`` under node, except on self, cls, or (inside
    class C) a parameter annotated as C, and except dunders and ALLOWED."""
    if isinstance(node, ast.ClassDef):
        cls, same = node.name, frozenset({"self", "cls"})
    elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and cls:
        a = node.args
        same = same | {arg.arg for arg in a.posonlyargs + a.args + a.kwonlyargs
                       if arg.annotation and cls in re.findall(r"\w+", ast.unparse(arg.annotation))}
    elif isinstance(node, ast.Attribute) and private(node.attr):
        base = node.value.id if isinstance(node.value, ast.Name) else None
        if base not in same and not {node.attr, f"{base}.{node.attr}"} & ALLOWED.keys():
            yield node.lineno, ast.unparse(node)
    for child in ast.iter_child_nodes(node):
        yield from reaches(child, cls, same)


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The shortest cycle through each module that is on one, each cycle reported once."""
    found = set()
    for m in sorted(graph):
        paths, queue = {}, [[m]]
        while queue and m not in paths:  # breadth-first from m until an edge leads back to m
            path = queue.pop(0)
            for t in sorted(graph.get(path[-1], ())):
                if t not in paths:
                    paths[t] = path + [t]
                    queue.append(paths[t])
        if m in paths:
            cyc = paths[m][:-1]
            cyc = cyc[cyc.index(min(cyc)):] + cyc[:cyc.index(min(cyc))]  # one rotation per cycle
            found.add(tuple(cyc + cyc[:1]))
    return [list(c) for c in sorted(found)]


def reach_ins(root: Path, path: Path, me: str, mods: set[str]) -> tuple[ast.AST, list[str]]:
    """Parse path; rule 3's violations in it."""
    where = path.relative_to(root)
    tree = ast.parse(path.read_text(encoding="utf-8"), str(where))
    out = [f"{where}:{node.lineno}: private name: imports {name} from {short(target)}"
           for node, target, name in sqlog_imports(tree, me, path.name == "__init__.py", mods)
           if name and private(name)]
    return tree, out + [f"{where}:{line}: private name: {text}" for line, text in reaches(tree)]


def check(root: Path, tests: bool = False) -> tuple[list[str], list[str]]:
    """(violations in sqlog/, report-only findings in tests/ when tests is true)."""
    files = {}
    for path in sorted((root / PKG).rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        files[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    mods, out, edges, graph = set(files), [], {}, {}
    for me, path in files.items():
        where = path.relative_to(root)
        tree, found = reach_ins(root, path, me, mods)
        out += found
        if layer(me) is None:
            out.append(f"{where}:1: module {short(me)} is not in the layer table (add it to the layer table)")
        for node, target, _ in sqlog_imports(tree, me, path.name == "__init__.py", mods):
            if target == me or target not in mods:
                continue
            edges.setdefault((me, target), f"{where}:{node.lineno}")
            graph.setdefault(me, set()).add(target)
            mine, theirs = layer(me), layer(target)
            if mine is not None and theirs is not None and theirs < mine:
                out.append(f"{where}:{node.lineno}: upward import: {short(me)} (layer {mine}) imports "
                           f"{short(target)} (layer {theirs})")
    out += [f"{edges[c[0], c[1]]}: import cycle: {' -> '.join(map(short, c))}" for c in cycles(graph)]
    report = []
    for path in sorted((root / "tests").rglob("*.py")) if tests else []:
        report += reach_ins(root, path, "tests", mods)[1]
    return out, report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].replace("\n", " "))
    parser.add_argument("--root", type=Path, default=Path(__file__).resolve().parent.parent,
                        help="repository holding sqlog/ and tests/ (default: this script's)")
    parser.add_argument("--tests", action="store_true", help="also list tests/ using underscore names")
    args = parser.parse_args(argv)
    out, report = check(args.root, args.tests)
    by_place = lambda line: (line.split(":")[0], int(line.split(":")[1]))  # noqa: E731
    for line in sorted(out, key=by_place) + [f"{r} (report only)" for r in sorted(report, key=by_place)]:
        print(line)
    return 1 if out else 0


if __name__ == "__main__":
    sys.exit(main())
