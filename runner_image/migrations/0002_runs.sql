-- Run history: one row per run (request id), kept for the retention the dispatcher prunes
-- to (DISPATCHER_HISTORY_RETENTION_DAYS). The dispatcher inserts the row when it creates the
-- Job and completes it when the Job ends; the runner fills in what only it knows. Either may
-- come first (an upsert on request_id), so every column but the key and the server may be
-- NULL until its writer has been.
CREATE TABLE runs (
    request_id         text PRIMARY KEY CHECK (request_id <> ''),
    server_handle      text NOT NULL,
    action             text CHECK (action IN ('setup', 'recovery', 'reinstall')),
    job_name           text,
    dispatcher_replica text,
    runner_image       text,            -- the image the dispatcher gave the Job
    runner_version     text,            -- the version the runner reported
    queued_at          timestamptz NOT NULL,  -- enqueued_at or first seen, the earlier
    launched_at        timestamptz,     -- the Job created
    started_at         timestamptz,     -- the runner started
    finished_at        timestamptz,
    phases             jsonb NOT NULL DEFAULT '{}'::jsonb
                       CHECK (jsonb_typeof(phases) = 'object'),  -- phase -> seconds
    status             text,            -- the result's status
    error_kind         text,            -- the result's error kind (NULL: succeeded)
    reported_by        text CHECK (reported_by IN ('runner', 'dispatcher')),
    failed_task        text,
    failed_host        text,
    message            text CHECK (char_length(message) <= 1000),  -- bounded, redacted
    changed_count      integer CHECK (changed_count >= 0),
    ok_count           integer CHECK (ok_count >= 0),
    ssh_port_before    integer CHECK (ssh_port_before BETWEEN 1 AND 65535),
    ssh_port_after     integer CHECK (ssh_port_after BETWEEN 1 AND 65535),
    updated_at         timestamptz NOT NULL DEFAULT now()
);

-- "What happened to web-7": a server's runs, newest first; pruning by age.
CREATE INDEX runs_server_queued_idx ON runs (server_handle, queued_at DESC);
CREATE INDEX runs_queued_idx ON runs (queued_at);

-- The dispatcher's least privilege: its own rows of runs (write, read, prune) and the
-- handles of servers (so its CLI can tell an unknown server from one without runs); nothing
-- else, not the servers' addresses, passwords or statuses. A group role: a login role is
-- made a member of it (GRANT infra_service_dispatcher TO <login>). Created here when the
-- migrating role may create roles; where a platform owns roles it creates this one before
-- the migration runs, and the grants below find it.
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'infra_service_dispatcher') THEN
        BEGIN
            CREATE ROLE infra_service_dispatcher NOLOGIN;
        EXCEPTION WHEN insufficient_privilege THEN
            RAISE WARNING 'role infra_service_dispatcher not created (the migrating role '
                'may not create roles): create it, then grant it as in the README';
        END;
    END IF;
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'infra_service_dispatcher') THEN
        GRANT SELECT, INSERT, UPDATE, DELETE ON runs TO infra_service_dispatcher;
        GRANT SELECT (handle) ON servers TO infra_service_dispatcher;
    END IF;
END
$$;
