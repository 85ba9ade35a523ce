"""``equipoise diffraction refine`` resumes: Ctrl-C leaves a checkpoint and a run.log line, the same
command continues to the result of an uninterrupted run, other settings are refused, --overwrite
starts over, and nothing is wiped silently."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from equipoise.cli import main
from equipoise.diffraction.flags import parse_nanobragg_args
from equipoise.diffraction.simulate import Simulator

GEOMETRY = ("-cell 100 100 100 90 90 90 -N 5 -default_F 100 -mosaic_domains 3 -lambda 1 -detpixels 32 "
            "-pixel 0.2 -distance 100 -fluence 1e28").split()
START = ["-mosaic", "0.3", "-misset", "1", "1", "0"]


@pytest.fixture(scope="module")
def observed_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    truth = parse_nanobragg_args(GEOMETRY + ["-mosaic", "0.5", "-misset", "2", "1.5", "-0.5"])
    with torch.no_grad():
        image = Simulator(truth)().numpy()
    path = tmp_path_factory.mktemp("obs") / "observed.npy"
    np.save(path, image)
    return path


def _command(observed: Path, out: Path, *extra: str) -> list[str]:
    return ["diffraction", "refine", str(observed), *GEOMETRY, *START, "--refine", "mosaic,misset",
            "--search-misset", "off", "--steps", "6", "--final-mosaic-domains", "6", "--quiet", "--out", str(out), *extra]


def _batch(observed: Path, out: Path, *extra: str) -> list[str]:
    return _command(observed, out, "--no-plots", *extra)


def _parameters(out: Path) -> dict:
    return json.loads((out / "summary.json").read_text())["parameters"]


def test_sigint_then_same_command_resumes_to_the_uninterrupted_result(observed_file: Path, tmp_path: Path) -> None:
    reference, interrupted = tmp_path / "reference", tmp_path / "interrupted"
    assert main(_command(observed_file, reference)) == 0
    assert {p.name for p in (reference / "plots").iterdir()} == {"images.png", "parameters.png", "loss.png"}
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": str(Path(__file__).resolve().parents[2] / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.Popen([sys.executable, "-m", "equipoise.cli", *_batch(observed_file, interrupted)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            # a background job of a non-interactive shell (as CI may start us) ignores SIGINT and
                            # its children inherit that; Python then installs no KeyboardInterrupt handler
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    record = interrupted / "record.jsonl"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:  # wait for a few steps
        if record.exists() and sum(1 for _ in record.open()) >= 2:
            proc.send_signal(signal.SIGSTOP)  # freeze it at once: a step takes only milliseconds here
            break
        time.sleep(0.005)
    assert proc.poll() is None, "the run finished before it could be interrupted: " + proc.stdout.read()
    proc.send_signal(signal.SIGINT)
    proc.send_signal(signal.SIGCONT)
    output, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130, output
    assert "to resume" in output
    log = (interrupted / "run.log").read_text()
    assert "interrupted (Ctrl-C); checkpoint at step" in log
    assert (interrupted / "checkpoint.pt").is_file() and not (interrupted / "summary.json").exists()
    assert main(_batch(observed_file, interrupted)) == 0
    assert "resumed from checkpoint" in (interrupted / "run.log").read_text()
    assert _parameters(interrupted) == _parameters(reference)
    steps = [json.loads(line)["step"] for line in record.read_text().splitlines()]
    assert steps == sorted(set(steps)), "a resumed record has no duplicate steps"


def test_other_settings_are_refused_and_overwrite_starts_over(observed_file: Path, tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    assert main(_batch(observed_file, out, "--checkpoint-every", "2")) == 0
    before = (out / "record.jsonl").read_text()
    assert main(_batch(observed_file, out, "--checkpoint-every", "2", "--loss", "lsq")) == 2
    err = capsys.readouterr().err
    assert "other settings (loss)" in err and "--overwrite" in err
    assert (out / "record.jsonl").read_text() == before, "a refused run must not touch the old one"
    assert main(_batch(observed_file, out, "--loss", "lsq", "--overwrite")) == 0
    assert json.loads((out / "config.json").read_text())["config"]["settings"]["loss"] == "lsq"


def test_out_that_is_not_a_run_directory_is_refused(observed_file: Path, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine")
    assert main(_command(observed_file, busy)) == 2
    assert "holds no equipoise run" in capsys.readouterr().err
    assert (busy / "notes.txt").read_text() == "mine"
    afile = tmp_path / "afile"
    afile.write_text("x")
    assert main(_command(observed_file, afile)) == 2
    assert "is an existing file" in capsys.readouterr().err
    assert main(_command(observed_file, afile / "sub")) == 2
    assert "is a file" in capsys.readouterr().err
