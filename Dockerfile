# udfd: one container serving many Kapacitor UDFs, each on a unix socket in a volume
# that the Kapacitor container mounts too.
#
#   docker build -t udfd .
#   docker run -v udfd-sockets:/run/udfd -v ./udfd.toml:/etc/udfd/udfd.toml:ro \
#       -e UDFD_CONFIG=/etc/udfd/udfd.toml udfd
#
# UDFD_CONFIG (not --config) so that the HEALTHCHECK's `udfd check` reads the same
# file. Without it udfd serves every installed handler (the embedded default). Every
# setting can also come from UDFD_* variables (UDFD_WORKERS=2, UDFD_LOG_FORMAT=json...).

FROM python:3.11-slim-bookworm AS build
WORKDIR /src
# only what the install reads, so an edit elsewhere keeps the layer cache
COPY pyproject.toml README.md ./
COPY udfd ./udfd
COPY plugins ./plugins
COPY scripts/install ./scripts/install
# the same install step ./scripts/serve runs (scripts/bootstrap.sh), not editable here
RUN scripts/install /opt/udfd

FROM python:3.11-slim-bookworm
# the venv's interpreter is the base image's /usr/local/bin/python3.11: same base, same path
COPY --from=build /opt/udfd /opt/udfd
RUN useradd --system --uid 10001 --user-group --no-create-home --shell /usr/sbin/nologin udfd \
    && mkdir -p /run/udfd /var/lib/udfd /etc/udfd \
    && chown udfd:udfd /run/udfd /var/lib/udfd
ENV PATH=/opt/udfd/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    UDFD_SOCKET_DIR=/run/udfd \
    UDFD_STATE_DIR=/var/lib/udfd \
    UDFD_SOCKET_MODE=0666
# 0666: the socket volume is the access boundary; only containers that mount it reach
# the sockets, whatever user Kapacitor's image runs as
VOLUME ["/run/udfd", "/var/lib/udfd"]
USER 10001:10001
# the probe Kapacitor's start-up is: Info on every socket, and no handler failed or loading
HEALTHCHECK --interval=10s --timeout=10s --start-period=20s --retries=3 \
    CMD ["udfd", "check", "--quiet"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["udfd"]
CMD ["serve"]
