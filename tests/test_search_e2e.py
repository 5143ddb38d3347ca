"""The real CLI in a subprocess against a real local Ray: a smoke search with ASHA (some trials
stopped early), the dashboard answering while it runs, a trial that crashes once mid-epoch and is
retried from its checkpoint, the final stage's outputs; resume after SIGKILL; impossible resources.
The smoke search is conftest's session fixture `smoke_run` (support/smoke.py), run once for the
suite: tests/test_final_unit_e2e.py works on a copy of it."""

from __future__ import annotations

import html
import json
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
import torch
from support.helpers import REPO, launch, results
from support.s3 import BUCKET, s3_server

pytestmark = pytest.mark.slow


def test_smoke_search_runs_asha_and_dashboard_answers(smoke_run):
    assert smoke_run["rc"] == 0, smoke_run["out"][-4000:]
    assert smoke_run["dashboard_status"] == 200
    trials = pd.read_csv(smoke_run["exp"] / "final" / "trials.csv")
    assert (trials["run"] == "search").sum() == 6
    assert (trials["status"] == "TERMINATED").all()
    assert (trials["outcome"] == "asha_stopped").sum() >= 1, trials
    assert (trials.loc[trials["outcome"] == "asha_stopped", "epochs"] < 3).all()
    assert "== raydigits: final ==" in smoke_run["out"]
    # conditionals: momentum/nesterov sampled for sgd trials only
    sgd = trials["param.optimizer"] == "sgd"
    assert sgd.any() and (~sgd).any()
    assert (trials.loc[sgd, "param.momentum"] == 0.9).all() and trials.loc[~sgd, "param.momentum"].isna().all()


def test_the_audit_trains_the_best_stopped_trial_on_from_its_checkpoint_and_reports_the_cost(smoke_run):
    """smoke.yaml's audit.top_k 1: the stopped trial with the best value at its last epoch is continued
    from that epoch's checkpoint to max_t in audit_1/, recorded as completed, and what early stopping
    cost is in the summary, metrics.json, trials.csv and report.html."""
    exp = smoke_run["exp"]
    trials = pd.read_csv(exp / "final" / "trials.csv", dtype={"trial_id": str, "audited_by": str})
    search = trials[trials["run"] == "search"]
    stopped = search[search["outcome"] == "asha_stopped"]
    last = {t: results(next(exp.glob(f"smoke_{t}")))[-1]["val_acc"] for t in stopped["trial_id"]}
    picked = max(last, key=last.get)  # the best value at its last rung
    audit = trials[trials["run"] == "audit_1"]
    assert len(audit) == 1 and audit["param.audit_of"].iloc[0] == picked
    assert audit["outcome"].iloc[0] == "completed" and audit["epochs"].iloc[0] == 3
    row = stopped.set_index("trial_id").loc[picked]
    assert row["audited_by"] == audit["trial_id"].iloc[0]
    rows = results(next((exp / "audit_1").glob("smoke_*")))
    assert [r["epoch"] for r in rows] == list(range(int(row["epochs"]) + 1, 4))  # on from its checkpoint
    assert rows[-1]["val_acc"] == pytest.approx(row["value_at_max_t"])
    for key in ("optimizer", "lr"):  # the stopped trial's own config
        assert rows[0]["config"][key] == pytest.approx(results(next(exp.glob(f"smoke_{picked}")))[0]["config"][key])
    metrics = json.loads((exp / "final" / "metrics.json").read_text())
    es = metrics["early_stopping"]
    assert [a["trial_id"] for a in es["audited"]] == [picked] and es["audited"][0]["at_stop"] == pytest.approx(
        last[picked]
    )
    kept = search[~search["outcome"].isin(["asha_stopped", "diverged", "oom", "error"])]["best_val_acc"].max()
    assert es["kept_best"] == pytest.approx(kept)
    assert es["cost"] == pytest.approx(max(0.0, es["audited"][0]["best"] - kept))
    assert f"audit: {es['line']}" in smoke_run["out"] and "early stopping cost" in es["line"]
    assert f"audit: trial {picked} continues from its epoch {int(row['epochs'])} to 3" in smoke_run["out"]
    page = (exp / "final" / "report.html").read_text()
    assert "<section id=audit>" in page and html.escape(es["line"]) in page


