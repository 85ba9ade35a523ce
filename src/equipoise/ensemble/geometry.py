"""Backbone geometry as plain torch functions: each is a loss term and a validation metric.

Coordinates are backbones ``(..., n_res, 4, 3)`` in Å, atoms N, CA, C, O (``io.BACKBONE_ATOMS``);
functions that need only N, CA, C accept ``(..., n_res, 3, 3)`` too. A ``mask`` is either per
residue ``(..., n_res)`` or per atom ``(..., n_res, 4)`` (True = present); ``None`` means all.
Angles are radians internally; degrees appear only in :func:`geometry_summary`.

Targets: Engh & Huber (1991) Acta Cryst. A47, 392-400, backbone values with their glycine and
proline variants (the set used by PROCHECK and MolProbity; the 2001 update in International
Tables Vol. F differs by < 0.01 Å and < 1 deg for these). Losses are in sigma units and use the
natural space of each quantity: bond errors in Å, angle errors in radians with wrap
(:func:`equipoise.core.robust.angular_huber`), never cosines.

Ramachandran: :mod:`equipoise.ensemble.ramachandran`. Clashes: Bondi (1964) van der Waals radii,
a clash is an overlap of more than 0.4 Å (MolProbity's criterion, Word et al. 1999) between atoms
of residues at least 2 apart; N...O pairs (hydrogen bonds, which Probe does not count) clash
below 2.5 Å. A chain break is a CA-CA distance above 4.2 Å.
"""

from __future__ import annotations

import math
from functools import lru_cache

import torch
from torch import Tensor

from equipoise.core.robust import angle_difference, angular_huber

__all__ = ["BOND_NAMES", "ANGLE_NAMES", "ideal_geometry", "place_atom", "place_oxygens", "dihedral",
           "bond_lengths", "bond_angles", "backbone_dihedrals", "bond_loss", "angle_loss", "omega_loss",
           "ramachandran_loss", "clash_candidates", "clash_loss", "clash_count", "chain_breaks", "geometry_summary",
           "bond_valid", "angle_valid"]

#: columns of :func:`bond_lengths`: bonds of residue i (the last one links to residue i+1)
BOND_NAMES: tuple[str, ...] = ("N-CA", "CA-C", "C-O", "C-N+1")
#: columns of :func:`bond_angles`: angles at residue i (the last three reach residue i+1)
ANGLE_NAMES: tuple[str, ...] = ("N-CA-C", "CA-C-O", "CA-C-N+1", "O-C-N+1", "C-N+1-CA+1")

# Engh & Huber 1991, Table 3 (bonds, Å) and Table 4 (angles, deg): (target, sigma)
_BOND_GENERAL = ((1.458, 0.019), (1.525, 0.021), (1.231, 0.020), (1.329, 0.014))
_BOND_GLY = {0: (1.451, 0.016), 1: (1.516, 0.018)}
_BOND_PRO = {0: (1.466, 0.015)}
_BOND_TO_PRO = {3: (1.341, 0.016)}  # C(i)-N(i+1) when residue i+1 is proline
_ANGLE_GENERAL = ((111.2, 2.8), (120.8, 1.7), (116.2, 2.0), (122.7, 1.6), (121.7, 1.8))
_ANGLE_GLY = {0: (112.5, 2.9), 1: (120.8, 2.1), 2: (116.4, 2.1)}
_ANGLE_PRO = {0: (111.8, 2.5)}
_ANGLE_TO_PRO = {2: (116.9, 1.5), 3: (122.0, 1.4), 4: (122.6, 5.0)}  # residue i+1 is proline
_ANGLE_TO_GLY = {4: (120.6, 1.7)}  # C(i)-N(i+1)-CA(i+1) when residue i+1 is glycine

