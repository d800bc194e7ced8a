#!/bin/sh
# Builds the per-packet cost benchmark here and packs it into one self-contained folder
# for a machine that has no cargo and no `ip` (the device machine, docs/benchmarks.md):
#
#   tests/device-bench/make-bundle.sh [DIR]      (default target/device-bench)
#
# DIR then holds bin/ (stagewall, stagewall-probe, stagewall-cost: the kernel programs
# are inside the agent binary), the `ip` and `iperf3` of this machine with every shared
# library they load and the dynamic loader (wrappers in bin/ run them through it, so the
# other machine's libraries do not matter), and run.sh, which runs the tables there:
#
#   DIR/run.sh [stagewall-cost arguments]        (as root; prints the tables, and copies
#                                                 them and the machine's description to
#                                                 $OUT when that is set)
#
# From the repository root: `run` of the device tool carries the working tree; name DIR
# in its carry when DIR is ignored by git (target/ is).
set -eu
root=$(cd "$(dirname "$0")/../.." && pwd)
dir=${1:-$root/target/device-bench}
cd "$root"
# NO_BUILD=1: pack what target/release holds (built before).
if [ -z "${NO_BUILD:-}" ]; then
    cargo build --release -p stagewall -p stagewall-tests --bin stagewall --bin stagewall-probe --bin stagewall-cost
fi
rm -rf "$dir"
mkdir -p "$dir/bin" "$dir/lib" "$dir/libexec"
for b in stagewall stagewall-probe stagewall-cost; do
    cp "target/release/$b" "$dir/bin/$b"
done
# The Rust binaries load only the C library; say which version they need.
need=$(objdump -T target/release/stagewall target/release/stagewall-cost 2>/dev/null |
    grep -o 'GLIBC_[0-9.]*' | sort -uV | tail -1)
echo "$need" >"$dir/glibc-needed"
for tool in ip iperf3; do
    path=$(command -v "$tool")
    cp "$path" "$dir/libexec/$tool"
    ldd "$path" | awk '/=> \// {print $3} /^\t\/.*ld-linux/ {print $1}' | while read -r lib; do
        cp -L "$lib" "$dir/lib/"
    done
    cat >"$dir/bin/$tool" <<EOF
#!/bin/sh
here=\$(dirname "\$0")/..
exec "\$here/lib/ld-linux-x86-64.so.2" --library-path "\$here/lib" "\$here/libexec/$tool" "\$@"
EOF
    chmod +x "$dir/bin/$tool"
done
cat >"$dir/run.sh" <<'EOF'
#!/bin/sh
# Runs the per-packet cost tables and the interleaved throughput on this machine.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
export PATH="$here/bin:$PATH" STAGEWALL_BIN="$here/bin/stagewall"
report=${OUT:-$here}/cost-report.md
{
    echo "# stagewall-cost on $(uname -n)"
    echo
    echo "- kernel: $(uname -r)"
    echo "- CPUs: $(nproc), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')"
    echo "- memory: $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo)"
    echo "- load before: $(cut -d' ' -f1-3 /proc/loadavg)"
    echo "- C library the binaries need: $(cat "$here/glibc-needed"), here: $(ldd --version 2>/dev/null | head -1 || echo unknown)"
    "$here/bin/stagewall-cost" "$@"
} | tee "$report"
EOF
chmod +x "$dir/run.sh"
du -sh "$dir"
