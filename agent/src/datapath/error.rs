//! What can go wrong in the kernel side, naming the map, program or path it went wrong
//! with. Each variant's text is one step; the error it wraps (`source`) says the rest, as
//! `anyhow`'s `{:#}` and `policy::error::Chain` print it: `loading stagewall_connect4:
//! ...: Permission denied`. Host errors (cgroups, interfaces, mounts) are `host::HostError`.

use std::{io, path::PathBuf};

use aya::{
    EbpfError,
    maps::MapError,
    pin::PinError,
    programs::{ProgramError, links::LinkError},
};
use stagewall_common::{MAP_LAYOUT_VERSION, MapLayout};

#[derive(Debug, thiserror::Error)]
pub enum DatapathError {
    /// The object as a whole did not load (the verifier, or no permission).
    #[error("loading the eBPF object (are you root, with BTF and bpf() allowed?)")]
    Object(#[source] EbpfError),
    #[error("loading {program}")]
    LoadProgram {
        program: &'static str,
        #[source]
        source: ProgramError,
    },
    /// The kernel's own type information, which an LSM program is loaded against.
    #[error("reading the kernel's BTF (/sys/kernel/btf/vmlinux)")]
    Btf {
        #[source]
        source: aya::BtfError,
    },
    #[error("program {program} missing from the eBPF object")]
    MissingProgram { program: &'static str },
    #[error("map {map} missing from the eBPF object")]
    MissingMap { map: &'static str },
    /// A map of the object is not of the type the agent takes it as.
    #[error("map {map}")]
    MapType {
        map: &'static str,
        #[source]
        source: MapError,
    },
    #[error("reading {map}")]
    ReadMap {
        map: &'static str,
        #[source]
        source: MapError,
    },
    #[error("writing {map}")]
    WriteMap {
        map: &'static str,
        #[source]
        source: MapError,
    },
    #[error("removing from {map}")]
    RemoveFromMap {
        map: &'static str,
        #[source]
        source: MapError,
    },
    /// The pinned set of quarantined workloads could not be opened, created or written.
    #[error("the quarantined workloads pinned at {}", path.display())]
    QuarantineStore {
        path: PathBuf,
        #[source]
        source: MapError,
    },
    #[error("{workload}: a name longer than {limit} bytes cannot be kept quarantined")]
    QuarantineName { workload: String, limit: usize },
    /// Another agent holds the pin directory.
    #[error(
        "another stagewall agent is running with pin directory {} (it holds its lock); stop it first, or give this one its own --bpffs-dir",
        path.display()
    )]
    PinsLocked { path: PathBuf },
    /// A pinned policy map holds an entry of neither slot.
    #[error("an entry of slot {slot}; expected slot 0 or 1")]
    UnknownSlot { slot: u32 },
    /// What a previous agent left in the pinned maps could not be read.
    #[error("reading the pinned maps")]
    Adopt(#[source] Box<DatapathError>),
    #[error(
        "pinned map {} has key/value size {}/{} and {} entries, this build expects {}/{} and {}: its layout changed without a new MAP_LAYOUT_VERSION (v{MAP_LAYOUT_VERSION}); refusing to misread it (`stagewall uninstall` removes it)",
        path.display(),
        found.key_size,
        found.value_size,
        found.max_entries,
        expected.key_size,
        expected.value_size,
        expected.max_entries
    )]
    PinnedLayout {
        path: PathBuf,
        found: MapLayout,
        expected: MapLayout,
    },
    /// The agent's own cgroup (which guards must let through) is not on this host.
    #[error("the agent's own cgroup {path}")]
    OwnCgroup {
        path: String,
        #[source]
        source: crate::datapath::host::HostError,
    },
    #[error("reading pinned map {}", path.display())]
    PinnedMap {
        path: PathBuf,
        #[source]
        source: MapError,
    },
    /// A directory of the pins (or a cgroup's) could not be created, opened or read.
    #[error("{action} {}", path.display())]
    Path {
        action: PathAction,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// `target`: a cgroup directory or an interface name.
    #[error("attaching {program} to {target}")]
    Attach {
        program: &'static str,
        target: String,
        #[source]
        source: ProgramError,
    },
    #[error("pinning {}", path.display())]
    Pin {
        path: PathBuf,
        #[source]
        source: PinError,
    },
    // Without a step of their own (the text is the inner error's).
    #[error(transparent)]
    Program(#[from] ProgramError),
    #[error(transparent)]
    Link(#[from] LinkError),
    #[error(transparent)]
    Map(#[from] MapError),
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// What was being done to a path when it failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PathAction {
    Creating,
    Opening,
    Reading,
    Removing,
}

impl std::fmt::Display for PathAction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            PathAction::Creating => "creating",
            PathAction::Opening => "opening",
            PathAction::Reading => "reading",
            PathAction::Removing => "removing",
        })
    }
}

impl DatapathError {
    /// A failure at `path` while `action`.
    pub fn path(action: PathAction, path: impl Into<PathBuf>) -> impl FnOnce(io::Error) -> Self {
        move |source| DatapathError::Path {
            action,
            path: path.into(),
            source,
        }
    }
}
