"""Random search without replacement over a finite space (spec.distinct_configs): a Tune `Searcher`
on its public API that hands out the spec's shuffled configurations one by one, configs to run
first (`launch.py extend`'s promoted trials) before them, and never one that `exclude` (the trials
an extended search already ran) or an earlier suggestion holds. Its state (the queue and how far
it got) is saved with the experiment as JSON, so `--resume` goes on where it stopped."""

from __future__ import annotations

import json
from typing import Any

from ray.tune.search import Searcher

from ..errors import UserError
from ..spec import config_key


class DistinctRandom(Searcher):
    def __init__(
        self, configs: list[dict[str, Any]], points: list[dict[str, Any]] = (), exclude: list[dict[str, Any]] = ()
    ):
        super().__init__()
        names = list(configs[0]) if configs else []

        def key(c: dict[str, Any]) -> str:  # a trial's config may carry other keys, or lack a None
            return config_key({k: c.get(k) for k in names})

        taken = {key(c) for c in (*exclude, *points)}
        self.queue = [dict(c) for c in points] + [dict(c) for c in configs if key(c) not in taken]
        self.given = 0

    def suggest(self, trial_id: str) -> dict[str, Any] | str:
        if self.given >= len(self.queue):
            return Searcher.FINISHED
        self.given += 1
        return dict(self.queue[self.given - 1])

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        pass  # nothing learnt: the order is fixed by the seed

    def get_state(self) -> dict:
        return {"queue": self.queue, "given": self.given}

    def set_state(self, state: dict) -> None:
        self.queue, self.given = state["queue"], state["given"]

    # JSON, not pickle: an experiment's files are never unpickled (tests/test_security.py)
    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "w") as f:
            json.dump(self.get_state(), f)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as f:
            self.set_state(parse_state(f.read(), checkpoint_path))


def parse_state(data: bytes, where: object) -> dict:
    """The saved state, checked: a damaged file is one UserError naming it (Tune, given a restore
    that raises, logs the error and waits for trials that never come)."""
    try:
        state = json.loads(data)
        queue, given = state["queue"], state["given"]
        ok = isinstance(queue, list) and all(isinstance(c, dict) for c in queue)
        ok = ok and isinstance(given, int) and not isinstance(given, bool) and 0 <= given <= len(queue)
    except (ValueError, TypeError, KeyError):  # not JSON, not UTF-8, not an object, a key missing
        ok = False
    if not ok:
        raise UserError(
            f"{where}: the random search's saved state is damaged (expected JSON with a 'queue' of configurations "
            "and 'given', how many were handed out); the experiment cannot be resumed in its order"
        )
    return {"queue": queue, "given": given}


def check_saved_state(exp) -> None:
    """Before Tune restores `exp` (a storage.Location): its newest saved searcher state, if the search
    used this searcher, must parse (parse_state)."""
    saved = exp.glob(Searcher.CKPT_FILE_TMPL.format("*"))  # sorted: the newest is last, as Tune picks it
    if saved:
        parse_state(saved[-1].read_bytes(), saved[-1])
