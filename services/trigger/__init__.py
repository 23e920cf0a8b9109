"""The trigger service: git hosts' webhooks → trigger events on RY_EVENTS."""
