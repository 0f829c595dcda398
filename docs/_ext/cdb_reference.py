"""Sphinx directives that render the reference from the code, so that it cannot drift.

``.. concurrent-db-options::``
    The option table from :data:`pytest_concurrent_db.options.OPTIONS`: every option's
    command-line flag, ini key, environment variable, default and help.

``.. concurrent-db-fixture:: pytest_concurrent_db.fixtures.concurrent_db``
    One fixture: its name, scope and docstring (pytest's fixture objects are not functions
    that autodoc documents well).

``.. concurrent-db-cli-help::``
    ``python -m pytest_concurrent_db --help``, from the command's own parser.

``.. concurrent-db-messages::``
    Every error and warning message found in the source (see ``cdb_messages``), for the
    maintainers' index at the end of the troubleshooting page.
"""

from __future__ import annotations

import importlib
import inspect
from typing import Any

from docutils import nodes
from docutils.statemachine import StringList
from sphinx.application import Sphinx
from sphinx.util.docutils import SphinxDirective

__all__ = ["default_text", "fixture_text", "option_rows", "setup"]


def default_text(option: Any) -> str:
    """An option's default as the docs show it."""
    value = option.default
    if option.name == "url":
        return "SQLite files under pytest's cache and temp directories"
    if value is False:
        return "off"
    if value is None or value in ((), ""):
        return "none"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def option_rows() -> list[tuple[str, str, str, str, str]]:
    """(flag, ini key, env var, default, help) of every option, in the table's order."""
    from pytest_concurrent_db.options import OPTIONS

    rows = []
    for option in OPTIONS:
        flag = option.flag
        if option.kind == "flag_or_path":
            flag += f"[={option.metavar}]"
        elif option.kind == "choice":
            flag += " {" + ",".join(option.choices) + "}"
        elif option.kind != "bool":
            flag += f" {option.metavar or option.name.upper()}"
        if option.kind == "paths":
            flag += " (repeatable)"
        rows.append((flag, option.ini, option.env, default_text(option), option.help))
    return rows


def _literal(text: str) -> str:
    return f"``{text}``"


class OptionsDirective(SphinxDirective):
    """The option table, generated from ``options.OPTIONS``."""

    has_content = False

    def run(self) -> list[nodes.Node]:
        lines = [
            ".. list-table::",
            "   :header-rows: 1",
            "   :widths: 24 18 18 10 30",
            "",
            "   * - command line",
            "     - ini key",
            "     - environment variable",
            "     - default",
            "     - meaning",
        ]
        for flag, ini, env, default, help_text in option_rows():
            lines += [
                f"   * - {_literal(flag)}",
                f"     - {_literal(ini)}",
                f"     - {_literal(env)}",
                f"     - {default}",
                f"     - {help_text.replace('*', chr(92) + '*')}",
            ]
        return self._parse(lines)

    def _parse(self, lines: list[str]) -> list[nodes.Node]:
        container = nodes.section()
        container.document = self.state.document
        self.state.nested_parse(StringList(lines, source="<concurrent-db-options>"), self.content_offset, container)
        return list(container.children)


def _resolve(path: str) -> Any:
    module, _, name = path.rpartition(".")
    return getattr(importlib.import_module(module), name)


def fixture_text(path: str) -> tuple[str, str, bool, str]:
    """(name, scope, autouse, docstring) of the fixture at ``path`` (``module.name``)."""
    from _pytest.fixtures import getfixturemarker

    obj = _resolve(path)
    marker = getfixturemarker(obj)
    if marker is None:
        raise ValueError(f"{path} is not a pytest fixture")
    function = getattr(obj, "__wrapped__", None) or getattr(obj, "_get_wrapped_function", lambda: obj)()
    name = marker.name or path.rpartition(".")[2]
    scope = marker.scope if isinstance(marker.scope, str) else getattr(marker.scope, "value", "function")
    return name, scope or "function", bool(marker.autouse), inspect.getdoc(function) or ""


class FixtureDirective(SphinxDirective):
    """One fixture, from its docstring."""

    required_arguments = 1
    has_content = True

    def run(self) -> list[nodes.Node]:
        path = self.arguments[0]
        name, scope, autouse, doc = fixture_text(path)
        extra = ", autouse" if autouse else ""
        lines = [f".. py:function:: {name}()", f"   :module: {path.rpartition('.')[0]}", ""]
        lines.append(f"   *Fixture, scope* ``{scope}``{extra}.")
        lines.append("")
        lines += ["   " + line if line else "" for line in doc.splitlines()]
        lines += ["", *("   " + line if line else "" for line in self.content)]
        container = nodes.section()
        container.document = self.state.document
        self.state.nested_parse(StringList(lines, source=path), self.content_offset, container)
        return list(container.children)


class MessagesDirective(SphinxDirective):
    """Every message found in the source: where it is raised, and its text."""

    def run(self) -> list[nodes.Node]:
        import cdb_messages

        lines = [".. list-table::", "   :header-rows: 1", "   :widths: 30 70", "", "   * - where", "     - message"]
        for message in cdb_messages.messages():
            text = message.text.replace("`", "'")
            lines += [f"   * - ``{message.module}:{message.line}``", f"     - ``{text}``"]
        container = nodes.section()
        container.document = self.state.document
        self.state.nested_parse(StringList(lines, source="<concurrent-db-messages>"), self.content_offset, container)
        return list(container.children)


class CliHelpDirective(SphinxDirective):
    """``python -m pytest_concurrent_db --help``, from the parser itself."""

    def run(self) -> list[nodes.Node]:
        import argparse

        from pytest_concurrent_db.__main__ import build_parser

        parser = build_parser()
        parser.formatter_class = lambda prog: argparse.RawDescriptionHelpFormatter(prog, width=100)
        text = parser.format_help()
        block = nodes.literal_block(text, text)
        block["language"] = "text"
        return [block]


def setup(app: Sphinx) -> dict[str, Any]:
    app.add_directive("concurrent-db-cli-help", CliHelpDirective)
    app.add_directive("concurrent-db-options", OptionsDirective)
    app.add_directive("concurrent-db-fixture", FixtureDirective)
    app.add_directive("concurrent-db-messages", MessagesDirective)
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}
