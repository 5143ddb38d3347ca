"""The records raydigits keeps beside Tune's state (experiment/records.py): what each one reads back,
from files written by this version, by older ones, or cut short."""

from __future__ import annotations

import json

from raydigits.experiment.records import (
    ETA_FILE,
    OUTCOMES_FILE,
    Estimate,
    OutcomeRecord,
    RunRecord,
    read_estimates,
    read_record,
    write_estimates,
    write_record,
)


def test_the_outcome_record_round_trips_and_reads_older_files(tmp_path):
    r = OutcomeRecord().with_trial("a", "completed", 9).with_trial("b", "oom", 2)
    assert r.outcome("a") == "completed" and r.outcome("b") == "oom" and r.outcome("zz") is None
    assert r.with_trial("a", "error", 3).outcome("a") == "error" and r.outcome("a") == "completed"  # a new value
    write_record(tmp_path, r)
    assert json.loads((tmp_path / OUTCOMES_FILE).read_text()) == {
        "trials": {"a": {"outcome": "completed", "epochs": 9}, "b": {"outcome": "oom", "epochs": 2}},
        "ended": None,
    }
    again = read_record(tmp_path)
    assert dict(again.trials) == dict(r.trials) and again.ended is None and again.budget_fired is None
    done = OutcomeRecord(r.trials, "time_budget", False)
    write_record(tmp_path, done)
    assert json.loads((tmp_path / OUTCOMES_FILE).read_text())["budget_fired"] is False  # False is written
    back = read_record(tmp_path)
    assert (back.ended, back.budget_fired, back.trials["a"].epochs) == ("time_budget", False, 9)
    # an older file: ids not strings, epochs missing, a malformed entry, budget_fired as 0 / 1
    old = {
        "trials": {"7": {"outcome": "completed"}, "8": "junk", "9": {"outcome": "error", "epochs": None}},
        "ended": "finished",
        "budget_fired": 1,
    }
    (tmp_path / OUTCOMES_FILE).write_text(json.dumps(old))
    back = read_record(tmp_path)
    assert sorted(back.trials) == ["7", "9"] and back.trials["7"].epochs == 0 and back.trials["9"].epochs == 0
    assert back.budget_fired is True and back.ended == "finished"


def test_no_outcome_record_when_the_file_is_missing_cut_or_not_a_record(tmp_path):
    assert read_record(tmp_path) is None
    for text in ('{"trials": {"a": {"outc', "[1, 2]", '{"ended": "finished"}', '{"trials": []}'):
        (tmp_path / OUTCOMES_FILE).write_text(text)
        assert read_record(tmp_path) is None, text


def test_the_run_record_keeps_only_what_is_known():
    r = RunRecord("exp", 100.0)
    assert r.to_json() == {"name": "exp", "started": 100.0}
    assert r.finishing(250.5) == RunRecord("exp", 100.0, 250.5) and r.finished is None
    assert RunRecord.from_json(r.finishing(250.5).to_json()) == RunRecord("exp", 100.0, 250.5)
    assert RunRecord.from_json({"started": 5, "finished": "soon"}) == RunRecord("", 5.0, None)
    assert isinstance(RunRecord.from_json({"started": 5}).started, float)
    assert RunRecord.from_json({"name": None, "started": None}) == RunRecord()
    assert RunRecord.from_json(["not", "a", "record"]) == RunRecord()
    assert RunRecord().to_json() == {"name": ""}


def test_estimates_round_trip_and_unreadable_files_give_none(tmp_path):
    e = Estimate(1.0, 60.0, 2, 8, (3, 1), 4.5, 12.0, 2, 300.0)
    assert e.to_json()["running"] == [3, 1]
    write_estimates(tmp_path, [e, Estimate(2.0, 50.0)])
    assert read_estimates(tmp_path) == [e, Estimate(2.0, 50.0)]
    # a newer writer's extra keys are ignored; a missing `running` is none
    (tmp_path / ETA_FILE).write_text(json.dumps({"estimates": [{"at": 3.0, "remaining_s": 9.0, "new_key": 1}]}))
    assert read_estimates(tmp_path) == [Estimate(3.0, 9.0)]
    for text in ("{cut", json.dumps({"other": []}), json.dumps({"estimates": [{"at": 1.0}]}), "[]"):
        (tmp_path / ETA_FILE).write_text(text)
        assert read_estimates(tmp_path) == [], text
    (tmp_path / ETA_FILE).unlink()
    assert read_estimates(tmp_path) == []
