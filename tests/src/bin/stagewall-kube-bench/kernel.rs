//! What the kernel's programs see, read from the agent's pinned maps (not from the agent):
//! the slot in force (CONFIG) and the identity IPCACHE gives an address in it. A slot is
//! flipped in one write once wholly written, so an address's entry in the slot in force
//! means the whole desired state it came with is in force.

use std::{net::IpAddr, path::Path};

use anyhow::Context as _;
use aya::maps::{Array, Map, MapData, lpm_trie::Key, lpm_trie::LpmTrie};
use stagewall::{compiler::map_keys, datapath::pins::Pins};
use stagewall_common::{Config, IpcacheKey, MAP_CONFIG, MAP_IPCACHE};

pub struct Maps {
    config: Array<MapData, Config>,
    ipcache: LpmTrie<MapData, IpcacheKey, u32>,
}

fn open(pins: &Pins, name: &str) -> anyhow::Result<Map> {
    let path = pins.map(name);
    let data = MapData::from_pin(&path).with_context(|| format!("opening {}", path.display()))?;
    Map::from_map_data(data).with_context(|| format!("{}", path.display()))
}

impl Maps {
    /// The maps pinned below the agent's bpffs directory.
    pub fn open(bpffs: &Path) -> anyhow::Result<Maps> {
        let pins = Pins::new(bpffs);
        Ok(Maps {
            config: Array::try_from(open(&pins, MAP_CONFIG)?)?,
            ipcache: LpmTrie::try_from(open(&pins, MAP_IPCACHE)?)?,
        })
    }

    /// The identities of `addresses` in the slot in force (None: the address is unknown
    /// there), all read from one slot: read again if the slot flipped meanwhile.
    pub fn identities(&self, addresses: &[IpAddr]) -> Vec<Option<u32>> {
        loop {
            let slot = self.active_slot();
            let identities = addresses
                .iter()
                .map(|a| {
                    let (len, data) = map_keys::ipcache_key(slot, &ipnet::IpNet::from(*a));
                    self.ipcache.get(&Key::new(len, data), 0).ok()
                })
                .collect();
            if self.active_slot() == slot {
                return identities;
            }
        }
    }

    fn active_slot(&self) -> u32 {
        self.config
            .get(&0, 0)
            .map(|c| c.active_slot)
            .expect("CONFIG holds one entry")
    }
}
