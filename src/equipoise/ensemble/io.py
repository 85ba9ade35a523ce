"""Backbone ensembles in and out: multi-model PDB/mmCIF through gemmi, MD trajectories through MDAnalysis.

An :class:`Ensemble` holds one chain's backbone N, CA, C, O over every model as a float64 tensor
of shape ``(n_models, n_res, 4, 3)`` in Å, with a boolean mask ``(n_models, n_res, 4)`` that is
False where an atom is missing (its coordinates are then 0 and must not be used).

Mask policy (:func:`read_ensemble`): a missing O is masked (it is implied by the peptide plane and
:func:`equipoise.ensemble.geometry.place_oxygens` rebuilds it); a missing N, CA or C is an
``InputError`` naming the file, model and residue unless ``allow_missing_backbone=True``, in which
case it is masked too. Residues that are not amino acids (waters, ligands) are skipped. Every
model must carry the same residues (numbers and names) in the chosen chain.
"""

from __future__ import annotations

import gzip
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from equipoise.errors import InputError

__all__ = ["BACKBONE_ATOMS", "Ensemble", "read_ensemble", "read_trajectory", "write_ensemble",
           "three_letter", "one_letter"]

#: atom order along the third axis of ``Ensemble.coords``
BACKBONE_ATOMS: tuple[str, ...] = ("N", "CA", "C", "O")

_THREE_TO_ONE = {
    "ALA": "A", "ARG": "R", "ASN": "N", "ASP": "D", "CYS": "C", "GLN": "Q", "GLU": "E", "GLY": "G",
    "HIS": "H", "ILE": "I", "LEU": "L", "LYS": "K", "MET": "M", "PHE": "F", "PRO": "P", "SER": "S",
    "THR": "T", "TRP": "W", "TYR": "Y", "VAL": "V",
}
_ONE_TO_THREE = {one: three for three, one in _THREE_TO_ONE.items()}
#: protonation-state names of MD force fields -> PDB names (CHARMM: HSD/HSE/HSP; AMBER: HID/HIE/HIP,
#: CYX/CYM, ASH, GLH, LYN); gemmi does not know them as amino acids, so a PDB written with them
#: would read back with those residues missing
_FORCE_FIELD_NAMES = {"HSD": "HIS", "HSE": "HIS", "HSP": "HIS", "HID": "HIS", "HIE": "HIS", "HIP": "HIS",
                      "CYX": "CYS", "CYM": "CYS", "ASH": "ASP", "GLH": "GLU", "LYN": "LYS"}


def one_letter(residue_name: str) -> str:
    """One-letter code of a residue name (modified residues through gemmi's table; ``X`` if unknown)."""
    if residue_name in _THREE_TO_ONE:
        return _THREE_TO_ONE[residue_name]
    import gemmi

    info = gemmi.find_tabulated_residue(residue_name)
    code = info.one_letter_code.upper() if info is not None else " "
    return code if code.strip() and code != "?" else "X"


def three_letter(code: str) -> str:
    """Three-letter residue name of a one-letter code (``UNK`` for anything non-standard)."""
    return _ONE_TO_THREE.get(code.upper(), "UNK")


