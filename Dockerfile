# syntax=docker/dockerfile:1
# Multi-stage: build with the Rust toolchain, run from a distroless base (no shell, no
# package manager, non-root). The binary speaks TLS to Postgres with bundled roots.

FROM rust:1.95-slim-bookworm AS build
WORKDIR /src
# Dependencies first, so source edits do not rebuild them. benches/ is declared in
# Cargo.toml, so it must be present for the manifest to load.
COPY Cargo.toml Cargo.lock ./
COPY benches ./benches
RUN mkdir src && echo 'fn main() {}' > src/main.rs && touch src/lib.rs \
    && cargo build --release --locked --bin singapay-webhooks \
    && rm -rf src
COPY src ./src
COPY migrations ./migrations
RUN touch src/main.rs src/lib.rs && cargo build --release --locked --bin singapay-webhooks

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/release/singapay-webhooks /usr/local/bin/singapay-webhooks
USER nonroot:nonroot
ENV LISTEN_ADDR=0.0.0.0:8080 \
    LOG_FORMAT=json
EXPOSE 8080
# /readyz: Postgres reachable and migrations applied.
HEALTHCHECK --interval=15s --timeout=6s --start-period=20s --retries=3 \
    CMD ["/usr/local/bin/singapay-webhooks", "healthcheck"]
ENTRYPOINT ["/usr/local/bin/singapay-webhooks"]
# Migrations are applied by `migrate` (or by `serve --migrate`, as docker-compose.yml does).
CMD ["serve"]
