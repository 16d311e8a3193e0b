"""The ZipAR oracle (tools/train/oracle.py): its visibility is the training pass's (nextset.py,
itself checked against a KV-cache decode that follows Schedule.swift), raster with the oracle
redraws the bank's scenes, and a one-object bank gives one object in raster order.

    python3 -m pytest -q tools/tests/test_oracle.py
"""

import os
import sys

import numpy as np
import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "train"))

import oracle  # noqa: E402

nextset = pytest.importorskip("nextset")


@pytest.mark.parametrize("drawn", [False, True])
@pytest.mark.parametrize("g,window", [(5, 1), (5, 2), (6, 3), (6, 4), (6, 6)])
def test_visibility_is_the_cells_a_zipar_query_sees(g, window, drawn):
    vis, _ = oracle.visibility(g, window, drawn)
    nvis, src = nextset.layout(g, g, window, drawn)
    N = g * g
    last = np.arange(g - 1) * g + g - 1
    for q in range(1, N):
        # The query predicting cell q sits at input position q-1; the cells whose real tokens it sees
        # are its visible inputs (a proxy carries a cell that is visible at its own slot) and refreshes.
        seen = {int(src[j]) for j in np.nonzero(nvis[q - 1, :N - 1])[0]}
        seen |= {int(last[i]) for i in np.nonzero(nvis[q - 1, N - 1:])[0]}
        assert seen == set(np.nonzero(vis[q])[0].tolist()), (q, window)
    assert not vis[0].any()


def test_oracle_in_raster_order_redraws_bank_scenes():
    rng = np.random.default_rng(0)
    bank = oracle.occupancy_bank(300, 1, seed=3)
    rows = {tuple(b) for b in bank}
    for _ in range(5):
        x, left = oracle.sample(bank, 16, rng)
        assert not left and tuple(x) in rows  # raster: the exact chain rule of the bank's distribution
    assert oracle.evaluate(bank, 1, [], 5, 0)[0] == ("raster", 0.0, 0.0)


def test_components_counts_four_connected_groups():
    g = np.zeros((4, 4), bool)
    g[0, 0] = g[1, 1] = True  # diagonal only: two components
    g[3, 1:4] = True
    assert oracle.components(g.ravel(), 4) == 3
    assert oracle.components(np.zeros(16, bool), 4) == 0


def test_cli_rejects_bad_windows(capsys):
    with pytest.raises(SystemExit) as e:
        oracle.main(["--windows", "8,x"])
    assert e.value.code == 2 and "--windows" in capsys.readouterr().err
