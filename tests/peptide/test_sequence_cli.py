"""``equipoise peptide sequence``: mzTab/CSV out of the box, errors before work."""

import argparse
from pathlib import Path

import pytest
import torch

from equipoise.errors import InputError
from equipoise.peptide.io import write_mgf
from equipoise.peptide.model import ModelConfig, PeptideTransformer, save_model
from equipoise.peptide.mztab import read_mztab
from equipoise.peptide.sequence_cli import DEFAULT_MODEL, register_sequence
from equipoise.peptide.synth import synthesize
from equipoise.peptide.vocab import DEFAULT_VOCABULARY

TINY = ModelConfig(d_model=32, n_heads=2, dim_feedforward=32, encoder_layers=1, decoder_layers=1, max_peaks=32)


def _run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    register_sequence(parser.add_subparsers())
    args = parser.parse_args(["sequence", *argv])
    return args.handler(args)


@pytest.fixture()
def spectra(tmp_path) -> Path:
    return write_mgf(tmp_path / "in.mgf", synthesize(6, seed=31))


def test_sequence_writes_mztab_and_csv(tmp_path, spectra) -> None:
    torch.manual_seed(0)
    model = save_model(PeptideTransformer(DEFAULT_VOCABULARY, TINY), tmp_path / "m.pt")
    out = tmp_path / "res.mztab"
    assert _run([str(spectra), "--model", str(model), "--beams", "2", "--out", str(out), "--csv", "--quiet",
                 "--threads", "1"]) == 0
    psms = read_mztab(out)
    assert [p.spectrum_index for p in psms] == list(range(6))
    text = out.read_text()
    assert "ms_run[1]:index=0" in text and "beams = 2" in text
    header = out.with_suffix(".csv").read_text().splitlines()[0]
    assert header == "spectrum_index,title,sequence,score,aa_scores,precursor_error_ppm"


def test_bad_arguments_fail_before_decoding(tmp_path, spectra) -> None:
    with pytest.raises(InputError, match="precursor"):
        _run([str(spectra), "--precursor-tol", "abc", "--out", str(tmp_path / "x.mztab")])
    with pytest.raises(InputError, match="beams"):
        _run([str(spectra), "--beams", "0", "--out", str(tmp_path / "x.mztab")])
    with pytest.raises(InputError, match="model file not found"):
        _run([str(spectra), "--model", str(tmp_path / "none.pt"), "--out", str(tmp_path / "x.mztab")])
    with pytest.raises(InputError, match="output folder"):
        _run([str(spectra), "--model", str(save_model(PeptideTransformer(DEFAULT_VOCABULARY, TINY), tmp_path / "m.pt")),
              "--out", str(tmp_path / "no" / "x.mztab")])


@pytest.mark.skipif(not DEFAULT_MODEL.is_file(), reason="shipped model not built yet (docs/peptide.md, Shipped model)")
def test_shipped_model_works_out_of_the_box(tmp_path, spectra) -> None:
    out = tmp_path / "res.mztab"
    assert _run([str(spectra), "--out", str(out), "--quiet", "--threads", "1"]) == 0
    assert len(read_mztab(out)) == 6


def test_no_rescore_reports_the_best_beam(tmp_path, spectra) -> None:
    torch.manual_seed(0)
    model = save_model(PeptideTransformer(DEFAULT_VOCABULARY, TINY), tmp_path / "m.pt")
    for flag, setting in (([], "rescoring = logp 1"), (["--no-rescore"], "rescoring = off")):
        out = tmp_path / f"res{len(flag)}.mztab"
        assert _run([str(spectra), "--model", str(model), "--beams", "2", "--out", str(out), "--quiet",
                     "--threads", "1", *flag]) == 0
        assert len(read_mztab(out)) == 6 and setting in out.read_text()
