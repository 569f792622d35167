#!/bin/sh
# Starts the e2e target: fresh host keys, the provisioner's key from /keys, sshd in front.
set -eu
ssh-keygen -A >/dev/null
install -d -m 0700 /root/.ssh
install -m 0600 /keys/authorized_keys /root/.ssh/authorized_keys
exec /usr/sbin/sshd -D -e
