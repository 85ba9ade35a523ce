import pytest
import torch

from equipoise import __version__
from equipoise.cli import main
from equipoise.core import Fit, Stage, Term


def test_help_lists_plot(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    assert "plot" in capsys.readouterr().out


def test_version(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out.strip() == f"equipoise {__version__}"


def test_plot_command(tmp_path, capsys):
    x = torch.ones(3, dtype=torch.float64, requires_grad=True)
    terms = [Term("a", lambda o: ((x - 2) ** 2).sum()), Term("b", lambda o: (x ** 2).sum(), weight=0.1)]
    Fit({"x": x}, terms, [Stage("s", ["x"], steps=4)], run_dir=tmp_path / "run", progress="quiet").run()
    assert main(["plot", str(tmp_path / "run"), "--out", str(tmp_path / "figs")]) == 0
    printed = capsys.readouterr().out.split()
    assert len(printed) == 5 and all(p.endswith(".png") for p in printed)
    assert len(list((tmp_path / "figs").glob("*.png"))) == 5


def test_plot_command_on_a_folder_without_record(tmp_path, capsys):
    assert main(["plot", str(tmp_path)]) == 2
    assert "record.jsonl" in capsys.readouterr().err
