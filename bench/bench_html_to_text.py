"""How long ``html_to_text`` takes on a typical newsletter, and on hostile markup as it grows.

The first figure is the per-recipient cost when a template has no text part (best of a few runs,
in microseconds). The table then gives the CPU time of one conversion of each hostile input at
each size: a linear converter shows a "x/size" column (time growth over size growth) near 1 at
every step; a quadratic one shows the size factor itself (8, 12.5 …). Asserts nothing about time.

    python bench/bench_html_to_text.py [--sizes 10000,80000,1000000,8000000] [--runs 5]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

from tidings.rendering import html_to_text

#: ≈3 KB of the HTML a newsletter editor produces: layout tables, inline styles, a list, links.
NEWSLETTER = (
    """<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1"><title>Weekly news</title>
<style>body { margin: 0 } .btn { background: #0a7; color: #fff }</style></head>
<body style="margin:0;padding:0;background:#f4f4f4">
<table role="presentation" width="100%" cellpadding="0" cellspacing="0" border="0"><tr>
<td align="center" style="padding:24px 0">
<table role="presentation" width="600" cellpadding="0" cellspacing="0" style="background:#fff">
<tr><td style="padding:24px"><img src="https://cdn.example.com/logo.png" alt="Example Co" width="120"></td></tr>
<tr><td style="padding:0 24px 24px;font-family:Arial,sans-serif;font-size:16px;line-height:24px">
<h1 style="font-size:24px;margin:0 0 16px">Hello Ann,</h1>
<p style="margin:0 0 16px">Here is what happened this week at <strong>Example&nbsp;Co</strong>
&mdash; three new features, one fix &amp; an invitation.</p>
<ul style="margin:0 0 16px;padding-left:20px">
<li><a href="https://example.com/blog/1?utm_source=news&amp;utm_medium=email">Faster exports</a>: up to 4&times; quicker.</li>
<li><a href="https://example.com/blog/2?utm_source=news&amp;utm_medium=email">Dark mode</a> for the dashboard.</li>
<li><a href="https://example.com/blog/3?utm_source=news&amp;utm_medium=email">Team roles</a>, finally.</li>
</ul>
"""
    + '<p style="margin:0 0 16px">Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do '
    "eiusmod tempor incididunt ut labore et dolore magna aliqua.<br>Ut enim ad minim veniam.</p>\n"
    * 6
    + """<table role="presentation" cellpadding="0" cellspacing="0"><tr>
<td class="btn" style="border-radius:4px;padding:12px 20px">
<a href="https://example.com/events/42" style="color:#fff;text-decoration:none">Join the webinar</a></td>
</tr></table></td></tr>
<tr><td style="padding:16px 24px;font-size:12px;color:#888">
<p>You get this mail because you subscribed at example.com.<br>
<a href="https://mail.example.com/u/eyJ0IjoxLCJjIjo0Mn0.abc">Unsubscribe</a> &middot;
<a href="https://mail.example.com/p/eyJ0IjoxLCJjIjo0Mn0.def">Preferences</a></p>
<p>Example Co, 1 Main Street, Springfield</p></td></tr>
</table></td></tr></table></body></html>"""
)

#: Each makes about ``size`` characters of markup that an attacker or a broken editor could send.
HOSTILE: dict[str, Callable[[int], str]] = {
    "<a": lambda n: "<a" * (n // 2),
    "<!--": lambda n: "<!--" * (n // 4),
    "<!": lambda n: "<!" * (n // 2),
    "</": lambda n: "</" * (n // 2),
    '<a b="': lambda n: '<a b="' * (n // 6),
    "<a b": lambda n: "<a b" * (n // 4),
    "&#": lambda n: "&#" * (n // 2),
    "<?": lambda n: "<?" * (n // 2),
    "unclosed comment": lambda n: "<!--" + "x -" * (n // 3),
    "unclosed script": lambda n: "<script>" + "</scrip" * (n // 7),
    "unclosed style": lambda n: "<style>" + "<!--</styl" * (n // 10),
    "deep lists": lambda n: "<ul><li>x" * (n // 9),
    "deep divs": lambda n: "<div>" * (n // 5),
    "many tags": lambda n: "<p>a<b>b</b></p>" * (n // 16),
    "many attributes": lambda n: "<p " + "".join(f"a{i}=1 " for i in range(n // 8)) + ">x",
    "long attribute": lambda n: '<a href="' + "x" * n + '">y</a>',
}


def best_microseconds(action: Callable[[], object], count: int, runs: int) -> float:
    best = float("inf")
    for _ in range(runs):
        started = time.perf_counter()
        for _ in range(count):
            action()
        best = min(best, (time.perf_counter() - started) / count)
    return best * 1e6


def once_seconds(html: str) -> float:
    """CPU seconds, so that other work on the machine does not count."""
    started = time.process_time()
    html_to_text(html)
    return time.process_time() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", default="10000,80000,1000000,8000000")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--count", type=int, default=2000)
    args = parser.parse_args()
    sizes = [int(size) for size in args.sizes.split(",")]
    micros = best_microseconds(lambda: html_to_text(NEWSLETTER), args.count, args.runs)
    print(f"html_to_text, newsletter ({len(NEWSLETTER)} chars): {micros:8.1f} µs")
    print(f"{'input':18}" + "".join(f"{size:>12,}" for size in sizes) + "   x/size per step")
    for name, make in HOSTILE.items():
        seconds = [once_seconds(make(size)) for size in sizes]
        steps = [
            (seconds[i] / max(seconds[i - 1], 1e-6)) / (sizes[i] / sizes[i - 1])
            for i in range(1, len(sizes))
        ]
        print(
            f"{name:18}"
            + "".join(f"{s * 1e3:10.1f}ms" for s in seconds)
            + "   "
            + " ".join(f"{step:4.1f}" for step in steps)
        )


if __name__ == "__main__":
    main()
