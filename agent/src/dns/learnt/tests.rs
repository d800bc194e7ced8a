use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::*;

const S: u64 = SECOND_NS;

fn ip(n: u32) -> IpAddr {
    IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + n))
}

fn config() -> LearntConfig {
    LearntConfig {
        min_ttl_ns: 10 * S,
        max_ttl_ns: 100 * S,
        grace_ns: S,
        linger_ns: 50 * S,
        max_per_endpoint: 3,
        max_total: 5,
    }
}

fn learn(
    t: &mut Learnt,
    now: u64,
    ep: u32,
    name: &str,
    ids: &[u32],
    addrs: &[(IpAddr, u32)],
) -> Changes {
    let mut changes = Changes::default();
    t.learn(now, ep, name, ids, addrs, &mut changes);
    changes
}

fn ids(v: &DnsLearntValue) -> Vec<u32> {
    v.identities
        .iter()
        .copied()
        .take_while(|&i| i != 0)
        .collect()
}

#[test]
fn allowed_answers_are_written_with_the_clamped_ttl_and_grace() {
    let mut t = Learnt::new(config());
    let c = learn(
        &mut t,
        1000,
        7,
        "pypi.org",
        &[0x8000_0001],
        &[(ip(1), 60), (ip(2), 1), (ip(3), 1_000_000)],
    );
    assert!(c.remove.is_empty());
    let expiries: Vec<u64> = c.write.iter().map(|(_, v)| v.expires_ns).collect();
    assert_eq!(expiries, [1000 + 61 * S, 1000 + 11 * S, 1000 + 101 * S]);
    assert_eq!(c.write[0].0, learnt_key(7, ip(1)));
    assert_eq!(c.write[0].0.family, FAMILY_V4);
    assert_eq!(c.write[0].0.addr[..4], [10, 0, 0, 1]);
    assert_eq!(ids(&c.write[0].1), [0x8000_0001]);
    assert_eq!(t.name_of(7, ip(1)), Some("pypi.org"));
    assert_eq!(t.name_of(8, ip(1)), None, "per workload");
    let v6 = learnt_key(7, IpAddr::V6(Ipv6Addr::LOCALHOST));
    assert_eq!((v6.family, v6.addr[15]), (FAMILY_V6, 1));
}

#[test]
fn names_no_rule_allows_are_kept_for_naming_but_never_written() {
    let mut t = Learnt::new(config());
    let c = learn(&mut t, 0, 7, "evil.example", &[], &[(ip(1), 60)]);
    assert!(c.is_empty());
    assert_eq!(t.name_of(7, ip(1)), Some("evil.example"));
    assert_eq!(t.kernel_value(7, ip(1)), None);
    learn(&mut t, 0, 7, "pypi.org", &[5], &[(ip(2), 60)]);
    assert_eq!(
        t.looked_up(7).collect::<Vec<_>>(),
        ["evil.example", "pypi.org"]
    );
    assert_eq!(t.looked_up(9).count(), 0);
    let s = t.stats();
    assert_eq!((s.entries, s.kernel_entries, s.max_per_endpoint), (2, 1, 2));
}

#[test]
fn identities_and_names_put_the_latest_answer_first() {
    let mut t = Learnt::new(config());
    for (i, name) in ["a", "b", "c", "d", "e", "b"].iter().enumerate() {
        let id = [i as u32 + 1, 1];
        learn(&mut t, 0, 7, name, &id, &[(ip(1), 60)]);
    }
    // Identities: 6 (and 1) from the last answer, then 5, 4: at most four, no repeats.
    assert_eq!(ids(&t.kernel_value(7, ip(1)).unwrap()), [6, 1, 5, 4]);
    assert_eq!(t.name_of(7, ip(1)), Some("b"));
    assert_eq!(t.looked_up(7).collect::<Vec<_>>(), ["b", "c", "d", "e"]);
    // The same answer again changes nothing the kernel holds.
    let expiry = t.kernel_value(7, ip(1)).unwrap().expires_ns;
    let again = learn(&mut t, 0, 7, "b", &[6, 1], &[(ip(1), 60)]);
    assert!(again.is_empty(), "{again:?}");
    assert_eq!(t.kernel_value(7, ip(1)).unwrap().expires_ns, expiry);
}