#: Bondi (1964) J. Phys. Chem. 68, 441 van der Waals radii (Å) of N, CA, C, O
VDW_RADII: tuple[float, ...] = (1.55, 1.70, 1.70, 1.52)
CLASH_TOLERANCE = 0.4  # Å, MolProbity's "serious clash" overlap
#: N...O pairs are hydrogen-bond donor/acceptor pairs: Probe does not count their overlap as a clash;
#: without hydrogens we count them below 2.5 Å (backbone N-H...O=C N...O distances are >= ~2.6 Å)
HBOND_N_O_MIN = 2.5
CHAIN_BREAK_CA_CA = 4.2  # Å
CIS_CUTOFF = math.radians(30.0)  # |omega| below this is a cis peptide
_OMEGA_SIGMA = math.radians(5.8)  # spread of trans omega in high-resolution structures (MolProbity)
_ANGLE_HUBER = math.radians(10.0)  # quadratic within 10 deg, linear beyond (gradient never vanishes)


def ideal_geometry(sequence: str | None, n_res: int, *, dtype: torch.dtype = torch.float64,
                   device: torch.device | str = "cpu") -> dict[str, Tensor]:
    """Engh & Huber targets and sigmas per residue: ``bond`` / ``bond_sigma`` ``(n_res, 4)`` Å and
    ``angle`` / ``angle_sigma`` ``(n_res, 5)`` radians, in the column order of ``BOND_NAMES`` and
    ``ANGLE_NAMES``. ``sequence`` (one-letter) selects glycine/proline values; ``None``: general."""
    bonds = [list(_BOND_GENERAL) for _ in range(n_res)]
    angles = [list(_ANGLE_GENERAL) for _ in range(n_res)]
    seq = sequence or "A" * n_res
    for i, aa in enumerate(seq):
        nxt = seq[i + 1] if i + 1 < n_res else ""
        for table, cond in ((_BOND_GLY, aa == "G"), (_BOND_PRO, aa == "P"), (_BOND_TO_PRO, nxt == "P")):
            if cond:
                for k, v in table.items():
                    bonds[i][k] = v
        for table, cond in ((_ANGLE_GLY, aa == "G"), (_ANGLE_PRO, aa == "P"), (_ANGLE_TO_PRO, nxt == "P"),
                            (_ANGLE_TO_GLY, nxt == "G")):
            if cond:
                for k, v in table.items():
                    angles[i][k] = v
    b = torch.tensor(bonds, dtype=dtype, device=device)
    a = torch.tensor(angles, dtype=dtype, device=device)
    return {"bond": b[..., 0], "bond_sigma": b[..., 1], "angle": torch.deg2rad(a[..., 0]),
            "angle_sigma": torch.deg2rad(a[..., 1])}


def place_atom(a: Tensor, b: Tensor, c: Tensor, bond: Tensor | float, angle: Tensor | float,
               torsion: Tensor | float) -> Tensor:
    """Position of atom d (``(..., 3)`` Å) with ``|cd| = bond`` (Å), angle b-c-d = ``angle`` and
    dihedral a-b-c-d = ``torsion`` (radians): the NeRF construction (Parsons et al. 2005,
    J. Comput. Chem. 26, 1063)."""
    bc = c - b
    bc = bc / bc.norm(dim=-1, keepdim=True)
    n = torch.linalg.cross(b - a, bc, dim=-1)
    n = n / n.norm(dim=-1, keepdim=True)
    m = torch.linalg.cross(n, bc, dim=-1)
    bond, angle, torsion = torch.broadcast_tensors(
        *(torch.as_tensor(x, dtype=a.dtype, device=a.device) for x in (bond, angle, torsion)))
    d2 = torch.stack([-bond * torch.cos(angle), bond * torch.sin(angle) * torch.cos(torsion),
                      bond * torch.sin(angle) * torch.sin(torsion)], dim=-1)
    return c + d2[..., 0:1] * bc + d2[..., 1:2] * m + d2[..., 2:3] * n


