"""Templates to mail: the sandboxed Jinja2 renderer, and the plain-text part derived from HTML.

Callers render through ``pool.RenderPool`` (separate processes with hard limits); inside them
``Renderer.compile`` runs once per template, ``Renderer.render`` per recipient (see
``renderer.py`` for the variables a template sees, ``sandbox.py`` for what a template cannot do).
"""

from __future__ import annotations

from tidings.rendering.renderer import (
    CompiledTemplate,
    Recipient,
    RenderedContent,
    Renderer,
    ResourceExhausted,
)
from tidings.rendering.text import html_to_text

__all__ = [
    "CompiledTemplate",
    "Recipient",
    "RenderedContent",
    "Renderer",
    "ResourceExhausted",
    "html_to_text",
]