def test_every_result_carries_the_models_costs_measured_once(smoke_run):
    """Each trial measures its model's costs before its first epoch (raydigits/costs.py) and reports
    them with every result; the smoke search's trials share one architecture, image size and thread
    count, so the cache gives them all the numbers the first one measured."""
    exp = smoke_run["exp"]
    rows = [r for d in [*exp.glob("smoke_*"), *exp.glob("audit_1/smoke_*")] if d.is_dir() for r in results(d)]
    assert len(rows) >= 7
    measured = {tuple(r[k] for k in ("params", "size_mb", "mflops", "latency_ms")) for r in rows}
    assert len(measured) == 1, measured
    ((params, size_mb, mflops, latency_ms),) = measured
    assert params == 1528106  # torchvision's mobilenet_v3_small with a 10-class head
    assert 5 < size_mb < 7 and 2 < mflops < 10 and latency_ms > 0  # 32 px images


def test_trial_crashing_mid_epoch_is_retried_from_its_checkpoint(smoke_run):
    crashed = smoke_run["marker"].read_text().strip()  # the trial name that raised in epoch 2
    trial_dir = smoke_run["exp"] / crashed
    epochs = [r["epoch"] for r in results(trial_dir)]
    assert epochs[:2] == [1, 2], epochs  # epoch 1 reported once, epoch 2 redone after the restore
    assert epochs == sorted(set(epochs))
    assert "injected fault in epoch 2" in smoke_run["out"]
    assert "resumed from epoch 1" in smoke_run["out"]


def test_out_of_memory_trial_ends_as_oom_and_the_search_goes_on(smoke_run):
    oom = smoke_run["oom_marker"].read_text().strip()  # the trial that ran out of memory in epoch 1
    trials = pd.read_csv(smoke_run["exp"] / "final" / "trials.csv")
    row = trials.set_index("trial_id").loc[oom.removeprefix("smoke_")]
    assert row["outcome"] == "oom" and row["status"] == "TERMINATED" and row["retries"] == 0, row
    assert (trials["outcome"] == "oom").sum() == 1
    assert [r["epoch"] for r in results(smoke_run["exp"] / oom)] == [1]  # no retry, no second epoch
    assert not any((smoke_run["exp"] / oom).glob("checkpoint_*"))
    assert re.search(rf"\({re.escape(oom)} pid=\d+\)\S* out of memory in epoch 1", smoke_run["out"]), smoke_run["out"][
        -3000:
    ]
    metrics = json.loads((smoke_run["exp"] / "final" / "metrics.json").read_text())
    assert metrics["n_oom"] == 1 and metrics["best_trial"] != oom.removeprefix("smoke_")
    # every other trial still ran: at least one reached the last epoch
    assert trials["epochs"].max() == 3