def place_oxygens(backbone: Tensor) -> Tensor:
    """Carbonyl O ``(..., n_res, 3)`` Å from N, CA, C ``(..., n_res, >=3, 3)``: in the peptide plane
    of CA(i), C(i), N(i+1), anti to N(i+1), at Engh & Huber's C=O 1.231 Å and CA-C-O 120.8 deg. The
    last residue has no N(i+1): its O gets N-CA-C-O = -40 deg (psi = 140 deg, the beta region)."""
    n, ca, c = backbone[..., 0, :], backbone[..., 1, :], backbone[..., 2, :]
    reference = torch.cat([n[..., 1:, :], n[..., -1:, :]], dim=-2)  # N(i+1); own N for the last
    torsion = torch.full(c.shape[:-1], math.pi, dtype=c.dtype, device=c.device)
    torsion[..., -1] = math.radians(-40.0)
    return place_atom(reference, ca, c, _BOND_GENERAL[2][0], math.radians(_ANGLE_GENERAL[1][0]), torsion)


def dihedral(a: Tensor, b: Tensor, c: Tensor, d: Tensor) -> Tensor:
    """Dihedral angle a-b-c-d in radians, ``(-pi, pi]``, IUPAC sign convention, from ``(..., 3)``."""
    b0, b1, b2 = a - b, c - b, d - c
    b1n = b1 / b1.norm(dim=-1, keepdim=True)
    v = b0 - (b0 * b1n).sum(-1, keepdim=True) * b1n
    w = b2 - (b2 * b1n).sum(-1, keepdim=True) * b1n
    x = (v * w).sum(-1)
    y = (torch.linalg.cross(b1n, v, dim=-1) * w).sum(-1)
    return torch.atan2(y, x)


def _angle(a: Tensor, b: Tensor, c: Tensor) -> Tensor:
    """Angle a-b-c in radians (atan2 form: exact gradient near 0 and pi)."""
    u, v = a - b, c - b
    return torch.atan2(torch.linalg.cross(u, v, dim=-1).norm(dim=-1), (u * v).sum(-1))


def _atom_mask(mask: Tensor | None, coords: Tensor) -> Tensor:
    """Atom mask ``(..., n_res, 4)`` from a residue or atom mask (None: all present)."""
    shape = coords.shape[:-1]
    if mask is None:
        return torch.ones(shape, dtype=torch.bool, device=coords.device)
    mask = mask.to(device=coords.device, dtype=torch.bool)
    if mask.shape[-1] != 4 or mask.ndim == coords.ndim - 2:
        mask = mask.unsqueeze(-1)
    return mask.expand(shape)


def bond_lengths(coords: Tensor) -> Tensor:
    """Backbone bond lengths ``(..., n_res, 4)`` Å in ``BOND_NAMES`` order (column 3 of the last
    residue is meaningless: see :func:`bond_valid`)."""
    n, ca, c, o = coords.unbind(-2)
    n_next = torch.cat([n[..., 1:, :], n[..., -1:, :]], dim=-2)
    return torch.stack([(ca - n).norm(dim=-1), (c - ca).norm(dim=-1), (o - c).norm(dim=-1),
                        (n_next - c).norm(dim=-1)], dim=-1)


def bond_valid(mask: Tensor | None, coords: Tensor) -> Tensor:
    """Which bonds of :func:`bond_lengths` exist (both atoms present, not past the chain end)."""
    m = _atom_mask(mask, coords)
    n_next = torch.cat([m[..., 1:, 0], torch.zeros_like(m[..., -1:, 0])], dim=-1)
    return torch.stack([m[..., 0] & m[..., 1], m[..., 1] & m[..., 2], m[..., 2] & m[..., 3], m[..., 2] & n_next], -1)


def bond_angles(coords: Tensor) -> Tensor:
    """Backbone bond angles ``(..., n_res, 5)`` radians in ``ANGLE_NAMES`` order (columns 2-4 of the
    last residue are meaningless: see :func:`angle_valid`)."""
    n, ca, c, o = coords.unbind(-2)
    n1 = torch.cat([n[..., 1:, :], n[..., -1:, :]], dim=-2)
    ca1 = torch.cat([ca[..., 1:, :], ca[..., -1:, :]], dim=-2)
    return torch.stack([_angle(n, ca, c), _angle(ca, c, o), _angle(ca, c, n1), _angle(o, c, n1),
                        _angle(c, n1, ca1)], dim=-1)


