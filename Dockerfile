# syntax=docker/dockerfile:1
#
# churnwatch container image: a release build on Debian bookworm, run as a non-root
# user on bookworm-slim. Build and run:
#
#   docker build -t churnwatch .
#   docker run --rm -p 9464:9464 -v "$PWD/secrets:/run/secrets/churnwatch:ro" \
#     -e CHURNWATCH__KAFKA__BOOTSTRAP_SERVERS=kafka:9092 \
#     -e CHURNWATCH__ENGINE__ID_SECRET_FILE=/run/secrets/churnwatch/id-secret \
#     -e CHURNWATCH__DELIVERY__OFFER_SECRET_FILE=/run/secrets/churnwatch/offer-secret \
#     churnwatch
# (secrets/: `openssl rand -hex 32` into each file, readable by uid 10001.)
#
# Layout (tests/deploy.rs rebuilds it from the ENV and COPY lines below and runs
# `churnwatch check` and a replay in it, so keep the two in step):
#   /usr/local/bin/churnwatch          the binary
#   /etc/churnwatch/churnwatch.toml    config (CHURNWATCH_CONFIG); mount your own over it
#   /etc/churnwatch/templates/         templates/<name>/<locale>.{subject.txt,text.txt,html}
#   /var/lib/churnwatch/               state.dir: one redb file per task; a volume
# Paths are set as absolute paths through the environment because churnwatch resolves
# relative paths in its config against the working directory.
# Secrets are never in the image: mount them as files and name them with the *_file
# keys (engine.id_secret_file, delivery.offer_secret_file, admin.token_file,
# smtp.password_file, kafka.sasl_password_file, kafka.oauthbearer_token_file), as
# deploy/kubernetes does, or set CHURNWATCH__ENGINE__ID_SECRET and the like. `run`
# refuses the shipped default keys, placeholders and keys shorter than 32 bytes.

ARG RUST_VERSION=1.95
ARG DEBIAN_RELEASE=bookworm

FROM rust:${RUST_VERSION}-slim-${DEBIAN_RELEASE} AS build
# rdkafka builds its vendored librdkafka with its ./configure and make (the crate's
# cmake-build feature is off, so no cmake); zlib is built from source (libz-static).
# TLS to Kafka is built in: rdkafka's `ssl-vendored` builds OpenSSL from source too
# (openssl-src runs OpenSSL's Configure, a perl script, then make), so the build needs
# perl but no libssl-dev, and the binary no libssl at run time.
# Debian package versions are not pinned (DL3008): a point release removes the old
# ones from the archive, and the base image tag already fixes the release.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends make g++ perl pkg-config \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src/ src/
COPY config/ config/
COPY benches/ benches/
# The cache mounts keep the crates and build outputs between builds; the binary is
# copied out of the cached target folder in the same step.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin churnwatch \
    && install -D -m 0755 target/release/churnwatch /out/churnwatch

FROM debian:${DEBIAN_RELEASE}-slim
# curl answers the HEALTHCHECK. churnwatch itself links only glibc and libgcc_s:
# SMTP TLS is rustls with the Mozilla roots compiled in (smtp.ca_file adds a private
# CA), time zones are compiled in, librdkafka, OpenSSL and zlib are linked statically.
# ca-certificates stays: librdkafka verifies brokers against the system CA bundle
# (/etc/ssl/certs, found by ssl.ca.location = probe) unless ssl.ca.location or
# ssl.ca.pem names another; curl uses it too.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates curl \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 churnwatch \
    && useradd --system --uid 10001 --gid churnwatch --no-create-home \
       --home-dir /var/lib/churnwatch --shell /usr/sbin/nologin churnwatch \
    && install -d -o churnwatch -g churnwatch -m 0750 /var/lib/churnwatch
COPY --from=build /out/churnwatch /usr/local/bin/churnwatch
COPY config/churnwatch.toml /etc/churnwatch/churnwatch.toml
COPY templates/ /etc/churnwatch/templates/
ENV CHURNWATCH_CONFIG=/etc/churnwatch/churnwatch.toml \
    CHURNWATCH__TEMPLATES__DIR=/etc/churnwatch/templates \
    CHURNWATCH__STATE__DIR=/var/lib/churnwatch \
    CHURNWATCH__DELIVERY__FILE_DIR=/var/lib/churnwatch/outbox \
    CHURNWATCH__ADMIN__LISTEN=0.0.0.0:9464 \
    CHURNWATCH_LOG_FORMAT=json
WORKDIR /var/lib/churnwatch
USER 10001:10001
VOLUME ["/var/lib/churnwatch"]
# The admin endpoint: /healthz, /readyz, /metrics. Not authenticated: publish it only
# to the pod / host network that needs it.
EXPOSE 9464
# SIGTERM: checkpoint, hand over, commit and exit within shutdown_grace (20 s); give
# `docker stop` more than that (docker stop -t 30, compose stop_grace_period).
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=15s --timeout=3s --start-period=20s --retries=3 \
    CMD ["curl", "-fsS", "-o", "/dev/null", "http://127.0.0.1:9464/healthz"]
ENTRYPOINT ["churnwatch"]
CMD ["run"]
