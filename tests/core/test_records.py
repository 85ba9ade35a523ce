import json

import pytest
import torch

from equipoise.core import Fit, GradNormRatioBalancer, Stage, plot_run
from equipoise.errors import InputError


def test_run_directory_contents(tmp_path, refinement):
    params, terms = refinement()
    stages = [Stage("xyz", ["xyz"], steps=6, balancer=GradNormRatioBalancer("data")),
              Stage("b", ["b"], steps=4, optimizer="lbfgs", lr=1.0, tol=1e-12)]
    result = Fit(params, terms, stages, run_dir=tmp_path, progress="quiet", grad_every=3,
                 config={"dataset": "toy"}).run()
    assert {p.name for p in tmp_path.iterdir()} >= {"config.json", "record.jsonl", "summary.json", "run.log",
                                                    "checkpoint.pt"}
    assert not list(tmp_path.glob(".*.tmp"))  # atomic writes leave no temporaries
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["config"] == {"dataset": "toy"} and [s["name"] for s in config["stages"]] == ["xyz", "b"]
    assert config["stages"][0]["balancer"] == {"balancer": "GradNormRatioBalancer", "reference": "data", "ratios": {}}

    lines = [json.loads(line) for line in (tmp_path / "record.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines] == list(range(10))
    first = lines[0]
    assert set(first["terms"]) == {"data", "restraints", "b_reg"}
    for values in first["terms"].values():
        assert set(values) == {"raw", "weight", "weighted", "share"}
        assert values["weighted"] == pytest.approx(values["raw"] * values["weight"])
    assert sum(v["share"] for v in first["terms"].values()) == pytest.approx(1.0)
    assert first["loss"] == pytest.approx(sum(v["weighted"] for v in first["terms"].values()))
    assert set(first["grad_norms"]["data"]) == {"xyz"}  # norms on the free groups only
    assert "grad_norms" in lines[3] and "grad_norms" not in lines[1]
    assert lines[6]["stage"] == "b" and set(lines[6]["grad_norms"]["data"]) == {"b"}
    assert "reasons" in first and "|g_data|" in first["reasons"]["restraints"]
    assert len(first["params"]["b"]) == 12 and "xyz.mean" in first["params"]

    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["steps"] == result.steps == 10
    assert [s["name"] for s in summary["stages"]] == ["xyz", "b"]
    assert summary["stages"][0]["reasons"]["data"].startswith("ratio 1")
    log = (tmp_path / "run.log").read_text()
    assert "stage 'xyz' starts" in log and "fit finished" in log


def test_plot_run_writes_pngs(tmp_path, refinement):
    params, terms = refinement()
    Fit(params, terms, [Stage("all", ["xyz", "b"], steps=5)], run_dir=tmp_path, progress="quiet", grad_every=2).run()
    paths = plot_run(tmp_path)
    assert [p.name for p in paths] == ["loss_terms.png", "shares.png", "weights.png", "grad_norms.png", "params.png"]
    for path in paths:
        assert path.parent == tmp_path / "plots"
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    other = plot_run(tmp_path, out_dir=tmp_path / "elsewhere")
    assert all(p.exists() and p.parent.name == "elsewhere" for p in other)


def test_plot_run_without_record_names_the_file(tmp_path):
    with pytest.raises(InputError, match="record.jsonl"):
        plot_run(tmp_path)


def test_resume_refuses_a_different_fit(tmp_path, refinement):
    params, terms = refinement()
    Fit(params, terms, [Stage("a", ["xyz"], steps=2)], run_dir=tmp_path, progress="quiet").run()
    params, terms = refinement()
    with pytest.raises(InputError, match="checkpoint"):
        Fit(params, terms, [Stage("other", ["b"], steps=2)], run_dir=tmp_path, progress="quiet").run()
    fresh = Fit(params, terms, [Stage("other", ["b"], steps=2)], run_dir=tmp_path, progress="quiet").run(resume=False)
    assert fresh.steps == 2


def test_plain_progress_lines(capsys, tmp_path):
    x = torch.ones(2, dtype=torch.float64, requires_grad=True)
    from equipoise.core import Term
    Fit({"x": x}, [Term("t", lambda o: (x ** 2).sum())], [Stage("s", ["x"], steps=3)], progress="plain").run()
    out = capsys.readouterr().out
    assert "[equipoise] step 1/3" in out and "stage 's' starts" in out
    Fit({"x": x}, [Term("t", lambda o: (x ** 2).sum())], [Stage("s", ["x"], steps=3)], progress="quiet").run()
    assert capsys.readouterr().out == ""


def test_bar_progress_and_bad_mode(tmp_path):
    from equipoise.core import Term
    x = torch.ones(2, dtype=torch.float64, requires_grad=True)
    terms = [Term("t", lambda o: (x ** 2).sum())]
    result = Fit({"x": x}, terms, [Stage("s", ["x"], steps=3)], progress="bar", run_dir=tmp_path).run()
    assert result.steps == 3 and "step 3/3" in (tmp_path / "run.log").read_text()
    with pytest.raises(InputError, match="progress"):
        Fit({"x": x}, terms, [Stage("s", ["x"])], progress="loud")
