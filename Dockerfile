# syntax=docker/dockerfile:1

# Build: dependencies first, in a layer of their own, so a code change rebuilds only the crate.
# Queries are checked at run time, so the build needs no database.
FROM rust:1.95-slim-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock build.rs ./
# The manifest names benchmarks and the test support library, and cargo refuses a manifest whose
# targets or members are missing.
COPY benches benches
COPY tests/support tests/support
RUN mkdir src && echo 'fn main() {}' > src/main.rs && touch src/lib.rs \
    && mkdir migrations \
    && cargo build --release --locked \
    && rm -rf src migrations
COPY migrations migrations
COPY src src
RUN touch src/main.rs src/lib.rs && cargo build --release --locked
# The embedded store's folder, made here: the run stage has no shell to make it with.
RUN mkdir -p /out/data

# Run: glibc and nothing else (TLS is rustls with bundled roots), as a non-root user.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/release/prediction-inbox /usr/local/bin/prediction-inbox
# With no DATABASE_URL, state lives in /home/nonroot/data/prediction-inbox.db: the folder belongs
# to the service's user (distroless "nonroot", uid 65532) and is a volume, so the state outlives
# the container; run one replica on it (README, "Choosing the store"). The service warns at start
# when it runs on this store inside a container.
COPY --from=build --chown=65532:65532 /out/data /home/nonroot/data
VOLUME ["/home/nonroot/data"]
USER 65532:65532
WORKDIR /home/nonroot
EXPOSE 8080
# Probes: GET /healthz (liveness) and GET /readyz (readiness); the image has no shell or curl,
# so orchestrators probe over HTTP (see README, "Operating it").
ENTRYPOINT ["/usr/local/bin/prediction-inbox"]
CMD ["serve"]
