# Chorus container image: chorusd (a node) and chorusctl (the operator CLI).
#
#   docker build -t chorus .
#   docker run -d --name chorus -e CHORUS_CLUSTER_SECRET=s3cret \
#     -e CHORUS_ADVERTISE_RAFT=HOST:9080 -e CHORUS_ADVERTISE_CLIENT=http://HOST:8080 \
#     -p 8080:8080 -p 9080:9080 -v chorus-data:/var/lib/chorus chorus   # a single-node cluster
#   docker exec -e CHORUS_SECRET=s3cret chorus chorusctl cluster status
#
# A three-node cluster: deploy/compose.yaml. Notes: docs/OPERATIONS.md, "Packaging".

# The toolchain the workspace is tested with (Cargo.toml's rust-version is the floor).
ARG RUST_VERSION=1.95

FROM rust:${RUST_VERSION}-bookworm AS builder
# librocksdb-sys runs bindgen, which loads libclang; RocksDB's C++ (and lz4,
# mimalloc) is built with the image's g++ by the cc crate, so no cmake.
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends libclang-dev clang \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
# The cache mounts keep the registry and RocksDB's build between image builds;
# the binaries are copied out of the cached target dir in the same step.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p node -p cli --bins \
 && mkdir -p /out \
 && cp target/release/chorusd target/release/chorusctl /out/

FROM debian:bookworm-slim AS runtime
# chorusd needs libstdc++6 (RocksDB is C++) and libgcc-s1, both already in
# bookworm-slim (apt depends on them); neither binary uses TLS or OpenSSL.
RUN groupadd --system --gid 10001 chorus \
 && useradd --system --uid 10001 --gid chorus --home-dir /var/lib/chorus --no-create-home \
      --shell /usr/sbin/nologin chorus \
 && mkdir -p /var/lib/chorus \
 && chown chorus:chorus /var/lib/chorus
COPY --from=builder /out/chorusd /out/chorusctl /usr/local/bin/

# The image's settings, as a config file: mount your own at /etc/chorus/chorus.toml
# to replace them (CHORUS_CONFIG names it), or override one with a flag or a
# CHORUS_* variable. chorusd refuses a non-loopback address without a cluster
# secret: pass CHORUS_CLUSTER_SECRET (and give chorusctl the same one as
# CHORUS_SECRET), or CHORUS_INSECURE=true on a network you trust.
RUN mkdir -p /etc/chorus \
 && printf '%s\n' \
      '# Settings of the chorus image; a mounted file replaces them.' \
      'data-dir = "/var/lib/chorus"' \
      'client-addr = "0.0.0.0:8080"' \
      'raft-addr = "0.0.0.0:9080"' \
      > /etc/chorus/chorus.toml
# The ready file exists while chorusd serves; the health check reads the bound
# client address from it, so it follows whatever config the node runs with.
ENV CHORUS_CONFIG=/etc/chorus/chorus.toml \
    CHORUS_READY_FILE=/tmp/chorusd.ready
USER chorus
WORKDIR /var/lib/chorus
VOLUME ["/var/lib/chorus"]
# 8080: HTTP, WebSocket, web UI, /metrics. 9080: Raft between nodes and admin gRPC.
EXPOSE 8080 9080

# /healthz is 200 while the process serves. No curl in the image: bash's
# /dev/tcp sends the one request, and `read -t` bounds the wait for the answer
# (not every runtime enforces --timeout).
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
  CMD ["bash", "-c", "a=$(grep -o '\"client_addr\":\"[^\"]*' \"$CHORUS_READY_FILE\") && exec 3<>/dev/tcp/127.0.0.1/${a##*:} && printf 'GET /healthz HTTP/1.0\\r\\nHost: localhost\\r\\n\\r\\n' >&3 && read -r -t 2 status <&3 && [[ $status == *' 200 '* ]]"]

# SIGTERM (docker stop) shuts the node down cleanly; chorusd is PID 1 and
# handles it itself.
STOPSIGNAL SIGTERM
CMD ["chorusd"]
