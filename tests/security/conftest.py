"""The security suite attacks the real system: the same fixtures as tests/system."""

from tests.system.conftest import actions_base, system

__all__ = ["actions_base", "system"]
