# A disposable SSH target for the kind end-to-end run: Debian with sshd, python3 (for
# Ansible) and sudo, root login by key only. Host keys are made at start, so every pod is a
# new server.
ARG BASE_IMAGE=docker.io/library/debian:bookworm-slim
FROM ${BASE_IMAGE}
RUN apt-get update -qq \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      openssh-server python3 sudo >/dev/null \
 && rm -rf /var/lib/apt/lists/* /etc/ssh/ssh_host_* \
 && mkdir -p /run/sshd \
 && printf 'PermitRootLogin prohibit-password\nPasswordAuthentication no\n' \
      >/etc/ssh/sshd_config.d/10-e2e.conf
COPY target-start.sh /usr/local/sbin/target-start.sh
EXPOSE 22
CMD ["/usr/local/sbin/target-start.sh"]
