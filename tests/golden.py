"""The ADSL golden data of issue 5, from a user's router (measurement adsl_connection,
tag host=router1): 17 polls in, the 6 changes state_change must report out.

One copy, imported by every test that replays it (in-process, through the daemon, and
through kdrive), so the expectation can never differ between them.
"""

from __future__ import annotations

ADSL: list[tuple[int, str]] = [
    (1514979051065000000, "SHOWTIME"),
    (1514979141070000000, "TRAINING"),
    (1514979231065000000, "SHOWTIME"),
    (1514979321060000000, "SHOWTIME"),
    (1514979411055000000, "SHOWTIME"),
    (1514979501050000000, "SHOWTIME"),
    (1514979591045000000, "SHOWTIME"),
    (1514979681040000000, "TRAINING"),
    (1514979771035000000, "TRAINING"),
    (1514979861030000000, "TRAINING"),
    (1514979951025000000, "TRAINING"),
    (1514980041020000000, "SHOWTIME"),
    (1514980131015000000, "SHOWTIME"),
    (1514980221010000000, "TRAINING"),
    (1514980311005000000, "TRAINING"),
    (1514980401000000000, "TRAINING"),
    (1514980491000000000, "TRAINING"),
]

ADSL_CHANGES: list[tuple[int, str]] = [
    (1514979051065000000, "SHOWTIME"),
    (1514979141070000000, "TRAINING"),
    (1514979231065000000, "SHOWTIME"),
    (1514979681040000000, "TRAINING"),
    (1514980041020000000, "SHOWTIME"),
    (1514980221010000000, "TRAINING"),
]
