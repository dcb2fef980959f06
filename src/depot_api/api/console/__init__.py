"""The web console: server-rendered pages for people, on the API's own port (docs/console.md)."""
