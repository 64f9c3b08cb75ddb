# syntax=docker/dockerfile:1
# One image for `carga` (worker, one-shot runs, serve) and `carga-scheduler` (API, dashboard,
# scheduler daemon). Built from the workspace's lock; runs as a non-root user on distroless.
#
#   docker build -t ghcr.io/la-boveda/carga:0.1.0 .
#   docker run --rm ghcr.io/la-boveda/carga:0.1.0 carga --version
#
# No container daemon runs on the development machine: `scripts/image-stages` reproduces both
# stages on the host (the same build command, the same files in the same places).

FROM rust:1.95-slim-bookworm AS build
WORKDIR /src
# Build dependencies first so a source change does not rebuild them (cargo's own cache inside
# BuildKit's cache mounts).
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p carga-worker -p carga-api \
 && mkdir -p /out \
 && cp target/release/carga target/release/carga-scheduler /out/ \
 && mkdir -p /out/samples && cp -r samples/. /out/samples/

# glibc and libgcc, CA certificates, a `nonroot` user (65532); no shell, no package manager.
FROM gcr.io/distroless/cc-debian12:nonroot
LABEL org.opencontainers.image.title="carga" \
      org.opencontainers.image.description="Carga: ingestion into an encrypted Parquet raw zone (workers, scheduler, API)" \
      org.opencontainers.image.source="https://github.com/la-boveda/carga" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build /out/carga /out/carga-scheduler /usr/local/bin/
COPY --from=build --chown=65532:65532 /out/samples /opt/carga/samples
USER 65532:65532
WORKDIR /tmp
# Production never makes up a master key; the chart mounts one.
ENV CARGA_CREATE_KEY_IF_MISSING=false \
    CARGA_HEALTH_FILE=/tmp/carga-worker.alive \
    CARGA_LOG_FORMAT=json
# The worker's liveness (its heartbeat loop writes the file); the scheduler is probed over HTTP
# (/healthz) by the chart.
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["carga", "health", "--max-age-seconds", "120"]
ENTRYPOINT []
CMD ["carga", "worker"]
