"""The Jinja2 sandbox that tenant templates run in: no escape, and bounded time, output and memory.

These checks are the first line of defence: they stop the common runaway template early, with a
precise message and line, and keep a render process alive for the next one. They are not the
guarantee. A blocklist cannot foresee every filter, method or C routine that allocates or loops
(``pprint``, ``tojson``, ``sort`` on a huge list once escaped them), so every template renders in
a separate process with hard limits on CPU time and address space and a wall-clock kill by its
parent (``pool.py``): whatever escapes the checks below ends there, within the same limits.

``ImmutableSandboxedEnvironment`` already refuses private attributes (``__class__``,
``__globals__``, ``mro``) and mutating methods. On top of it:

* ``str.format`` / ``format_map`` and the padding methods (``center``, ``ljust``, ``zfill``,
  ``expandtabs`` …) are not reachable at all: the first are the classic escape route, the others
  allocate gigabytes from one small number.
* Time: every ``{% for %}`` iterable is wrapped in a deadline-checking iterator and every call
  (macros, ``loop()``, methods) checks the deadline, so nested loops and recursion stop on time.
* Memory: everything an output statement writes (into the result or into a ``{% set %}`` block,
  a macro's or a filter block's buffer) is counted against a budget; ``*``, ``**``, ``%``, ``+``,
  ``~`` and the multiplying filters (``join``, ``replace``, ``indent``, ``center`` …) check the size
  of what they are about to build, so no single step can allocate much more than the output cap.
* ``include`` / ``import`` / ``extends`` are refused at compile time (there is no loader).

The per-render budget lives in a ``ContextVar``, so one environment serves every thread.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

from jinja2 import StrictUndefined, nodes, pass_environment, pass_eval_context
from jinja2 import filters as jinja_filters
from jinja2.compiler import CodeGenerator, Frame
from jinja2.defaults import DEFAULT_NAMESPACE
from jinja2.nodes import EvalContext
from jinja2.sandbox import ImmutableSandboxedEnvironment

from tidings.rendering.localtime import localtime

MAX_RANGE = 100_000  # items a single range() may produce
MAX_INT_BITS = 4096  # integers grow no larger: enough for any sum or product a mail needs
MAX_FORMAT_WIDTH = 1_000  # characters of padding or precision in a %-format
DEADLINE_CHECK_EVERY = 64  # loop iterations between two clock reads (cheap, still prompt)
#: Output statements may write this many times the output cap in one render: a template that
#: builds text in ``{% set %}`` blocks or macros before printing it is written twice.
SPEND_FACTOR = 4

#: ``str`` methods that are never reachable: escape routes and one-argument memory bombs.
BLOCKED_STR_METHODS = frozenset(
    {"format", "format_map", "center", "ljust", "rjust", "zfill", "expandtabs", "encode",
     "translate", "maketrans"}
)  # fmt: skip

_PERCENT_SPEC = re.compile(r"%(?:\([^)]*\))?[#0\- +]*(\*|\d+)?(?:\.(\*|\d+))?")


class RenderLimitExceeded(Exception):
    """A template went over its time or size budget; the message says which, for the tenant."""


class RenderInterrupted(BaseException):
    """A render process's CPU-time limit ran out (SIGXCPU) in the middle of a render.

    A ``BaseException``, like ``KeyboardInterrupt``: code that catches ``Exception`` on the way
    (Jinja's own lookups do) cannot swallow it and carry on.
    """


@dataclass(slots=True)
class Budget:
    """What is left of one render's allowance."""

    deadline: float  # time.monotonic() value after which the render stops
    spend_left: int  # characters output statements may still write, buffers included
    max_value: int  # the longest string or list any single operation may build


BUDGET: ContextVar[Budget] = ContextVar("tidings_render_budget")


def _too_big(what: str) -> RenderLimitExceeded:
    return RenderLimitExceeded(f"{what} would exceed the size limit of the rendered output")


def _check_deadline(budget: Budget) -> None:
    if time.monotonic() > budget.deadline:
        raise RenderLimitExceeded("rendering took longer than the time limit")


def _check_size(value: Any, budget: Budget, what: str) -> Any:
    if isinstance(value, (str, list, tuple)) and len(value) > budget.max_value:
        raise _too_big(what)
    return value


def _check_percent_format(pattern: str) -> None:
    for match in _PERCENT_SPEC.finditer(pattern):
        for number in match.groups():
            if number == "*" or (number is not None and int(number) > MAX_FORMAT_WIDTH):
                raise RenderLimitExceeded(
                    f"format widths above {MAX_FORMAT_WIDTH} (and '*') are not allowed"
                )


def guarded_range(*args: int) -> range:
    """``range`` that refuses to produce more than ``MAX_RANGE`` items."""
    numbers = range(*args)
    try:
        size = len(numbers)
    except OverflowError:
        size = MAX_RANGE + 1
    if size > MAX_RANGE:
        raise RenderLimitExceeded(f"range() is limited to {MAX_RANGE} items")
    return numbers


def _deadline_iter(items: Iterator[Any], deadline: float) -> Iterator[Any]:
    count = 0
    for item in items:
        # Checked on the first item too: innermost loops shorter than the interval still check.
        if not count % DEADLINE_CHECK_EVERY and time.monotonic() > deadline:
            raise RenderLimitExceeded("rendering took longer than the time limit")
        count += 1
        yield item


# --- filters that can multiply their input: each checks the size before building it ----------


def _center(value: str, width: int = 80) -> str:
    if width > BUDGET.get().max_value:
        raise _too_big("center()")
    return jinja_filters.do_center(value, width)


def _indent(s: str, width: int | str = 4, first: bool = False, blank: bool = False) -> str:
    pad = len(width) if isinstance(width, str) else int(width)
    if len(s) + (s.count("\n") + 1) * pad > BUDGET.get().max_value:
        raise _too_big("indent()")
    return jinja_filters.do_indent(s, width, first, blank)


@pass_environment
def _wordwrap(environment: Any, s: str, width: int = 79, *args: Any, **kwargs: Any) -> str:
    wrapstring = kwargs.get("wrapstring", args[1] if len(args) > 1 else None) or "\n"
    if width < 1:
        raise RenderLimitExceeded("wordwrap() needs a width of at least 1")
    if len(s) * (1 + len(wrapstring)) > BUDGET.get().max_value:
        raise _too_big("wordwrap()")
    return jinja_filters.do_wordwrap(environment, s, width, *args, **kwargs)


def _format(value: str, *args: Any, **kwargs: Any) -> str:
    _check_percent_format(str(value))
    return jinja_filters.do_format(value, *args, **kwargs)


def _replaced_size(s: str, old: str, new: str, count: int | None) -> int:
    hits = s.count(old) if old else len(s) + 1
    if count is not None and count >= 0:
        hits = min(hits, count)
    return len(s) + hits * (len(new) - len(old))


@pass_eval_context
def _replace(eval_ctx: EvalContext, s: str, old: str, new: str, count: int | None = None) -> str:
    if _replaced_size(str(s), str(old), str(new), count) > BUDGET.get().max_value:
        raise _too_big("replace()")
    return jinja_filters.do_replace(eval_ctx, s, old, new, count)


@pass_eval_context
def _join(
    eval_ctx: EvalContext, value: Iterable[Any], d: str = "", attribute: str | int | None = None
) -> str:
    items = list(value)
    if attribute is not None:
        getter = jinja_filters.make_attrgetter(eval_ctx.environment, attribute)
        items = [getter(item) for item in items]
    size = len(d) * max(len(items) - 1, 0)
    size += sum(len(x) if isinstance(x, str) else len(str(x)) for x in items)
    if eval_ctx.autoescape:
        size *= 6  # escaping turns one character into at most six (&quot;)
    if size > BUDGET.get().max_value:
        raise _too_big("join()")
    joined: str = jinja_filters.do_join(eval_ctx, items, d)  # Markup when autoescaping
    return joined


def _batch(value: Iterable[Any], linecount: int, fill_with: Any = None) -> Iterator[list[Any]]:
    if linecount > MAX_RANGE:
        raise RenderLimitExceeded(f"batch() is limited to {MAX_RANGE} items per batch")
    return jinja_filters.do_batch(value, linecount, fill_with)


def _slice(value: Any, slices: int, fill_with: Any = None) -> Iterator[list[Any]]:
    if slices > MAX_RANGE:
        raise RenderLimitExceeded(f"slice() is limited to {MAX_RANGE} slices")
    return jinja_filters.sync_do_slice(value, slices, fill_with)


GUARDED_FILTERS: dict[str, Callable[..., Any]] = {
    "center": _center,
    "indent": _indent,
    "wordwrap": _wordwrap,
    "format": _format,
    "replace": _replace,
    "join": _join,
    "batch": _batch,
    "slice": _slice,
}


def _none_as_empty(value: Any) -> Any:
    """A contact without a first name prints nothing, not 'None'."""
    return "" if value is None else value


class _GuardedCodeGenerator(CodeGenerator):
    """Routes every output write and every ``~`` through the environment's budget checks."""

    def _output_const_repr(self, group: Iterable[Any]) -> str:
        return f"environment.spend({super()._output_const_repr(group)})"

    def _output_child_pre(self, node: nodes.Expr, frame: Frame, finalize: Any) -> None:
        self.write("environment.spend(")
        super()._output_child_pre(node, frame, finalize)

    def _output_child_post(self, node: nodes.Expr, frame: Frame, finalize: Any) -> None:
        super()._output_child_post(node, frame, finalize)
        self.write(")")

    def visit_Concat(self, node: nodes.Concat, frame: Frame) -> None:
        self.write("environment.sized(")
        super().visit_Concat(node, frame)
        self.write(")")


class GuardedEnvironment(ImmutableSandboxedEnvironment):
    """The sandbox with time, size and attribute limits; see the module docstring."""

    code_generator_class = _GuardedCodeGenerator
    intercepted_binops = frozenset({"*", "**", "%", "+"})

    def __init__(self, *, autoescape: bool) -> None:
        super().__init__(
            autoescape=autoescape,
            undefined=StrictUndefined,
            finalize=_none_as_empty,
            cache_size=0,
            auto_reload=False,
        )
        # No lipsum (a loop of n paragraphs); range is ours. Left: dict, cycler, joiner, namespace.
        self.globals = {k: v for k, v in DEFAULT_NAMESPACE.items() if k != "lipsum"}
        self.globals["range"] = guarded_range
        self.filters.update(GUARDED_FILTERS)
        self.filters["localtime"] = localtime  # bounded itself: see localtime.py

    # --- attribute access -------------------------------------------------------------------

    def is_safe_attribute(self, obj: Any, attr: str, value: Any) -> bool:
        if isinstance(obj, str) and attr in BLOCKED_STR_METHODS:
            return False
        return super().is_safe_attribute(obj, attr, value)

    def wrap_str_format(self, value: Any) -> Callable[..., str] | None:  # noqa: ARG002
        # Never hand out a (sandboxed) str.format: is_safe_attribute refuses it instead.
        return None

    # --- hooks called by the generated code ---------------------------------------------------

    def spend(self, value: str) -> str:
        """Counts what an output statement writes, wherever it goes."""
        budget = BUDGET.get()
        budget.spend_left -= len(value)
        if budget.spend_left < 0:
            raise _too_big("the template's output")
        return value

    def sized(self, value: str) -> str:
        """The result of ``~``, refused when too long (doubling in a loop stays bounded)."""
        if len(value) > BUDGET.get().max_value:
            raise _too_big("the ~ operator")
        return value

    def loop_iter(self, iterable: Iterable[Any]) -> Iterator[Any]:
        """Every ``{% for %}`` iterates through this (see ``guard_loops``)."""
        return _deadline_iter(iter(iterable), BUDGET.get().deadline)

    def call(self, context: Any, obj: Any, /, *args: Any, **kwargs: Any) -> Any:
        budget = BUDGET.get()
        _check_deadline(budget)
        owner = getattr(obj, "__self__", None)
        if isinstance(owner, str):
            args = self._check_str_call(owner, getattr(obj, "__name__", ""), args, kwargs, budget)
        result = super().call(context, obj, *args, **kwargs)
        return _check_size(result, budget, "a call")

    @staticmethod
    def _check_str_call(
        owner: str, name: str, args: tuple[Any, ...], kwargs: dict[str, Any], budget: Budget
    ) -> tuple[Any, ...]:
        if name == "join" and args:
            items = list(args[0])
            size = len(owner) * max(len(items) - 1, 0)
            size += sum(len(x) for x in items if isinstance(x, str))
            if size > budget.max_value:
                raise _too_big("join()")
            return (items, *args[1:])
        if name == "replace" and len(args) >= 2:
            count = args[2] if len(args) > 2 else kwargs.get("count", -1)
            if _replaced_size(owner, str(args[0]), str(args[1]), count) > budget.max_value:
                raise _too_big("replace()")
        return args

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:  # noqa: ARG002
        budget = BUDGET.get()
        if operator == "*":
            self._check_product(left, right, budget)
        elif operator == "**":
            if isinstance(left, int) and isinstance(right, int) and abs(left) > 1 and right > 0:
                if left.bit_length() * right > MAX_INT_BITS:
                    raise RenderLimitExceeded(f"numbers are limited to {MAX_INT_BITS} bits")
        elif operator == "%" and isinstance(left, str):
            _check_percent_format(left)
        result = self.binop_table[operator](left, right)
        if operator == "+":
            _check_size(result, budget, "the + operator")
        return result

    @staticmethod
    def _check_product(left: Any, right: Any, budget: Budget) -> None:
        if isinstance(left, int) and isinstance(right, int):
            if left.bit_length() + right.bit_length() > MAX_INT_BITS:
                raise RenderLimitExceeded(f"numbers are limited to {MAX_INT_BITS} bits")
            return
        for seq, times in ((left, right), (right, left)):
            if isinstance(seq, (str, list, tuple)) and isinstance(times, int):
                if len(seq) * times > budget.max_value:
                    raise _too_big("the * operator")


def guard_loops(template: nodes.Template) -> None:
    """Wraps the iterable of every ``{% for %}`` in ``environment.loop_iter`` (deadline checks).

    Done on the syntax tree, so a template cannot shadow or bypass it: an ``EnvironmentAttribute``
    has no name in the template's namespace.
    """
    for loop in template.find_all(nodes.For):
        loop.iter = nodes.Call(
            nodes.EnvironmentAttribute("loop_iter", lineno=loop.lineno),
            [loop.iter],
            [],
            None,
            None,
            lineno=loop.lineno,
        )


#: Tags that would need a template loader; a stored template is self-contained.
FORBIDDEN_NODES: tuple[type[nodes.Node], ...] = (
    nodes.Include,
    nodes.Import,
    nodes.FromImport,
    nodes.Extends,
)
