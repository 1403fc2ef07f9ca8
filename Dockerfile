# SmartPBX edge node: SIP B2BUA + RTP relay. Only pbx_edge: no Ray, no model code (the AI layer is separate).
#
#   docker build -t smartpbx/edge:0.1.0 .
#   docker run --network host -v "$PWD/edge.yaml:/etc/smartpbx/edge.yaml:ro" smartpbx/edge:0.1.0
#
# Ports: SIP 5060/udp+tcp, admin API 8080 (/health, /ready), Prometheus metrics 9090, and the RTP/RTCP
# range media.port_start..port_end over UDP (20000-39999 in config/edge.yaml; cluster/edge uses
# 12000-29999). The RTP range is deliberately not EXPOSEd: `docker run -P` would start one userland
# proxy per port and NAT would hide the addresses written in SDP. Run the edge with --network host
# (or publish the exact range and set media.advertised_address to the host's address).
# Stopping: SIGTERM drains live calls for shutdown.drain_timeout (30 s), so use `docker stop -t 45`.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# --- builder: the venv with the project, and the native relay library compiled with gcc ----------
FROM ${PYTHON_IMAGE} AS builder

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

# Debian package versions are not pinned: the slim base is pinned by tag and the archive drops old
# versions, so a pin would only break rebuilds. gcc and libc6-dev compile relay.c and nothing else.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/*

RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

WORKDIR /src

# Dependencies first, from pyproject.toml alone, so a code change does not reinstall them.
COPY pyproject.toml README.md ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
        > /tmp/requirements.txt \
    && pip install -r /tmp/requirements.txt

COPY pbx_edge ./pbx_edge
# The wheel does not carry relay.c (it is not package data), so it is copied next to the installed
# build module, which compiles it into <site-packages>/pbx_edge/media/native/_build/librelay.so and
# checks that it loads. `python -I` keeps /src off sys.path: the installed package is the one built.
RUN pip install --no-deps . \
    && native_dir="$(python -I -c 'import pbx_edge.media.native as m, os; print(os.path.dirname(m.__file__))')" \
    && cp pbx_edge/media/native/relay.c "$native_dir/relay.c" \
    && python -I -m pbx_edge.media.native.build \
    && python -I -c 'from pbx_edge.media.native.build import available; assert available()'

# --- runtime: the venv, libopus for the codecs, a non-root user -----------------------------------
FROM ${PYTHON_IMAGE} AS runtime

# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends libopus0 \
    && rm -rf /var/lib/apt/lists/*

RUN groupadd --system --gid 10001 smartpbx \
    && useradd --system --uid 10001 --gid smartpbx --home-dir /var/lib/smartpbx --no-create-home \
        --shell /usr/sbin/nologin smartpbx \
    && mkdir -p /etc/smartpbx /var/lib/smartpbx/data /var/lib/smartpbx/recordings \
    && chown -R smartpbx:smartpbx /var/lib/smartpbx

COPY --from=builder /opt/venv /opt/venv
# The documented sample: it listens on 127.0.0.1 only, so nothing is exposed until a real config is
# mounted over it (Kubernetes: the ConfigMap in cluster/edge/) or SMARTPBX__... variables override it.
COPY config/edge.yaml /etc/smartpbx/edge.yaml

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    SMARTPBX_HEALTH_URL=http://127.0.0.1:8080/health

# Relative paths in the config (data/cdr.sqlite3, recordings/) land in the writable home.
WORKDIR /var/lib/smartpbx
USER 10001:10001

EXPOSE 5060/udp 5060/tcp 8080 9090
LABEL org.opencontainers.image.title="smartpbx-edge" \
      org.opencontainers.image.description="SmartPBX SIP edge (B2BUA + RTP relay)" \
      io.smartpbx.rtp-ports="media.port_start-media.port_end/udp (default 20000-39999)"

# Python rather than curl: the slim image has no curl and needs none. urlopen raises on non-2xx.
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen(os.environ['SMARTPBX_HEALTH_URL'], timeout=2)"]

ENTRYPOINT ["smartpbx"]
CMD ["edge", "--config", "/etc/smartpbx/edge.yaml"]
