"""AST scan for direct file writes in Python source (test helper of test_atomic_writes).

A *direct write* is a call that creates or changes a file in place, so that a crash mid-call can leave a
partial file:

- ``<x>.write_text(...)`` / ``<x>.write_bytes(...)`` (``pathlib.Path``);
- ``open`` / ``io.open`` / ``os.fdopen`` / ``<path>.open`` / ``<module>.open`` (e.g. ``av.open``) with a mode
  containing ``w``, ``a``, ``x`` or ``+`` (or a mode that is not a literal, which cannot be proven read-only);
- ``os.open`` with ``O_WRONLY`` / ``O_RDWR`` / ``O_CREAT`` / ``O_APPEND`` / ``O_TRUNC`` in its flags;
- ``torch.save``, ``json.dump``, ``pickle.dump``, ``yaml.dump`` / ``yaml.safe_dump`` (with a stream),
  ``np.save`` / ``np.savez`` / ``np.savez_compressed`` whose target is not a handle known to be safe.

Safe targets, tracked per function: names bound by ``with atomic_open(...) as f`` (inside that ``with``) and
names assigned ``io.BytesIO()``. Everything else (a path, a handle from ``open``) counts as a direct write.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from pathlib import Path

WRITE_FLAGS = ("O_WRONLY", "O_RDWR", "O_CREAT", "O_APPEND", "O_TRUNC")
# module.function -> (positional index, keyword) of the file argument
SERIALISERS = {
    ("torch", "save"): (1, "f"),
    ("json", "dump"): (1, "fp"),
    ("pickle", "dump"): (1, "file"),
    ("yaml", "dump"): (1, "stream"),
    ("yaml", "safe_dump"): (1, "stream"),
    ("np", "save"): (0, "file"),
    ("np", "savez"): (0, "file"),
    ("np", "savez_compressed"): (0, "file"),
    ("numpy", "save"): (0, "file"),
    ("numpy", "savez"): (0, "file"),
    ("numpy", "savez_compressed"): (0, "file"),
}
MODE_RE = re.compile(r"^[rwxabtU+]{1,4}$")


@dataclass(frozen=True)
class Write:
    """One direct write: ``file`` (as given), ``line``, enclosing ``func`` (``Class.method``; ``<module>``
    at top level), ``kind`` (what was matched, e.g. ``open(mode='a')``) and the call's source ``text``."""

    file: str
    line: int
    func: str
    kind: str
    text: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line} in {self.func}: {self.kind}: {self.text}"


