"""What watches a call go by: its span and metrics, its log line, its turn under the limits.

A call tells its observers what happened (an attempt ended, a node's answer is handed back,
the call ended) and none of them decides anything about it: the verdicts are the call's
(``call.py``) and the core's. The first chunk of an answer is the response reader's to note
(``core.genai.ResponseReader``), as the app reads it. Each observer is made only when it has
something to do: no span without an SDK, no log line below INFO, no turn without limits.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..core.affinity import AffinityKey, Remembered
    from ..core.genai import ResponseFacts
    from ..core.nodes import Node
    from ..core.plan import Send
    from ..core.request import GatewayRequest
    from ..fleet import FleetPermit
    from ..limiter import Permit
    from ..spend import SpendTracker
    from .call import Call

log = logging.getLogger("yibu_middleware.calls")


class CallObserver:
    """Subclasses override what they watch; every method is a no-op here."""

    def attempt_ended(self, call: Call, action: Send, outcome: str, retried: bool) -> None:
        """One attempt was judged: ``outcome`` as the list of nodes tried shows it; ``retried``:
        the call has made, or is about to make, more than one attempt."""

    def answered(self, call: Call, node: Node, status: int, event_stream: bool) -> None:
        """A node's answer is handed back to the app (its body may still be to read)."""

    def note(self, call: Call, text: str) -> None:
        """What the gateway's refusal means, already masked (a quota, a permission)."""

    def fell_back(self, call: Call, old: str | None, new: str, why: str) -> None:
        """The call goes on with model ``new`` in place of ``old``, for ``why`` (a trigger's name)."""

    def ended(self, call: Call, facts: ResponseFacts | None, error_type: str | None) -> None:
        """The call is over (once): ``facts`` from its answer, when a reader kept them."""


class LogLine(CallObserver):
    """The call's line at INFO: where it went, the model (and its alias), the node that answered,
    the status, the time, and the nodes tried if more than one."""

    def answered(self, call: Call, node: Node, status: int, event_stream: bool) -> None:
        gateway = call.gateway
        elapsed_ms = (time.perf_counter() - call.started) * 1000
        first = call.first_model
        model = f"{first}" if gateway.requested_model == first else f"{gateway.requested_model}->{first}"
        if call.legs:
            model += "".join(f"=>{name}" for name in call.models_tried[1:]) + " (fallback)"
        tried = f" (tried: {call.summary()})" if call.retried else ""
        log.info("%s model=%s -> %s %s in %.1f ms%s", call.where, model, node.label, status, elapsed_ms, tried)


class LimitsTurn(CallObserver):
    """The call's turn under the client-side limits, given back when it ends, with the tokens the
    gateway reported (when it did; else the estimate it was admitted with stands)."""

    def __init__(self, permit: Permit | FleetPermit) -> None:
        self.permit = permit

    def ended(self, call: Call, facts: ResponseFacts | None, error_type: str | None) -> None:
        self.permit.release(call.reader.total_tokens() if call.reader is not None else None)


class AffinityNote(CallObserver):
    """Remembers the node that answered a Responses call: its answer's id (which a later turn
    names as ``previous_response_id``) and its ``conversation``, so that the next turn goes
    where the conversation's state and cache are (see ``core/affinity.py``)."""

    __slots__ = ("_conversation", "_node", "_remembered")

    def __init__(self, remembered: Remembered[str, Node], conversation: str | None) -> None:
        self._remembered = remembered
        self._conversation = conversation
        self._node: Node | None = None

    @classmethod
    def for_call(
        cls, gateway: GatewayRequest, key: AffinityKey | None, remembered: Remembered[str, Node] | None
    ) -> AffinityNote | None:
        """One for a Responses call under affinity; None for any other call."""
        if remembered is None or key is None or not gateway.path.endswith("/responses"):
            return None
        from ..core.affinity import CONVERSATION

        return cls(remembered, key.follow if key.source == CONVERSATION else None)

    def answered(self, call: Call, node: Node, status: int, event_stream: bool) -> None:
        self._node = node if status < 400 else None

    def ended(self, call: Call, facts: ResponseFacts | None, error_type: str | None) -> None:
        node = self._node
        if node is None or error_type is not None:
            return
        if facts is not None and facts.response_id:
            self._remembered.put(facts.response_id, node)
        if self._conversation:
            self._remembered.put(self._conversation, node)


class SpendCount(CallObserver):
    """The call's cost, from its reported usage, counted towards the budgets (and the ledger)."""

    def __init__(self, spend: SpendTracker) -> None:
        self.spend = spend

    def ended(self, call: Call, facts: ResponseFacts | None, error_type: str | None) -> None:
        call.cost = self.spend.record(call.gateway.model, call.gateway.route.provider, facts)
