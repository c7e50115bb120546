"""One call's attempts: which node to send to next, and when to give up.

Plain code with no I/O, shared by every adapter, sync and async. An adapter's
driver asks the plan for an action, performs it, and reports what happened:

    action = plan.start()
    while isinstance(action, Send):
        try:   response = send(action.node)
        except <transport error> as exc:
               action = plan.on_error(action.node, classify(exc)); continue
        action = plan.on_response(action.node, response.status_code)
    # Deliver -> hand the response back; GiveUp -> raise with plan.summary()

Failover rule: a failure that happened before any byte of the request left (refused
connection, connect timeout) is safe to replay on another node at once. Anything
else is handed to the caller unchanged.
"""

from __future__ import annotations

import enum
from typing import NamedTuple

from .nodes import Node, NodePool


class Failure(enum.Enum):
    CONNECT = "connection refused or failed"  # nothing was sent
    CONNECT_TIMEOUT = "connect timeout"  # nothing was sent
    OTHER = "failed"  # may have been sent: not replayed

    @property
    def nothing_sent(self) -> bool:
        return self is not Failure.OTHER


class Send(NamedTuple):
    node: Node


class Deliver(NamedTuple):
    node: Node


class GiveUp(NamedTuple):
    reason: str


Action = Send | Deliver | GiveUp


class Step(NamedTuple):
    """One attempt of a call and how it ended: "200", "connection refused or failed: ...", ..."""

    node: Node
    outcome: str


class CallPlan:
    __slots__ = ("_max_attempts", "_pool", "_replayable", "steps")

    def __init__(self, pool: NodePool, max_attempts: int, replayable: bool) -> None:
        self._pool = pool
        self._max_attempts = max_attempts
        self._replayable = replayable
        self.steps: list[Step] = []

    def start(self) -> Send | GiveUp:
        node = self._pool.choose()
        return Send(node) if node is not None else GiveUp("no gateway node configured")

    def on_response(self, node: Node, status: int) -> Deliver:
        self._pool.report(node, ok=status < 500)
        self.steps.append(Step(node, str(status)))
        return Deliver(node)

    def on_error(self, node: Node, failure: Failure, detail: str) -> Send | GiveUp:
        self._pool.report(node, ok=False)
        self.steps.append(Step(node, f"{failure.value}: {detail}" if detail else failure.value))
        if not failure.nothing_sent:
            return GiveUp("the request may have reached the node, so it is not replayed")
        if not self._replayable:
            return GiveUp("the request body is a one-shot stream that cannot be sent again")
        if len(self.steps) >= self._max_attempts:
            return GiveUp(f"retry.max_attempts ({self._max_attempts}) reached")
        tried = {step.node for step in self.steps}
        following = self._pool.choose(exclude=tried)
        if following is None:
            return GiveUp("every gateway node was tried")
        return Send(following)

    @property
    def failovers(self) -> list[Step]:
        """The attempts that failed before the one that answered."""
        return self.steps[:-1] if self.steps else []

    def summary(self) -> str:
        return "; ".join(f"{step.node.label}: {step.outcome}" for step in self.steps)