@dataclass
class Ensemble:
    """One chain's backbone over an ensemble of models.

    coords: ``(n_models, n_res, 4, 3)`` float64, Å, atoms in ``BACKBONE_ATOMS`` order (N, CA, C, O).
    mask: ``(n_models, n_res, 4)`` bool, False where the atom is missing (coordinates 0 there).
    sequence: one-letter codes, ``len == n_res``.
    residue_names: three-letter names as read (``MSE`` stays ``MSE``; the sequence says ``M``).
    residue_numbers: author residue numbers (with insertion code, e.g. ``"52A"``), as strings.
    chain_id: the chain read. source: the file (or topology + trajectory) it came from.
    model_numbers: the models' numbers in the file (NMR files may start at 0) or frame indices.
    """

    coords: Tensor
    mask: Tensor
    sequence: str
    residue_names: tuple[str, ...] = field(default=())
    residue_numbers: tuple[str, ...] = field(default=())
    chain_id: str = "A"
    source: str = ""
    model_numbers: tuple[int, ...] = field(default=())

    def __post_init__(self) -> None:
        n_models, n_res = self.coords.shape[:2]
        if not self.residue_names:
            self.residue_names = tuple(three_letter(c) for c in self.sequence)
        if not self.residue_numbers:
            self.residue_numbers = tuple(str(i + 1) for i in range(n_res))
        if not self.model_numbers:
            self.model_numbers = tuple(range(1, n_models + 1))
        if self.coords.ndim != 4 or self.coords.shape[2:] != (4, 3) or self.mask.shape != (n_models, n_res, 4):
            raise InputError(f"coords must be (n_models, n_res, 4, 3) with mask (n_models, n_res, 4); got "
                             f"{tuple(self.coords.shape)} and {tuple(self.mask.shape)}", path=self.source or None)
        if len(self.sequence) != n_res or len(self.residue_numbers) != n_res or len(self.residue_names) != n_res:
            raise InputError(f"sequence, residue names and numbers must have n_res = {n_res} entries",
                             path=self.source or None)
        if len(self.model_numbers) != n_models:
            raise InputError(f"model_numbers must have n_models = {n_models} entries", path=self.source or None)

    @classmethod
    def from_backbone(cls, coords: Tensor, sequence: str, **kwargs) -> "Ensemble":
        """An ensemble from N, CA, C coordinates ``(n_models, n_res, 3, 3)`` Å: O is placed in the
        peptide plane (:func:`~equipoise.ensemble.geometry.place_oxygens`)."""
        from equipoise.ensemble.geometry import place_oxygens

        full = torch.cat([coords, place_oxygens(coords)[:, :, None]], dim=2)
        mask = torch.ones(full.shape[:3], dtype=torch.bool, device=coords.device)
        return cls(full, mask, sequence, **kwargs)

    @property
    def n_models(self) -> int:
        return int(self.coords.shape[0])

    @property
    def n_res(self) -> int:
        return int(self.coords.shape[1])

    def select(self, models: Tensor | list[int]) -> "Ensemble":
        """A new ensemble holding only the given model indices (0-based positions, not file numbers)."""
        index = torch.as_tensor(models, dtype=torch.long, device=self.coords.device)
        numbers = tuple(self.model_numbers[int(i)] for i in index.tolist())
        return Ensemble(self.coords[index], self.mask[index], self.sequence, self.residue_names,
                        self.residue_numbers, self.chain_id, self.source, numbers)

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> "Ensemble":
        """Copy on another device and/or float dtype (the mask stays bool)."""
        return Ensemble(self.coords.to(device=device, dtype=dtype), self.mask.to(device=device), self.sequence,
                        self.residue_names, self.residue_numbers, self.chain_id, self.source, self.model_numbers)


def _residue_id(residue) -> str:
    return f"{residue.seqid.num}{residue.seqid.icode.strip()}"


def _pick_chain(model, chain: str | None, path: Path):
    names = [c.name for c in model]
    if not names:
        raise InputError("the first model has no chains", path=path)
    if chain is None:
        protein = [c for c in model if any(_is_amino_acid(r.name) for r in c)]
        if not protein:
            raise InputError("no chain with amino-acid residues", path=path)
        return protein[0].name
    if chain not in names:
        raise InputError(f"chain {chain!r} not found; chains in the first model: {', '.join(names)}",
                         path=path, field="--chain")
    return chain


def _is_amino_acid(name: str) -> bool:
    import gemmi

    if name in _THREE_TO_ONE:
        return True
    info = gemmi.find_tabulated_residue(name)
    return info is not None and info.is_amino_acid()


