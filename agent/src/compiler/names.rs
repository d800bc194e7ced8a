//! Egress by name: which domain-name patterns hold each endpoint's egress, and their
//! identities. The POLICY entries of a name are keyed by its pattern's identity
//! (`DomainPattern::identity`, never in IPCACHE); the kernel finds it for an address only
//! in DNS_LEARNT, which the DNS proxy fills from `NameRules::identities_for`, once per
//! answer. Endpoints with patterns get EP_NAME_RULES.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use super::CompileError;
use crate::policy::model::{ClusterPeer, Direction, DomainPattern, Peer, PolicySet, Workload};

/// The patterns of every endpoint with name rules, by endpoint id.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NameRules {
    /// Patterns with their identities, sorted by pattern, without repeats.
    by_endpoint: HashMap<u32, Vec<(DomainPattern, u32)>>,
}

impl NameRules {
    /// The pattern whose identity `identity` is (for `stagewall get`), if any endpoint has it.
    pub fn pattern_of(&self, identity: u32) -> Option<&DomainPattern> {
        self.by_endpoint
            .values()
            .flatten()
            .find(|(_, id)| *id == identity)
            .map(|(pattern, _)| pattern)
    }

    /// The identities of every pattern that holds `endpoint_id`'s egress and matches
    /// `name` (a name from a DNS answer: any case, a trailing dot tolerated); empty when
    /// the workload has no name rules or none match. Cheap: a workload has a handful of
    /// patterns, each compared without allocating.
    pub fn identities_for(&self, endpoint_id: u32, name: &str) -> Vec<u32> {
        self.by_endpoint
            .get(&endpoint_id)
            .map(|patterns| {
                patterns
                    .iter()
                    .filter(|(p, _)| p.matches(name))
                    .map(|(_, id)| *id)
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Whether any rule holding `endpoint_id`'s egress names a domain (EP_NAME_RULES).
    pub fn has_name_rules(&self, endpoint_id: u32) -> bool {
        self.by_endpoint.contains_key(&endpoint_id)
    }

    /// The patterns that hold `endpoint_id`'s egress, sorted.
    pub fn patterns(&self, endpoint_id: u32) -> impl Iterator<Item = &DomainPattern> {
        self.by_endpoint
            .get(&endpoint_id)
            .into_iter()
            .flatten()
            .map(|(p, _)| p)
    }

    /// Records the patterns of an endpoint (none: nothing recorded).
    pub(super) fn insert(&mut self, endpoint_id: u32, patterns: BTreeSet<DomainPattern>) {
        if patterns.is_empty() {
            return;
        }
        let patterns = patterns
            .into_iter()
            .map(|p| {
                let id = p.identity();
                (p, id)
            })
            .collect();
        self.by_endpoint.insert(endpoint_id, patterns);
    }
}

/// The patterns of `local`'s egress: the Domain peers of the NetworkPolicies that isolate
/// it for egress and the domainNames of the ClusterNetworkPolicies that hold it (audited
/// ones too: their shadow programs read the same learnt identities).
pub(super) fn egress_patterns(set: &PolicySet, local: &Workload) -> BTreeSet<DomainPattern> {
    let mut patterns = BTreeSet::new();
    for p in set.isolating(local, Direction::Egress) {
        for rule in &p.egress {
            for peer in &rule.peers {
                if let Peer::Domain(d) = peer {
                    patterns.insert(d.clone());
                }
            }
        }
    }
    for p in set.cluster_policies_of(local, Direction::Egress) {
        for rule in &p.egress {
            for peer in &rule.peers {
                if let ClusterPeer::Domains(ds) = peer {
                    patterns.extend(ds.iter().cloned());
                }
            }
        }
    }
    patterns
}

/// Refuses two different patterns of the desired state with one identity: the kernel
/// could not tell them apart (an FNV-1a collision, rare but possible).
pub(super) fn check_collisions(set: &PolicySet) -> Result<(), CompileError> {
    let mut seen: BTreeMap<u32, DomainPattern> = BTreeMap::new();
    let network = set
        .policies
        .iter()
        .flat_map(|p| p.egress.iter().chain(&p.ingress))
        .flat_map(|r| &r.peers)
        .filter_map(|peer| match peer {
            Peer::Domain(d) => Some(d),
            _ => None,
        });
    let cluster = set
        .cluster_policies
        .iter()
        .flat_map(|p| p.egress.iter().chain(&p.ingress))
        .flat_map(|r| &r.peers)
        .filter_map(|peer| match peer {
            ClusterPeer::Domains(ds) => Some(ds),
            _ => None,
        })
        .flatten();
    for pattern in network.chain(cluster) {
        check_one(&mut seen, pattern)?;
    }
    Ok(())
}

fn check_one(
    seen: &mut BTreeMap<u32, DomainPattern>,
    pattern: &DomainPattern,
) -> Result<(), CompileError> {
    let id = pattern.identity();
    match seen.get(&id) {
        Some(other) if other != pattern => Err(CompileError::NameIdentityCollision {
            first: other.to_string(),
            second: pattern.to_string(),
            identity: id,
        }),
        Some(_) => Ok(()),
        None => {
            seen.insert(id, pattern.clone());
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(text: &str) -> DomainPattern {
        DomainPattern::parse(text).unwrap()
    }

    #[test]
    fn identities_for_a_name_are_those_of_the_patterns_that_match_it() {
        let mut rules = NameRules::default();
        rules.insert(
            7,
            [
                p("pypi.org"),
                p("*.pythonhosted.org"),
                p("*.files.pythonhosted.org"),
            ]
            .into_iter()
            .collect(),
        );
        rules.insert(8, BTreeSet::new());
        assert!(rules.has_name_rules(7));
        assert!(!rules.has_name_rules(8));
        assert!(rules.identities_for(8, "pypi.org").is_empty());
        assert!(rules.identities_for(9, "pypi.org").is_empty());
        assert_eq!(
            rules.identities_for(7, "PyPI.org."),
            [p("pypi.org").identity()]
        );
        // A wildcard needs a label of its own: files.pythonhosted.org is not
        // *.files.pythonhosted.org.
        assert_eq!(
            rules.identities_for(7, "files.pythonhosted.org"),
            [p("*.pythonhosted.org").identity()]
        );
        let mut found = rules.identities_for(7, "a.files.pythonhosted.org");
        found.sort_unstable();
        let mut expected = vec![
            p("*.pythonhosted.org").identity(),
            p("*.files.pythonhosted.org").identity(),
        ];
        expected.sort_unstable();
        assert_eq!(found, expected);
        assert!(rules.identities_for(7, "example.com").is_empty());
        let listed: Vec<&str> = rules.patterns(7).map(|p| p.as_str()).collect();
        assert_eq!(
            listed,
            ["*.files.pythonhosted.org", "*.pythonhosted.org", "pypi.org"]
        );
    }

    #[test]
    fn two_patterns_with_one_identity_are_refused_naming_both() {
        let mut seen = BTreeMap::new();
        check_one(&mut seen, &p("pypi.org")).unwrap();
        check_one(&mut seen, &p("PYPI.org")).unwrap();
        // Forge a collision: the same identity recorded for another pattern.
        seen.insert(p("example.org").identity(), p("other.org"));
        let err = check_one(&mut seen, &p("example.org")).unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("other.org") && text.contains("example.org"),
            "{text}"
        );
    }
}
