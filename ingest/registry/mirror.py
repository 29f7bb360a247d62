"""The service's mirror of the on-chain DeviceRegistry, and the chain provider that keeps it.

The consumer never calls the chain per message: it looks devices up in `RegistryMirror`, which the
follower (`follower.py`) fills from the registry's events and the on-demand reads (`reads.py`) top up
for ids the fold has not reached yet. The pipeline judges with `RegistryMirror.classes`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from types import MappingProxyType
from typing import Any

import aiohttp
from web3 import AsyncHTTPProvider
from web3.types import RPCEndpoint

from devices.protocol.hwclass import HwClass, from_registry
from devices.protocol.model import DeviceRecord
from devices.protocol.registry_fold import HwClassInfo

# For the service's chain provider: web3 validates every eth_call against eth_chainId, which uncached
# triples the RPC calls an on-demand read costs; the chain id never changes under a running service.
# No validation threshold: web3 would look it up by briefly switching caching off, which races between
# concurrent requests (caching then stays off for good).
PROVIDER_OPTIONS: dict[str, Any] = {
    "cache_allowed_requests": True,
    "cacheable_requests": {RPCEndpoint("eth_chainId")},
    "request_cache_validation_threshold": None,
}


def chain_provider(url: str, timeout_s: float) -> AsyncHTTPProvider:
    """The service's provider: every request ends after `timeout_s` (a hung RPC counts as down instead
    of stalling a sync for web3's default 30 s), and web3's own retries are off (they would multiply
    the timeout; the follower and the epoch scheduler retry on their own schedule)."""
    return AsyncHTTPProvider(
        url,
        request_kwargs={"timeout": aiohttp.ClientTimeout(total=timeout_s)},
        exception_retry_configuration=None,
        **PROVIDER_OPTIONS,
    )


class RegistryMirror:
    def __init__(self) -> None:
        self.devices: dict[bytes, DeviceRecord] = {}
        # The hardware-class table as on chain (HwClassSet events), disabled classes included.
        self.hw_classes: dict[int, HwClassInfo] = {}
        # What the pipeline judges with, derived from hw_classes once their rows are persisted. Updated
        # in place, never replaced: the consumer holds a read-only view of this very dict
        # (`classes_view`), so a class change applies from the next batch on.
        self.classes: dict[int, HwClass] = {}
        self.block = -1
        # Records read on demand for ids the event fold has not reached, with the block up to which the
        # read is known to be at least as new. Dropped once the fold has passed that block: from then on
        # the fold holds the truth, present or not (an overlay entry from an orphaned fork dies with it).
        self.resolved: dict[bytes, tuple[DeviceRecord, int]] = {}

    def lookup(self, device_id: bytes) -> DeviceRecord | None:
        rec = self.devices.get(device_id)
        if rec is None and (hit := self.resolved.get(device_id)) is not None:
            return hit[0]
        return rec

    def classes_view(self) -> Mapping[int, HwClass]:
        return MappingProxyType(self.classes)

    def refresh_classes(self, changed: Iterable[int]) -> None:
        """Bring the pipeline's classes in line with hw_classes for `changed` ids. A disabled class is
        kept: on chain "disabled" only stops new registrations, its devices keep being judged."""
        for class_id in changed:
            info = self.hw_classes.get(class_id)
            if info is None:
                self.classes.pop(class_id, None)
            else:
                self.classes[class_id] = from_registry(info.id, info.name, info.max_speed_kmh, info.h3_res)

    def prune_resolved(self) -> None:
        if self.resolved:
            self.resolved = {d: hit for d, hit in self.resolved.items() if hit[1] > self.block}
