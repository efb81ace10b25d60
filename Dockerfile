# syntax=docker/dockerfile:1

# Build: dependencies first, in a layer of their own, so a code change rebuilds only the crate.
# Queries are checked at run time, so the build needs no database.
FROM rust:1.95-slim-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock build.rs ./
# The manifest names a benchmark, and cargo refuses a manifest whose targets are missing.
COPY benches benches
RUN mkdir src && echo 'fn main() {}' > src/main.rs && touch src/lib.rs \
    && mkdir migrations \
    && cargo build --release --locked \
    && rm -rf src migrations
COPY migrations migrations
COPY src src
RUN touch src/main.rs src/lib.rs && cargo build --release --locked

# Run: glibc and nothing else (TLS is rustls with bundled roots), as a non-root user.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/release/prediction-inbox /usr/local/bin/prediction-inbox
# distroless "nonroot" is uid 65532
USER 65532:65532
# With no DATABASE_URL, state lives in /home/nonroot/data/prediction-inbox.db: mount a volume on
# /home/nonroot/data, and run one replica (README, "Choosing the store").
WORKDIR /home/nonroot
EXPOSE 8080
# Probes: GET /healthz (liveness) and GET /readyz (readiness); the image has no shell or curl,
# so orchestrators probe over HTTP (see README, "Operating it").
ENTRYPOINT ["/usr/local/bin/prediction-inbox"]
CMD ["serve"]
