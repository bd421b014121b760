"""``tunekit hub …`` commands (placeholder until the hub server lands)."""


def register(sub) -> None:
    """Add the ``hub`` command group to the top-level subparsers."""
