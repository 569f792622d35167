"""Ansible callback plugins of the runner (loaded by ansible-playbook from this directory,
not imported by the runner itself)."""
