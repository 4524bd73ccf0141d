"""Sphinx configuration for flask-apikeys."""

from __future__ import annotations

import importlib.metadata
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
release = importlib.metadata.version("flask-apikeys")
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
    """Render every ``APIKEYS_*`` option from ``flask_apikeys.config.OPTIONS``.

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
                default = "see below"
            else:
                default = f"``{default!r}``"
            lines += [
                f".. data:: {option.name}",
                "   :no-index:",
                "",
                f"   {option.doc[0].upper()}{option.doc[1:]}.",
                "",
                f"   Default: {default}. Environment variable: ``{option.name}``.",
                "",
            ]
        container = nodes.container()
        self.state.nested_parse(StringList(lines), self.content_offset, container)
        return container.children


def setup(app: Sphinx) -> None:
    app.add_directive("apikeys-config-options", ConfigOptionsDirective)
