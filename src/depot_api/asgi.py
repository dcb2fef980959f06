"""The application object the server process loads (`depot_api.asgi:app`), configured from
the DEPOT_API_* environment that `depot-api serve` sets."""

from depot_api.app import create_app
from depot_api.config import Settings
from depot_api.logs import configure_logging
from depot_api.tracing import configure_tracing

_settings = Settings.from_env()
configure_logging(_settings.log_level, _settings.log_format)
configure_tracing("depot-api")
app = create_app(_settings)
