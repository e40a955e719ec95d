# The runner image (also the planner: the same binary, another command).
# Built where Docker runs; CI here has no Docker engine.
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin sleeper-export

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/sleeper-export /usr/local/bin/sleeper-export
USER 65534:65534
ENTRYPOINT ["sleeper-export"]
# Runs leaf queries until idle for a minute, so a scaler can start tasks by queue depth.
CMD ["run", "--idle-exit-seconds", "60"]
