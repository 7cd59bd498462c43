# relay's image, used by docker-compose.yml for both relay and its simulator.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1

WORKDIR /src
COPY setup.cfg pyproject.toml README.md ./
COPY relay ./relay
COPY sql ./sql
RUN pip install . && rm -rf /src

RUN useradd --system --create-home --home-dir /var/lib/relay --shell /usr/sbin/nologin relay
USER relay
WORKDIR /var/lib/relay
# Production by default: listening on every interface, relay must refuse
# missing or placeholder secrets rather than generate its own per container.
# docker-compose.yml opts into development for trying relay locally.
ENV RELAY_ENV=production RELAY_HOST=0.0.0.0 RELAY_PORT=8080 RELAY_STATE_DIR=/var/lib/relay
# The receipt-signing key (RELAY_ATTESTATION=none) and development's generated
# secrets live here and must outlive the container.
VOLUME /var/lib/relay
EXPOSE 8080
# `docker stop` sends SIGTERM: relay drains; give it RELAY_DRAIN_TIMEOUT + 6 s +
# RELAY_DATABASE_TIMEOUT, 41 s with the defaults (`stop_grace_period` in compose).
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
    CMD python -c "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8080/health', timeout=2).status != 200)"
CMD ["relay", "serve"]
