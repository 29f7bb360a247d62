"""The service's mirror of the on-chain DeviceRegistry (devices and hardware classes).

- `mirror.py`: `RegistryMirror`, what the consumer looks devices up in (it never calls the chain per
  message), and `chain_provider`, the service's web3 provider.
- `follower.py`: `RegistryFollower`, which folds the registry's events into the mirror and PostgreSQL,
  resumes from a persisted checkpoint and takes reorgs back.
- `reads.py`: `OnDemandReads`, bounded reads of ids the fold has not reached (the consumer's prefetch).
"""

from ingest.registry.follower import CURSOR, HeadMode, RegistryFollower, ReorgDuringScan
from ingest.registry.mirror import PROVIDER_OPTIONS, RegistryMirror, chain_provider
from ingest.registry.reads import OnDemandReads

__all__ = [
    "CURSOR",
    "PROVIDER_OPTIONS",
    "HeadMode",
    "OnDemandReads",
    "RegistryFollower",
    "RegistryMirror",
    "ReorgDuringScan",
    "chain_provider",
]
