"""Which registered PRM is the champion: the promotion gate, promotion by hand, rollback and their history.

Aliases only (MLflow's stages are deprecated): `challenger` is the newest logged version (tasks/register.py),
`champion` the model the pipeline serves and scores pools with, `previous-champion` and the registered-model tag
`actprm.champion_history` (a JSON list, oldest first) the earlier champions a rollback returns to.

Champions are scoped by pool: `champion-<pool>` is the best version measured on that pool's evaluation set. The
gate compares a challenger with its own pool's champion only, and moves `champion` along only when that is free,
or held by a version of the same pool that the challenger also beats: one pool's loop never silently demotes
another pool's champion (promote it by hand with `actprm promote --version N`).

The gate promotes only a strictly better challenger: F1 > champion F1 + min_delta (RegistrySettings.min_delta),
so a tie never promotes, even at min_delta 0.

Version tags written here: `actprm.eval_f1` and `actprm.eval_set` (the F1 the version was registered with and
the fixed evaluation set it was measured on; written once, never overwritten), `actprm.f1_on.<eval set>` (the
version re-measured on another set, one tag per set), `actprm.gate.decision` (promoted | rejected | manual |
rollback), `actprm.gate.scope`, `actprm.gate.champion_f1`, `actprm.gate.champion_version`,
`actprm.gate.min_delta`, `actprm.gate.overall` (promoted | kept: whether `champion` moved too).

Comparing F1s measured on different evaluation sets would be meaningless, so the gate refuses to (clear error)
unless it is given a `reevaluate` callback, in which case the champion is re-scored on the challenger's
evaluation set and the result kept in its `actprm.f1_on.<set>` tag.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from actprm.errors import ActPRMError
from tasks.aliases import CHALLENGER, CHAMPION, MODEL_NAME, PREVIOUS

__all__ = ["CHALLENGER", "CHAMPION", "MODEL_NAME", "PREVIOUS"]
HISTORY_TAG = "actprm.champion_history"
HISTORY_KEEP = 50


def registry_client(client: MlflowClient | None) -> MlflowClient:
    return client or MlflowClient()


def alias_version(client: MlflowClient, name: str, alias: str) -> int | None:
    try:
        return int(client.get_model_version_by_alias(name, alias).version)
    except MlflowException:
        return None


def champion_version(name: str = MODEL_NAME, client: MlflowClient | None = None) -> int | None:
    """The champion's version number, or None when there is none (or no such registered model)."""
    return alias_version(registry_client(client), name, CHAMPION)


def champion_history(client: MlflowClient, name: str) -> list[int]:
    """Earlier champions, oldest first."""
    raw = client.get_registered_model(name).tags.get(HISTORY_TAG)
    return [int(v) for v in json.loads(raw)] if raw else []


def _set_champion(client: MlflowClient, name: str, version: int, history: list[int]) -> None:
    history = history[-HISTORY_KEEP:]
    client.set_registered_model_tag(name, HISTORY_TAG, json.dumps(history))
    if history:
        client.set_registered_model_alias(name, PREVIOUS, str(history[-1]))
    else:
        try:
            client.delete_registered_model_alias(name, PREVIOUS)
        except MlflowException:
            pass
    client.set_registered_model_alias(name, CHAMPION, str(version))


def _require_version(client: MlflowClient, name: str, version: int) -> Any:
    try:
        return client.get_model_version(name, str(version))
    except MlflowException:
        try:
            known = sorted(int(v.version) for v in client.search_model_versions(f"name='{name}'"))
        except MlflowException:
            known = []
        raise ActPRMError(f"registered model {name!r} has no version {version} "
                          f"(versions: {', '.join(map(str, known)) or 'none'})") from None


GATE_ATTEMPTS = 3  # comparisons tried while someone else keeps moving the champion alias
F1_TOLERANCE = 1e-9  # F1 is a ratio of counts: a smaller difference is float rounding, not a gain
POOL_TAG = "actprm.pool"  # set on each version by tasks/register.py: the pool it was trained and evaluated on


def _safe(text: str, allowed: str) -> str:
    """`text` with characters MLflow refuses replaced; a short hash keeps two different texts apart."""
    import hashlib
    import re

    cleaned = re.sub(f"[^{allowed}]", "-", text)
    return cleaned if cleaned == text else f"{cleaned}-{hashlib.sha256(text.encode()).hexdigest()[:8]}"


