"""`depot-api agent`, which runs on each BuildKit host: its options (options.py), the loop that
registers, heartbeats and keeps the daemon as the server wants it (agent.py), the machine's
front door that admits and forwards build connections (front_door.py, splice.py), the two
kinds of daemon (daemons.py: buildkitd, or a Docker Engine reached as docker_engine.py says),
the agent's own Control calls to it (control.py), and the backoff and once-per-change logging
of its retries (retrying.py)."""
