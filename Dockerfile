# The stagewall agent image for deploy/kubernetes/daemonset.yaml:
#   docker build -t stagewall:0.1.0 .
# The kernel programs are built with the pinned nightly and bpf-linker (linked against
# LLVM 22), exactly as `cargo xtask setup` does on a build host; the agent embeds them.
FROM rust:1.95-bookworm AS build
RUN apt-get update \
    && apt-get install -y --no-install-recommends llvm-22-dev \
    && rm -rf /var/lib/apt/lists/*
# The nightly is named once, in the eBPF crate's rust-toolchain.toml.
COPY ebpf/stagewall-ebpf/rust-toolchain.toml /tmp/ebpf-toolchain.toml
RUN rustup toolchain install "$(sed -n 's/^channel = "\(.*\)"/\1/p' /tmp/ebpf-toolchain.toml)" \
        --profile minimal --component rust-src \
    && LLVM_PREFIX=/usr/lib/llvm-22 cargo install bpf-linker@0.13.0 --locked \
        --no-default-features --features llvm-22
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p stagewall \
    && cp target/release/stagewall /stagewall

# The agent needs nothing but the C library at run time.
FROM debian:bookworm-slim
COPY --from=build /stagewall /usr/local/bin/stagewall
ENTRYPOINT ["/usr/local/bin/stagewall"]
CMD ["run", "--kubernetes"]
