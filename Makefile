# Convenience targets; the README's two commands (scripts/serve, scripts/test) need no make.
.PHONY: serve test bench bench-import bench-delivery bench-peers bench-throttle

serve:
	scripts/serve

test:
	scripts/test

bench: bench-import bench-delivery bench-throttle

bench-import:
	scripts/bootstrap dev && .venv/bin/python bench/bench_import.py

# Fan-out, end-to-end throughput into Postfix's smtp-sink (with the peers' figures of the same
# run: smtp-source and the smtplib ceiling), wake-up latency and API latency.
bench-delivery:
	scripts/bootstrap dev && bash bench/setup.sh && .venv/bin/python bench/bench_fanout.py && \
	.venv/bin/python bench/bench_smtp_clients.py && .venv/bin/python bench/bench_delivery.py --peers

# The peers alone, each into a fresh smtp-sink: smtp-source (the physical limit) and stdlib
# smtplib with pre-built bytes (the Python ceiling).
bench-peers:
	scripts/bootstrap dev && bash bench/setup.sh && .venv/bin/python bench/peers/smtp_source.py && \
	.venv/bin/python bench/peers/smtplib_ceiling.py

# Throttle utilisation and worst windows at the receiving server (PostgreSQL, then SQLite), and
# the campaign completion estimate's error on throttled campaigns.
bench-throttle:
	scripts/bootstrap dev && .venv/bin/python bench/bench_throttle.py --workers 1 3 8 && \
	.venv/bin/python bench/bench_throttle.py --sqlite --workers 1 3 && .venv/bin/python bench/bench_eta.py
