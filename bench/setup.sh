#!/usr/bin/env bash
# Installs Postfix's smtp-sink (a discard-everything SMTP server) for the SMTP benchmarks, and
# smtp-source (its parallel SMTP client, the physical-limit peer of bench/peers/) from the same
# package. Idempotent: does nothing when both are already there. The postfix daemon is never
# started; only the two test binaries are used.
set -euo pipefail

if [[ -x /usr/sbin/smtp-sink && -x /usr/sbin/smtp-source ]]; then
    echo "smtp-sink and smtp-source already installed"
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
for tool in smtp-sink smtp-source; do
    if [[ ! -x /usr/sbin/$tool ]]; then
        echo "postfix did not install /usr/sbin/$tool" >&2
        exit 1
    fi
done
echo "smtp-sink and smtp-source installed in /usr/sbin"