#[test]
fn a_later_answer_never_shortens_an_expiry_but_an_expired_entry_starts_afresh() {
    let mut t = Learnt::new(config());
    learn(&mut t, 0, 7, "a", &[1], &[(ip(1), 90)]);
    let c = learn(&mut t, 0, 7, "a", &[1], &[(ip(1), 10)]);
    assert!(c.is_empty());
    assert_eq!(t.kernel_value(7, ip(1)).unwrap().expires_ns, 91 * S);
    // A name no rule allows neither extends nor drops the allowance.
    assert!(learn(&mut t, 50 * S, 7, "x", &[], &[(ip(1), 100)]).is_empty());
    assert_eq!(t.kernel_value(7, ip(1)).unwrap().expires_ns, 91 * S);
    // Past the expiry, a new answer's identities replace the old ones.
    let c = learn(&mut t, 200 * S, 7, "b", &[2], &[(ip(1), 10)]);
    assert_eq!(c.write.len(), 1);
    assert_eq!(ids(&c.write[0].1), [2]);
    assert_eq!(c.write[0].1.expires_ns, 211 * S);
    // Past it again, an answer for a name no rule allows (another name on the same
    // address) changes nothing the kernel holds: the expired entry stays, so an open
    // connection decided again after a policy change still finds what allowed it, until
    // the linger runs out. The name is the new one.
    let c = learn(&mut t, 400 * S, 7, "x", &[], &[(ip(1), 10)]);
    assert!(c.is_empty(), "{c:?}");
    assert_eq!(t.kernel_value(7, ip(1)).unwrap().expires_ns, 211 * S);
    assert_eq!(t.name_of(7, ip(1)), Some("x"));
    assert_eq!(t.expire(211 * S + 50 * S), [learnt_key(7, ip(1))]);
}

#[test]
fn a_full_workload_evicts_expired_then_naming_only_then_least_recently_learnt() {
    let mut t = Learnt::new(config());
    learn(&mut t, 0, 7, "short", &[1], &[(ip(1), 1)]); // expires at 11 s
    learn(&mut t, S, 7, "named", &[], &[(ip(2), 60)]);
    learn(&mut t, 2 * S, 7, "old", &[1], &[(ip(3), 60)]);
    // At 20 s the expired one goes first.
    let c = learn(&mut t, 20 * S, 7, "new", &[1], &[(ip(4), 60)]);
    assert_eq!(c.remove, [learnt_key(7, ip(1))]);
    // Then the one kept only for naming (it has no kernel entry to remove).
    let c = learn(&mut t, 21 * S, 7, "new", &[1], &[(ip(5), 60)]);
    assert!(c.remove.is_empty());
    assert_eq!(t.name_of(7, ip(2)), None);
    // Then the least recently answered: ip(3), unless answered again.
    learn(&mut t, 22 * S, 7, "old", &[1], &[(ip(3), 60)]);
    let c = learn(&mut t, 23 * S, 7, "new", &[1], &[(ip(6), 60)]);
    assert_eq!(c.remove, [learnt_key(7, ip(4))]);
    assert_eq!(t.stats().evictions, 3);
    assert_eq!(t.stats().max_per_endpoint, 3);
}

#[test]
fn a_full_node_evicts_across_workloads() {
    let mut t = Learnt::new(config());
    for ep in 0..5 {
        learn(&mut t, ep as u64, ep, "a", &[1], &[(ip(1), 60)]);
    }
    let c = learn(&mut t, 10, 9, "a", &[1], &[(ip(1), 60)]);
    assert_eq!(c.remove, [learnt_key(0, ip(1))]);
    assert_eq!(t.stats().entries, 5);
}

#[test]
fn an_answer_larger_than_the_bound_writes_only_what_stays() {
    let mut t = Learnt::new(config());
    let addrs: Vec<(IpAddr, u32)> = (0..5).map(|i| (ip(i), 60)).collect();
    let c = learn(&mut t, 0, 7, "many", &[1], &addrs);
    let written: Vec<DnsLearntKey> = c.write.iter().map(|(k, _)| *k).collect();
    assert_eq!(written, [2, 3, 4].map(|i| learnt_key(7, ip(i))));
    for k in &written {
        assert!(!c.remove.contains(k));
    }
}

