//! The two-slot atomic apply. Every entry of the policy maps belongs to slot 0 or slot 1:
//! ENDPOINTS, SELF_ADDRS, IPCACHE and SERVICES keys carry the slot, policy ids carry it in their top
//! bit (the encodings are compiler/map_keys.rs). A new policy is written into the inactive
//! slot, then one write of CONFIG flips `active_slot`; a packet reads CONFIG once, so it
//! sees the old policy or the new one, never a mix. The old slot keeps the old policy, so
//! the next change writes only what differs from it.
//!
//! The maps are pinned: a restarted agent adopts what they hold (both slots and CONFIG)
//! and goes on from there as from any change.

use std::collections::{BTreeSet, HashMap, HashSet};

use aya::maps::{
    Array, HashMap as BpfHashMap, Map, MapData,
    lpm_trie::{Key, LpmTrie},
};
use stagewall_common::{
    Config, EP_BACKSTOP, EP_DEFAULT_DENY_EGRESS, EP_DEFAULT_DENY_INGRESS, EP_ISOLATED_EGRESS,
    EP_ISOLATED_INGRESS, EP_QUARANTINED, EndpointInfo, EndpointKey, GUARD_ENDPOINT_ID, IpcacheKey,
    MAP_CONFIG, MAP_ENDPOINTS, MAP_IPCACHE, MAP_POLICY, MAP_SELF_ADDRS, MAP_SERVICES, POLICY_ALLOW,
    PolicyKey, SelfAddrKey, ServiceBackend, ServiceKey, UNGUARDED_ENDPOINT_ID,
};

use crate::{
    compiler::{
        Compiled, Endpoint,
        map_keys::{self, LpmKey},
    },
    datapath::{error::DatapathError, host::Target, pins::Pins},
    policy::model::{Attachment, ObjectName},
};

/// The maps that hold the policy, which the agent writes.
pub(super) struct PolicyMaps {
    pub config: Array<MapData, Config>,
    pub endpoints: BpfHashMap<MapData, EndpointKey, EndpointInfo>,
    pub self_addrs: BpfHashMap<MapData, SelfAddrKey, u32>,
    pub ipcache: LpmTrie<MapData, IpcacheKey, u32>,
    pub policy: LpmTrie<MapData, PolicyKey, u32>,
    pub services: BpfHashMap<MapData, ServiceKey, ServiceBackend>,
}

/// The endpoint entry of a guard cgroup: isolated both ways without a rule, so what
/// reaches it (a cgroup below it in no workload) is denied as "default deny". A workload
/// not programmed yet (fail mode closed) gets the same flags under its own id.
pub(super) const GUARD: EndpointInfo = EndpointInfo {
    endpoint_id: GUARD_ENDPOINT_ID,
    ingress_policy: 0,
    egress_policy: 0,
    admin_ingress: 0,
    admin_egress: 0,
    baseline_ingress: 0,
    baseline_egress: 0,
    shadow_admin_ingress: 0,
    shadow_admin_egress: 0,
    shadow_baseline_ingress: 0,
    shadow_baseline_egress: 0,
    flags: EP_ISOLATED_INGRESS
        | EP_ISOLATED_EGRESS
        | EP_DEFAULT_DENY_INGRESS
        | EP_DEFAULT_DENY_EGRESS,
};

/// The endpoint entry of cgroups below a guard that it must not deny (host-network pods,
/// the agent, pods enforced by TC): isolated in neither direction.
pub(super) const UNGUARDED: EndpointInfo = EndpointInfo {
    endpoint_id: UNGUARDED_ENDPOINT_ID,
    ingress_policy: 0,
    egress_policy: 0,
    admin_ingress: 0,
    admin_egress: 0,
    baseline_ingress: 0,
    baseline_egress: 0,
    shadow_admin_ingress: 0,
    shadow_admin_egress: 0,
    shadow_baseline_ingress: 0,
    shadow_baseline_egress: 0,
    flags: 0,
};

