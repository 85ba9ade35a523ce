"""Reading MS/MS spectra (MGF, mzML) through pyteomics, and Casanovo's peak preprocessing.

:func:`read_spectra` returns :class:`Spectrum` objects with precursor m/z and charge, peaks,
title, scan and retention time, and the ``SEQ=`` annotation tokenized with the vocabulary.
Malformed spectra (missing PEPMASS or CHARGE, no peaks, non-numeric peaks, unknown modification
in ``SEQ=``) raise :class:`~equipoise.errors.InputError` naming the file, the line, the spectrum
(0-based index and title) and the field; with ``skip_bad=True`` they are skipped with a warning
and listed in :attr:`SpectraFile.skipped`. Spectrum indices always count every spectrum of the
file, skipped or not, so that ``spectra_ref`` ``index=K`` points at the right block.

:func:`preprocess` follows Casanovo (Noble-Lab/casanovo ``casanovo/denovo/dataloaders.py`` /
depthcharge ``depthcharge/data/preprocessing.py``, via spectrum_utils): keep m/z in
[50, 2500], remove peaks within 2 Da of the precursor m/z (at every charge up to the precursor's),
drop peaks below 1% of the base peak, keep the 150 most intense, square-root the intensities and
scale them to unit Euclidean norm.
"""

from __future__ import annotations

import io
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from equipoise.errors import InputError
from equipoise.peptide.vocab import DEFAULT_VOCABULARY, PROTON_MASS, Vocabulary


@dataclass
class Spectrum:
    """One MS/MS spectrum.

    mz, intensity: (n_peaks,) float64 arrays (Th, arbitrary units), sorted by m/z.
    index: 0-based position in the file. tokens: the ``SEQ=`` peptide as vocabulary tokens, or
    None when unlabelled.
    """

    index: int
    precursor_mz: float
    charge: int
    mz: np.ndarray
    intensity: np.ndarray
    title: str = ""
    scan: str = ""
    retention_time_s: float | None = None
    tokens: list[str] | None = None

    @property
    def neutral_mass(self) -> float:
        """Neutral precursor mass M (Da) implied by m/z and charge."""
        return self.precursor_mz * self.charge - self.charge * PROTON_MASS


@dataclass
class SkippedSpectrum:
    """A spectrum left out under ``skip_bad``: its index, title and the reason."""

    index: int
    title: str
    reason: str


@dataclass
class SpectraFile:
    """The readable spectra of one file and the ones skipped."""

    path: Path
    spectra: list[Spectrum]
    skipped: list[SkippedSpectrum] = field(default_factory=list)


def _where(path: Path, index: int, title: str) -> str:
    return f"spectrum {index}" + (f" (TITLE={title})" if title else "")


def _mgf_blocks(path: Path, text: str) -> tuple[str, list[tuple[int, str]]]:
    """(global header, [(first line number, block text)]) of an MGF file."""
    blocks: list[tuple[int, str]] = []
    header: list[str] = []
    current: list[str] | None = None
    start = 0
    for lineno, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if stripped.upper() == "BEGIN IONS":
            if current is not None:
                raise InputError("BEGIN IONS inside an open spectrum (missing END IONS)", path=path, line=lineno)
            current, start = [line], lineno
        elif stripped.upper() == "END IONS":
            if current is None:
                raise InputError("END IONS without BEGIN IONS", path=path, line=lineno)
            current.append(line)
            blocks.append((start, "\n".join(current) + "\n"))
            current = None
        elif current is not None:
            current.append(line)
        elif stripped and "=" in stripped:
            header.append(line)
    if current is not None:
        raise InputError("last spectrum has no END IONS", path=path, line=start)
    return "\n".join(header) + ("\n" if header else ""), blocks


