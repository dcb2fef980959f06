"""`depot-api agent`, which runs on each BuildKit host: its options (options.py), the loop that
registers, heartbeats and keeps the daemon as the server wants it (agent.py), and the backoff
and once-per-change logging of its retries (retrying.py)."""
