"""kopf's diff-base ("essence") storage, reduced to what phalanx uses: nothing.

kopf builds each object's essence (a deepcopy of the whole body, then a second copy to clear its
progress marks) on *every* watch event, for its change-detecting handlers (on.create/update/
delete/resume, daemons, timers). phalanx has none of those: only indexes and on.event handlers,
which never read the essence. The copies were ~13 % of the operator's CPU in the job-start profile
(docs/benchmarks.md), so the essence is left empty, and `check_unused` refuses a registry that
would need it.
"""

from __future__ import annotations

from collections.abc import Iterable

import kopf
from kopf._cogs.structs import bodies, dicts


class EmptyEssence(kopf.AnnotationsDiffBaseStorage):
    """Reads and writes the same annotation as kopf's storage (never written, since nothing needs it)."""

    def build(self, *, body: bodies.Body, extra_fields: Iterable[dicts.FieldSpec] | None = None) -> bodies.BodyEssence:
        return bodies.BodyEssence()


def check_unused(registry: kopf.OperatorRegistry) -> None:
    """Raise if a handler that compares essences is registered: with EmptyEssence it would never fire."""
    needs = [*registry._changing.get_all_handlers(), *registry._spawning.get_all_handlers()]
    if needs:
        ids = ", ".join(sorted(str(h.id) for h in needs))
        raise RuntimeError(f"handlers {ids} need kopf's diff-base; EmptyEssence would hide every change from them")
