-- The source of truth for servers the runner provisions.
-- Root passwords are stored encrypted with pgcrypto (pgp_sym_encrypt); the key comes from
-- the runner's CREDENTIALS_KEY and is only ever passed as a query parameter.
CREATE EXTENSION IF NOT EXISTS pgcrypto;

CREATE TABLE servers (
    handle               text PRIMARY KEY
                         CHECK (handle ~ '^[A-Za-z0-9]([A-Za-z0-9._-]{0,61}[A-Za-z0-9])?$'),
    provider             text NOT NULL DEFAULT 'time4vps',
    provider_server_id   text,
    address              text NOT NULL CHECK (address <> ''),
    ssh_port             integer NOT NULL DEFAULT 22 CHECK (ssh_port BETWEEN 1 AND 65535),
    ssh_user             text NOT NULL DEFAULT 'root'
                         CHECK (ssh_user ~ '^[a-z_][a-z0-9_-]{0,31}$'),
    root_password_enc    bytea,
    host_key             text,
    host_key_recorded_at timestamptz,
    status               text NOT NULL DEFAULT 'NEW'
                         CHECK (status IN ('NEW', 'PROVISIONING', 'REINSTALLING', 'RECOVERING',
                                           'READY', 'FAILED', 'UNREACHABLE')),
    status_reason        text,
    last_request_id      text,
    last_run_started_at  timestamptz,
    last_run_finished_at timestamptz,
    created_at           timestamptz NOT NULL DEFAULT now(),
    updated_at           timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX servers_status_idx ON servers (status);
