"""The seams where the service's logic meets its I/O, as small Protocols.

Each names only what its consumer calls, so the rule on one side can be tested with an in-memory fake
of the other (tests/unit/test_consumer_acks.py, tests/unit/test_epoch_publish.py) beside the tests on
the real services, which prove the adapters keep these promises:

- `BatchWriter` / `BrokerSession`: the consumer's store and broker. The rule they let a unit test
  check: a message is acked only after the commit of the batch holding it, in arrival order, and never
  when that commit failed (docs/DESIGN.md §2).
- `PublishChain`: the epoch publisher's chain. The rule: the signed transaction is journaled before it
  is broadcast, a crash after the journal rebroadcasts the same bytes, a root already on chain is
  adopted, a transaction whose nonce another one took is re-signed (docs/DESIGN.md §6).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractAsyncContextManager
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from devices.errors import ChainError
    from ingest.adapters.mqtt import Received
    from ingest.model import AcceptedPacket, BatchResult, RejectedMessage
    from ingest.pipeline import Pending


class ConnectionPool(Protocol):
    async def expire_connections(self) -> None:
        """Replace every connection at its next release (asyncpg's, after InternalClientError)."""


class BatchWriter(Protocol):
    """The consumer's side of the store (ingest/adapters/store.py)."""

    @property
    def pool(self) -> ConnectionPool: ...

    async def write_batch(
        self,
        accepted: Sequence[AcceptedPacket],
        rejected: Sequence[RejectedMessage],
        pending: Pending | None = None,
    ) -> BatchResult:
        """Commit a judged batch in one transaction; idempotent (a re-run stores nothing new). With
        `pending`, judge its stateful rules in that transaction against the devices' shared state."""
        ...


class BrokerSession(Protocol):
    """One connection's worth of the broker (ingest/adapters/mqtt.py `MqttSource`); the consumer opens
    one per (re)connect and raises out of it on `aiomqtt.MqttError`."""

    def buffered(self) -> int:
        """Messages received and not yet handed out in a batch."""
        ...

    async def next_batch(self, max_size: int, max_wait_s: float) -> list[Received]: ...

    def ack(self, batch: Sequence[Received]) -> None:
        """Acknowledge these messages to the broker, in the order given."""

    async def publish(self, topic: str, payload: bytes, qos: int = 0) -> None: ...


# Opens one broker connection (a fresh session context per connect attempt).
BrokerConnect = Callable[[], AbstractAsyncContextManager[BrokerSession]]


class PublishChain(Protocol):
    """The epoch publisher's side of the RewardDistributor contract (ingest/adapters/distributor.py)."""

    @property
    def address(self) -> str | None:
        """The account that signs publishes (REWARDS_ROLE); None: no key, epochs are not published."""
        ...

    async def root_of(self, epoch: int) -> bytes:
        """The root on chain for the epoch; 32 zero bytes when none."""
        ...

    async def sign_publish(self, epoch: int, root: bytes, total: int) -> tuple[bytes, bytes, int]:
        """Sign `publishEpoch(epoch, root, total)` at the account's next nonce, sending nothing:
        (raw transaction, its hash, its nonce)."""
        ...

    async def revert_reason(self, epoch: int, root: bytes, total: int) -> ChainError | None:
        """Why `publishEpoch(epoch, root, total)` reverts at the latest block, its custom error decoded
        (`error_name`); None when it would not revert now (a mined revert that time has undone)."""
        ...

    async def broadcast(self, raw: bytes) -> None:
        """Send a signed transaction; `devices.chain.NonceTooLowError` when the node already has
        another transaction at its nonce (other errors: already known, already mined, node down)."""

    async def receipt(self, tx_hash: bytes) -> Any | None:
        """The transaction's receipt (a mapping with `status`, `blockNumber` and `blockHash`), None while
        not mined (or no longer: a reorg dropped it)."""
        ...

    async def mined_nonce(self) -> int:
        """How many of the account's transactions are mined (its next nonce at the latest block)."""
        ...

    async def resync_nonce(self) -> None:
        """Forget the locally tracked nonce: the next signature asks the node."""

    async def head(self) -> int:
        """The latest block number."""
        ...

    async def published_tx(self, epoch: int) -> tuple[bytes, int] | None:
        """The hash and block of the transaction whose EpochPublished event names the epoch; None when
        no such event is found."""
        ...
