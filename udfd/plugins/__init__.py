"""Finding and loading handlers: entry points, imports, fallback Info, legacy support.

Loading is isolated: whatever a plugin does at import time fails only its own
function. Nothing here serves sockets.
"""
