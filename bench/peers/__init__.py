"""The peers Tidings' delivery figure is read against, on the same smtp-sink: Postfix's
``smtp-source`` (the physical limit of SMTP over this machine's loopback) and stdlib ``smtplib``
sending pre-built bytes (the ceiling of a Python client). ``bench_delivery.py --peers`` runs both
before Tidings and prints its figure as a share of each; each script also runs alone, against a
fresh smtp-sink of its own (``bench_smtp_clients.smtp_sink``, as the other SMTP benchmarks).
"""
