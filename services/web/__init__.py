"""The web service: the REST API (and, later, the server-rendered UI)."""
