"""The store: every write and query of the service against PostgreSQL, one class per caller.

Each caller gets the part of the database it touches, so its type says what it may do:
`IngestStore` (the consumer: batches, rejection retention), `MirrorStore` (the registry follower:
devices, hardware classes, its chain cursor), `ReadStore` (the API: read-only queries) and
`EpochStore` (the epoch scheduler: coverage, results, seal, journal). They may stand on one asyncpg
pool or on one each (`ingest.service.open_stores`: one pool per part). They return typed rows
(`rows.py`: bytes, ints, epoch milliseconds); the API shapes JSON (`ingest/api/shapes.py`).
`records.py` builds what a batch COPYs.
"""

from ingest.adapters.store.epochs import EpochStore
from ingest.adapters.store.ingest import IngestStore, ensure_partitions
from ingest.adapters.store.mirror import MirrorStore
from ingest.adapters.store.reads import ReadStore

__all__ = ["EpochStore", "IngestStore", "MirrorStore", "ReadStore", "ensure_partitions"]