def scope_alias(scope: str) -> str:
    """The alias of one pool's champion (MLflow aliases: letters, digits, `_` and `-`)."""
    return f"{CHAMPION}-{_safe(scope, r'A-Za-z0-9_-')}"[:250]


def f1_tag(eval_set: str) -> str:
    """The version tag holding a re-measured F1 on `eval_set` (tag keys also allow `.`, `:`, `/` and spaces)."""
    return f"actprm.f1_on.{_safe(eval_set, r'A-Za-z0-9_. :/-')}"[:250]


def promotion_gate(client: MlflowClient | None, name: str, version: int, challenger_f1: float,
                   min_delta: float = 0.0, *, eval_set: str | None = None,
                   reevaluate: Callable[[int], float] | None = None, scope: str | None = None) -> dict[str, Any]:
    """Promote `version` when its F1 > champion F1 + min_delta (strictly; no champion yet: promote).

    `scope` (the pool) compares with that pool's champion, alias `champion-<pool>`, and moves `champion` too only
    when it is free or held by a version of the same pool that the challenger also beats. Without a scope the gate
    compares with `champion` itself.

    Both F1s must come from the same evaluation set (`eval_set`). If the champion's was measured elsewhere (or
    never), `reevaluate(version)` re-scores it on this set; without that callback the gate refuses with an
    ActPRMError. Re-scores are kept per set, so no version's own measurement is ever overwritten.
    """
    client = registry_client(client)
    _require_version(client, name, version)
    tag = client.set_model_version_tag
    own = client.get_model_version(name, str(version)).tags
    # The version's own measurement is written once: gating it again (a retried round) keeps the first.
    if "actprm.eval_f1" not in own:
        tag(name, str(version), "actprm.eval_f1", repr(float(challenger_f1)))
        if eval_set is not None:
            tag(name, str(version), "actprm.eval_set", eval_set)
    tag(name, str(version), "actprm.gate.min_delta", repr(float(min_delta)))
    alias = scope_alias(scope) if scope is not None else CHAMPION

    # Re-scoring the champion takes minutes, and `actprm promote` may move the alias meanwhile: the comparison
    # is made again against whoever is champion once it ends, so a manual promotion or rollback is never undone
    # by a gate that compared with the champion it replaced. (MLflow has no compare-and-set on aliases; what is
    # left is the moment between this check and the write.)
    for _ in range(GATE_ATTEMPTS):
        current, overall = alias_version(client, name, alias), alias_version(client, name, CHAMPION)
        promoted, champion_f1, reason = _compare(client, name, version, current, challenger_f1, min_delta,
                                                 eval_set, reevaluate)
        moves_overall = alias == CHAMPION
        if promoted and scope is not None:
            moves_overall, why = _overall_follows(client, name, version, overall, scope, challenger_f1, min_delta,
                                                  eval_set, reevaluate)
            reason += f"; {why}"
        if (alias_version(client, name, alias), alias_version(client, name, CHAMPION)) == (current, overall):
            break
    else:
        raise ActPRMError(f"the champion of {name} changed {GATE_ATTEMPTS} times while the gate compared v{version} "
                          f"with it; run the gate again, or promote by hand with `actprm promote --version {version}`")

    decision = "promoted" if promoted else "rejected"
    tag(name, str(version), "actprm.gate.decision", decision)
    tag(name, str(version), "actprm.gate.scope", scope if scope is not None else "all")
    tag(name, str(version), "actprm.gate.champion_f1", "none" if champion_f1 is None else repr(champion_f1))
    tag(name, str(version), "actprm.gate.champion_version", "none" if current is None else str(current))
    tag(name, str(version), "actprm.gate.overall", "promoted" if promoted and moves_overall else "kept")
    if promoted and alias != CHAMPION:
        client.set_registered_model_alias(name, alias, str(version))
    if promoted and moves_overall and overall != version:
        history = champion_history(client, name)
        _set_champion(client, name, version, history + ([overall] if overall is not None else []))
    return {"decision": decision, "version": version, "scope": scope, "alias": alias,
            "challenger_f1": float(challenger_f1), "champion_version": current, "champion_f1": champion_f1,
            "min_delta": float(min_delta), "eval_set": eval_set, "reason": reason,
            "champion": version if promoted and moves_overall else overall}


