"""Monomer library: lookup order, the assembler (idempotent, patches), ligand dictionaries."""

import zipfile

import pytest

from equipoise.errors import InputError
from equipoise.xtal import monlib
from tests.xtal.shared_data import monlib_or_skip


@pytest.fixture
def sources(tmp_path):
    wheel = tmp_path / "ccp4i2-3.0.1-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr(monlib.WHEEL_BASICLIB + "mon_lib_list_basic.cif", "data_lib\n")
        zf.writestr(monlib.WHEEL_BASICLIB + "ener_lib.cif", "data_energy\n")
    mono = tmp_path / "monomers"
    for rel, text in {"a/ALA.cif": "data_comp_ALA\n", "h/HIS.cif": "f\ndata_comp_HIS\n",
                      "t/TRP.cif": "_x\nTRP CD1 NE1 sinlge 1.374 0.021\n"}.items():
        (mono / rel).parent.mkdir(parents=True, exist_ok=True)
        (mono / rel).write_text(text)
    return wheel, mono


def test_install_is_idempotent_and_patches(sources, tmp_path):
    wheel, mono = sources
    dest = monlib.install(tmp_path / "lib", wheel=wheel, monomers=mono)
    assert (dest / "list" / "mon_lib_list.cif").read_text() == "data_lib\n"
    assert (dest / "ener_lib.cif").is_file() and (dest / "a" / "ALA.cif").is_symlink()
    assert (dest / "h" / "HIS.cif").read_text().startswith("data_comp_HIS")
    assert " single " in (dest / "t" / "TRP.cif").read_text()
    stamp = (dest / monlib.MARKER).stat().st_mtime_ns
    assert monlib.install(dest, wheel=wheel, monomers=mono) == dest
    assert (dest / monlib.MARKER).stat().st_mtime_ns == stamp          # left as it was
    assert monlib.main(["install", "--dest", str(dest), "--wheel", str(wheel), "--monomers", str(mono)]) == 0


def test_install_errors_name_what_is_missing(sources, tmp_path):
    wheel, _ = sources
    with pytest.raises(InputError, match="refmac-dictionary"):
        monlib.install(tmp_path / "lib", wheel=wheel, monomers=tmp_path / "none")


def test_lookup_order(sources, tmp_path, monkeypatch):
    wheel, mono = sources
    installed = monlib.install(tmp_path / "installed", wheel=wheel, monomers=mono)
    other = monlib.install(tmp_path / "other", wheel=wheel, monomers=mono)
    monkeypatch.setenv("EQUIPOISE_MONLIB", str(installed))
    monkeypatch.delenv("CLIBD_MON", raising=False)
    assert monlib.find_monlib() == installed
    monkeypatch.setenv("CLIBD_MON", str(other))
    assert monlib.find_monlib() == other
    assert monlib.find_monlib(installed) == installed
    with pytest.raises(InputError, match="--monlib"):
        monlib.find_monlib(tmp_path)
    monkeypatch.setenv("CLIBD_MON", str(tmp_path / "nothing"))
    monkeypatch.setenv("EQUIPOISE_MONLIB", str(tmp_path / "nothing2"))
    with pytest.raises(InputError, match="tried"):
        monlib.find_monlib()


def test_ligand_dictionary_is_read_and_bad_one_named(tmp_path):
    lib_dir = monlib_or_skip()
    lib = monlib.read_monlib(["ALA"], ligands=[lib_dir / "g" / "GTS.cif"])
    assert "GTS" in lib.monomers and "ALA" in lib.monomers
    bad = tmp_path / "bad.cif"
    bad.write_text("data_x\nloop_\n_a\n")
    with pytest.raises(InputError, match="bad.cif"):
        monlib.read_monlib(["ALA"], ligands=[bad])
    with pytest.raises(InputError, match="not found"):
        monlib.read_monlib(["ALA"], ligands=[tmp_path / "none.cif"])
    broken = tmp_path / "broken.cif"
    broken.write_text("data_comp_ZZ1\nloop_\n_chem_comp_atom.comp_id\n'unterminated\n")
    with pytest.raises(InputError, match="broken.cif"):
        monlib.read_monlib(["ALA"], ligands=[broken])