def angle_valid(mask: Tensor | None, coords: Tensor) -> Tensor:
    """Which angles of :func:`bond_angles` exist (all three atoms present, not past the chain end)."""
    m = _atom_mask(mask, coords)
    pad = torch.zeros_like(m[..., -1:, 0])
    n1 = torch.cat([m[..., 1:, 0], pad], dim=-1)
    ca1 = torch.cat([m[..., 1:, 1], pad], dim=-1)
    n, ca, c, o = m.unbind(-1)
    return torch.stack([n & ca & c, ca & c & o, ca & c & n1, o & c & n1, c & n1 & ca1], dim=-1)


def backbone_dihedrals(coords: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """phi ``(..., n_res-1)`` of residues 1..n-1, psi ``(..., n_res-1)`` of residues 0..n-2 and
    omega ``(..., n_res-1)`` of the peptide bonds i -> i+1 (CA-C-N-CA), radians."""
    n, ca, c = coords[..., 0, :], coords[..., 1, :], coords[..., 2, :]
    phi = dihedral(c[..., :-1, :], n[..., 1:, :], ca[..., 1:, :], c[..., 1:, :])
    psi = dihedral(n[..., :-1, :], ca[..., :-1, :], c[..., :-1, :], n[..., 1:, :])
    omega = dihedral(ca[..., :-1, :], c[..., :-1, :], n[..., 1:, :], ca[..., 1:, :])
    return phi, psi, omega


def _masked_mean(values: Tensor, valid: Tensor) -> Tensor:
    valid = valid.to(values.dtype)
    return (values * valid).sum() / valid.sum().clamp_min(1.0)


def bond_loss(coords: Tensor, mask: Tensor | None = None, sequence: str | None = None) -> Tensor:
    """Mean ``((d - d0) / sigma)^2`` over backbone bonds (dimensionless; Engh & Huber targets)."""
    ideal = ideal_geometry(sequence, coords.shape[-3], dtype=coords.dtype, device=coords.device)
    z = (bond_lengths(coords) - ideal["bond"]) / ideal["bond_sigma"]
    return _masked_mean(z.square(), bond_valid(mask, coords))


def angle_loss(coords: Tensor, mask: Tensor | None = None, sequence: str | None = None) -> Tensor:
    """Mean angular Huber of bond angles against Engh & Huber, in radians (wrapped), divided by
    sigma^2 (dimensionless). Quadratic within 10 deg, so a 5-10 deg error has gradient
    ``error / sigma^2`` (a cosine-space loss has ~ ``sin(theta) * error`` there)."""
    ideal = ideal_geometry(sequence, coords.shape[-3], dtype=coords.dtype, device=coords.device)
    loss = 2.0 * angular_huber(bond_angles(coords), ideal["angle"], _ANGLE_HUBER) / ideal["angle_sigma"].square()
    return _masked_mean(loss, angle_valid(mask, coords))


def _peptide_valid(mask: Tensor | None, coords: Tensor) -> Tensor:
    """Residue pairs (i, i+1) with N, CA, C present in both ``(..., n_res-1)``."""
    m = _atom_mask(mask, coords)[..., :3].all(-1)
    return m[..., :-1] & m[..., 1:]


def omega_loss(coords: Tensor, mask: Tensor | None = None, allow_cis: bool = False) -> Tensor:
    """Mean angular Huber of omega against 180 deg (or the nearer of 0 and 180 with ``allow_cis``),
    over sigma = 5.8 deg squared (dimensionless)."""
    omega = backbone_dihedrals(coords)[2]
    target = torch.full_like(omega, math.pi)
    if allow_cis:
        target = torch.where(omega.abs() < math.pi / 2, torch.zeros_like(omega), target)
    loss = 2.0 * angular_huber(omega, target, _ANGLE_HUBER) / _OMEGA_SIGMA ** 2
    return _masked_mean(loss, _peptide_valid(mask, coords))


def _rama_pairs(coords: Tensor, mask: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
    """phi, psi of residues 1..n-2 ``(..., n_res-2)`` and which are defined (neighbours present)."""
    phi, psi, _ = backbone_dihedrals(coords)
    m = _atom_mask(mask, coords)[..., :3].all(-1)
    valid = m[..., :-2] & m[..., 1:-1] & m[..., 2:]
    return phi[..., :-1], psi[..., 1:], valid


def ramachandran_loss(coords: Tensor, mask: Tensor | None = None) -> Tensor:
    """Mean Ramachandran energy (:func:`equipoise.ensemble.ramachandran.rama_energy`, -log density
    in nats relative to its most favoured point) over residues 1..n-2."""
    from equipoise.ensemble.ramachandran import rama_energy

    phi, psi, valid = _rama_pairs(coords, mask)
    return _masked_mean(rama_energy(phi, psi), valid)


@lru_cache(maxsize=8)
def _clash_limits(n_res: int, dtype: torch.dtype, device: torch.device) -> tuple[Tensor, Tensor]:
    """Clash distance ``r_a + r_b - 0.4`` Å (N...O: 2.5 Å) of every atom pair ``(4 n_res, 4 n_res)``
    and which pairs are judged (residues >= 2 apart); cached per size, dtype and device."""
    residue = torch.arange(n_res, device=device).repeat_interleave(4)
    far = (residue[:, None] - residue[None, :]).abs() >= 2
    radii = torch.tensor(VDW_RADII, dtype=dtype, device=device).repeat(n_res)
    limit = radii[:, None] + radii[None, :] - CLASH_TOLERANCE
    element = torch.tensor([0, 1, 1, 2], device=device).repeat(n_res)  # N, C, C, O
    n_o = ((element[:, None] == 0) & (element[None, :] == 2)) | ((element[:, None] == 2) & (element[None, :] == 0))
    return torch.where(n_o, torch.full_like(limit, HBOND_N_O_MIN), limit), far


def _clash_overlaps(coords: Tensor, mask: Tensor | None, margin: float = 0.0) -> Tensor:
    """Overlap ``r_a + r_b - 0.4 + margin - d`` (Å, clamped at 0) of every atom pair of residues
    >= 2 apart, ``(..., 4 n_res, 4 n_res)`` (each pair twice); N...O pairs: ``2.5 + margin - d``
    (hydrogen bonds)."""
    x = coords[..., :4, :]
    n_res = x.shape[-3]
    flat = x.reshape(*x.shape[:-3], n_res * 4, 3)
    present = _atom_mask(mask, x).reshape(*x.shape[:-3], n_res * 4)
    limit, far = _clash_limits(n_res, x.dtype, x.device)
    dist = torch.cdist(flat, flat)
    ok = far & present[..., :, None] & present[..., None, :]
    return torch.where(ok, (limit + margin - dist).clamp_min(0.0), torch.zeros_like(dist))


def clash_candidates(coords: Tensor, mask: Tensor | None = None, margin: float = 1.0) -> Tensor:
    """Atom pairs that clash or come within ``margin`` Å of clashing: ``(P, 3)`` int64 rows
    (model, atom a, atom b), a < b, models of the flattened leading dimensions, atoms
    ``4 * residue + (N, CA, C, O)``. For :func:`clash_loss` when atoms move little (a refinement):
    the dense all-pairs distance is computed once, not at every evaluation."""
    with torch.no_grad():
        x = coords.detach()[..., :4, :]
        dense = _clash_overlaps(x.reshape(-1, *x.shape[-3:]), None if mask is None else
                                _atom_mask(mask, x).reshape(-1, *x.shape[-3:-1]), margin)
        return torch.triu(dense > 0, diagonal=1).nonzero()


def clash_loss(coords: Tensor, mask: Tensor | None = None, pairs: Tensor | None = None,
               buffer: float = 0.0) -> Tensor:
    """Sum of squared clash overlaps (Å^2) per atom, averaged over models (zero without clashes;
    gradient ``2 * overlap`` pushes each pair apart). ``pairs``: only these atom pairs
    (:func:`clash_candidates`; the same value and gradient wherever no other pair overlaps);
    ``buffer``: Å added to every clash distance (a refinement's target stays that far outside)."""
    n_atoms = _atom_mask(mask, coords[..., :4, :]).sum().clamp_min(1)
    if pairs is None:
        overlaps = _clash_overlaps(coords, mask, buffer)
        return 0.5 * overlaps.square().sum() / n_atoms
    x = coords[..., :4, :]
    n_res = x.shape[-3]
    flat = x.reshape(-1, n_res * 4, 3)
    limit, _ = _clash_limits(n_res, x.dtype, x.device)
    model, a, b = pairs.unbind(-1)
    dist = (flat[model, a] - flat[model, b]).square().sum(-1).clamp_min(1e-12).sqrt()
    overlaps = (limit[a, b] + buffer - dist).clamp_min(0.0)
    return overlaps.square().sum() / n_atoms


def clash_count(coords: Tensor, mask: Tensor | None = None) -> Tensor:
    """Number of clashing atom pairs per model ``(...)`` (overlap > 0.4 Å, residues >= 2 apart)."""
    return ((_clash_overlaps(coords, mask) > 0).sum((-1, -2)) // 2)


def chain_breaks(coords: Tensor, mask: Tensor | None = None) -> Tensor:
    """Number of CA(i)-CA(i+1) distances above 4.2 Å per model ``(...)``."""
    ca = coords[..., 1, :]
    d = (ca[..., 1:, :] - ca[..., :-1, :]).norm(dim=-1)
    m = _atom_mask(mask, coords)[..., 1]
    return ((d > CHAIN_BREAK_CA_CA) & m[..., 1:] & m[..., :-1]).sum(-1)


def geometry_summary(coords: Tensor, mask: Tensor | None = None, sequence: str | None = None) -> dict[str, float]:
    """Validation numbers of an ensemble ``(n_models, n_res, 4, 3)``: RMS deviations from Engh & Huber
    (``bond_rmsd_A``, ``angle_rmsd_deg``), ``omega_rmsd_deg`` (trans peptides, against 180),
    ``cis_fraction``, Ramachandran ``rama_favoured``/``rama_allowed``/``rama_outliers`` (fractions),
    ``clashes`` (pairs, all models), ``clashes_per_1000_atoms``, ``chain_breaks`` (all models)."""
    from equipoise.ensemble.ramachandran import rama_categories

    with torch.no_grad():
        ideal = ideal_geometry(sequence, coords.shape[-3], dtype=coords.dtype, device=coords.device)
        bvalid = bond_valid(mask, coords)
        bond_dev = (bond_lengths(coords) - ideal["bond"])[bvalid]
        avalid = angle_valid(mask, coords)
        angle_dev = angle_difference(bond_angles(coords), ideal["angle"].expand_as(avalid))[avalid]
        omega = backbone_dihedrals(coords)[2][_peptide_valid(mask, coords)]
        cis = omega.abs() < CIS_CUTOFF
        omega_dev = angle_difference(omega[~cis], torch.full_like(omega[~cis], math.pi))
        phi, psi, rvalid = _rama_pairs(coords, mask)
        categories = rama_categories(phi[rvalid], psi[rvalid])
        clashes = int(clash_count(coords, mask).sum())
        n_atoms = int(_atom_mask(mask, coords[..., :4, :]).sum())

    def rms(x: Tensor) -> float:
        return float(x.square().mean().sqrt()) if x.numel() else float("nan")

    def share(k: int) -> float:
        return float((categories == k).to(coords.dtype).mean()) if categories.numel() else float("nan")

    return {"bond_rmsd_A": rms(bond_dev), "angle_rmsd_deg": math.degrees(rms(angle_dev)),
            "omega_rmsd_deg": math.degrees(rms(omega_dev)),
            "cis_fraction": float(cis.to(coords.dtype).mean()) if cis.numel() else float("nan"),
            "rama_favoured": share(0), "rama_allowed": share(1), "rama_outliers": share(2),
            "clashes": clashes, "clashes_per_1000_atoms": 1000.0 * clashes / max(n_atoms, 1),
            "chain_breaks": int(chain_breaks(coords, mask).sum()), "n_models": int(coords.shape[0]),
            "n_atoms": n_atoms}