def _parse_mgf_block(path: Path, index: int, lineno: int, header: str, block: str,
                     vocabulary: Vocabulary) -> Spectrum:
    from pyteomics import mgf
    from pyteomics.auxiliary import PyteomicsError

    title = next((ln.split("=", 1)[1].strip() for ln in block.splitlines() if ln.upper().startswith("TITLE=")), "")
    where = _where(path, index, title)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            entries = list(mgf.MGF(io.StringIO(header + block), convert_arrays=1, read_charges=True,
                                   use_header=True))
    except PyteomicsError as exc:
        bad = str(exc).split("Line:", 1)[-1].strip().strip("'")
        raise InputError(f"{where}: peak line {bad!r} is not two numbers 'm/z intensity'",
                         path=path, line=lineno, field="peaks") from None
    (entry,) = entries
    params = entry["params"]
    if "pepmass" not in params or params["pepmass"][0] is None:
        raise InputError(f"{where}: no PEPMASS (precursor m/z)", path=path, line=lineno, field="PEPMASS")
    precursor_mz = float(params["pepmass"][0])
    charges = params.get("charge")
    if not charges:
        raise InputError(f"{where}: no CHARGE (precursor charge, e.g. CHARGE=2+)", path=path, line=lineno,
                         field="CHARGE")
    charge = int(charges[0])
    mz = np.asarray(entry["m/z array"], dtype=np.float64)
    intensity = np.asarray(entry["intensity array"], dtype=np.float64)
    seq = params.get("seq")
    tokens = None if seq is None else vocabulary.tokenize(str(seq), where=f"{path}: {where}")
    rt = params.get("rtinseconds")
    return _checked(Spectrum(index, precursor_mz, charge, mz, intensity, title=title,
                             scan=str(params.get("scans", "")),
                             retention_time_s=None if rt is None else float(rt), tokens=tokens),
                    path, lineno)


def _checked(spectrum: Spectrum, path: Path, line: int | None) -> Spectrum:
    """Raise InputError on values no spectrum can have; sort peaks by m/z."""
    where = _where(path, spectrum.index, spectrum.title)
    if not (math.isfinite(spectrum.precursor_mz) and spectrum.precursor_mz > 0):
        raise InputError(f"{where}: precursor m/z {spectrum.precursor_mz} is not a positive number",
                         path=path, line=line, field="PEPMASS")
    if spectrum.charge < 1:
        raise InputError(f"{where}: precursor charge {spectrum.charge} (expected a positive charge)",
                         path=path, line=line, field="CHARGE")
    if spectrum.mz.size == 0:
        raise InputError(f"{where}: no peaks", path=path, line=line, field="peaks")
    if not (np.isfinite(spectrum.mz).all() and np.isfinite(spectrum.intensity).all()):
        raise InputError(f"{where}: non-finite peak m/z or intensity", path=path, line=line, field="peaks")
    order = np.argsort(spectrum.mz, kind="stable")
    spectrum.mz, spectrum.intensity = spectrum.mz[order], spectrum.intensity[order]
    return spectrum


def _read_mgf(path: Path, skip_bad: bool, vocabulary: Vocabulary) -> SpectraFile:
    header, blocks = _mgf_blocks(path, path.read_text(errors="replace"))
    result = SpectraFile(path, [])
    for index, (lineno, block) in enumerate(blocks):
        try:
            result.spectra.append(_parse_mgf_block(path, index, lineno, header, block, vocabulary))
        except InputError as exc:
            if not skip_bad:
                raise
            title = next((ln.split("=", 1)[1].strip() for ln in block.splitlines()
                          if ln.upper().startswith("TITLE=")), "")
            result.skipped.append(SkippedSpectrum(index, title, str(exc)))
            warnings.warn(f"skipped: {exc}", stacklevel=3)
    return result


def _read_mzml(path: Path, skip_bad: bool) -> SpectraFile:
    from pyteomics import mzml

    result = SpectraFile(path, [])
    with mzml.MzML(str(path), decode_binary=True) as reader:
        ms2 = (s for s in reader if s.get("ms level", 2) >= 2)
        for index, entry in enumerate(ms2):
            title = str(entry.get("id", ""))
            try:
                result.spectra.append(_mzml_spectrum(path, index, title, entry))
            except InputError as exc:
                if not skip_bad:
                    raise
                result.skipped.append(SkippedSpectrum(index, title, str(exc)))
                warnings.warn(f"skipped: {exc}", stacklevel=3)
    return result


def _mzml_spectrum(path: Path, index: int, title: str, entry: dict) -> Spectrum:
    where = _where(path, index, title)
    try:
        ion = entry["precursorList"]["precursor"][0]["selectedIonList"]["selectedIon"][0]
    except (KeyError, IndexError):
        raise InputError(f"{where}: no precursor selected ion", path=path, field="precursorList") from None
    if "selected ion m/z" not in ion:
        raise InputError(f"{where}: no selected ion m/z", path=path, field="selected ion m/z")
    if "charge state" not in ion:
        raise InputError(f"{where}: no precursor charge state", path=path, field="charge state")
    rt = None
    scans = entry.get("scanList", {}).get("scan", [])
    if scans and "scan start time" in scans[0]:
        value = scans[0]["scan start time"]
        unit = getattr(value, "unit_info", "minute")
        rt = float(value) * (60.0 if unit in ("minute", None) else 1.0)
    scan = title.rsplit("scan=", 1)[-1] if "scan=" in title else ""
    return _checked(Spectrum(index, float(ion["selected ion m/z"]), int(ion["charge state"]),
                             np.asarray(entry.get("m/z array", []), dtype=np.float64),
                             np.asarray(entry.get("intensity array", []), dtype=np.float64),
                             title=title, scan=scan, retention_time_s=rt), path, None)