def read_ensemble(path: str | Path, *, chain: str | None = None, allow_missing_backbone: bool = False,
                  min_models: int = 2, dtype: torch.dtype = torch.float64,
                  device: torch.device | str = "cpu") -> Ensemble:
    """Read one chain's backbone from every model of a PDB or mmCIF file (``.gz`` too).

    ``chain``: chain name (default: the first chain with amino acids). Raises ``InputError`` naming
    the file and the model/residue for: fewer than ``min_models`` models, a chain missing from a
    model or differing in length or residues between models, a missing N/CA/C (unless
    ``allow_missing_backbone``), and a residue with no backbone atom at all. Alternate locations:
    the first conformer of each atom. Returns float64 coordinates in Å on ``device``.
    """
    import gemmi

    path = Path(path)
    if not path.is_file():
        raise InputError("file not found", path=path)
    try:
        structure = gemmi.read_structure(str(path))
    except (RuntimeError, ValueError) as exc:
        raise InputError(f"not a readable PDB/mmCIF file ({exc})", path=path) from exc
    if len(structure) < min_models:
        raise InputError(f"an ensemble needs at least {min_models} models, found {len(structure)}", path=path)
    chain = _pick_chain(structure[0], chain, path)
    reference: list[tuple[str, str]] | None = None
    frames: list[list[list[list[float]]]] = []
    masks: list[list[list[bool]]] = []
    model_numbers: list[int] = []
    for model in structure:
        number = int(model.num)
        found = model.find_chain(chain)
        if found is None:
            raise InputError(f"model {number} has no chain {chain!r}", path=path, field="--chain")
        residues = [r for r in found if _is_amino_acid(r.name)]
        ids = [(_residue_id(r), r.name) for r in residues]
        if reference is None:
            if not ids:
                raise InputError(f"chain {chain!r} has no amino-acid residues", path=path)
            reference = ids
        elif len(ids) != len(reference):
            raise InputError(f"model {number} chain {chain!r} has {len(ids)} residues, the first model "
                             f"{len(reference)}: chains must have the same length in every model", path=path)
        elif ids != reference:
            bad = next(i for i, (a, b) in enumerate(zip(ids, reference)) if a != b)
            raise InputError(f"model {number} residue {ids[bad][1]} {ids[bad][0]} differs from the first model's "
                             f"{reference[bad][1]} {reference[bad][0]} at position {bad + 1}", path=path)
        xyz_model, mask_model = [], []
        for residue in residues:
            xyz_res, mask_res = [], []
            for name in BACKBONE_ATOMS:
                atom = residue.find_atom(name, "*")
                if atom is None:
                    if name != "O" and not allow_missing_backbone:
                        raise InputError(f"model {number} residue {residue.name} {_residue_id(residue)} has no "
                                         f"{name} atom (only O may be missing unless allow_missing_backbone)",
                                         path=path)
                    xyz_res.append([0.0, 0.0, 0.0])
                    mask_res.append(False)
                else:
                    xyz_res.append([atom.pos.x, atom.pos.y, atom.pos.z])
                    mask_res.append(True)
            if not any(mask_res):
                raise InputError(f"model {number} residue {residue.name} {_residue_id(residue)} has no backbone atom",
                                 path=path)
            xyz_model.append(xyz_res)
            mask_model.append(mask_res)
        frames.append(xyz_model)
        masks.append(mask_model)
        model_numbers.append(number)
    assert reference is not None
    coords = torch.tensor(frames, dtype=dtype, device=device)
    if not torch.isfinite(coords).all():
        raise InputError("non-finite coordinates", path=path)
    names = tuple(name for _, name in reference)
    return Ensemble(coords, torch.tensor(masks, dtype=torch.bool, device=device),
                    "".join(one_letter(n) for n in names), names, tuple(i for i, _ in reference), chain,
                    str(path), tuple(model_numbers))


def read_trajectory(topology: str | Path, trajectory: str | Path, *, selection: str = "protein",
                    stride: int = 1, dtype: torch.dtype = torch.float64,
                    device: torch.device | str = "cpu") -> Ensemble:
    """Read the backbone of an MD trajectory (DCD, XTC, ... with a PSF/PDB/GRO topology) through MDAnalysis.

    ``selection``: an MDAnalysis selection for one chain/segment (default ``"protein"``; several
    segments must be narrowed, e.g. ``"protein and segid A"``). ``stride``: every n-th frame.
    The chain name is the segment id when it has one character, else "A" (PDB's limit); force-field
    residue names (HSD, HIE, CYX, ...) become PDB names (HIS, CYS, ...).
    MDAnalysis is an optional extra (``pip install 'equipoise[trajectories]'``).
    Missing O atoms are masked; a residue without N, CA or C is an ``InputError``.
    """
    try:
        import MDAnalysis as mda
    except ImportError as exc:
        raise InputError("reading MD trajectories needs MDAnalysis: pip install 'equipoise[trajectories]'",
                         path=trajectory) from exc
    topology, trajectory = Path(topology), Path(trajectory)
    for p in (topology, trajectory):
        if not p.is_file():
            raise InputError("file not found", path=p)
    if stride < 1:
        raise InputError(f"stride must be >= 1, got {stride}", field="stride")
    try:
        universe = mda.Universe(str(topology), str(trajectory))
        atoms = universe.select_atoms(selection)
    except Exception as exc:  # MDAnalysis raises many types for unreadable input
        raise InputError(f"MDAnalysis could not read the topology/trajectory ({exc})", path=trajectory) from exc
    residues = atoms.residues
    if len(residues) == 0:
        raise InputError(f"selection {selection!r} holds no residues", path=topology, field="selection")
    if len(set(residues.segids)) > 1:
        raise InputError(f"selection {selection!r} spans segments {sorted(set(residues.segids))}; choose one "
                         "(e.g. 'protein and segid A')", path=topology, field="selection")
    index = torch.full((len(residues), 4), -1, dtype=torch.long)
    for i, residue in enumerate(residues):
        for j, name in enumerate(BACKBONE_ATOMS):
            found = residue.atoms.select_atoms(f"name {name}" if name != "O" else "name O OT1 O1")
            if len(found) == 0 and name != "O":
                raise InputError(f"residue {residue.resname} {residue.resid} has no {name} atom", path=topology)
            if len(found):
                index[i, j] = int(found[0].index)
    frames = []
    flat = index.clamp(min=0).reshape(-1).numpy()
    for ts in universe.trajectory[::stride]:
        frames.append(torch.as_tensor(ts.positions[flat], dtype=dtype))
    if len(frames) < 2:
        raise InputError(f"an ensemble needs at least 2 frames, found {len(frames)}", path=trajectory)
    coords = torch.stack(frames).reshape(len(frames), len(residues), 4, 3).to(device)
    mask = (index >= 0).to(device).expand(len(frames), -1, -1).clone()
    coords = coords * mask[..., None]
    names = tuple(_FORCE_FIELD_NAMES.get(str(n), str(n)) for n in residues.resnames)
    segid = str(residues.segids[0])
    chain = segid if len(segid) == 1 else "A"  # a PDB chain name has one character; segids (4AKE) often more
    return Ensemble(coords, mask, "".join(one_letter(n) for n in names), names,
                    tuple(str(r) for r in residues.resids), chain,
                    f"{topology}+{trajectory}", tuple(range(0, len(frames) * stride, stride)))


