"""Running `depot-api serve`: the supervisor (supervisor.py) starts one worker per core
(worker.py: an Envoy process with the application loaded), all listening on one address that
the supervisor first claims for itself alone (address.py), and stops them by draining.
ServeError (errors.py) is a failure to start, said in one line."""
