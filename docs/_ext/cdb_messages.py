"""The error and warning messages pytest-concurrent-db emits, read from its source code.

Every ``raise <Error>(message)`` of one of our error classes (and ``pytest.UsageError``,
Django's ``CommandError``), every ``pytest.fail(message)`` and every warning we issue is
found with :mod:`ast`; a message is its literal text with ``…`` where a value is filled in
at run time.  ``tests/unit/test_docs.py`` checks that the troubleshooting page quotes each
message's :func:`key` (its longest literal fragment), so a new message cannot ship
undocumented.  Messages passed on from elsewhere (``raise pytest.UsageError(str(exc))``)
have no literal text of their own: their origin is listed instead.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "pytest_concurrent_db"
PLACEHOLDER = "…"
#: Callables whose first argument is a message shown to users.
_RAISERS = {"UsageError", "CommandError", "fail", "warn", "ConcurrentDBIsolationWarning", "PytestWarning"}
#: Literal fragments shorter than this do not identify a message.
MIN_KEY = 12


@dataclass(frozen=True)
class Message:
    module: str
    line: int
    kind: str
    text: str

    @property
    def key(self) -> str:
        return key(self.text)


def _error_classes() -> set[str]:
    """Names of every exception class defined in the package (ours all end in Error)."""
    names = set()
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ClassDef) and (node.name.endswith("Error") or node.name.endswith("Warning")):
                names.add(node.name)
    return names


def _render(node: ast.expr) -> str | None:
    """The message's literal text with placeholders, or None if it has none of its own."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr):
        out = []
        for part in node.values:
            if isinstance(part, ast.Constant) and isinstance(part.value, str):
                out.append(part.value)
            else:
                out.append(PLACEHOLDER)
        return "".join(out)
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        left, right = _render(node.left), _render(node.right)
        if left is None and right is None:
            return None
        return (left if left is not None else PLACEHOLDER) + (right if right is not None else PLACEHOLDER)
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "join":
        return PLACEHOLDER
    return None


def _callee(node: ast.Call) -> str:
    func = node.func
    if isinstance(func, ast.Attribute):
        return func.attr
    if isinstance(func, ast.Name):
        return func.id
    return ""


def messages() -> list[Message]:
    """Every message with literal text of its own, in source order."""
    errors = _error_classes() - {"ConcurrentDBError"}  # the base class is raised with ready messages
    errors.add("ConcurrentDBError")
    out = []
    for path in sorted(PACKAGE.rglob("*.py")):
        module = path.relative_to(PACKAGE.parent).with_suffix("").as_posix().replace("/", ".")
        tree = ast.parse(path.read_text(encoding="utf-8"))
        assigned = _assignments(tree)
        functions = _enclosing_functions(tree)
        for node in ast.walk(tree):
            if isinstance(node, ast.Assign) and _is_findings_list(node):  # errors = [f"..."]
                for element in node.value.elts:  # type: ignore[attr-defined]
                    text = _render(element)
                    if text is not None and key(text):
                        out.append(Message(module, element.lineno, "finding", normalize(text)))
                continue
            if isinstance(node, ast.FunctionDef) and node.name == "describe":
                out.extend(_described(module, node))
                continue
            if not isinstance(node, ast.Call) or not node.args:
                continue
            name = _callee(node)
            if name == "append" and _is_finding(node):  # ("error" | True, message) of a check
                text = _render(node.args[0].elts[-1])  # type: ignore[attr-defined]
                if text is not None and key(text):
                    out.append(Message(module, node.lineno, "finding", normalize(text)))
                continue
            if name == "append" and isinstance(node.func, ast.Attribute) and _appends_to_findings(node.func):
                text = _render(node.args[0])
                if text is not None and key(text):
                    out.append(Message(module, node.lineno, "finding", normalize(text)))
                continue
            if name not in errors and name not in _RAISERS:
                continue
            if name == "warn" and not _is_warnings_warn(node):
                continue
            argument = node.args[0]
            if isinstance(argument, ast.Name):  # error = f"..." earlier in the function
                texts = [_render(value) for value in assigned.get((id(functions[id(node)]), argument.id), [])]
            else:
                texts = [_render(argument)]
            for text in texts:
                if text is not None and key(text):
                    out.append(Message(module, node.lineno, name, normalize(text)))
    return out


def _enclosing_functions(tree: ast.Module) -> dict[int, ast.AST]:
    """id of every node -> the innermost function around it (the module if none)."""
    out: dict[int, ast.AST] = {}

    def visit(node: ast.AST, function: ast.AST) -> None:
        out[id(node)] = function
        inner = node if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) else function
        for child in ast.iter_child_nodes(node):
            visit(child, inner)

    visit(tree, tree)
    return out


def _assignments(tree: ast.Module) -> dict[tuple[int, str], list[ast.expr]]:
    """(id of the function, variable) -> the values assigned to it there."""
    out: dict[tuple[int, str], list[ast.expr]] = {}
    for function in ast.walk(tree):
        if not isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        for node in ast.walk(function):
            if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
                out.setdefault((id(function), node.targets[0].id), []).append(node.value)
    return out


#: Lists of messages a check hands back (``errors``, ``warns``): what ends up in a failure or warning.
_FINDINGS = {"errors", "warns"}


def _is_finding(node: ast.Call) -> bool:
    """``found.append((severity, message))``: a finding of an isolation check."""
    func = node.func
    return (
        isinstance(func, ast.Attribute)
        and isinstance(func.value, ast.Name)
        and func.value.id == "found"
        and isinstance(node.args[0], ast.Tuple)
    )


def _appends_to_findings(func: ast.Attribute) -> bool:
    """``errors.append(...)``, ``self.warns.append(...)``."""
    value = func.value
    name = value.id if isinstance(value, ast.Name) else value.attr if isinstance(value, ast.Attribute) else ""
    return name in _FINDINGS


def _is_findings_list(node: ast.Assign) -> bool:
    """``errors = [f"..."]``: messages of a check, as a list."""
    target = node.targets[0] if len(node.targets) == 1 else None
    return isinstance(target, ast.Name) and target.id in _FINDINGS and isinstance(node.value, ast.List)


def _described(module: str, node: ast.FunctionDef) -> list[Message]:
    """The messages an error class builds from its fields (``describe``)."""
    out = []
    for each in ast.walk(node):
        if isinstance(each, ast.Return) and each.value is not None:
            text = _render(each.value)
            if text is not None and key(text):
                out.append(Message(module, each.lineno, "describe", normalize(text)))
    return out


def _is_warnings_warn(node: ast.Call) -> bool:
    func = node.func
    return isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name) and func.value.id == "warnings"


def normalize(text: str) -> str:
    """One line, single spaces, without our ``concurrent-db:`` prefix."""
    text = re.sub(r"\s+", " ", text).strip()
    return re.sub(r"^concurrent-db:\s*", "", text)


def key(text: str) -> str:
    """The longest literal fragment of a message (at least :data:`MIN_KEY` characters), which
    identifies it in the docs; empty if it has none."""
    text = normalize(text)
    fragments = [f.strip(" ;:,.'\"()") for f in text.split(PLACEHOLDER)]
    best = max(fragments, key=len, default="")
    if len(best) >= MIN_KEY:
        return best
    # no long fragment: the whole message, placeholders included, if it has words of its own
    return text if len(re.sub(r"[^a-z]", "", text.lower())) >= 8 else ""
