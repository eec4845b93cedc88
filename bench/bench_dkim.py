"""DKIM signing cost per message (RSA-2048 and Ed25519) on a realistic ~3 KB personalised message.

Prints microseconds of CPU per message for: building the MIME bytes unsigned (the baseline), our
signer (``transports/dkim_sign.py``, key object parsed once per worker), the same re-parsing the
PEM every message, and dkimpy's ``sign`` (what the issue names), and whether signing costs more than
15 % of the end-to-end figure (~3,400 messages/s on the 2-core reference machine, so ~45 us of CPU
a message). Also: RSA signatures a second from one thread and from two at once, to see whether
signing off the event loop would run in parallel (noisy on a shared machine).

    .venv/bin/python bench/bench_dkim.py [--messages 2000]
"""

from __future__ import annotations

import argparse
import base64
import threading
import time
from collections.abc import Callable

import dkim
from cryptography.hazmat.primitives import serialization

from tidings.domain.message import DkimKey, OutgoingMessage
from tidings.transports import dkim_sign
from tidings.transports.mime import build_message_bytes

END_TO_END_RATE = 3400  # messages/s, README figure of 3 December (100k campaign, default options)
BUDGET_SHARE = 0.15  # the ceiling for signing


def message(i: int, key: DkimKey | None) -> OutgoingMessage:
    paragraph = (
        "Dear Ann Example, this is a reminder that grades for Biology 101 (section 4) are due on "
        "Friday at 17:00. Please submit them through the portal; late submissions need the "
        "dean's approval. "
    )
    html = (
        '<html><body><div style="font-family: Arial, sans-serif; color: #222">'
        + "".join(f"<p>{paragraph} ({i}.{n})</p>\n" for n in range(8))
        + '<p><a href="https://school.example.edu/portal?c=12345">Open the portal</a></p>'
        "</div></body></html>"
    )
    text = "\n\n".join(f"{paragraph} ({i}.{n})" for n in range(6))
    return OutgoingMessage(
        message_id=i,
        tenant_id=1,
        from_address="Registrar <registrar@mail.school.example.edu>",
        to_address=f"ann.example{i}@students.example.edu",
        to_name="Ann Example",
        subject=f"Reminder for Ann: grades due Friday ({i})",
        html=html,
        text=text,
        message_id_header=f"<{i}.0123456789abcdef0123@mail.school.example.edu>",
        headers=(
            ("List-Unsubscribe", f"<https://tidings.example.edu/u/{'x' * 120}{i}>"),
            ("List-Unsubscribe-Post", "List-Unsubscribe=One-Click"),
            ("X-Tidings-Campaign", "42"),
        ),
        dkim=key,
    )


def per_message(n: int, work: Callable[[int], object]) -> float:
    """Microseconds of CPU per call of ``work``, best of three rounds."""
    best = float("inf")
    for _ in range(3):
        started = time.process_time()
        for i in range(n):
            work(i)
        best = min(best, (time.process_time() - started) / n * 1e6)
    return best


def threaded_rate(key: DkimKey, raw: bytes, seconds: float = 2.0) -> float:
    """Signatures a second from two threads at once."""
    done = [0, 0]
    stop = time.perf_counter() + seconds

    def run(slot: int) -> None:
        while time.perf_counter() < stop:
            dkim_sign.dkim_signature(raw, key)
            done[slot] += 1

    threads = [threading.Thread(target=run, args=(s,)) for s in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return sum(done) / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=2000)
    n = parser.parse_args().messages
    raw = build_message_bytes(message(0, None))
    print(f"message: {len(raw)} bytes; {n} messages per round, best of 3; CPU time")
    # 15 % of the time one message takes end to end (294 us at 3,400/s) is ~44 us.
    budget = 1e6 / END_TO_END_RATE * BUDGET_SHARE
    base = per_message(n, lambda i: build_message_bytes(message(i, None)))
    print(f"  build unsigned (baseline)                  {base:8.1f} us")
    for algorithm in dkim_sign.ALGORITHMS:
        private = dkim_sign.generate_key(algorithm)
        key = DkimKey("mail.school.example.edu", "td1", algorithm, private)
        pem = dkim_sign.private_pem(private)
        ours = per_message(n, lambda i, k=key: build_message_bytes(message(i, k))) - base

        def reparsed(i: int, k: DkimKey = key, p: bytes = pem) -> bytes:
            fresh = DkimKey(k.domain, k.selector, k.algorithm, dkim_sign.load_private_pem(p))
            return build_message_bytes(message(i, fresh))

        rounds = max(50, n // 10)  # a parse of an RSA key takes tens of ms: fewer rounds
        reparse = per_message(rounds, reparsed) - base
        if algorithm == dkim_sign.ED25519:
            seed = private.private_bytes(  # type: ignore[call-arg]
                serialization.Encoding.Raw,
                serialization.PrivateFormat.Raw,
                serialization.NoEncryption(),
            )
            dkimpy_key = base64.b64encode(seed)
        else:
            dkimpy_key = pem

        def with_dkimpy(i: int, a: str = algorithm, k: bytes = dkimpy_key) -> bytes:
            body = build_message_bytes(message(i, None))
            header: bytes = dkim.sign(
                body,
                b"td1",
                b"mail.school.example.edu",
                k,
                canonicalize=(b"relaxed", b"relaxed"),
                signature_algorithm=a.encode(),
                include_headers=[h.encode() for h in dkim_sign.SIGNED_HEADERS],
            )
            return header + body

        theirs = per_message(rounds, with_dkimpy) - base
        verdict = "OVER" if ours > budget else "within"
        print(f"{algorithm}:")
        print(f"  ours, key parsed once per worker           {ours:8.1f} us  ({verdict} budget)")
        print(f"  ours, PEM parsed every message             {reparse:8.1f} us")
        print(f"  dkimpy.sign                                {theirs:8.1f} us")
        if algorithm == dkim_sign.RSA:
            single = 1e6 / ours if ours > 0 else float("inf")
            print(
                f"  signatures/s: 1 thread {single:,.0f}, 2 threads {threaded_rate(key, raw):,.0f}"
            )
    print(
        f"budget: {BUDGET_SHARE:.0%} of 1/{END_TO_END_RATE:,} s = {budget:.0f} us of CPU a message"
    )


if __name__ == "__main__":
    main()