#[test]
fn expire_keeps_expired_entries_for_the_linger() {
    let mut t = Learnt::new(config());
    learn(&mut t, 0, 7, "a", &[1], &[(ip(1), 10)]); // expires at 11 s
    learn(&mut t, 0, 7, "x", &[], &[(ip(2), 10)]);
    assert!(t.expire(60 * S).is_empty());
    assert_eq!(t.name_of(7, ip(1)), Some("a"), "expired, still named");
    assert_eq!(t.expire(61 * S), [learnt_key(7, ip(1))]);
    assert_eq!(t.name_of(7, ip(2)), None);
    assert_eq!(t.stats().expirations, 2);
    assert_eq!(t.stats().entries, 0);
    assert!(t.endpoints.is_empty(), "no empty index is left behind");
}

#[test]
fn forgetting_a_workload_removes_its_kernel_entries() {
    let mut t = Learnt::new(config());
    learn(&mut t, 0, 7, "a", &[1], &[(ip(1), 10), (ip(2), 10)]);
    learn(&mut t, 0, 7, "x", &[], &[(ip(3), 10)]);
    learn(&mut t, 0, 8, "a", &[1], &[(ip(1), 10)]);
    let mut gone = t.forget_endpoint(7);
    gone.sort_by_key(|k| k.addr);
    assert_eq!(gone, [learnt_key(7, ip(1)), learnt_key(7, ip(2))]);
    assert_eq!(t.stats().entries, 1);
    assert_eq!(t.kernel_entries().count(), 1);
}

#[test]
fn a_million_fresh_addresses_stay_within_the_bounds() {
    let mut t = Learnt::new(LearntConfig {
        max_per_endpoint: 1000,
        max_total: 1500,
        ..config()
    });
    let mut changes = Changes::default();
    for i in 0..1_000_000u32 {
        changes.write.clear();
        changes.remove.clear();
        let now = u64::from(i) * 1_000_000; // 1 ms apart, TTL 1 s
        t.learn(now, 7, "churn.example", &[1], &[(ip(i), 1)], &mut changes);
        assert!(changes.remove.len() <= 1);
        if i % 1000 == 0 {
            t.expire(now);
        }
        assert!(t.entries.len() <= 1000);
    }
    let s = t.stats();
    assert!(s.entries <= 1000 && s.max_per_endpoint <= 1000, "{s:?}");
    assert_eq!(t.node.len(), s.entries);
    assert_eq!(t.node.by_recency.len(), s.entries);
    assert_eq!(s.evictions + s.expirations + s.entries as u64, 1_000_000);
}

/// A restarted agent takes over what the pinned map holds: in force until it expires,
/// then removed like the rest; beyond the bounds, removed at once.
#[test]
fn entries_a_previous_agent_learnt_are_adopted_within_the_bounds_and_expire() {
    let mut t = Learnt::new(config());
    let value = |expires_ns| DnsLearntValue {
        expires_ns,
        identities: [7, 0, 0, 0],
    };
    let mut changes = Changes::default();
    for n in 0..4 {
        t.adopt(0, &learnt_key(1, ip(n)), &value(20 * S), &mut changes);
    }
    // Three per workload: the fourth pushed the least recently adopted out.
    assert_eq!(changes.remove, vec![learnt_key(1, ip(0))]);
    assert_eq!(t.kernel_value(1, ip(3)), Some(value(20 * S)));
    assert_eq!(t.name_of(1, ip(3)), None, "the name is not known");
    assert_eq!(t.expire(20 * S + 50 * S - 1), vec![]);
    let mut gone = t.expire(20 * S + 50 * S);
    gone.sort_by_key(|k| k.addr);
    assert_eq!(
        gone,
        vec![
            learnt_key(1, ip(1)),
            learnt_key(1, ip(2)),
            learnt_key(1, ip(3))
        ]
    );
}
