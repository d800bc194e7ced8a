# The stagewall agent image for deploy/kubernetes/daemonset.yaml and the Helm chart, for
# amd64 and arm64:
#   docker buildx build --platform linux/amd64,linux/arm64 -t REGISTRY/stagewall:0.1.0 --push .
# (one platform: docker build -t stagewall:0.1.0 .). NOT TESTED HERE: the project's build
# hosts have no docker; `cargo xtask image` writes the same image (a static agent per
# platform, the same kernel programs) as an OCI archive with no image builder, and that
# is what is tested (README "Install on Kubernetes").
#
# The build runs on the build host's platform and cross-compiles user space to a static
# musl binary (rust-lld links it with Rust's own musl start files; clang compiles ring's
# C), as xtask/src/image.rs does. The kernel programs are eBPF, built once, in the
# `kernel` stage, which depends on no TARGETARCH: buildx builds it once and every
# platform's agent embeds that object byte for byte (STAGEWALL_EBPF_OBJECT, read by
# agent/build.rs), with the pinned nightly and bpf-linker (linked against LLVM 22),
# exactly as `cargo xtask setup` does on a build host. The same stage's host binary
# writes the shell completions and man pages the image carries (where the .deb puts them).
FROM --platform=$BUILDPLATFORM rust:1.95-bookworm AS tools
RUN apt-get update \
    && apt-get install -y --no-install-recommends llvm-22-dev clang-22 \
    && rm -rf /var/lib/apt/lists/*
# The nightly is named once, in the eBPF crate's rust-toolchain.toml.
COPY ebpf/stagewall-ebpf/rust-toolchain.toml /tmp/ebpf-toolchain.toml
RUN rustup toolchain install "$(sed -n 's/^channel = "\(.*\)"/\1/p' /tmp/ebpf-toolchain.toml)" \
        --profile minimal --component rust-src \
    && LLVM_PREFIX=/usr/lib/llvm-22 cargo install bpf-linker@0.13.0 --locked \
        --no-default-features --features llvm-22

FROM tools AS kernel
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p stagewall --bin stagewall \
    && cp target/release/build/stagewall-*/out/stagewall-ebpf /stagewall-ebpf.o \
    && mkdir -p /generated/man \
    && target/release/stagewall completions bash > /generated/stagewall.bash \
    && target/release/stagewall completions zsh > /generated/_stagewall \
    && target/release/stagewall completions fish > /generated/stagewall.fish \
    && target/release/stagewall man --dir /generated/man \
    && gzip -9n /generated/man/*

FROM tools AS build
ARG TARGETARCH
WORKDIR /src
COPY . .
COPY --from=kernel /stagewall-ebpf.o /stagewall-ebpf.o
RUN case "$TARGETARCH" in \
        amd64) target=x86_64-unknown-linux-musl ;; \
        arm64) target=aarch64-unknown-linux-musl ;; \
        *) echo "unsupported TARGETARCH $TARGETARCH (amd64 or arm64)" >&2; exit 1 ;; \
    esac \
    && rustup target add "$target" \
    && env_target="$(echo "$target" | tr - _)" \
    && env "CARGO_TARGET_$(echo "$env_target" | tr a-z A-Z)_LINKER=rust-lld" \
        "CC_$env_target=clang-22" "AR_$env_target=llvm-ar-22" \
        STAGEWALL_EBPF_OBJECT=/stagewall-ebpf.o \
        cargo build --release --locked -p stagewall --bin stagewall --target "$target" \
    && /usr/lib/llvm-22/bin/llvm-strip --strip-all -o /stagewall "target/$target/release/stagewall"

# A static binary, its completions and man pages: nothing else in the image.
FROM scratch
COPY --from=build /stagewall /usr/local/bin/stagewall
COPY --from=kernel /generated/stagewall.bash /usr/share/bash-completion/completions/stagewall
COPY --from=kernel /generated/_stagewall /usr/share/zsh/vendor-completions/_stagewall
COPY --from=kernel /generated/stagewall.fish /usr/share/fish/vendor_completions.d/stagewall.fish
COPY --from=kernel /generated/man/ /usr/share/man/man1/
ENTRYPOINT ["/usr/local/bin/stagewall"]
CMD ["run", "--kubernetes"]
