"""Long-running campaigns against real server processes (campaigns/README.md)."""