def test_final_outputs_are_consistent(smoke_run, mnist):
    final = smoke_run["exp"] / "final"
    metrics = json.loads((final / "metrics.json").read_text())
    pre = pd.read_csv(final / "pre.csv", dtype={"image_id": str, "label": str})
    assert list(pre.columns) == ["image_id", "label", "score"]
    assert len(pre) == 10_000 and pre["image_id"].is_unique and pre["image_id"].is_monotonic_increasing
    assert pre["image_id"].iloc[0] == "00000" and pre["image_id"].iloc[-1] == "09999"
    truth = np.array(mnist.labels["test"]).astype(str)
    acc = float((pre["label"].to_numpy() == truth).mean())
    assert acc == pytest.approx(metrics["test_accuracy"], abs=1e-12)
    from sklearn.metrics import f1_score

    f1 = f1_score(truth, pre["label"].to_numpy(), labels=[str(d) for d in range(10)], average=None, zero_division=0)
    assert [metrics["per_class"][str(d)]["f1"] for d in range(10)] == pytest.approx(list(f1))
    assert ((pre["score"] > 0) & (pre["score"] <= 1)).all()
    # chosen on validation: the best reported val_acc over every trial and epoch
    best = max(r["val_acc"] for d in smoke_run["exp"].rglob("smoke_*") if d.is_dir() for r in results(d))
    if metrics["epoch_note"]:  # the best trial's latest epoch within one SE of its best (README: Outputs)
        assert f"of the trial's best, {best:.4f} at epoch" in metrics["epoch_note"] and metrics["best_val_acc"] < best
    else:
        assert metrics["best_val_acc"] == pytest.approx(best)
    # the paired ties (README: Outputs): the shipped checkpoint against each candidate's best on the
    # winner's validation images, exact McNemar p-values from the discordant counts, Holm over them
    from scipy.stats import binomtest

    paired = metrics["paired_ties"]
    trials = pd.read_csv(final / "trials.csv", dtype={"trial_id": str}).set_index("trial_id")
    assert (paired["winner"], paired["epoch"], paired["n"]) == (metrics["best_trial"], metrics["best_epoch"], 500)
    assert paired["accuracy"] == pytest.approx(metrics["best_val_acc"])  # the images it was scored on
    ps = []
    for c in paired["compared"]:
        assert c["trial_id"] != metrics["best_trial"]
        assert trials.loc[c["trial_id"], "outcome"] not in ("diverged", "oom", "error")
        assert c["reported"] == pytest.approx(trials.loc[c["trial_id"], "best_val_acc"])
        b, k = c["winner_only"], c["other_only"]
        assert c["accuracy"] == pytest.approx(paired["accuracy"] + (k - b) / 500)
        ps.append(binomtest(b, b + k, 0.5).pvalue if b + k else 1.0)
    assert [c["p"] for c in paired["compared"]] == pytest.approx(ps)
    m = len(ps)
    order = sorted(range(m), key=lambda i: ps[i])
    holm = dict(zip(order, np.maximum.accumulate([min(1.0, (m - r) * ps[i]) for r, i in enumerate(order)])))
    assert [c["p_holm"] for c in paired["compared"]] == pytest.approx([holm[i] for i in range(m)])
    tied = [c["trial_id"] for i, c in enumerate(paired["compared"]) if holm[i] > 0.05]
    assert metrics["tied_trials"] == tied and f"ties: {metrics['ties']}" in smoke_run["out"]
    assert paired["seconds"] > 0 and "optimistic" in metrics["ties"]
    for png in ("learning_curves.png", "confusion_matrix.png", "misclassified.png"):
        assert (final / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # best_model.pt loads with weights_only and the self-contained export agrees with it
    state = torch.load(final / "best_model.pt", map_location="cpu", weights_only=True)
    from raydigits.inference import predict_state

    imgs = mnist.images["test"][:300]
    probs = predict_state(state, imgs, "cpu")  # the one predictor, as the final stage ran it
    ours = probs.argmax(1)
    program = torch.export.load(str(final / "best_model.pt2"))
    exported = program.module()(torch.from_numpy(imgs.copy())).detach().numpy()
    assert (ours == exported.argmax(1)).all()
    assert exported == pytest.approx(probs, abs=1e-5)
    assert (ours == pre["label"].astype(int).to_numpy()[:300]).all()


def test_export_reruns_final_stage_and_predicts_folders(smoke_run, tmp_path, mnist):
    import cv2

    exp = smoke_run["exp"]
    before = (exp / "final" / "pre.csv").read_text()
    proc = subprocess.run(
        [sys.executable, "launch.py", "export", str(exp)], cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (exp / "final" / "pre.csv").read_text() == before
    folder = tmp_path / "imgs"
    (folder / "sub").mkdir(parents=True)
    for i in range(6):
        img = mnist.images["test"][i, :, :, 0]
        if i % 2:
            cv2.imwrite(str(folder / "sub" / f"d{i}.jpg"), cv2.resize(np.dstack([img] * 3), (56, 56)))
        else:
            cv2.imwrite(str(folder / f"d{i}.png"), img)
    (folder / "broken.png").write_bytes(b"not a png")
    proc = subprocess.run(
        [sys.executable, "launch.py", "export", str(exp), "--images", str(folder)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2 and "broken.png" in proc.stderr and "Traceback" not in proc.stderr
    out = tmp_path / "pre.csv"
    proc = subprocess.run(
        [sys.executable, "launch.py", "export", str(exp), "--images", str(folder), "--out", str(out), "--skip-corrupt"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert "skipped 1 unreadable: broken.png (not a PNG or JPEG" in proc.stdout
    pre = pd.read_csv(out, dtype=str)
    assert pre["image_id"].tolist() == ["d0.png", "d2.png", "d4.png", "sub/d1.jpg", "sub/d3.jpg", "sub/d5.jpg"]
    proc = subprocess.run(
        [sys.executable, "launch.py", "export", str(tmp_path)], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 2 and "not a raydigits experiment" in proc.stderr


def test_killed_search_on_s3_resumes_without_rerunning_finished_trials(tmp_path, mnist_dir, monkeypatch):
    """A search writing to an S3-compatible server; its driver (and the local Ray it started) is
    SIGKILLed once storage records a finished trial; `--resume s3://...` finishes the rest without
    re-running what storage recorded as finished."""
    from raydigits.experiment import read_results
    from raydigits.ray_compat import trial_states
    from raydigits.storage import Location

    with s3_server() as (port, env, client):
        for k, v in env.items():  # this process reads the bucket through the storage layer too
            monkeypatch.setenv(k, v)
        uri = f"s3://{BUCKET}/runs/killme"
        proc = launch(
            [
                "--search-space",
                "smoke",
                "--storage-path",
                f"s3://{BUCKET}/runs",
                "--name",
                "killme",
                "--max-concurrent",
                "1",
                "--num-samples",
                "3",
                "--no-final",
                "--set",
                "train_items=500",
                "--set",
                "val_items=200",
            ],
            env={**os.environ, **env},
        )
        exp = Location.parse(uri)
        deadline = time.time() + 300
        finished = {}
        while time.time() < deadline and not finished and proc.poll() is None:
            time.sleep(1)
            if not exp.glob("experiment_state-*.json"):
                continue
            for t in trial_states(exp):
                rows = read_results(t["path"])
                if t["status"] == "TERMINATED" and rows and rows[-1].get("done"):
                    finished[t["path"].name] = rows
        assert finished, "storage recorded no finished trial before the deadline"
        os.killpg(proc.pid, signal.SIGKILL)  # the driver and the local Ray it started
        proc.wait(timeout=30)
        time.sleep(2)
        resumed = subprocess.run(
            [sys.executable, "launch.py", "--resume", uri, "--no-final"],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=600,
            env={**os.environ, **env},
        )
        assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
        assert "search finished in" in resumed.stdout and uri in resumed.stdout
        for name, rows in finished.items():
            assert read_results(exp / name) == rows  # not re-run: no new reports
        dirs = exp.glob("smoke_*")
        runs = [read_results(d) for d in dirs]
        seen = {d.name: [(r.get("epoch"), r.get("done")) for r in rows] for d, rows in zip(dirs, runs)}
        assert len(dirs) == 3 and all(r and r[-1].get("done") for r in runs), seen
        # --max-concurrent 1 held although 2 CPUs were free: no two trials trained at the same time
        spans = sorted((r[0]["timestamp"] - r[0]["time_this_iter_s"], r[-1]["timestamp"]) for r in runs)
        assert all(a[1] <= b[0] + 1 for a, b in zip(spans, spans[1:])), spans
        assert json.loads((exp / "raydigits_outcomes.json").read_text())["ended"] == "finished"


def test_impossible_resources_are_refused_in_seconds(tmp_path):
    start = time.time()
    proc = subprocess.run(
        [
            sys.executable,
            "launch.py",
            "--search-space",
            "smoke",
            "--gpus-per-trial",
            "1",
            "--storage-path",
            str(tmp_path),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert "resources: each trial asks for cpu=1 gpu=1" in proc.stderr and "Traceback" not in proc.stderr
    assert time.time() - start < 60
    assert not list(tmp_path.iterdir())  # nothing half-written


def test_dashboard_in_a_browser_needs_the_token_and_shows_the_trials(smoke_run):
    """Headless Chromium on the URL the CLI printed: without the token only the login prompt (and
    the API answers 401); after logging in through that prompt the cluster page lists the node,
    the actors view lists the running trials by name, the Jobs page names the experiment, and each
    trial's log holds its per-epoch lines. Screenshots land in test-artifacts/."""
    from support.browser import skip_unless_required

    found = smoke_run["browser"]
    if "skipped" in found:
        skip_unless_required(found["skipped"])
    assert "error" not in found, found.get("error")
    assert found["api_without_token"] == 401 and found["api_with_token"] == 200
    assert found["no_token_prompt"] and not found["no_token_sees_trials"]
    assert found["cookie_set"] and found["cluster_lists_node"] and found["jobs_view_name"]
    assert found["actors_view_trials"] and found["actors_view_class"]
    logs = found["trial_logs"]
    assert any(f"[{name}] epoch 1 val_acc" in log for name, log in logs.items()), logs
    # a trial process is reused by the next trial (runner.py: reuse_actors), so an actor's log holds
    # the trials it ran in turn (and a retried trial may continue in another): every epoch line in
    # it names the trial it belongs to
    for log in logs.values():
        assert len(re.findall(r"epoch \d+ val_acc", log)) == len(
            re.findall(r"\[smoke_\w+_\d{5}\] epoch \d+ val_acc", log)
        ), log


def test_local_dashboard_listens_on_loopback_only(smoke_run):
    assert re.search(r"Ray dashboard: http://127\.0\.0\.1:\d+", smoke_run["out"])
    assert smoke_run["browser"]["listening_on"] == ["127.0.0.1"]


def test_terminal_shows_the_table_and_our_lines_not_ray_noise(smoke_run):
    from support.browser import read_token

    out = smoke_run["out"]
    assert "login: the page asks for a token" in out and "ray get-auth-token" in out
    assert read_token() not in out  # says where the token is, never the token
    assert "Number of trials:" in out  # Tune's progress table
    # each trial's epoch line, prefixed by the trial's own name (its actor's repr), never merged
    assert re.search(r"\(smoke_\w+_\d{5} pid=\d+\)\S* \[smoke_\w+_\d{5}\] epoch 1 val_acc", out)
    for noise in (
        "Checkpoint successfully created",
        "Token authentication is enabled",
        "excessive",
        "[repeated",
        "Tuner.restore",
        "max_concurrent_trials` will be ignored",
    ):
        assert noise not in out, noise


def test_tensorboard_shows_every_trial(smoke_run):
    """`tensorboard --logdir <experiment dir>` reads one event file per trial holding its curves."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    trial_dirs = sorted(d for d in smoke_run["exp"].glob("smoke_*") if d.is_dir())
    assert len(trial_dirs) == 6
    for d in trial_dirs:
        acc = EventAccumulator(str(d))
        acc.Reload()
        scalars = acc.Tags()["scalars"]
        assert "ray/tune/val_acc" in scalars, scalars
        if all(np.isfinite(r["train_loss"]) for r in results(d)):  # the oom trial's is NaN: not logged
            assert "ray/tune/train_loss" in scalars, scalars
        got = [e.value for e in acc.Scalars("ray/tune/val_acc")]
        assert got == pytest.approx([r["val_acc"] for r in results(d)], abs=1e-6)


def test_report_html_holds_every_section_from_the_recorded_search(smoke_run):
    from raydigits.experiment import Experiment
    from raydigits.insight import importance

    exp = smoke_run["exp"]
    page = (exp / "final" / "report.html").read_text()  # written by the final stage
    for anchor in ("best", "trials", "importance", "asha", "audit", "curves", "confusion", "mistakes"):
        assert f"<section id={anchor}>" in page
    assert not re.search(r"<(script|img|link)[^>]*\s(src|href)=[\"']?https?:", page)  # plotly inlined: nothing fetched
    assert page.count("<img alt='misclassified images' src='data:image/png;base64,") == 1  # embedded
    metrics = json.loads((exp / "final" / "metrics.json").read_text())
    assert f"<td>{metrics['best_trial']}</td>" in page
    experiment = Experiment.open(exp)
    imp = importance(experiment.frame(), experiment.spec)
    assert imp.trust == "not meaningful" and "Trust: not meaningful" in page  # 5 scored trials of 6
    for name, value in imp.mean.items():
        assert f"<td>{name}</td><td>{value:.3f}</td>" in page
    # the rung table: every trial recorded as stopped by ASHA is listed in its rung's row, at its value there
    asha = page[page.index("<section id=asha>") : page.index("<section id=audit>")]
    rows = {int(m.group(1)): m.group(0) for m in re.finditer(r"<tr><td>epoch (\d+)</td>.*?</tr>", asha)}
    assert sorted(rows) == [1, 2]
    record = experiment.outcomes.trials
    stopped = {tid: r.epochs for tid, r in record.items() if r.outcome == "asha_stopped"}
    assert stopped
    for tid, epoch in stopped.items():
        value = next(r["val_acc"] for r in results(next(exp.glob(f"smoke_{tid}"))) if r["epoch"] == epoch)
        assert f"{tid} ({value:.4f})" in rows[epoch], rows
        assert all(tid not in row for e, row in rows.items() if e != epoch)
    oom = next(tid for tid, r in record.items() if r.outcome == "oom")
    assert f"{oom} (oom)" in rows[1]


def test_report_renders_offline_in_a_browser(smoke_run):
    from support.browser import ARTIFACTS, browser_missing, check_report, skip_unless_required

    why = browser_missing()
    if why:
        skip_unless_required(why)  # a failure where the browser is required (.ci/run)
    seen = check_report(smoke_run["exp"] / "final" / "report.html", ARTIFACTS / "report.png")
    assert seen["network_requests"] == [] and seen["console_errors"] == []
    assert seen["sections"] == ["best", "trials", "importance", "asha", "audit", "curves", "confusion", "mistakes"]
    # plotly (inlined) drew every plot: parallel coordinates, importance, curves, confusion matrix
    assert seen["plots_drawn"] == ["plot_parcoords", "plot_importance", "plot_curves", "plot_confusion_heatmap"]
    assert seen["parcoords_axes"] == 3  # optimizer, lr, best val_acc (momentum/nesterov are constants)
    assert seen["parcoords_lines"] > 0 and seen["curve_traces"] == 7  # 6 search trials, 1 audited
    assert seen["images_loaded"] == [True]
    assert (ARTIFACTS / "report.png").stat().st_size > 50_000


def _outcome(test, *args) -> tuple[str, str]:
    """How a test function ended, caught here so that a skip cannot skip the caller."""
    try:
        test(*args)
    except (pytest.fail.Exception, pytest.skip.Exception) as exc:
        return ("failed" if isinstance(exc, pytest.fail.Exception) else "skipped"), str(exc)
    return "passed", ""


@pytest.mark.parametrize("required", [True, False])
def test_the_browser_tests_fail_not_skip_without_a_browser_when_it_is_required(required, monkeypatch, tmp_path):
    """Both browser tests, with Chromium missing: with RAYDIGITS_REQUIRE_BROWSER=1 (what .ci/run
    sets once it installed Chromium) they fail, else they skip. Run directly, without a search."""
    from support import browser

    monkeypatch.setattr(browser, "CHROMIUM", str(tmp_path / "no-chromium"))
    monkeypatch.setenv("RAYDIGITS_REQUIRE_BROWSER", "1" if required else "0")
    expected = "failed" if required else "skipped"
    report = _outcome(test_report_renders_offline_in_a_browser, {"exp": tmp_path})
    dashboard = _outcome(
        test_dashboard_in_a_browser_needs_the_token_and_shows_the_trials,
        {"browser": {"skipped": browser.browser_missing()}},
    )
    for outcome, why in (report, dashboard):
        assert outcome == expected and "no-chromium not installed" in why, (report, dashboard)


def test_report_command_rebuilds_the_page_without_training(smoke_run, tmp_path):
    exp = smoke_run["exp"]
    (exp / "final" / "report.html").unlink()
    proc = subprocess.run(
        [sys.executable, "launch.py", "report", str(exp)], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    assert "<section id=asha>" in (exp / "final" / "report.html").read_text()
    # an experiment whose final stage never ran: one line saying what to run
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "raydigits_search.yaml").write_text((exp / "raydigits_search.yaml").read_text())
    proc = subprocess.run(
        [sys.executable, "launch.py", "report", str(bare)], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [
        f"error: {bare}/final: metrics.json, misclassified.png missing; run `python launch.py export {bare}` first"
    ]
    assert not (bare / "final").exists()


def test_progress_shows_an_eta_and_the_summary_weighs_it(smoke_run):
    out = smoke_run["out"]
    lines = re.findall(r"ETA: ~(\d+)m (\d+)s \((\d)/6 trials done\)", out)
    assert lines, out[-3000:]
    assert int(lines[0][2]) < 6
    estimates = json.loads((smoke_run["exp"] / "raydigits_eta.json").read_text())["estimates"]
    assert estimates[0]["total"] == 6 and estimates[0]["remaining_s"] > 0
    first = int(lines[0][0]) * 60 + int(lines[0][1])
    assert first == round(estimates[0]["remaining_s"])
    metrics = json.loads((smoke_run["exp"] / "final" / "metrics.json").read_text())
    e = metrics["eta"]
    assert e["actual_s"] == pytest.approx(metrics["search_wall_time_s"])
    assert 0 < e["first_estimate_after_s"] < e["actual_s"] and e["first_estimate_total_s"] > e["first_estimate_after_s"]
    assert re.search(
        r"ETA: the first estimate \(after \d+m \d+s\) said \d+m \d+s in all; the search took "
        r"\d+m \d+s \([+-]\d+%\)",
        out,
    )


def test_extend_adds_trials_keeps_the_finished_ones_and_reruns_the_final_stage(smoke_run, tmp_path):
    """`extend` on a copy of the shared search: 2 more trials in extend_1/ with up to 4 epochs, the
    best finished config re-run first under that budget, the finished trials untouched, and the
    final stage choosing among all of them (the search's 6, its audit's 1, the extension's 2)."""
    import shutil

    from raydigits.experiment import Experiment

    exp = tmp_path / "ext"
    shutil.copytree(smoke_run["exp"], exp)
    spec = Experiment.open(exp).spec
    before = Experiment.open(exp).frame()
    best = max(Experiment.open(exp).trials, key=lambda t: t.best("val_acc", "max"))
    proc = subprocess.run(
        [sys.executable, "launch.py", "extend", str(exp), "--num-samples", "2", "--max-t", "4", "--promote", "1"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "extend: run 1 of ext: 2 more trials" in proc.stdout and "the 1 best finished configs first" in proc.stdout
    extended = Experiment.open(exp)
    after = extended.frame()
    assert len(after) == len(before) + 2 and (after["run"] == "extend_1").sum() == 2
    kept = after[after["run"] != "extend_1"].reset_index(drop=True)  # the search's and its audit's
    pd.testing.assert_frame_equal(kept, before[kept.columns])
    new = [t for t in extended.trials if t.run == "extend_1"]
    searched = {k: v for k, v in best.config.items() if k in spec.parameters}
    promoted = [t.config for t in new if {k: t.config.get(k) for k in searched} == searched]
    assert promoted, (searched, [t.config for t in new])  # the best finished config, re-run
    assert max(t.epochs for t in new) <= 4 and all(t.outcome != "error" for t in new)
    ext_spec = extended.runs[1].spec
    assert ext_spec.epochs == 4 and ext_spec.seed != spec.seed and ext_spec.num_samples == 2
    metrics = json.loads((exp / "final" / "metrics.json").read_text())
    assert metrics["n_trials"] == len(after)
    trials_csv = pd.read_csv(exp / "final" / "trials.csv")
    assert sorted(trials_csv["run"].unique()) == ["audit_1", "extend_1", "search"] and len(trials_csv) == len(after)
    # extending again makes extend_2; a grid search or a shorter budget is refused before Ray starts
    bad = subprocess.run(
        [sys.executable, "launch.py", "extend", str(exp), "--num-samples", "1", "--max-t", "2"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert bad.returncode == 2 and "--max-t 2: below the search's 3 epochs" in bad.stderr
    assert "Ray dashboard" not in bad.stdout and not (exp / "extend_2").exists()