/// The ENDPOINTS key of a cgroup or interface found on this host, in slot `slot`.
pub(super) fn endpoint_key(slot: u32, target: &Target) -> EndpointKey {
    match target {
        Target::Cgroup { id, .. } => map_keys::cgroup_endpoint_key(slot, *id),
        Target::Interface { ifindex, .. } => map_keys::interface_endpoint_key(slot, *ifindex),
    }
}

/// What one slot of the policy maps holds. Both slots stay filled: the inactive one holds
/// the policy before the one in force, so a change writes only the entries that differ
/// from it (a one-rule change is a handful of map updates, not the whole policy), then
/// switches.
#[derive(Default)]
pub(super) struct SlotContents {
    endpoints: HashMap<EndpointKey, EndpointInfo>,
    self_addrs: HashSet<SelfAddrKey>,
    ipcache: HashMap<LpmKey<IpcacheKey>, u32>,
    /// Key -> value: POLICY_ALLOW for NetworkPolicy entries, the action and rule for the
    /// tier programs' (compiler/tiers.rs).
    policy: HashMap<LpmKey<PolicyKey>, u32>,
    services: HashMap<ServiceKey, ServiceBackend>,
}

/// Is `target` the interface that backs a cgroup-attached workload up?
fn is_backstop(ep: &Endpoint, target: &Target) -> bool {
    matches!(target, Target::Interface { .. }) && !matches!(ep.attachment, Attachment::Interface(_))
}

impl SlotContents {
    /// What slot `slot` holds for `compiled`: the guards, the node's own cgroups below them,
    /// the workloads found on this host (`targets`; those in `quarantined` flagged so),
    /// their own addresses, the IP cache and the policy entries.
    pub fn for_policy(
        slot: u32,
        compiled: &Compiled,
        targets: &[(&Endpoint, Target)],
        guards: &[Target],
        node: &[Target],
        quarantined: &BTreeSet<ObjectName>,
    ) -> SlotContents {
        let mut contents = SlotContents::default();
        for guard in guards {
            contents.endpoints.insert(endpoint_key(slot, guard), GUARD);
        }
        for cgroup in node {
            contents
                .endpoints
                .insert(endpoint_key(slot, cgroup), UNGUARDED);
        }
        for (ep, target) in targets {
            let info = EndpointInfo {
                endpoint_id: ep.endpoint_id,
                ingress_policy: map_keys::slot_policy_id(ep.ingress_policy_id, slot),
                egress_policy: map_keys::slot_policy_id(ep.egress_policy_id, slot),
                admin_ingress: map_keys::slot_policy_id(ep.tiers.admin_ingress, slot),
                admin_egress: map_keys::slot_policy_id(ep.tiers.admin_egress, slot),
                baseline_ingress: map_keys::slot_policy_id(ep.tiers.baseline_ingress, slot),
                baseline_egress: map_keys::slot_policy_id(ep.tiers.baseline_egress, slot),
                shadow_admin_ingress: map_keys::slot_policy_id(ep.shadow_tiers.admin_ingress, slot),
                shadow_admin_egress: map_keys::slot_policy_id(ep.shadow_tiers.admin_egress, slot),
                shadow_baseline_ingress: map_keys::slot_policy_id(
                    ep.shadow_tiers.baseline_ingress,
                    slot,
                ),
                shadow_baseline_egress: map_keys::slot_policy_id(
                    ep.shadow_tiers.baseline_egress,
                    slot,
                ),
                flags: ep.flags
                    | if quarantined.contains(&ep.workload) {
                        EP_QUARANTINED
                    } else {
                        0
                    }
                    | if is_backstop(ep, target) {
                        EP_BACKSTOP
                    } else {
                        0
                    },
            };
            contents.endpoints.insert(endpoint_key(slot, target), info);
            for addr in &ep.addresses {
                contents
                    .self_addrs
                    .insert(map_keys::self_addr_key(slot, ep.endpoint_id, *addr));
            }
        }
        for (prefix, identity) in compiled.ipcache() {
            contents
                .ipcache
                .insert(map_keys::ipcache_key(slot, prefix), *identity);
        }
        for entry in &compiled.policy {
            contents
                .policy
                .insert(map_keys::policy_key(entry, slot), POLICY_ALLOW);
        }
        for (entry, value) in &compiled.tier_entries {
            contents
                .policy
                .insert(map_keys::policy_key(entry, slot), *value);
        }
        contents
            .services
            .extend(map_keys::service_entries(slot, &compiled.services));
        contents
    }