def _overall_follows(client: MlflowClient, name: str, version: int, overall: int | None, scope: str,
                     challenger_f1: float, min_delta: float, eval_set: str | None,
                     reevaluate: Callable[[int], float] | None) -> tuple[bool, str]:
    """Whether `champion` moves to a version that won its pool's gate, and why (or why not)."""
    if overall is None:
        return True, "no overall champion yet"
    pool = client.get_model_version(name, str(overall)).tags.get(POOL_TAG)
    if pool != scope:
        return False, (f"overall champion v{overall} belongs to pool {pool or '(unknown)'} and stays; "
                       f"`actprm promote --version {version}` makes v{version} the overall champion")
    beats, _, why = _compare(client, name, version, overall, challenger_f1, min_delta, eval_set, reevaluate)
    return beats, f"overall champion v{overall}: {why}"


def _champion_f1(client: MlflowClient, name: str, current: int, eval_set: str | None,
                 reevaluate: Callable[[int], float] | None, version: int) -> float:
    """The champion's F1 on `eval_set`: its own measurement, an earlier re-score on that set, or a new re-score."""
    champ_tags = client.get_model_version(name, str(current)).tags
    if "actprm.eval_f1" in champ_tags and champ_tags.get("actprm.eval_set") == eval_set:
        return float(champ_tags["actprm.eval_f1"])
    if eval_set is not None and f1_tag(eval_set) in champ_tags:
        return float(champ_tags[f1_tag(eval_set)])
    if reevaluate is not None:
        champion_f1 = float(reevaluate(current))
        if eval_set is not None:
            client.set_model_version_tag(name, str(current), f1_tag(eval_set), repr(champion_f1))
        return champion_f1
    where = champ_tags.get("actprm.eval_set", "no recorded evaluation set")
    raise ActPRMError(
        f"cannot compare v{version} with champion v{current}: champion F1 was measured on {where}, "
        f"challenger on {eval_set or 'an unnamed set'}; re-evaluate the champion on the same set "
        f"or promote by hand with `actprm promote --version {version}`")


def _compare(client: MlflowClient, name: str, version: int, current: int | None, challenger_f1: float,
             min_delta: float, eval_set: str | None,
             reevaluate: Callable[[int], float] | None) -> tuple[bool, float | None, str]:
    """(promote?, champion F1, reason) for challenger `version` against champion `current`."""
    if current is None:
        return True, None, "no champion yet"
    if current == version:
        return True, float(challenger_f1), "already the champion"
    champion_f1 = _champion_f1(client, name, current, eval_set, reevaluate, version)
    # Strictly better: a tie (or a gain within noise, min_delta) keeps the champion already serving. F1s equal up
    # to float rounding (0.65 - 0.60 is 0.05000000000000004) are a tie.
    promoted = challenger_f1 - champion_f1 > min_delta + F1_TOLERANCE
    return promoted, champion_f1, (f"F1 {challenger_f1:.4f} {'>' if promoted else '<='} champion F1 "
                                   f"{champion_f1:.4f} + min_delta {min_delta:g}")


def promote(name: str = MODEL_NAME, version: int | None = None, rollback: bool = False,
            *, client: MlflowClient | None = None) -> dict[str, Any]:
    """By hand: `version=N` makes N the champion; `rollback=True` restores the previous champion."""
    client = registry_client(client)
    if (version is None) == (not rollback):
        raise ActPRMError("give exactly one of --version N or --rollback")
    try:
        client.get_registered_model(name)
    except MlflowException:
        raise ActPRMError(f"no registered model named {name!r}; train and register a model first") from None
    current = alias_version(client, name, CHAMPION)
    history = champion_history(client, name)
    if rollback:
        if not history:
            raise ActPRMError(f"{name} has no previous champion to roll back to")
        target = history.pop()
        _require_version(client, name, target)
        _set_champion(client, name, target, history)
        client.set_model_version_tag(name, str(target), "actprm.gate.decision", "rollback")
        return {"champion": target, "previous": current, "action": "rollback"}
    assert version is not None
    _require_version(client, name, version)
    if current != version:
        _set_champion(client, name, version, history + ([current] if current is not None else []))
    client.set_model_version_tag(name, str(version), "actprm.gate.decision", "manual")
    return {"champion": version, "previous": current, "action": "promote"}
