"""Claiming messages for waiting receivers: reading and removing them in one statement."""

from __future__ import annotations

from typing import Any

from sqlalchemy import (
    BigInteger,
    CompoundSelect,
    Text,
    and_,
    any_,
    bindparam,
    case,
    delete,
    func,
    literal_column,
    null,
    or_,
    select,
    union_all,
    update,
)
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.sql.dml import ReturningDelete
from sqlalchemy.sql.elements import ColumnClause

from .. import sql
from ..schema import message

# The physical address of a row version. A picked row is locked (FOR UPDATE) by the statement
# that removes it, so its address cannot change between the pick and the removal.
_ROW_ADDRESS: ColumnClause[Any] = literal_column("ctid")


def _among(addresses: Any) -> Any:
    """The rows at ``addresses`` (a SELECT of picked rows' addresses): a TID scan, always.

    Joined to the picked rows on ``id``, or looked up by their ids, a table that VACUUM
    ANALYZE recorded as empty got a plan that reads a whole index for them (the primary
    key, in id order for the join, dead rows' entries included), so that each claim cost
    more with every message received until the next VACUUM. With no join and no condition
    an index could serve, the addresses as one array, computed once from the pick, leave
    the planner a TID scan (or the sequential scan the layer's sessions rule out).
    """
    return _ROW_ADDRESS == any_(func.array(addresses.scalar_subquery()))


def _build_claim() -> CompoundSelect[Any]:
    """Claim the oldest messages for the waiting channels of one queue, at most ``limit`` rows.

    FOR UPDATE SKIP LOCKED lets concurrent readers of a queue claim disjoint rows, and the claim
    and the removal are one atomic statement, so no message can reach two readers. A direct
    message is deleted. A per-process group message gives up only the recipients that are
    waiting (the row goes once none is left): the others keep their copy in the table, in
    id order with their direct messages, so a member that is not receiving now still gets
    its messages in the order they were stored. Returns each row with its recipients as they
    were before the claim; the reader delivers to those among the waiting channels.
    """
    waiting = bindparam("channels", type_=ARRAY(Text))
    # A group row's recipients that are not waiting, computed once per row as a set
    # difference (hashed or sorted: linear in the members). "recipients <@ waiting" and
    # "recipient <> ALL (waiting)" compare every pair, and cost 0.4 s each for a row of
    # 10,000 members with as many waiting (benchmarks/scaling.py, the group series).
    member = func.unnest(message.c.recipients).column_valued("member")
    waiting_member = func.unnest(waiting).column_valued("waiting_member")
    not_waiting = select(member).except_(select(waiting_member)).scalar_subquery()
    remaining = case((message.c.recipients.is_(None), null()), else_=func.array(not_waiting))
    picked = (
        select(
            message.c.id, _ROW_ADDRESS.label("address"), message.c.recipients, remaining.label("remaining")
        )
        .where(
            message.c.prefix == sql.prefix,
            message.c.queue == bindparam("queue", type_=Text),
            or_(
                and_(message.c.recipients.is_(None), message.c.channel == any_(waiting)),
                message.c.recipients.overlap(waiting),
            ),
            sql.unexpired(message.c.expires_at),
        )
        .order_by(message.c.id)
        .limit(bindparam("limit", type_=BigInteger))
        .with_for_update(skip_locked=True)
        .cte("picked")
    )
    delivered_all = or_(picked.c.recipients.is_(None), func.cardinality(picked.c.remaining) == 0)
    fields = (message.c.id, message.c.channel, message.c.expires_at, message.c.payload)
    deleted = (
        delete(message)
        .where(_among(select(picked.c.address).where(delivered_all)))
        .returning(*fields, message.c.recipients)
        .cte("deleted")
    )
    # Looked up by id in the picked rows (a handful), not joined: see _among.
    of_this_row = picked.c.id == message.c.id
    updated = (
        update(message)
        .where(_among(select(picked.c.address).where(~delivered_all)))
        .values(recipients=select(picked.c.remaining).where(of_this_row).scalar_subquery())
        .returning(
            *fields, select(picked.c.recipients).where(of_this_row).scalar_subquery().label("recipients")
        )
        .cte("updated")
    )
    return union_all(select(deleted), select(updated))


CLAIM = _build_claim()


def _build_claim_channel() -> ReturningDelete[Any]:
    """CLAIM for a queue that is one normal channel: the oldest ``limit`` rows, deleted.

    Such a queue holds only direct rows for that channel (a group stores a plain row for
    each normal member), so there are no recipients to give up one by one. A consumer of a
    busy work queue runs this once per message: through asyncpg it took 247 us where CLAIM
    took 306 (one run, same backlog).
    """
    picked = (
        select(message.c.id, _ROW_ADDRESS.label("address"))
        .where(
            message.c.prefix == sql.prefix,
            message.c.queue == bindparam("queue", type_=Text),
            sql.unexpired(message.c.expires_at),
        )
        .order_by(message.c.id)
        .limit(bindparam("limit", type_=BigInteger))
        .with_for_update(skip_locked=True)
        .cte("picked")
    )
    columns = (message.c.id, message.c.channel, message.c.recipients, message.c.expires_at, message.c.payload)
    return delete(message).where(_among(select(picked.c.address))).returning(*columns)


CLAIM_CHANNEL = _build_claim_channel()
