"""mzTab 1.0 and CSV output of PSMs, and the mzTab reader used by ``evaluate``.

The mzTab file is laid out as Casanovo writes it (Noble-Lab/casanovo ``casanovo/data/ms_io.py``,
``MztabWriter``; HUPO-PSI mzTab 1.0.0 specification): a metadata section with version, software
and its settings, fixed/variable modifications and the run location; then one PSM row per
spectrum, ``spectra_ref`` = ``ms_run[1]:index=K`` with K the 0-based position in the input file,
the ProForma sequence, the peptide score in ``search_engine_score[1]`` and per-residue scores in
``opt_ms_run[1]_aa_scores``. A spectrum without a prediction gets a row with sequence ``null``.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from equipoise import __version__
from equipoise.errors import InputError
from equipoise.peptide.psm import PSM
from equipoise.peptide.vocab import DEFAULT_VOCABULARY, Vocabulary

SOFTWARE = f"[MS, MS:1003281, equipoise, {__version__}]"
PSH_COLUMNS = ("sequence", "PSM_ID", "accession", "unique", "database", "database_version",
               "search_engine", "search_engine_score[1]", "modifications", "retention_time", "charge",
               "exp_mass_to_charge", "calc_mass_to_charge", "spectra_ref", "pre", "post", "start",
               "end", "opt_ms_run[1]_aa_scores")
CSV_COLUMNS = ("spectrum_index", "title", "sequence", "score", "aa_scores", "precursor_error_ppm")

#: modifications of the vocabulary as mzTab CV terms (Unimod accessions), with sites
_FIXED_MODS = (("[UNIMOD, UNIMOD:4, Carbamidomethyl, ]", "C"),)
_VARIABLE_MODS = (("[UNIMOD, UNIMOD:35, Oxidation, ]", "M"), ("[UNIMOD, UNIMOD:7, Deamidated, ]", "N"),
                  ("[UNIMOD, UNIMOD:7, Deamidated, ]", "Q"), ("[UNIMOD, UNIMOD:1, Acetyl, ]", "N-term"),
                  ("[UNIMOD, UNIMOD:5, Carbamyl, ]", "N-term"),
                  ("[UNIMOD, UNIMOD:385, Ammonia-loss, ]", "N-term"))


def _fmt(value: float | None) -> str:
    return "null" if value is None or not math.isfinite(value) else repr(float(value))


def write_mztab(path: str | Path, psms: Sequence[PSM], *, ms_run: str | Path,
                config: Mapping[str, Any] | None = None, description: str | None = None) -> Path:
    """Write ``psms`` (one per spectrum) to an mzTab 1.0 file; ``config`` items become
    ``software[1]-setting[i]`` lines. Returns the path. Raises InputError if not writable."""
    path = Path(path)
    meta: list[tuple[str, str]] = [
        ("mzTab-version", "1.0.0"), ("mzTab-mode", "Summary"), ("mzTab-type", "Identification"),
        ("description", description or f"equipoise de novo identification file {path.stem}"),
        ("ms_run[1]-location", Path(ms_run).resolve().as_uri()),
        ("psm_search_engine_score[1]", "[MS, MS:1001143, search engine specific score for PSMs, ]"),
        ("software[1]", SOFTWARE),
    ]
    for i, (term, site) in enumerate(_FIXED_MODS, 1):
        meta += [(f"fixed_mod[{i}]", term), (f"fixed_mod[{i}]-site", site)]
    for i, (term, site) in enumerate(_VARIABLE_MODS, 1):
        meta += [(f"variable_mod[{i}]", term), (f"variable_mod[{i}]-site", site)]
    for i, (key, value) in enumerate((config or {}).items(), 1):
        meta.append((f"software[1]-setting[{i}]", f"{key} = {value}"))
    lines = ["\t".join(("MTD", k, v)) for k, v in meta]
    lines.append("\t".join(("PSH", *PSH_COLUMNS)))
    for psm_id, psm in enumerate(sorted(psms, key=lambda p: p.spectrum_index), 1):
        row = [psm.sequence or "null", str(psm_id), "null", "null", "null", "null", SOFTWARE,
               _fmt(psm.score), "null", _fmt(psm.retention_time_s), str(psm.charge), _fmt(psm.exp_mz),
               _fmt(psm.calc_mz), f"ms_run[1]:index={psm.spectrum_index}", "null", "null", "null",
               "null", ",".join(f"{s:.5f}" for s in psm.aa_scores) or "null"]
        lines.append("\t".join(("PSM", *row)))
    try:
        path.write_text("\n".join(lines) + "\n")
    except OSError as exc:
        raise InputError(f"cannot write the mzTab file: {exc.strerror}", path=path) from None
    return path


def write_csv(path: str | Path, psms: Sequence[PSM]) -> Path:
    """Write ``spectrum_index,title,sequence,score,aa_scores,precursor_error_ppm`` rows."""
    path = Path(path)
    try:
        with path.open("w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(CSV_COLUMNS)
            for psm in sorted(psms, key=lambda p: p.spectrum_index):
                err = psm.precursor_error_ppm
                writer.writerow([psm.spectrum_index, psm.title, psm.sequence, f"{psm.score:.6g}",
                                 ";".join(f"{s:.5f}" for s in psm.aa_scores),
                                 "" if err is None else f"{err:.3f}"])
    except OSError as exc:
        raise InputError(f"cannot write the CSV file: {exc.strerror}", path=path) from None
    return path


def _float_or_none(text: str, path: Path, line: int, column: str) -> float | None:
    if text in ("null", ""):
        return None
    try:
        return float(text)
    except ValueError:
        raise InputError(f"expected a number, got {text!r}", path=path, line=line, field=column) from None


def read_mztab(path: str | Path, vocabulary: Vocabulary = DEFAULT_VOCABULARY) -> list[PSM]:
    """PSMs of an mzTab file (ours or Casanovo's), in file order. ``spectra_ref`` must be
    ``ms_run[N]:index=K``; ``sequence`` ProForma (or Casanovo's mass-delta notation)."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise InputError(f"cannot read the mzTab file: {exc.strerror}", path=path) from None
    header: list[str] | None = None
    psms: list[PSM] = []
    for lineno, line in enumerate(text.splitlines(), 1):
        cells = line.rstrip("\n").split("\t")
        if cells[0] == "PSH":
            header = cells[1:]
            missing = {"sequence", "search_engine_score[1]", "charge", "exp_mass_to_charge",
                       "spectra_ref"} - set(header)
            if missing:
                raise InputError(f"PSH line lacks columns {sorted(missing)}", path=path, line=lineno)
        elif cells[0] == "PSM":
            if header is None:
                raise InputError("PSM row before the PSH header line", path=path, line=lineno)
            if len(cells) - 1 != len(header):
                raise InputError(f"{len(cells) - 1} cells, the PSH line has {len(header)}", path=path, line=lineno)
            row = dict(zip(header, cells[1:]))
            ref = row["spectra_ref"]
            if ":index=" not in ref:
                raise InputError(f"spectra_ref {ref!r} is not ms_run[N]:index=K", path=path, line=lineno,
                                 field="spectra_ref")
            index = int(ref.rsplit("=", 1)[1])
            seq = row["sequence"]
            tokens = [] if seq in ("null", "") else vocabulary.tokenize(seq, where=f"{path}:{lineno}")
            score = _float_or_none(row["search_engine_score[1]"], path, lineno, "search_engine_score[1]")
            aa_col = next((c for c in header if c.endswith("aa_scores")), None)
            aa_text = row.get(aa_col, "null") if aa_col else "null"
            aa = [float(s) for s in aa_text.split(",")] if aa_text not in ("null", "") else []
            if len(aa) != len(tokens):
                aa = [score or 0.0] * len(tokens)
            charge = _float_or_none(row["charge"], path, lineno, "charge")
            exp_mz = _float_or_none(row["exp_mass_to_charge"], path, lineno, "exp_mass_to_charge")
            psms.append(PSM(index, tokens, -math.inf if score is None else score, aa,
                            int(charge or 0), float(exp_mz or math.nan),
                            retention_time_s=_float_or_none(row.get("retention_time", "null"), path, lineno,
                                                            "retention_time"),
                            calc_mz=_float_or_none(row.get("calc_mass_to_charge", "null"), path, lineno,
                                                   "calc_mass_to_charge"),
                            vocabulary=vocabulary))
    if header is None:
        raise InputError("no PSH header line: not an mzTab PSM section", path=path)
    return psms
