"""The wire layer's fuzz properties in every test run (hypothesis), and the finding the
coverage-guided fuzzer made, kept as a regression test. `scripts/fuzz` runs the same
target under atheris (coverage-guided); see the README for its figures."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from udfd.errors import FrameError
from udfd.protocol.framing import FrameDecoder, encode_frame

sys.path.insert(0, str(Path(__file__).resolve().parent / "fuzz"))
import protocol_target

CORPUS = Path(__file__).resolve().parent / "fuzz" / "corpus"
SEEDS = sorted(p.read_bytes() for p in CORPUS.iterdir())


@settings(max_examples=400, deadline=None)
@given(
    data=st.one_of(
        st.binary(max_size=600),
        st.lists(st.sampled_from(SEEDS), max_size=6).map(b"".join),
        st.tuples(st.sampled_from(SEEDS), st.binary(max_size=40)).map(lambda t: t[0] + t[1]),
    ),
    splits=st.lists(st.integers(1, 64), max_size=8),
    limit=st.integers(1, 4096),
)
def test_any_bytes_in_any_split_decode_the_same_and_fail_only_cleanly(
    data: bytes, splits: list[int], limit: int
) -> None:
    protocol_target.check(data, splits, limit)


def test_every_seed_passes_the_properties() -> None:
    assert len(SEEDS) >= 10
    for seed in SEEDS:
        protocol_target.check(seed, [1, 3, 7], 4096)


def test_a_short_frame_over_a_small_limit_is_refused() -> None:
    # found by scripts/fuzz: with max_message_size under 128, a frame with a one-byte
    # length prefix was never checked against the limit
    decoder = FrameDecoder(16)
    with pytest.raises(FrameError, match="message of 40 bytes announced, over the limit of 16"):
        decoder.feed(encode_frame(b"x" * 40))
