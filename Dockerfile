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
# Stripped here only: local release builds keep their symbols for `perf`.
RUN touch src/main.rs src/lib.rs \
    && CARGO_PROFILE_RELEASE_STRIP=symbols cargo build --release --locked --bin singapay-webhooks

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/release/singapay-webhooks /usr/local/bin/singapay-webhooks
USER nonroot:nonroot
# 8080: callbacks (public, behind the load balancer and ALLOWED_SOURCE_CIDRS). 9090: the
# admin listener, /metrics, /healthz and /readyz for the orchestrator's probes and scraper,
# with no allowlist: reachable on the container network, never routed publicly.
ENV LISTEN_ADDR=0.0.0.0:8080 \
    ADMIN_LISTEN_ADDR=0.0.0.0:9090 \
    LOG_FORMAT=json
EXPOSE 8080 9090
# Liveness (/healthz on the admin listener, so ALLOWED_SOURCE_CIDRS cannot refuse it): the
# process answers. Not readiness: a Postgres outage, which the receiver rides out (503 +
# Retry-After, Singapay retries), or a drain after SIGTERM must not get the container
# restarted. Load balancers and Kubernetes probe /readyz themselves.
HEALTHCHECK --interval=15s --timeout=6s --start-period=20s --retries=3 \
    CMD ["/usr/local/bin/singapay-webhooks", "healthcheck", "--live"]
# SIGTERM drains for SHUTDOWN_DRAIN_SECS (15 s), then waits up to SHUTDOWN_TIMEOUT_SECS
# (25 s) for in-flight callbacks: give `docker stop` / the orchestrator 45 s.
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/singapay-webhooks"]
# Applies pending migrations (under a lock, so replicas starting together are safe), then
# serves. Operators who migrate separately run the image with `serve` (callbacks are then
# answered 503 until `migrate` has run).
CMD ["serve", "--migrate"]