    /// Adds `flag` to the endpoints whose flags have all of `having` (a per-run setting
    /// the compiled policy does not know, such as the SNI check).
    pub(super) fn add_flag_where(&mut self, having: u32, flag: u32) {
        for info in self.endpoints.values_mut() {
            if info.flags & having == having {
                info.flags |= flag;
            }
        }
    }

    fn len(&self) -> usize {
        self.endpoints.len()
            + self.self_addrs.len()
            + self.ipcache.len()
            + self.policy.len()
            + self.services.len()
    }
}

fn write(map: &'static str) -> impl FnOnce(aya::maps::MapError) -> DatapathError {
    move |source| DatapathError::WriteMap { map, source }
}

fn remove_from(map: &'static str) -> impl FnOnce(aya::maps::MapError) -> DatapathError {
    move |source| DatapathError::RemoveFromMap { map, source }
}

/// The policy maps, what each slot holds, and which slot is in force.
pub(super) struct Slots {
    maps: PolicyMaps,
    /// CONFIG as last written.
    current: Config,
    held: [SlotContents; 2],
}

impl Slots {
    /// Reads what a previous agent left in the pinned maps: the policy in force (CONFIG)
    /// and what each slot holds, so the first apply writes only what differs and switches
    /// as any change does. Fresh maps hold nothing: generation 0, both slots empty.
    pub fn adopt(maps: PolicyMaps) -> Result<Slots, DatapathError> {
        let current = maps
            .config
            .get(&0, 0)
            .map_err(|source| DatapathError::ReadMap {
                map: MAP_CONFIG,
                source,
            })?;
        let mut held: [SlotContents; 2] = Default::default();
        fn slot(held: &mut [SlotContents; 2], n: u32) -> Result<&mut SlotContents, DatapathError> {
            held.get_mut(n as usize)
                .ok_or(DatapathError::UnknownSlot { slot: n })
        }
        for entry in maps.endpoints.iter() {
            let (key, info) = entry?;
            slot(&mut held, map_keys::endpoint_key_slot(&key))?
                .endpoints
                .insert(key, info);
        }
        for key in maps.self_addrs.keys() {
            let key = key?;
            slot(&mut held, map_keys::self_addr_key_slot(&key))?
                .self_addrs
                .insert(key);
        }
        for entry in maps.ipcache.iter() {
            let (key, identity) = entry?;
            let data = key.data();
            slot(&mut held, map_keys::ipcache_key_slot(&data))?
                .ipcache
                .insert((key.prefix_len(), data), identity);
        }
        for entry in maps.policy.iter() {
            let (key, value) = entry?;
            let data = key.data();
            slot(&mut held, map_keys::policy_key_slot(&data))?
                .policy
                .insert((key.prefix_len(), data), value);
        }
        for entry in maps.services.iter() {
            let (key, backend) = entry?;
            slot(&mut held, map_keys::service_key_slot(&key))?
                .services
                .insert(key, backend);
        }
        if current.generation > 0 {
            log::info!(
                "adopted the pinned state: policy generation {} in force (slot {}), {} and {} entries in the slots",
                current.generation,
                current.active_slot,
                held[0].len(),
                held[1].len()
            );
        }
        Ok(Slots {
            maps,
            current,
            held,
        })
    }

