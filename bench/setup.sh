#!/usr/bin/env bash
# Installs Postfix's smtp-sink (a discard-everything SMTP server) for bench/bench_smtp_clients.py.
# Idempotent: does nothing when /usr/sbin/smtp-sink is already there. The postfix daemon is never
# started; only the smtp-sink binary is used.
set -euo pipefail

if [[ -x /usr/sbin/smtp-sink ]]; then
    echo "smtp-sink already installed"
    exit 0
fi

SUDO=""
if [[ $(id -u) -ne 0 ]]; then
    SUDO="sudo"
fi

export DEBIAN_FRONTEND=noninteractive
# Preseed the debconf questions so the install never prompts.
echo "postfix postfix/main_mailer_type select No configuration" | $SUDO debconf-set-selections
echo "postfix postfix/mailname string localhost" | $SUDO debconf-set-selections
$SUDO apt-get update
$SUDO apt-get install -y --no-install-recommends postfix
# The package may start the daemon through its maintainer scripts; we never want it running.
if command -v postfix >/dev/null && $SUDO postfix status >/dev/null 2>&1; then
    $SUDO postfix stop || true
fi
echo "smtp-sink installed at /usr/sbin/smtp-sink"
