//! The records' tests: aggregation, the file format, the bound, a bad file set aside,
//! what is recorded, saved and read back, and the files' modes.

use super::*;
use crate::events::{Hook, Reason};
use crate::{events::Verdict::*, policy::model::Direction::*};
use stagewall_common::{EP_AUDIT_EGRESS, EP_AUDIT_INGRESS};

fn event(
    verdict: Verdict,
    direction: Direction,
    peer: &str,
    port: u16,
    suppressed: u32,
) -> VerdictEvent {
    let peer_addr: IpAddr = peer.parse().unwrap();
    let local: IpAddr = "10.0.0.1".parse().unwrap();
    let ingress = direction == Ingress;
    VerdictEvent {
        time: String::new(),
        node: "n".into(),
        verdict,
        reason: Reason::NoRule,
        direction,
        protocol: IpProtocol::Tcp,
        src: Some(if ingress { peer_addr } else { local }),
        src_port: Some(40_000),
        dst: Some(if ingress { local } else { peer_addr }),
        dst_port: Some(port),
        namespace: "ml".into(),
        workload: "ml/trainer".into(),
        stage: Some("training".into()),
        peer: "world".into(),
        policies: Vec::new(),
        hook: Hook::CgroupSkb,
        suppressed,
        service: None,
        rule: None,
        dst_name: None,
    }
}

fn dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("stagewall-records-{name}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&d);
    d
}

#[test]
fn events_aggregate_per_flow_and_survive_a_restart() {
    let d = dir("aggregate");
    let path = d.join("flows.json");
    let mut r = FlowRecords::open(&path, 100, Mode::Audit).unwrap();
    r.cover("ml/trainer", Egress, Some("training"));
    r.observe_at(&event(Allowed, Egress, "10.0.0.2", 443, 0), 100);
    r.observe_at(&event(WouldDrop, Egress, "10.0.0.2", 443, 4), 105);
    r.observe_at(&event(Allowed, Ingress, "10.0.0.2", 8080, 0), 106);
    // The client's ephemeral port is not part of the key: a new connection to the
    // same service is the same record.
    let mut again = event(Allowed, Egress, "10.0.0.2", 443, 0);
    again.src_port = Some(40_001);
    r.observe_at(&again, 110);
    assert_eq!(r.len(), 2, "egress 443 and ingress 8080");
    r.save().unwrap();

    let reopened = FlowRecords::open(&path, 100, Mode::Audit).unwrap();
    let egress = reopened
        .records
        .values()
        .find(|x| x.key.direction == Egress)
        .unwrap();
    assert_eq!(
        (egress.allowed, egress.would_drop, egress.dropped),
        (2, 5, 0)
    );
    assert_eq!((egress.first_seen, egress.last_seen), (100, 110));
    assert_eq!(egress.key.port, Some(443));
    assert!(egress.passed());
    let file = load(&path).unwrap();
    assert_eq!(file.records.len(), 2);
    assert_eq!(file.agent_mode, Mode::Audit);
    assert!(file.covered("ml/trainer", Egress));
    assert!(!file.covered("ml/trainer", Ingress));
    fs::remove_dir_all(d).unwrap();
}

#[test]
fn a_file_as_written_before_is_read_and_written_back_the_same() {
    let d = dir("format");
    fs::create_dir_all(&d).unwrap();
    let path = d.join("flows.json");
    let record = |direction: &str, protocol: &str, port: &str| {
        format!(
            r#"{{"workload":"ml/a","direction":"{direction}","protocol":"{protocol}","port":{port},"peer_address":"10.0.0.9","stage":null,"peer":"world","allowed":1,"would_drop":2,"dropped":0,"first_seen":1,"last_seen":2}}"#
        )
    };
    let records = [
        record("egress", "icmp", "null"),
        record("egress", "ip-proto-10", "null"),
        record("egress", "ip-proto-2", "null"),
        record("egress", "tcp", "443"),
        record("ingress", "tcp", "80"),
    ];
    let written = format!(
        r#"{{"version":1,"agent_mode":"audit","evicted":3,"watched":[{{"workload":"ml/a","direction":"egress","stage":"training","since":5}},{{"workload":"ml/a","direction":"ingress","stage":null,"since":6}}],"records":[{}]}}"#,
        records.join(",")
    );
    fs::write(&path, &written).unwrap();
    let file = load(&path).unwrap();
    assert_eq!(file.records[3].key.direction, Egress);
    assert_eq!(file.records[1].key.protocol, IpProtocol::Other(10));
    let mut r = FlowRecords::open(&path, 100, Mode::Audit).unwrap();
    r.dirty = true;
    r.save().unwrap();
    assert_eq!(fs::read_to_string(&path).unwrap(), written);
    fs::remove_dir_all(d).unwrap();
}

