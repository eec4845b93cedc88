"""How long does building one message's MIME bytes take? ``build_message_bytes`` against the
stdlib ``email`` package (EmailMessage + as_bytes), for a few kinds of ~4 KB content.

    python bench/bench_mime.py

It prints microseconds per message; it asserts nothing about them.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from email import policy
from email.headerregistry import Address
from email.message import EmailMessage

from tidings.domain.message import OutgoingMessage
from tidings.transports.mime import build_message_bytes

LINE = "Hello {name}, here is this week's news from Acme. Thanks for reading us!\n"
ACCENTS = "Grüße aus Köln, schöne Woche und bis bald — “Acme” wünscht alles Gute!\n"
CYRILLIC = "Привет, это новости недели от Acme. Спасибо, что читаете нас!\n"


def message(text_line: str, html: str) -> OutgoingMessage:
    return OutgoingMessage(
        message_id=1234,
        tenant_id=1,
        from_address="Acme News <news@acme.test>",
        to_address="bob@example.com",
        to_name="Bob Smith",
        subject="Weekly news for you, Bob",
        text=text_line * 26,
        html=html,
        message_id_header="<1234.bench@acme.test>",
        headers=(
            ("List-Unsubscribe", "<https://acme.test/u/tok>"),
            ("List-Unsubscribe-Post", "List-Unsubscribe=One-Click"),
        ),
    )


CASES = {
    "ascii, short lines (7bit)": message(LINE, ("<p>" + LINE + "</p>") * 24),
    "ascii, minified html (QP)": message(
        LINE, "".join(f'<p style="margin:0">{LINE.strip()}</p>' for _ in range(24))
    ),
    "accented latin (QP)": message(ACCENTS, ("<p>" + ACCENTS + "</p>") * 24),
    "cyrillic (base64)": message(CYRILLIC, ("<p>" + CYRILLIC + "</p>") * 24),
}


def with_stdlib(msg: OutgoingMessage) -> bytes:
    email = EmailMessage()
    email["From"] = msg.from_address
    email["To"] = Address(display_name=msg.to_name or "", addr_spec=msg.to_address)
    email["Subject"] = msg.subject
    email["Message-ID"] = msg.message_id_header
    for name, value in msg.headers:
        email[name] = value
    email.set_content(msg.text)
    email.add_alternative(msg.html or "", subtype="html")
    return email.as_bytes(policy=policy.SMTP)


def per_message(build: Callable[[OutgoingMessage], bytes], msg: OutgoingMessage, n: int) -> float:
    best = float("inf")
    for _ in range(3):
        started = time.perf_counter()
        for _ in range(n):
            build(msg)
        best = min(best, (time.perf_counter() - started) / n)
    return best * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--iterations", type=int, default=5000)
    args = parser.parse_args()
    print(f"{'content':<28} {'bytes':>6} {'tidings µs':>11} {'stdlib µs':>10}")
    for label, msg in CASES.items():
        size = len(build_message_bytes(msg))
        ours = per_message(build_message_bytes, msg, args.iterations)
        stdlib = per_message(with_stdlib, msg, max(args.iterations // 20, 50))
        print(f"{label:<28} {size:>6} {ours:>11.1f} {stdlib:>10.1f}")


if __name__ == "__main__":
    main()
