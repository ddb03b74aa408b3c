# Build stage: compile the release binary.
FROM rust:1-slim-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY lua ./lua
RUN cargo build --release --locked && strip target/release/quotagate

# Runtime stage: a small image running as an unprivileged user.
FROM debian:bookworm-slim
RUN useradd --system --uid 10001 --no-create-home quotagate
COPY --from=build /src/target/release/quotagate /usr/local/bin/quotagate
USER 10001
ENV QUOTAGATE_LISTEN=0.0.0.0:8080
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/quotagate"]