def read_spectra(path: str | Path, *, skip_bad: bool = False,
                 vocabulary: Vocabulary = DEFAULT_VOCABULARY) -> SpectraFile:
    """Read an MGF or mzML file (by extension).

    With ``skip_bad`` a malformed spectrum is skipped with a warning and listed in
    ``SpectraFile.skipped``; otherwise the first one raises InputError (file, line, spectrum,
    field). A file with no readable spectrum always raises.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError("no such spectrum file", path=path)
    suffix = path.suffix.lower()
    if suffix == ".mgf":
        result = _read_mgf(path, skip_bad, vocabulary)
    elif suffix == ".mzml":
        result = _read_mzml(path, skip_bad)
    else:
        raise InputError(f"unknown spectrum format {suffix!r} (expected .mgf or .mzML)", path=path)
    if not result.spectra:
        reason = f" ({len(result.skipped)} skipped as malformed)" if result.skipped else ""
        raise InputError(f"no readable spectra{reason}", path=path)
    return result


@dataclass(frozen=True)
class Preprocessing:
    """Casanovo's peak filter settings (its config defaults)."""

    min_mz: float = 50.0
    max_mz: float = 2500.0
    remove_precursor_tol_da: float = 2.0
    min_intensity: float = 0.01
    n_peaks: int = 150


def preprocess(spectrum: Spectrum, settings: Preprocessing = Preprocessing()) -> tuple[np.ndarray, np.ndarray]:
    """Casanovo's preprocessing; returns (mz, intensity) float64 arrays (n <= n_peaks,) sorted by
    m/z, intensities square-rooted and scaled to unit norm. A spectrum left with no peak becomes
    the single dummy peak (0, 1), as Casanovo does."""
    mz, intensity = spectrum.mz, spectrum.intensity
    keep = (mz >= settings.min_mz) & (mz <= settings.max_mz)
    for z in range(1, spectrum.charge + 1):
        precursor = (spectrum.neutral_mass + z * PROTON_MASS) / z
        keep &= np.abs(mz - precursor) > settings.remove_precursor_tol_da
    mz, intensity = mz[keep], intensity[keep]
    if mz.size:
        keep = intensity >= settings.min_intensity * intensity.max()
        mz, intensity = mz[keep], intensity[keep]
    if mz.size > settings.n_peaks:
        top = np.sort(np.argsort(-intensity, kind="stable")[: settings.n_peaks])
        mz, intensity = mz[top], intensity[top]
    if mz.size == 0:
        return np.zeros(1), np.ones(1)
    intensity = np.sqrt(intensity)
    return mz, intensity / np.linalg.norm(intensity)


def write_mgf(path: str | Path, spectra: list[Spectrum], vocabulary: Vocabulary = DEFAULT_VOCABULARY) -> Path:
    """Write spectra (with ``SEQ=`` when labelled) as MGF. Raises InputError if not writable."""
    path = Path(path)
    lines: list[str] = []
    for s in spectra:
        lines += ["BEGIN IONS", f"TITLE={s.title or s.index}", f"PEPMASS={s.precursor_mz:.6f}",
                  f"CHARGE={s.charge}+"]
        if s.retention_time_s is not None:
            lines.append(f"RTINSECONDS={s.retention_time_s:.3f}")
        if s.scan:
            lines.append(f"SCANS={s.scan}")
        if s.tokens is not None:
            lines.append(f"SEQ={vocabulary.to_proforma(s.tokens)}")
        lines += [f"{m:.5f} {i:.4g}" for m, i in zip(s.mz, s.intensity)]
        lines.append("END IONS")
    try:
        path.write_text("\n".join(lines) + "\n")
    except OSError as exc:
        raise InputError(f"cannot write the MGF file: {exc.strerror}", path=path) from None
    return path