def _dotted(node: ast.AST) -> str:
    """``a.b.c`` for a Name/Attribute chain, else ''."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        base = _dotted(node.value)
        return f"{base}.{node.attr}" if base else ""
    return ""


def _arg(call: ast.Call, index: int, keyword: str) -> ast.AST | None:
    for kw in call.keywords:
        if kw.arg == keyword:
            return kw.value
    return call.args[index] if len(call.args) > index else None


class _Scanner(ast.NodeVisitor):
    def __init__(self, source: str, file: str, modules: set[str]) -> None:
        self.source, self.file, self.modules = source, file, modules
        self.funcs: list[str] = []
        self.safe: list[set[str]] = [set()]  # one set per function scope
        self.found: list[Write] = []

    # -- scopes -----------------------------------------------------------------------------------------------
    def _visit_scope(self, node: ast.AST, name: str, new_safe: bool) -> None:
        self.funcs.append(name)
        if new_safe:
            self.safe.append(set())
        self.generic_visit(node)
        if new_safe:
            self.safe.pop()
        self.funcs.pop()

    def visit_ClassDef(self, node: ast.ClassDef) -> None:
        self._visit_scope(node, node.name, new_safe=False)

    def visit_FunctionDef(self, node: ast.FunctionDef) -> None:
        self._visit_scope(node, node.name, new_safe=True)

    visit_AsyncFunctionDef = visit_FunctionDef  # type: ignore[assignment]

    def visit_With(self, node: ast.With) -> None:
        bound = set()
        for item in node.items:
            self.visit(item.context_expr)
            ctx = item.context_expr
            if (isinstance(ctx, ast.Call) and _dotted(ctx.func).split(".")[-1] == "atomic_open"
                    and isinstance(item.optional_vars, ast.Name)):
                bound.add(item.optional_vars.id)
        added = bound - self.safe[-1]
        self.safe[-1] |= added
        for stmt in node.body:
            self.visit(stmt)
        self.safe[-1] -= added

    def visit_Assign(self, node: ast.Assign) -> None:
        if isinstance(node.value, ast.Call) and _dotted(node.value.func) in ("io.BytesIO", "BytesIO"):
            self.safe[-1] |= {t.id for t in node.targets if isinstance(t, ast.Name)}
        self.generic_visit(node)

    # -- calls ------------------------------------------------------------------------------------------------
    def visit_Call(self, node: ast.Call) -> None:
        kind = self._kind(node)
        if kind:
            func = ".".join(self.funcs) or "<module>"
            text = ast.get_source_segment(self.source, node) or ""
            self.found.append(Write(self.file, node.lineno, func, kind, " ".join(text.split())))
        self.generic_visit(node)

    def _kind(self, call: ast.Call) -> str | None:
        f = call.func
        name = _dotted(f)
        if isinstance(f, ast.Attribute) and f.attr in ("write_text", "write_bytes"):
            return f".{f.attr}()"
        if name == "os.open":
            flags = ast.get_source_segment(self.source, _arg(call, 1, "flags") or call) or ""
            return "os.open(write flags)" if any(fl in flags for fl in WRITE_FLAGS) else None
        if name in ("open", "io.open", "os.fdopen") or (isinstance(f, ast.Attribute) and f.attr == "open"):
            # builtin / io.open / os.fdopen / a module's open(file, mode): mode 2nd; Path.open(mode): mode 1st
            on_module = name in ("open", "io.open", "os.fdopen") or _dotted(f.value) in self.modules
            return self._open_kind(_arg(call, 1 if on_module else 0, "mode"))
        parts = tuple(name.split("."))
        if len(parts) == 2 and parts in SERIALISERS:
            target = _arg(call, *SERIALISERS[parts])
            if target is None:
                return None  # yaml.dump without a stream returns a string
            if isinstance(target, ast.Name) and target.id in self.safe[-1]:
                return None
            return f"{name}() to a path or plain handle"
        return None

    @staticmethod
    def _open_kind(mode: ast.AST | None) -> str | None:
        if mode is None:
            return None  # default mode "r"
        if isinstance(mode, ast.Constant) and isinstance(mode.value, str):
            if not MODE_RE.match(mode.value):
                return None  # a positional string that is not a mode (e.g. a file name)
            return f"open(mode={mode.value!r})" if set(mode.value) & set("wax+") else None
        return "open(mode not a literal)"


def _module_names(tree: ast.AST) -> set[str]:
    """Names bound by an import anywhere in the file (``av``, ``Image`` of ``from PIL import Image``): their
    ``.open(file, mode)`` takes the mode second, unlike a path object's ``.open(mode)``."""
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {(a.asname or a.name).split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            out |= {a.asname or a.name for a in node.names}
    return out


def find_writes(source: str, file: str = "<string>") -> list[Write]:
    """Every direct write in ``source`` (see the module docstring), in source order."""
    tree = ast.parse(source)
    scanner = _Scanner(source, file, _module_names(tree))
    scanner.visit(tree)
    return scanner.found


def scan_package(root: Path, rel_to: Path) -> list[Write]:
    """:func:`find_writes` over every ``*.py`` under ``root``; files named relative to ``rel_to``."""
    out: list[Write] = []
    for path in sorted(root.rglob("*.py")):
        out += find_writes(path.read_text(), path.relative_to(rel_to).as_posix())
    return out
