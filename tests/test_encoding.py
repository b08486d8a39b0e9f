import numpy as np
import pytest
from pymatgen.core import Lattice, Structure

from crystalgan_jax.core import encoding
from crystalgan_jax.materials.io import StructureFileError


def _assert_same(a: Structure, b: Structure):
    assert [s.specie.symbol for s in a] == [s.specie.symbol for s in b]
    np.testing.assert_allclose(a.lattice.matrix, b.lattice.matrix, atol=1e-12)
    np.testing.assert_allclose(a.cart_coords, b.cart_coords, atol=1e-12)


@pytest.mark.parametrize("fractional", [False, True])
def test_round_trip_all_reference_structures(reference_domains, fractional):
    structures = [s for d in reference_domains for s in d.structures]
    layout = encoding.Layout.fit("Pd", "Ni", structures)
    assert layout.rows == (18, 6, 6)  # per-species padding taken from the data
    batch = encoding.encode_batch(structures, layout, fractional=fractional)
    assert batch.lattice.shape == (70, 3, 3) and batch.positions[0].shape == (70, 18, 3)
    back = encoding.decode_batch(batch, layout)
    assert len(back) == 70
    for original, decoded in zip(structures, back):
        _assert_same(original, decoded)
        assert original.composition == decoded.composition


def test_origin_atom_is_kept_by_the_mask(reference_domains):
    pdh, _ = reference_domains
    s = pdh.structures[0]  # its single H sits at the origin
    layout = encoding.Layout.fit("Pd", "Ni", [s])
    c = encoding.encode(s, layout)
    assert c.masks[0][0] == 1 and not np.any(c.positions[0][0])
    assert encoding.decode(c, layout).composition["H"] == 1


def test_domain_placeholder_block(reference_domains):
    pdh, nih = reference_domains
    layout = encoding.Layout.fit("Pd", "Ni", pdh.structures + nih.structures)
    a = encoding.encode_batch(pdh.structures, layout)
    b = encoding.encode_batch(nih.structures, layout)
    assert not a.masks[encoding.B_BLOCK].any() and a.masks[encoding.A_BLOCK].any()
    assert not b.masks[encoding.A_BLOCK].any() and b.masks[encoding.B_BLOCK].any()


def test_paper_view_round_trip(reference_domains):
    structures = reference_domains[0].structures
    layout = encoding.Layout.fit("Pd", "Ni", structures)
    batch = encoding.encode_batch(structures, layout)
    tensor, masks = encoding.to_paper_view(batch, 18)
    assert tensor.shape == (35, 4, 18, 3) and masks.shape == (35, 3, 18)
    np.testing.assert_array_equal(tensor[:, 0, :3], batch.lattice)
    assert not tensor[:, 0, 3:].any()
    again = encoding.from_paper_view(tensor, masks, layout)
    for x, y in zip(encoding.decode_batch(again, layout), structures):
        _assert_same(x, y)


def test_feature_transfer_blocks():
    layout = encoding.Layout("Pd", "Ni", 2, 2, 2)
    lat = Lattice.cubic(4.0)
    ah = encoding.encode(Structure(lat, ["H", "Pd"], [[0, 0, 0], [0.5, 0.5, 0.5]]), layout)
    bh = encoding.encode(Structure(lat, ["H", "Ni", "Ni"],
                                   [[0.1, 0, 0], [0.5, 0, 0], [0, 0.5, 0]]), layout)
    mixed = encoding.replace_block(ah, encoding.B_BLOCK, bh)
    assert encoding.decode(mixed, layout).composition.as_dict() == {"H": 1, "Pd": 1, "Ni": 2}
    emptied = encoding.empty_block(mixed, encoding.A_BLOCK)
    assert encoding.decode(emptied, layout).composition.as_dict() == {"H": 1, "Ni": 2}


def test_too_many_atoms_names_the_source():
    layout = encoding.Layout("Pd", "Ni", 1, 1, 1)
    s = Structure(Lattice.cubic(4.0), ["H", "H", "Pd"], [[0, 0, 0], [0.5, 0, 0], [0, 0.5, 0]])
    with pytest.raises(StructureFileError, match=r"some/POSCAR: 2 H atoms .* 1 rows"):
        encoding.encode(s, layout, source="some/POSCAR")


def test_foreign_element_names_the_source():
    layout = encoding.Layout("Pd", "Ni", 2, 2, 2)
    s = Structure(Lattice.cubic(4.0), ["H", "Cu"], [[0, 0, 0], [0.5, 0, 0]])
    with pytest.raises(StructureFileError, match=r"x.vasp: holds Cu"):
        encoding.encode(s, layout, source="x.vasp")


def test_fractional_cartesian_conversions_agree_with_encoding(reference_domains):
    structures = reference_domains[1].structures[:8]
    layout = encoding.Layout.fit("Pd", "Ni", structures)
    cart = encoding.encode_batch(structures, layout)
    frac = encoding.encode_batch(structures, layout, fractional=True)
    converted = encoding.to_fractional(cart)
    assert converted.fractional
    for a, b, m in zip(converted.positions, frac.positions, frac.masks):
        np.testing.assert_allclose(a[m > 0], b[m > 0], atol=1e-12)
    back = encoding.to_cartesian(converted)
    for a, b in zip(back.positions, cart.positions):
        np.testing.assert_allclose(a, b, atol=1e-12)
