"""Retroactive enforcement: the incidents a backtest finds, as flag events to publish.

An incident found in stored frames becomes one ``closed`` :class:`~pipeline.events.FlagEvent`
(it is over) marked ``retro: true``, with the edited policy's version, severity and action and
the event id the live judge gives the same incident (stream, policy, version, label, start):
a consumer that drops duplicate event ids sees an incident once, whether it was flagged live,
retroactively, or both, and publishing the same backtest again duplicates nothing downstream.
Shadow-mode policies are never published. A hash policy's incident carries the bank entry
matched at its peak (``match``), as its live flag does.
"""

from __future__ import annotations

from pipeline.events import FlagEvent, HashMatchInfo
from pipeline.store.backtest import BacktestResult, Incident

__all__ = ["retro_events"]


def retro_events(result: BacktestResult) -> list[FlagEvent]:
    """The flag events of ``result``'s enforce-mode incidents, in stream and time order."""
    return [_event(i, result.model) for i in result.incidents if i.mode == "enforce"]


def _event(i: Incident, model: str) -> FlagEvent:
    return FlagEvent(
        event_id=i.event_id,
        state="closed",
        stream_id=i.stream_id,
        policy=i.policy,
        policy_version=i.policy_version,
        label=i.label,
        severity=i.severity,  # type: ignore[arg-type]
        action=i.action,  # type: ignore[arg-type]
        start_ts=i.start_ts,
        end_ts=i.end_ts,
        peak_score=i.peak_score,
        peak_ts=i.peak_ts,
        threshold=i.threshold,
        margin=i.margin,
        top_prompt=i.top_prompt,
        model=model,
        retro=True,
        match=None if i.match is None else HashMatchInfo.model_validate(i.match),
    )