#[test]
fn the_least_recently_seen_records_make_room() {
    let d = dir("bounded");
    let mut r = FlowRecords::open(&d.join("flows.json"), 32, Mode::Audit).unwrap();
    for port in 0..100u16 {
        r.observe_at(&event(Allowed, Egress, "10.0.0.2", port, 0), port as u64);
    }
    assert!(r.len() <= 32, "{}", r.len());
    assert_eq!(r.evicted as usize + r.len(), 100);
    let oldest_kept = r.records.values().map(|x| x.last_seen).min().unwrap();
    assert!(
        oldest_kept >= 100 - 32,
        "kept the newest, oldest kept is {oldest_kept}"
    );
    assert!(r.records.values().any(|x| x.key.port == Some(99)));
    fs::remove_dir_all(d).unwrap();
}

#[test]
fn an_unreadable_file_is_set_aside_not_overwritten() {
    let d = dir("unreadable");
    fs::create_dir_all(&d).unwrap();
    let path = d.join("flows.json");
    fs::write(&path, b"{\"version\": 1, \"records\": [").unwrap();
    let mut r = FlowRecords::open(&path, 10, Mode::Enforce).unwrap();
    assert!(r.is_empty());
    assert_eq!(
        fs::read(d.join("flows.json.unreadable")).unwrap(),
        b"{\"version\": 1, \"records\": ["
    );
    r.observe_at(&event(Dropped, Ingress, "10.0.0.3", 22, 0), 1);
    r.save().unwrap();
    assert_eq!(load(&path).unwrap().records.len(), 1);
    let e = load(&d.join("missing.json")).unwrap_err();
    assert!(format!("{e:#}").contains("no flow records at"), "{e:#}");
    fs::remove_dir_all(d).unwrap();
}

#[test]
fn records_take_audited_directions_or_all_or_none() {
    let filter = |recording, agent_audits| RecordFilter {
        recording,
        agent_audits,
    };
    let audited = filter(Recording::Audited, false);
    assert!(audited.covers(EP_AUDIT_INGRESS, Ingress));
    assert!(!audited.covers(EP_AUDIT_INGRESS, Egress), "per direction");
    assert!(!audited.covers(0, Ingress), "an enforced workload");
    assert!(
        filter(Recording::Audited, true).covers(0, Egress),
        "--mode audit"
    );
    assert!(filter(Recording::All, false).covers(0, Egress));
    assert!(!filter(Recording::Off, true).covers(EP_AUDIT_EGRESS, Egress));
}

fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt as _;
    fs::metadata(path).unwrap().permissions().mode()
}

#[test]
fn the_records_file_and_the_directory_made_for_it_are_private() {
    // They name peers' addresses: no other local user reads them, whatever the umask.
    let d = dir("private");
    fs::create_dir_all(&d).unwrap();
    let path = d.join("state/records.json");
    let mut records = FlowRecords::open(&path, 10, Mode::Enforce).unwrap();
    records.save().unwrap();
    for p in [&d.join("state"), &path] {
        assert_eq!(mode(p) & 0o077, 0, "{} is {:o}", p.display(), mode(p));
    }
    fs::remove_dir_all(&d).unwrap();
}

#[test]
fn a_symlink_planted_at_the_temporary_path_is_not_followed() {
    let d = dir("link");
    let path = d.join("records.json");
    let mut records = FlowRecords::open(&path, 10, Mode::Enforce).unwrap();
    let elsewhere = d.join("elsewhere");
    fs::write(&elsewhere, b"").unwrap();
    std::os::unix::fs::symlink(&elsewhere, with_suffix(&path, ".tmp")).unwrap();
    records.save().unwrap();
    assert_eq!(
        fs::read(&elsewhere).unwrap(),
        b"",
        "nothing written through the link"
    );
    assert!(
        fs::symlink_metadata(&path).unwrap().is_file(),
        "the records are a file"
    );
    assert!(read(&path).unwrap().is_some(), "and they read back");
    fs::remove_dir_all(&d).unwrap();
}

/// A file's counts may be anything up to u64::MAX (a long-lived agent, or a file written
/// by hand): adding events to them saturates instead of overflowing.
#[test]
fn counts_saturate_at_the_largest_the_file_holds() {
    let d = dir("saturate");
    let path = d.join("flows.json");
    let mut r = FlowRecords::open(&path, 100, Mode::Audit).unwrap();
    r.observe_at(&event(Allowed, Egress, "10.0.0.2", 443, 0), 1);
    for record in r.records.values_mut() {
        record.allowed = u64::MAX - 1;
    }
    r.observe_at(&event(Allowed, Egress, "10.0.0.2", 443, u32::MAX), 2);
    let record = r.records.values().next().unwrap();
    assert_eq!(record.allowed, u64::MAX);
    assert_eq!(record.last_seen, 2);
    let _ = fs::remove_dir_all(d);
}
