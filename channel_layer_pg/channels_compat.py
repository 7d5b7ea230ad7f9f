"""Channels' BaseChannelLayer interface: the helpers code written for Channels calls on a layer.

With Channels installed, ``ChannelsInterface`` subclasses ``channels.layers.BaseChannelLayer``,
so ``isinstance(layer, BaseChannelLayer)`` holds for PostgresChannelLayer; without it, it
subclasses ``object`` and Channels stays an optional dependency. Either way every method and
attribute BaseChannelLayer defines is defined here, over naming.py and the layer's own
capacities, so the layer behaves the same with or without Channels and inherits nothing from
it but the isinstance check. Where behaviour differs from Channels 4.x it is on purpose, and
listed in docs/guarantees.md (Channels' BaseChannelLayer).
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar

from .capacity import parse_channel_capacity
from .config import LayerConfig, positive_int
from .naming import (
    CHANNEL_NAME_REGEX,
    GROUP_NAME_REGEX,
    MAX_NAME_LENGTH,
    validate_channel_name,
    validate_group_name,
)
from .naming import non_local_name as _non_local_name

if TYPE_CHECKING:
    _Base = object
else:
    try:
        from channels.layers import BaseChannelLayer as _Base
    except ImportError:
        _Base = object

CHANNELS_INSTALLED = _Base is not object

CapacityRules = list[tuple[re.Pattern[str], int]]


class ChannelsInterface(_Base):
    """BaseChannelLayer's helpers, behaving as Channels defines them.

    The layer sets ``capacity``, ``expiry`` and ``_config`` in its constructor; it does not
    call BaseChannelLayer's, which takes only expiry, capacity and channel_capacity and would
    overwrite ``channel_capacity``, here read from the layer's checked options.
    """

    MAX_NAME_LENGTH: ClassVar[int] = MAX_NAME_LENGTH
    channel_name_regex: ClassVar[re.Pattern[str]] = CHANNEL_NAME_REGEX
    group_name_regex: ClassVar[re.Pattern[str]] = GROUP_NAME_REGEX
    invalid_name_error: ClassVar[str] = (
        "{} name must be a valid unicode string "
        f"with length < {MAX_NAME_LENGTH} "
        "containing only ASCII alphanumerics, hyphens, underscores, or periods."
    )
    _config: LayerConfig
    capacity: int
    expiry: float

    # -- capacities -------------------------------------------------------------------------

    @property
    def channel_capacity(self) -> CapacityRules:
        """The ``channel_capacity`` option as BaseChannelLayer keeps it: (regex, capacity), in order."""
        return [(rule.pattern, rule.capacity) for rule in self._config.channel_capacity]

    def compile_capacities(self, channel_capacity: Mapping[Any, int]) -> CapacityRules:
        """(regex, capacity) pairs for a ``channel_capacity`` dict: globs compiled, regexes kept.

        The option's own checks apply, so a pattern the layer would refuse is refused here too.
        """
        rules = parse_channel_capacity(channel_capacity, positive_int=positive_int)
        return [(rule.pattern, rule.capacity) for rule in rules]

    def get_capacity(self, channel: str) -> int:
        """The capacity of the first ``channel_capacity`` pattern ``channel`` matches, else ``capacity``."""
        return self._config.capacity_for(channel)

    # -- names ------------------------------------------------------------------------------

    def match_type_and_length(self, name: object) -> bool:
        return isinstance(name, str) and len(name) < self.MAX_NAME_LENGTH

    def require_valid_channel_name(self, name: object, receive: bool = False) -> bool:
        """True if ``name`` is a valid channel name, else TypeError saying why.

        With ``receive``, a process-local name must end at its ``!``, as Channels requires of
        layers that receive on the non-local part only (this layer receives on full names).
        """
        channel = validate_channel_name(name)
        if receive and "!" in channel and not channel.endswith("!"):
            raise TypeError("Specific channel names in receive() must end at the !")
        return True

    def require_valid_group_name(self, name: object) -> bool:
        """True if ``name`` is a valid group name, else TypeError saying why."""
        validate_group_name(name)
        return True

    def valid_channel_names(self, names: object, receive: bool = False) -> bool:
        """True if ``names`` is a non-empty list of valid channel names, else TypeError."""
        if not isinstance(names, list) or not names:
            raise TypeError(f"names must be a non-empty list of channel names, not {names!r}")
        for name in names:
            self.require_valid_channel_name(name, receive=receive)
        return True

    def non_local_name(self, name: str) -> str:
        """The part of a channel name that names its queue: up to and including ``!``, if any."""
        return _non_local_name(name)

    def valid_channel_name(self, channel_name: object, receive: bool = False) -> bool:
        """Deprecated by Channels: use require_valid_channel_name (``receive`` is ignored, as there)."""
        warnings.warn(
            "valid_channel_name is deprecated, use require_valid_channel_name instead.",
            DeprecationWarning,
            stacklevel=2,
        )
        return self.require_valid_channel_name(channel_name)

    def valid_group_name(self, group_name: object) -> bool:
        """Deprecated by Channels: use require_valid_group_name."""
        warnings.warn(
            "valid_group_name is deprecated, use require_valid_group_name instead.",
            DeprecationWarning,
            stacklevel=2,
        )
        return self.require_valid_group_name(group_name)
