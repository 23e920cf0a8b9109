"""The agent: runs jobs on users' machines. It knows the server only through NATS and
never imports `services`; local mode (`runyard pipeline run`) uses the same runners."""
