"""The scheduler: `triggers.schedule` entries → cron trigger events."""
