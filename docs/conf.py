"""Sphinx configuration for flask-apikeys."""

from __future__ import annotations

import importlib.metadata
import re
import sys
from pathlib import Path

from docutils import nodes
from docutils.statemachine import StringList
from sphinx.application import Sphinx
from sphinx.util.docutils import SphinxDirective

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

project = "flask-apikeys"
author = "The flask-apikeys developers"
copyright = "2026, The flask-apikeys developers"  # noqa: A001 - Sphinx's name
try:
    release = importlib.metadata.version("flask-apikeys")
except importlib.metadata.PackageNotFoundError:  # a checkout that is not installed
    from flask_apikeys import __version__ as release
version = ".".join(release.split(".")[:2])

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.viewcode",
]
try:  # the CLI page is generated from the click commands when sphinx-click is installed
    import sphinx_click  # noqa: F401

    extensions.append("sphinx_click")
except ImportError:  # pragma: no cover
    pass

html_theme = "furo"
html_title = f"flask-apikeys {release}"
autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_default_options = {"members": True}
exclude_patterns = ["_build"]


class ConfigOptionsDirective(SphinxDirective):
    """Render every ``APIKEYS_*`` option from its one declaration in ``flask_apikeys.config``.

    Generated, so the reference can never disagree with the code.
    """

    def run(self) -> list[nodes.Node]:
        from flask_apikeys.config import OPTIONS

        lines: list[str] = []
        for option in OPTIONS:
            default = option.default
            if isinstance(default, tuple | list):
                default = ", ".join(f"``{item}``" for item in default) or "(empty)"
            elif isinstance(default, dict):
                default = "see below" if default else "(empty)"
            else:
                default = f"``{default!r}``"
            notes = [f"Default: {default}.", f"Environment variable: ``{option.name}``."]
            if option.secret:
                notes.append(
                    "A secret: never logged, nor copied from the environment into ``app.config``."
                )
            if option.weakening is not None:
                notes.append(
                    f"Set from the environment to a less safe value, it is warned "
                    f"about: {option.weakening.effect}."
                )
            lines += [
                f".. data:: {option.name}",
                "   :no-index:",
                "",
                f"   {option.doc[0].upper()}{option.doc[1:]}.",
                "",
                f"   {' '.join(notes)}",
                "",
            ]
        container = nodes.container()
        self.state.nested_parse(StringList(lines), self.content_offset, container)
        return container.children


class AdminOperationsDirective(SphinxDirective):
    """Render the admin API from its OpenAPI document: every operation, its input and answers.

    Generated from the same route table and schemas as the API itself.
    """

    def run(self) -> list[nodes.Node]:
        import json

        from flask_apikeys.admin.openapi import build_openapi

        document = build_openapi("/admin")
        schemas = document["components"]["schemas"]
        lines: list[str] = []
        for path, item in document["paths"].items():
            for method, operation in item.items():
                if method == "parameters":
                    continue
                lines += [f".. http:: {method.upper()} {path}", ""]
                lines += [f"   {operation['summary']}.", ""]
                names = [p["name"] for p in operation.get("parameters", [])]
                if names:
                    lines += ["   Query: " + ", ".join(f"``{name}``" for name in names) + ".", ""]
                body = operation.get("requestBody")
                if body:
                    reference = body["content"]["application/json"]["schema"]["$ref"]
                    fields = schemas[reference.rsplit("/", 1)[1]]["properties"]
                    lines += ["   Body: " + ", ".join(f"``{name}``" for name in fields) + ".", ""]
                answers = ", ".join(sorted(operation["responses"]))
                lines += [f"   Answers: {answers}.", ""]
        lines += [
            ".. code-block:: json",
            "   :caption: openapi.json",
            "",
            *("   " + line for line in json.dumps(document, indent=2).splitlines()),
            "",
        ]
        container = nodes.container()
        self.state.nested_parse(StringList(lines), self.content_offset, container)
        return container.children


ERROR_CODE = re.compile(r"^[a-z]+(?:_[a-z]+)+$")


def anchor_error_codes(app: Sphinx, doctree: nodes.document) -> None:
    """Give each error code described on the errors page an anchor named exactly like it.

    Every problem document's ``type`` is ``errors.html#<code>``; docutils would turn a label
    ``revoked_api_key`` into the id ``revoked-api-key``, which that link would miss.
    """
    if app.env.docname != "errors":
        return
    for term in doctree.findall(nodes.term):
        for literal in term.findall(nodes.literal):
            code = literal.astext()
            if ERROR_CODE.match(code) and code not in term["ids"]:
                term["ids"].append(code)
                doctree.ids[code] = term


def setup(app: Sphinx) -> None:
    app.connect("doctree-read", anchor_error_codes)
    app.add_directive("apikeys-config-options", ConfigOptionsDirective)
    app.add_directive("apikeys-admin-operations", AdminOperationsDirective)
    app.add_object_type("http", "http", "pair: %s; admin route")
