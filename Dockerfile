# avr's container image: `docker build -t avr .` then `docker run -p 5001:5001 -p 6001:6001 avr`
# (or `docker compose up`, see compose.yaml). Settings come as environment variables (README "Configuration").
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# An unprivileged user; avr writes no files, so it owns none.
RUN useradd --system --user-group --uid 10001 --home-dir /app --no-create-home --shell /usr/sbin/nologin avr

WORKDIR /build
COPY pyproject.toml setup.cfg README.md LICENSE ./
COPY src ./src
COPY twisted ./twisted
# Install avr, then let twistd write its plugin cache while the directory is writable (as avr it could not, and
# would log that at every start).
RUN pip install /build \
    && python -c "from twisted.plugin import IPlugin, getPlugins; list(getPlugins(IPlugin))" \
    && rm -rf /build
# The echo STS of the benchmarks, for compose.yaml's placeholder agent.
COPY benchmarks/__init__.py benchmarks/echo_sts.py /app/benchmarks/

WORKDIR /app
USER avr
# Inside a container avr listens on all interfaces; HTTP_PORT serves /health, /call, the REST API and /events.
ENV BIND_ADDRESS=0.0.0.0 \
    HTTP_PORT=6001
# 5001: AudioSocket (Asterisk connects here); 6001: HTTP.
EXPOSE 5001 6001
# /health answers 200 while avr runs (its body tells the components' states); no check without HTTP_PORT.
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import os, sys, urllib.request; port = os.environ.get('HTTP_PORT'); sys.exit(0) if not port else urllib.request.urlopen(f'http://127.0.0.1:{port}/health', timeout=4)"]
# SIGTERM (docker stop) starts the graceful drain: give it DRAIN_TIMEOUT plus some, e.g. `docker stop -t 45`
# (compose.yaml sets stop_grace_period).
STOPSIGNAL SIGTERM
CMD ["twistd", "--nodaemon", "--pidfile=", "avr"]
