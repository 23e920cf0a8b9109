"""The state store (Redis / Valkey, DESIGN.md §5): records and the Lua scripts that
change them atomically. Shared plumbing of the services; no service logic lives here."""
