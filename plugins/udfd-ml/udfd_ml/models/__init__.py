"""Model files for the analytics handlers: safe reading, loading, and sharing per worker."""
