"""depot-api: a self-hostable control plane for container builds that speaks Depot's API."""

__version__ = "0.1.0"