    /// The slot in force.
    pub fn active(&self) -> u32 {
        self.current.active_slot
    }

    /// The generation of the policy in force (0: none applied yet).
    pub fn generation(&self) -> u32 {
        self.current.generation
    }

    /// The entry the slot in force holds under `key`.
    pub fn active_endpoint(&self, key: &EndpointKey) -> Option<&EndpointInfo> {
        self.held[self.current.active_slot as usize & 1]
            .endpoints
            .get(key)
    }

    /// Adds an endpoint entry for `target` to the slot in force of the maps a previous
    /// agent pinned, without loading anything; false when nothing is pinned. Only while no
    /// agent runs (nothing else writes the maps then).
    pub fn add_to_pinned_active(
        pins: &Pins,
        target: &Target,
        info: EndpointInfo,
    ) -> Result<bool, DatapathError> {
        let open = |name: &'static str| {
            let path = pins.map(name);
            MapData::from_pin(&path)
                .and_then(Map::from_map_data)
                .map_err(|source| DatapathError::PinnedMap { path, source })
        };
        if !pins.map(MAP_CONFIG).exists() || !pins.map(MAP_ENDPOINTS).exists() {
            return Ok(false);
        }
        let config: Array<MapData, Config> =
            Array::try_from(open(MAP_CONFIG)?).map_err(|source| DatapathError::ReadMap {
                map: MAP_CONFIG,
                source,
            })?;
        let active = config
            .get(&0, 0)
            .map_err(|source| DatapathError::ReadMap {
                map: MAP_CONFIG,
                source,
            })?
            .active_slot;
        let mut endpoints: BpfHashMap<MapData, EndpointKey, EndpointInfo> =
            BpfHashMap::try_from(open(MAP_ENDPOINTS)?).map_err(write(MAP_ENDPOINTS))?;
        endpoints
            .insert(endpoint_key(active, target), info, 0)
            .map_err(write(MAP_ENDPOINTS))?;
        Ok(true)
    }

    /// Adds an endpoint to the slot in force, for a workload it does not hold yet (the
    /// caller makes sure nothing reads the entry before it is complete).
    pub fn add_to_active(
        &mut self,
        key: EndpointKey,
        info: EndpointInfo,
    ) -> Result<(), DatapathError> {
        self.maps
            .endpoints
            .insert(key, info, 0)
            .map_err(write(MAP_ENDPOINTS))?;
        self.held[self.current.active_slot as usize & 1]
            .endpoints
            .insert(key, info);
        Ok(())
    }

    /// Makes the (inactive) slot `slot` hold `desired`. On an error nothing was switched:
    /// the half-written slot is emptied (the next change writes it whole) and the policy
    /// in force stays.
    pub fn fill(&mut self, slot: u32, desired: SlotContents) -> Result<(), DatapathError> {
        if let Err(e) = self.write_diff(slot, &desired) {
            self.empty(slot, &desired);
            return Err(e);
        }
        self.held[slot as usize] = desired;
        Ok(())
    }

    /// Puts `next` in force with one write of CONFIG: its slot, mode and settings.
    pub fn switch(&mut self, next: Config) -> Result<(), DatapathError> {
        self.maps
            .config
            .set(0, next, 0)
            .map_err(write(MAP_CONFIG))?;
        self.current = next;
        Ok(())
    }

    /// Removes from slot `slot` what it holds and `desired` does not, and writes what
    /// differs.
    fn write_diff(&mut self, slot: u32, desired: &SlotContents) -> Result<(), DatapathError> {
        let held = &self.held[slot as usize];
        let maps = &mut self.maps;
        for key in held
            .endpoints
            .keys()
            .filter(|k| !desired.endpoints.contains_key(k))
        {
            maps.endpoints
                .remove(key)
                .map_err(remove_from(MAP_ENDPOINTS))?;
        }
        for key in held.self_addrs.difference(&desired.self_addrs) {
            maps.self_addrs
                .remove(key)
                .map_err(remove_from(MAP_SELF_ADDRS))?;
        }
        for (len, data) in held
            .ipcache
            .keys()
            .filter(|k| !desired.ipcache.contains_key(k))
        {
            maps.ipcache
                .remove(&Key::new(*len, *data))
                .map_err(remove_from(MAP_IPCACHE))?;
        }
        for (len, data) in held
            .policy
            .keys()
            .filter(|k| !desired.policy.contains_key(k))
        {
            maps.policy
                .remove(&Key::new(*len, *data))
                .map_err(remove_from(MAP_POLICY))?;
        }
        for key in held
            .services
            .keys()
            .filter(|k| !desired.services.contains_key(k))
        {
            maps.services
                .remove(key)
                .map_err(remove_from(MAP_SERVICES))?;
        }
        for (key, info) in &desired.endpoints {
            if held.endpoints.get(key) != Some(info) {
                maps.endpoints
                    .insert(key, info, 0)
                    .map_err(write(MAP_ENDPOINTS))?;
            }
        }
        for key in desired.self_addrs.difference(&held.self_addrs) {
            maps.self_addrs
                .insert(key, 1, 0)
                .map_err(write(MAP_SELF_ADDRS))?;
        }
        for ((len, data), identity) in &desired.ipcache {
            if held.ipcache.get(&(*len, *data)) != Some(identity) {
                maps.ipcache
                    .insert(&Key::new(*len, *data), identity, 0)
                    .map_err(write(MAP_IPCACHE))?;
            }
        }
        for ((len, data), value) in &desired.policy {
            if held.policy.get(&(*len, *data)) != Some(value) {
                maps.policy
                    .insert(&Key::new(*len, *data), value, 0)
                    .map_err(write(MAP_POLICY))?;
            }
        }
        for (key, backend) in &desired.services {
            if held.services.get(key) != Some(backend) {
                maps.services
                    .insert(key, backend, 0)
                    .map_err(write(MAP_SERVICES))?;
            }
        }
        Ok(())
    }

    /// Removes everything slot `slot` may hold after a failed write: what it held and
    /// what was being written.
    fn empty(&mut self, slot: u32, desired: &SlotContents) {
        let held = std::mem::take(&mut self.held[slot as usize]);
        let maps = &mut self.maps;
        for contents in [&held, desired] {
            for key in contents.endpoints.keys() {
                let _ = maps.endpoints.remove(key);
            }
            for key in &contents.self_addrs {
                let _ = maps.self_addrs.remove(key);
            }
            for (len, data) in contents.ipcache.keys() {
                let _ = maps.ipcache.remove(&Key::new(*len, *data));
            }
            for (len, data) in contents.policy.keys() {
                let _ = maps.policy.remove(&Key::new(*len, *data));
            }
            for key in contents.services.keys() {
                let _ = maps.services.remove(key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use stagewall_common::{EP_NAME_RULES, EP_SNI_CHECK, EndpointKey};

    use super::*;

    #[test]
    fn the_sni_check_goes_to_endpoints_with_name_rules_only() {
        let mut contents = SlotContents::default();
        let key = |id| EndpointKey {
            slot: 0,
            kind: 1,
            id,
        };
        let named = EndpointInfo {
            flags: EP_NAME_RULES | EP_ISOLATED_EGRESS,
            ..UNGUARDED
        };
        contents.endpoints.insert(key(1), named);
        contents.endpoints.insert(key(2), GUARD);
        contents.add_flag_where(EP_NAME_RULES, EP_SNI_CHECK);
        assert_eq!(
            contents.endpoints[&key(1)].flags,
            named.flags | EP_SNI_CHECK
        );
        assert_eq!(contents.endpoints[&key(2)].flags, GUARD.flags);
    }
}
