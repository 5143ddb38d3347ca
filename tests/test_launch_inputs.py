"""launch.py's error boundary, in process (fast): each hostile input below is refused with one
`error:` line naming what is wrong, exit 2, before Ray starts and before anything is written."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from raydigits import cli


def _files(tmp: Path) -> dict:
    (tmp / "bin.yaml").write_bytes(bytes(range(256)) * 4)
    (tmp / "list.yaml").write_text("- a\n- b\n")
    (tmp / "afile").write_text("x")
    (tmp / "notexp").mkdir()
    exp = tmp / "exp"
    exp.mkdir()
    (exp / "raydigits_search.yaml").write_text("name: [unclosed\n")
    return {"tmp": str(tmp)}


CASES = [  # argv (with {tmp}), words the error line must hold
    (["--search-space", "{tmp}"], ["{tmp}", "is a folder"]),
    (["--search-space", "{tmp}/bin.yaml"], ["bin.yaml", "not a text file"]),
    (["--search-space", "{tmp}/list.yaml"], ["list.yaml", "mapping"]),
    (["--search-space", "no_such_space"], ["--search-space no_such_space", "no such file", "smoke"]),
    (["--search-space", "smoke", "--seed", "-5"], ["seed", "greater than or equal to 0"]),
    (["--search-space", "smoke", "--num-samples", "0"], ["num_samples"]),
    (["--search-space", "smoke", "--name", "a/b"], ["--name 'a/b'", "one folder name"]),
    (["--search-space", "smoke", "--name", ".."], ["--name '..'", "one folder name"]),
    (["--search-space", "smoke", "--storage-path", "{tmp}/afile/sub"], ["--storage-path", "cannot write there"]),
    (["--search-space", "smoke", "--storage-path", "file://rel"], ["file://", "absolute path"]),
    (["--resume", "{tmp}/notexp"], ["notexp", "not a raydigits experiment"]),
    (["--resume", "{tmp}/exp"], ["raydigits_search.yaml", "YAML"]),
    (["--resume", "{tmp}/exp", "--set", "lr=0.1"], ["--resume", "--set", "cannot change a saved search"]),
    (["export", "{tmp}/notexp"], ["notexp", "not a raydigits experiment"]),
    (["export", "{tmp}/exp", "--out", "x.csv"], ["raydigits_search.yaml"]),
]


@pytest.mark.parametrize("argv, words", CASES, ids=[" ".join(a) for a, _ in CASES])
def test_hostile_launch_inputs_get_one_line_and_exit_2(argv, words, tmp_path, capsys):
    fmt = _files(tmp_path)
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    code = cli.main([a.format(**fmt) for a in argv])
    err = capsys.readouterr().err
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for w in words:
        assert w.format(**fmt) in lines[0], lines[0]
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before  # nothing written
    assert "ray" not in sys.modules or not sys.modules["ray"].is_initialized()


@pytest.mark.parametrize(
    "argv",
    [["--search-space", "smoke", "--dashboard-port", "99999"], ["--search-space", "smoke", "--gpus-per-trial", "lots"]],
)
def test_bad_option_values_are_argparse_errors(argv, capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(argv)
    assert exit_.value.code == 2 and "error: argument" in capsys.readouterr().err


def test_export_out_without_images_is_refused(tmp_path, capsys):
    exp = tmp_path / "e"
    exp.mkdir()
    (exp / "raydigits_search.yaml").write_text((Path(__file__).parents[1] / "search_spaces" / "smoke.yaml").read_text())
    assert cli.main(["export", str(exp), "--out", str(tmp_path / "x.csv")]) == 2
    assert "--out/--force: only with --images" in capsys.readouterr().err
    assert not (tmp_path / "x.csv").exists()


def test_export_never_writes_over_inputs_and_over_outputs_only_with_force(tmp_path, small_mnist, capsys):
    import cv2
    from support.helpers import REPO, tiny_cfg

    from raydigits.experiment.completion import write_marker
    from raydigits.inference import save_models
    from raydigits.trainer import Trainer

    exp = tmp_path / "exp"
    (exp / "final").mkdir(parents=True)
    (exp / "raydigits_search.yaml").write_text((REPO / "search_spaces" / "smoke.yaml").read_text())
    save_models(exp / "final", Trainer(tiny_cfg(epochs=1), small_mnist).state_dict(), [28, 28, 1])
    write_marker(exp / "final", [])  # final/ complete, for an experiment of no trials
    (exp / "experiment_state-2026-01-01_00-00-00.json").write_text('{"trial_data": []}')  # Tune's, no trials
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    for i in range(3):
        cv2.imwrite(str(imgs / f"d{i}.png"), small_mnist.images["val"][i, :, :, 0])
    image = (imgs / "d1.png").read_bytes()
    out = tmp_path / "pre.csv"
    out.write_text("an earlier run's predictions")
    for argv, words in (
        [["--out", str(out)], "already exists; pass --force"],
        [["--out", str(imgs / "d1.png"), "--force"], "one of the input images"],
        [["--out", str(imgs)], "is a folder"],
    ):
        assert cli.main(["export", str(exp), "--images", str(imgs), *argv]) == 2
        err = capsys.readouterr().err
        assert words in err and len(err.strip().splitlines()) == 1, err
    assert out.read_text() == "an earlier run's predictions" and (imgs / "d1.png").read_bytes() == image
    assert cli.main(["export", str(exp), "--images", str(imgs), "--out", str(out), "--force"]) == 0
    assert out.read_text().startswith("image_id,label,score")
