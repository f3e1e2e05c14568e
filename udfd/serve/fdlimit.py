"""The file-descriptor budget: raise the soft limit, and say when the limits cannot fit.

Every connection costs a descriptor in a worker (and briefly one in the
supervisor). With the common soft limit of 1,024, about a thousand idle
connections to one function used to fill the table, after which no function
could accept anything. ``max_connections`` bounds each function; this raises the
soft limit to the hard one (an unprivileged process may) and warns when the
functions' limits together, plus a reserve for udfd's own files, still exceed it.
"""

from __future__ import annotations

import logging
import resource
from collections.abc import Iterable

log = logging.getLogger("udfd.serve.fdlimit")

#: descriptors kept for udfd itself: sockets, channels, logs, the status file, imports
RESERVE = 128
#: never ask for more than this, even where the hard limit is "unlimited"
CEILING = 1 << 20


def raise_fd_limit(max_connections: Iterable[int]) -> int:
    """Raise RLIMIT_NOFILE's soft limit as far as allowed; returns the soft limit now."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = CEILING if hard == resource.RLIM_INFINITY else min(hard, CEILING)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
            log.debug("file descriptor limit raised from %d to %d", soft, wanted)
            soft = wanted
        except (ValueError, OSError) as exc:
            log.warning("could not raise the file descriptor limit from %d: %s", soft, exc)
    needed = sum(max_connections) + RESERVE
    if soft != resource.RLIM_INFINITY and needed > soft:
        log.warning(
            "the functions' max_connections add up to %d, plus %d for udfd itself, but the "
            "file descriptor limit is %d: a flood on one function could still starve the "
            "others; lower max_connections or raise LimitNOFILE/ulimit -n",
            needed - RESERVE,
            RESERVE,
            soft,
        )
    return int(soft)
