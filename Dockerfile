# syntax=docker/dockerfile:1
# balena-exporter container image: built with the Rust toolchain, run on a distroless base as
# a non-root user. TLS to the balena API is rustls (no OpenSSL); the root filesystem can be
# read-only (the exporter writes nothing to disk).
#
#   docker build -t balena-exporter .
#   docker run -p 9759:9759 -e BALENA_TOKEN=... balena-exporter          # every fleet the token sees
#   docker run -p 9759:9759 -v $PWD/balena-exporter.yml:/etc/balena-exporter/balena-exporter.yml:ro balena-exporter
#   docker run -p 9759:9759 balena-exporter --demo --web.listen-address=:9759
#
# Without flags the exporter reads /etc/balena-exporter/balena-exporter.yml if it exists, else
# configures itself from BALENA_TOKEN / BALENA_TOKEN_FILE / BALENA_API_URL.

FROM rust:1.95-slim-bookworm AS build
# The git revision for balena_exporter_build_info (the build context has no .git): the release
# workflow passes it; without it the revision reads "unknown".
ARG REVISION=""
ENV BALENA_EXPORTER_REVISION=${REVISION}
WORKDIR /src
COPY Cargo.toml Cargo.lock build.rs ./
COPY src ./src
COPY config ./config
COPY examples ./examples
COPY benches ./benches
COPY simulator ./simulator
RUN cargo build --release --locked --bin balena-exporter \
    && install -D -m 0755 target/release/balena-exporter /out/balena-exporter

FROM gcr.io/distroless/cc-debian12:nonroot
LABEL org.opencontainers.image.title="balena-exporter" \
      org.opencontainers.image.description="Prometheus multi-target exporter for the balena cloud API" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.source="https://github.com/balena-exporter/balena-exporter"
COPY --from=build /out/balena-exporter /usr/local/bin/balena-exporter
COPY config/demo.yml /etc/balena-exporter/demo.yml
USER 65532:65532
WORKDIR /etc/balena-exporter
EXPOSE 9759
ENTRYPOINT ["/usr/local/bin/balena-exporter"]
