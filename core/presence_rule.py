"""The (epoch, state) rule of DESIGN.md §3, as the pure reference the Redis script must match."""

from core.messages import DeviceState


def rank(epoch: int, state: DeviceState) -> tuple[int, int]:
    """Within one epoch `offline` outranks `online`: an ended session cannot come back."""
    return (epoch, 1 if state is DeviceState.OFFLINE else 0)


def supersedes(new: tuple[int, DeviceState], current: tuple[int, DeviceState] | None) -> bool:
    """True when `new` must replace what is stored; an older or equal message is ignored."""
    return current is None or rank(*new) > rank(*current)


def heartbeat_accepted(epoch: int, current: tuple[int, DeviceState] | None) -> bool:
    """A heartbeat counts for the live epoch, or a newer one (its birth may still be in flight)."""
    if current is None:
        return True
    stored_epoch, state = current
    return epoch > stored_epoch or (epoch == stored_epoch and state is DeviceState.ONLINE)
