"""The variables a template reads, for the editor: ``first_name``, ``deadline``,
``attributes.city``.

Only parsed, never run; the caller has already compiled the template within the render limits
(``RenderPool.check``), so parsing it here costs less than what was allowed there.
"""

from __future__ import annotations

from jinja2 import Environment, meta, nodes

#: Names whose attributes are listed one by one: what a person fills in differs per key.
EXPANDED = frozenset({"attributes", "contact", "data"})

_PARSER = Environment()  # syntax only: the guarded environments parse the same language


def template_variables(*sources: str | None) -> list[str]:
    """Every variable the given parts read that the template does not set itself, sorted; a
    read of an attribute of ``attributes`` (``attributes.city`` or ``attributes["city"]``) is
    listed as such."""
    found: set[str] = set()
    for source in sources:
        if not source:
            continue
        tree = _PARSER.parse(source)
        found |= meta.find_undeclared_variables(tree)
        for read in tree.find_all(nodes.Getattr):
            if isinstance(read.node, nodes.Name) and read.node.name in EXPANDED:
                found.add(f"{read.node.name}.{read.attr}")
        for item in tree.find_all(nodes.Getitem):
            key = item.arg.value if isinstance(item.arg, nodes.Const) else None
            if (
                isinstance(item.node, nodes.Name)
                and item.node.name in EXPANDED
                and isinstance(key, str)
            ):
                found.add(f"{item.node.name}.{key}")
    return sorted(found)
