"""eval.objective: how a sweep's scores combine into the one number a search or a best cell is chosen by."""

import pytest

from sweeper.search.objective import parse_objective


def test_objectives_parse_with_weights():
    assert parse_objective("dino+clip_t") == [(1.0, "dino"), (1.0, "clip_t")]
    assert parse_objective("0.5*dino + 2*clip_i") == [(0.5, "dino"), (2.0, "clip_i")]
    with pytest.raises(Exception, match=r"eval\.objective"):
        parse_objective("dino+beauty")