def write_ensemble(ensemble: Ensemble, path: str | Path) -> Path:
    """Write a multi-model PDB or mmCIF file (by suffix: ``.pdb``, ``.cif``, optionally ``.gz``).

    Residue names come from ``ensemble.residue_names`` (the real sequence), numbers from
    ``residue_numbers``; models are numbered 1..n. An O whose mask entry is False is placed in the
    peptide plane (:func:`~equipoise.ensemble.geometry.place_oxygens`); a missing N, CA or C is
    left out. Raises ``InputError`` for non-finite coordinates or an unwritable path.
    """
    import gemmi

    from equipoise.ensemble.geometry import place_oxygens

    path = Path(path)
    coords = ensemble.coords.detach().to(dtype=torch.float64, device="cpu")
    mask = ensemble.mask.detach().to("cpu")
    if not torch.isfinite(coords[mask]).all():
        raise InputError("non-finite coordinates: refusing to write", path=path)
    suffixes = [s.lower() for s in path.suffixes]
    gz = bool(suffixes) and suffixes[-1] == ".gz"
    kind = suffixes[-2] if gz and len(suffixes) > 1 else (suffixes[-1] if suffixes else "")
    if kind not in (".pdb", ".cif", ".mmcif", ".ent"):
        raise InputError("output must end in .pdb, .ent, .cif or .mmcif (optionally .gz)", path=path)
    coords = coords.clone()
    coords[..., 3, :] = torch.where(mask[..., 3:4], coords[..., 3, :], place_oxygens(coords[:, :, :3]))
    mask = mask.clone()
    mask[..., 3] = mask[..., :3].all(-1) | mask[..., 3]
    structure = gemmi.Structure()
    structure.name = path.name.split(".")[0]
    elements = {name: gemmi.Element(name[0]) for name in BACKBONE_ATOMS}
    xyz = coords.tolist()
    for m in range(ensemble.n_models):
        model = gemmi.Model(m + 1)
        chain = gemmi.Chain(ensemble.chain_id or "A")
        for r in range(ensemble.n_res):
            residue = gemmi.Residue()
            residue.name = ensemble.residue_names[r]
            number = ensemble.residue_numbers[r]
            icode = number[-1] if number[-1].isalpha() else " "
            residue.seqid = gemmi.SeqId(int(number.rstrip(icode).strip() if icode != " " else number), icode)
            residue.entity_type = gemmi.EntityType.Polymer
            for a, name in enumerate(BACKBONE_ATOMS):
                if not mask[m, r, a]:
                    continue
                atom = gemmi.Atom()
                atom.name = name
                atom.element = elements[name]
                atom.pos = gemmi.Position(*xyz[m][r][a])
                atom.occ = 1.0
                residue.add_atom(atom)
            chain.add_residue(residue)
        model.add_chain(chain)
        structure.add_model(model)
    structure.setup_entities()
    text = structure.make_pdb_string() if kind in (".pdb", ".ent") else structure.make_mmcif_document().as_string()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        if gz:
            with gzip.open(tmp, "wt", encoding="utf-8") as handle:
                handle.write(text)
        else:
            tmp.write_text(text, encoding="utf-8")
        tmp.replace(path)
    except OSError as exc:
        raise InputError(f"cannot write ({exc.strerror})", path=path) from exc
    return path
