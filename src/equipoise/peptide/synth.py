"""Labelled synthetic MS/MS spectra with a noise model calibrated on real HCD spectra.

Peptides are random, never drawn from a proteome (which could leak evaluation peptides): residues
follow the natural amino-acid frequencies of UniProtKB/Swiss-Prot (release statistics), the
C-terminus is K or R (trypsin), with a missed cleavage (an internal K/R) in 15% of peptides;
lengths 6-20 with short peptides more frequent, as in tryptic digests; charge 2 or 3 (3+ more
likely for long peptides). Cysteine is always carbamidomethylated (fixed); variable modifications
at rates typical of such data: M oxidation 25% per M, N/Q deamidation 3% per residue, N-terminal
acetyl 1%, carbamyl 1%, NH3 loss 1%, carbamyl + NH3 loss 0.5%.

Fragments (``equipoise.peptide.fragments``): b and y 1+, 2+ as well for 3+ precursors, a ions and
H2O/NH3 losses, and the immonium ions and internal fragments that real HCD spectra carry
(:func:`_structured_ions`). Intensities depend on the sequence (mobile-proton picture of HCD,
Paizs & Suhai 2005; Tabb et al. 2003 for the proline effect): y stronger than b, cleavage
N-terminal to proline enhanced 4x and C-terminal to D/E 1.5x, sites near either end weaker, b1
nearly absent, with log-normal scatter. Noise model (calibrated so that
:mod:`equipoise.peptide.spectrum_stats` of the synthetic spectra, the intensity share of each ion
family included, match the 64 real annotated spectra, see docs/peptide.md): each spectrum draws a
quality; b/y ions go missing with a probability that falls with quality and with ion intensity;
noise peaks (count and summed intensity drawn per spectrum) are spread over 50 Th ... M + 50;
fragment m/z errors are Gaussian, a per-spectrum offset plus per-peak scatter (ppm); precursor
m/z errors are mostly within +-1 ppm with a tail out to -3 ... +7 ppm.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from equipoise.peptide.fragments import (SECONDARY_IONS, fragment_mz, immonium_mz, internal_fragments,
                                         padded_residue_masses)
from equipoise.peptide.io import Spectrum
from equipoise.peptide.vocab import CO_MASS, DEFAULT_VOCABULARY, Vocabulary

#: UniProtKB/Swiss-Prot amino-acid composition (%), release statistics
NATURAL_FREQUENCIES: dict[str, float] = {
    "A": 8.25, "R": 5.53, "N": 4.06, "D": 5.45, "C": 1.37, "Q": 3.93, "E": 6.75, "G": 7.07,
    "H": 2.27, "I": 5.96, "L": 9.66, "K": 5.84, "M": 2.42, "F": 3.86, "P": 4.70, "S": 6.56,
    "T": 5.34, "W": 1.08, "Y": 2.92, "V": 6.87,
}


@dataclass(frozen=True)
class SynthConfig:
    """Generation settings; defaults are the calibrated noise model (docs/peptide.md)."""

    min_length: int = 6
    max_length: int = 20
    length_decay: float = 5.0          #: p(L) ~ exp(-(L - min_length) / length_decay)
    missed_cleavage: float = 0.15
    oxidation: float = 0.25
    deamidation: float = 0.03
    n_term_rates: tuple[tuple[str, float], ...] = (("[Acetyl]-", 0.01), ("[Carbamyl]-", 0.01),
                                                   ("[Ammonia-loss]-", 0.01), ("[+25.979265]-", 0.005))
    # ion intensities (relative, before scatter)
    b_scale: float = 0.45
    proline_boost: float = 4.0
    acidic_boost: float = 1.5
    intensity_sigma: float = 0.9       #: log-normal scatter of ion intensities
    secondary_scale: float = 0.2       #: a ions and neutral losses relative to their parent ion
    # structured peaks outside the b/y ladders (0: none); see :func:`_structured_ions`
    immonium_scale: float = 0.06       #: immonium ion of each residue type, relative to the strongest b/y 1+ ion
    internal_scale: float = 0.3        #: internal fragments, relative to the mean b/y 1+ ion
    internal_keep: float = 0.2         #: fraction of the internal segments (2..internal_max_length residues) seen
    internal_max_length: int = 5
    doubly_scale: float = 0.5          #: 2+ fragments of 3+ precursors relative to 1+
    # missing fragments: per-spectrum quality q ~ Beta(a, b); ion kept with
    # p = min(1, keep_scale * q ** (1 / w ** keep_intensity_power)), w its intensity / the strongest
    quality_a: float = 9.0
    quality_b: float = 6.0
    keep_intensity_power: float = 0.3
    keep_scale: float = 1.4
    # noise peaks
    noise_peaks_mean: float = 20.0
    noise_share_a: float = 9.0         #: Beta(a, b) of the intensity share of non-b/y-1+ peaks
    noise_share_b: float = 2.8
    noise_sigma: float = 1.0
    # mass errors (ppm)
    fragment_offset_ppm: float = -2.0
    fragment_offset_sd_ppm: float = 1.5
    fragment_sd_ppm: float = 4.3
    precursor_mean_ppm: float = -0.3
    precursor_sd_ppm: float = 0.7
    precursor_tail: float = 0.1
    precursor_tail_ppm: tuple[float, float] = (-3.0, 7.0)
_LETTERS = np.array(list(NATURAL_FREQUENCIES))
#: residue probabilities away from the C-terminus (no K/R: trypsin would have cut there)
_INNER_P = np.array([0.0 if aa in "KR" else f for aa, f in NATURAL_FREQUENCIES.items()])
_INNER_P /= _INNER_P.sum()
ION_TYPES = ("b", "y", *SECONDARY_IONS)
CHUNK = 512  #: peptides whose fragment ladders are computed in one batched call


def random_peptide(rng: np.random.Generator, config: SynthConfig = SynthConfig()) -> list[str]:
    """One random tryptic-like peptide as vocabulary tokens (N- to C-terminus)."""
    lengths = np.arange(config.min_length, config.max_length + 1)
    p_len = np.exp(-(lengths - config.min_length) / config.length_decay)
    length = int(rng.choice(lengths, p=p_len / p_len.sum()))
    seq = list(rng.choice(_LETTERS, size=length - 1, p=_INNER_P))
    seq.append("K" if rng.random() < 0.55 else "R")
    if rng.random() < config.missed_cleavage and length > 3:
        seq[int(rng.integers(1, length - 1))] = "K" if rng.random() < 0.5 else "R"
    tokens = []
    for aa in seq:
        if aa == "C":
            tokens.append("C[Carbamidomethyl]")
        elif aa == "M" and rng.random() < config.oxidation:
            tokens.append("M[Oxidation]")
        elif aa in "NQ" and rng.random() < config.deamidation:
            tokens.append(f"{aa}[Deamidated]")
        else:
            tokens.append(str(aa))
    u, acc = rng.random(), 0.0
    for token, rate in config.n_term_rates:
        acc += rate
        if u < acc:
            return [token, *tokens]
    return tokens


def _site_intensities(rng: np.random.Generator, residues: list[str], config: SynthConfig
                      ) -> tuple[np.ndarray, np.ndarray]:
    """Relative (b, y) 1+ intensities at the L-1 cleavage sites."""
    n = len(residues) - 1
    k = np.arange(1, n + 1)
    position = np.sin(np.pi * k / (n + 1)) ** 0.7  # weak ends
    site = np.ones(n)
    after = np.array([r[0] for r in residues[1:]])
    before = np.array([r[0] for r in residues[:-1]])
    site[after == "P"] *= config.proline_boost
    site[np.isin(before, ["D", "E"])] *= config.acidic_boost
    scatter = rng.lognormal(0.0, config.intensity_sigma, size=(2, n))
    y = site * position * scatter[1]
    b = config.b_scale * site * position * scatter[0]
    b[0] *= 0.05          # b1 ions are rarely seen
    if n > 1:
        y[-1] *= 0.6     # y_{L-1} (loses only the first residue) weak as well
    return b, y


def _ladders(token_lists: list[list[str]], vocabulary: Vocabulary) -> np.ndarray:
    """(n, 2 * len(ION_TYPES), max_L - 1) fragment m/z at charges 1 and 2, one batched call."""
    masses, mask = padded_residue_masses([vocabulary.residue_masses(t) for t in token_lists])
    return fragment_mz(masses, mask, ion_types=ION_TYPES, charges=(1, 2))[0].numpy()


def _structured_ions(rng: np.random.Generator, tokens: list[str], b: np.ndarray, y: np.ndarray,
                     config: SynthConfig, vocabulary: Vocabulary) -> tuple[np.ndarray, np.ndarray]:
    """(m/z, intensity) of the peaks of HCD spectra that are neither b/y ions nor their a ions and
    losses: immonium ions (residue mass - CO + H+, one per residue type) and internal fragments
    (b-type: residues i..j-1 away from both termini, sum + H+, and their -CO (a-type) forms),
    which in real spectra carry about 5% of the intensity each (docs/peptide.md, "Synthetic
    data"). Internal fragments starting at proline are stronger (the proline effect, Tabb et al.
    2003). Papayannopoulos 1995 (Mass Spectrom Rev 14:49) describes both ion families."""
    residues = [t for t in tokens if not t.endswith("-")]
    masses = np.array([vocabulary.token_masses[vocabulary.index(t)] for t in residues])
    peak = max(float(np.max(b, initial=0.0)), float(np.max(y, initial=0.0)), 1e-12)
    mean = float(np.concatenate([b, y]).mean()) if b.size else peak
    mz, intensity = [], []
    if config.immonium_scale > 0:
        immonium = immonium_mz(masses)
        mz.append(immonium)
        intensity.append(config.immonium_scale * peak * rng.lognormal(0.0, 0.8, size=immonium.size))
    if config.internal_scale > 0 and masses.size >= 4:
        starts, ion = internal_fragments(masses, config.internal_max_length)
        seen = rng.random(starts.size) < config.internal_keep
        starts, ion = starts[seen], ion[seen]
        strength = config.internal_scale * mean * rng.lognormal(0.0, 0.8, size=ion.size)
        strength *= np.where(np.array([residues[i][0] for i in starts]) == "P", 3.0, 1.0) if starts.size else 1.0
        for shift, scale in ((0.0, 1.0), (-CO_MASS, 0.4)):
            mz.append(ion + shift)
            intensity.append(scale * strength)
    if not mz:
        return np.zeros(0), np.zeros(0)
    return np.concatenate(mz), np.concatenate(intensity)


def synthesize_spectrum(rng: np.random.Generator, tokens: list[str], charge: int, index: int = 0,
                        config: SynthConfig = SynthConfig(), vocabulary: Vocabulary = DEFAULT_VOCABULARY,
                        ladder: np.ndarray | None = None) -> Spectrum:
    """One noisy spectrum of ``tokens`` at precursor ``charge``; ``ladder`` is this peptide's row
    of :func:`_ladders` when already computed."""
    residues = [t for t in tokens if not t.endswith("-")]
    if ladder is None:
        ladder = _ladders([tokens], vocabulary)[0]
    n_rows = len(ION_TYPES) * (2 if charge >= 3 else 1)
    charges = (1, 2) if charge >= 3 else (1,)
    mz_all = ladder[:n_rows, : len(residues) - 1]  # (n_types * n_charges, L-1)
    b, y = _site_intensities(rng, residues, config)
    n = b.size
    base = np.zeros(mz_all.shape)
    for zi in range(len(charges)):
        scale = 1.0 if zi == 0 else config.doubly_scale * rng.lognormal(0.0, 0.5, size=n)
        row = zi * len(ION_TYPES)
        base[row + 0], base[row + 1] = b * scale, y * scale
        for j, ion in enumerate(ION_TYPES[2:], 2):
            parent = b if ion[0] in "ab" else y
            base[row + j] = config.secondary_scale * parent * scale * rng.lognormal(0.0, 0.8, size=n)
    # missing ions: a weak ion in a poor spectrum is most likely lost
    quality = rng.beta(config.quality_a, config.quality_b)
    rel = base / base[:2].max()
    keep_p = quality ** (1.0 / np.clip(rel, 1e-3, None) ** config.keep_intensity_power)
    keep = rng.random(base.shape) < np.clip(keep_p * config.keep_scale, 0.0, 1.0)
    neutral = vocabulary.neutral_mass(tokens)
    keep &= (mz_all > 50.0) & (mz_all < neutral + 50.0)
    ion_mz, ion_int = mz_all[keep], base[keep]
    extra_mz, extra_int = _structured_ions(rng, tokens, b, y, config, vocabulary)
    inside = (extra_mz > 50.0) & (extra_mz < neutral + 50.0)
    ion_mz, ion_int = np.concatenate([ion_mz, extra_mz[inside]]), np.concatenate([ion_int, extra_int[inside]])
    offset = rng.normal(config.fragment_offset_ppm, config.fragment_offset_sd_ppm)
    ion_mz = ion_mz * (1 + 1e-6 * rng.normal(offset, config.fragment_sd_ppm, size=ion_mz.size))
    # noise peaks carrying a drawn share of the intensity outside the b/y 1+ ions
    by1 = base[:2][keep[:2]].sum()
    share = rng.beta(config.noise_share_a, config.noise_share_b)
    n_noise = int(rng.poisson(config.noise_peaks_mean * (0.6 + 0.8 * rng.random())))
    noise_mz = rng.uniform(50.0, neutral + 50.0, size=n_noise)
    noise_int = rng.lognormal(0.0, config.noise_sigma, size=n_noise)
    other = ion_int.sum() - by1
    if n_noise:
        target_other = by1 * share / max(1e-9, 1.0 - share) if by1 > 0 else 1.0
        noise_int *= max(target_other - other, 0.05 * target_other) / noise_int.sum()
    mz = np.concatenate([ion_mz, noise_mz])
    intensity = np.concatenate([ion_int, noise_int])
    order = np.argsort(mz)
    mz, intensity = mz[order], intensity[order]
    if intensity.size:
        intensity = intensity / intensity.max()
    if rng.random() < config.precursor_tail:
        prec_ppm = rng.uniform(*config.precursor_tail_ppm)
    else:
        prec_ppm = rng.normal(config.precursor_mean_ppm, config.precursor_sd_ppm)
    precursor_mz = vocabulary.precursor_mz(tokens, charge) * (1 + 1e-6 * prec_ppm)
    return Spectrum(index, precursor_mz, charge, mz, intensity, title=f"synth:{index}",
                    scan=str(index + 1), tokens=list(tokens))


def synthesize(n: int, seed: int, config: SynthConfig = SynthConfig(),
               vocabulary: Vocabulary = DEFAULT_VOCABULARY, progress=None) -> list[Spectrum]:
    """``n`` labelled spectra from ``seed`` (same seed, same spectra). ``progress`` is called with
    the number of spectra done so far (every 1000, and at ``n``) when given."""
    rng = np.random.default_rng(seed)
    out: list[Spectrum] = []
    for first in range(0, n, CHUNK):
        peptides = [random_peptide(rng, config) for _ in range(min(CHUNK, n - first))]
        ladders = _ladders(peptides, vocabulary)
        for k, tokens in enumerate(peptides):
            i = first + k
            length = sum(1 for t in tokens if not t.endswith("-"))
            p3 = 0.15 + 0.6 * (length - config.min_length) / max(1, config.max_length - config.min_length)
            charge = 3 if rng.random() < p3 else 2
            out.append(synthesize_spectrum(rng, tokens, charge, i, config, vocabulary, ladders[k]))
            if progress is not None and ((i + 1) % 1000 == 0 or i + 1 == n):
                progress(i + 1)
    return out
