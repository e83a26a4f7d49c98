"""Paper 1's reading of specialization (CKA between the feature sets of two classes), beside
rtk's own, on synthetic features with known answers."""

from __future__ import annotations

import pytest
import torch

import rtk
from rtk.similarity import LinearCKA, cross_class_specialization, specialization


def _labels(classes: int, per: int) -> torch.Tensor:
    return torch.arange(classes).repeat_interleave(per)


def test_rotated_copies_are_not_specialized_and_independent_classes_are():
    """Layer 'shared': every class's examples are an orthogonal rotation of the same point set
    (CKA 1 between classes: no specialization). Layer 'distinct': independent Gaussian sets per
    class (linear CKA near 0: fully specialized)."""
    g = torch.Generator().manual_seed(0)
    classes, per, dim = 4, 40, 12
    base = torch.randn(per, dim, generator=g, dtype=torch.float64)
    rots = [torch.linalg.qr(torch.randn(dim, dim, generator=g, dtype=torch.float64))[0] for _ in range(classes)]
    shared = torch.cat([base @ r for r in rots])
    distinct = torch.randn(classes * per, dim, generator=g, dtype=torch.float64)
    labels = _labels(classes, per)
    feats = {"shared": shared, "distinct": distinct}
    df, pairs = cross_class_specialization(LinearCKA(), feats, labels, model="m")
    by = df.set_index("layer")
    assert by.loc["shared", "cross_class_similarity"] == pytest.approx(1.0, abs=1e-9)
    assert by.loc["shared", "cross_class_specialization"] == pytest.approx(0.0, abs=1e-9)
    assert by.loc["distinct", "cross_class_specialization"] > 0.6
    assert len(pairs) == 2 * classes * (classes - 1) // 2 and set(pairs["layer"]) == {"shared", "distinct"}
    assert (df["per_class"] == per).all()


def test_where_the_two_definitions_disagree():
    """Two classes whose examples are rotated copies of each other, far apart in space: rtk's
    cosine-based specialization sees well-separated classes; CKA across classes sees identical
    geometry (paper 1's reading: not specialized)."""
    g = torch.Generator().manual_seed(1)
    per, dim = 50, 8
    pts = torch.randn(per, dim, generator=g, dtype=torch.float64) * 0.1
    rot = torch.linalg.qr(torch.randn(dim, dim, generator=g, dtype=torch.float64))[0]
    offset = torch.zeros(dim, dtype=torch.float64)
    offset[0] = 5.0
    x = torch.cat([pts + offset, pts @ rot - offset])
    labels = _labels(2, per)
    ours, _ = specialization(LinearCKA(), {"l": x}, labels, model="m")
    paper, _ = cross_class_specialization(LinearCKA(), {"l": x}, labels, model="m")
    assert ours["specialization"].iloc[0] > 1.0  # within ~ +1, between ~ -1
    assert paper["cross_class_specialization"].iloc[0] == pytest.approx(0.0, abs=1e-9)


def test_too_few_examples_is_a_clear_error():
    x = torch.randn(10, 3)
    with pytest.raises(rtk.RtkError, match="4 examples of every class"):
        cross_class_specialization(LinearCKA(), {"l": x}, torch.tensor([0] * 7 + [1] * 3), model="m")
    with pytest.raises(rtk.RtkError, match="two classes"):
        cross_class_specialization(LinearCKA(), {"l": x}, torch.zeros(10, dtype=torch.long), model="m")
