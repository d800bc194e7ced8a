use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use proptest::prelude::*;

use super::*;

fn v4(a: u8, b: u8, c: u8, d: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(a, b, c, d))
}

#[test]
fn a_query_reads_back_as_written() {
    let raw = query(0x1234, "PyPI.Org.", TYPE_A).unwrap();
    let msg = Message::parse(&raw).unwrap();
    assert_eq!(msg.id, 0x1234);
    assert!(!msg.is_response());
    let q = msg.question.unwrap();
    assert_eq!(q.name.as_str(), "pypi.org");
    assert_eq!((q.qtype, q.qclass), (TYPE_A, CLASS_IN));
    assert!(msg.answers.is_empty());
    assert!(resolve_chain(&msg).is_none(), "a query is no answer");
}

#[test]
fn an_answer_gives_its_addresses_and_ttls() {
    let raw = ResponseBuilder::new(7, "pypi.org", TYPE_A)
        .unwrap()
        .addr("pypi.org", 300, v4(151, 101, 0, 223))
        .unwrap()
        .addr("PYPI.org.", 60, v4(151, 101, 64, 223))
        .unwrap()
        .build();
    let msg = Message::parse(&raw).unwrap();
    assert!(msg.is_learnable());
    let r = resolve_chain(&msg).unwrap();
    assert_eq!(r.names, ["pypi.org"]);
    assert_eq!(
        r.addrs,
        [(v4(151, 101, 0, 223), 300), (v4(151, 101, 64, 223), 60)]
    );
}

#[test]
fn a_cname_chain_is_followed_with_the_smallest_ttl() {
    let raw = ResponseBuilder::new(7, "files.pythonhosted.org", TYPE_AAAA)
        .unwrap()
        .cname(
            "files.pythonhosted.org",
            100,
            "dualstack.python.map.fastly.net",
        )
        .unwrap()
        .cname("dualstack.python.map.fastly.net", 30, "edge.fastly.net")
        .unwrap()
        .addr("edge.fastly.net", 500, IpAddr::V6(Ipv6Addr::LOCALHOST))
        .unwrap()
        // An address of a name off the chain is no answer to the question.
        .addr("elsewhere.example", 500, v4(10, 0, 0, 1))
        .unwrap()
        .build();
    let r = resolve_chain(&Message::parse(&raw).unwrap()).unwrap();
    assert_eq!(
        r.names,
        [
            "files.pythonhosted.org",
            "dualstack.python.map.fastly.net",
            "edge.fastly.net"
        ]
    );
    assert_eq!(r.addrs, [(IpAddr::V6(Ipv6Addr::LOCALHOST), 30)]);
}

#[test]
fn cname_loops_forks_and_long_chains_resolve_to_nothing() {
    let looped = ResponseBuilder::new(1, "a.example", TYPE_A)
        .unwrap()
        .cname("a.example", 10, "b.example")
        .unwrap()
        .cname("b.example", 10, "a.example")
        .unwrap()
        .build();
    assert_eq!(resolve_chain(&Message::parse(&looped).unwrap()), None);
    let forked = ResponseBuilder::new(1, "a.example", TYPE_A)
        .unwrap()
        .cname("a.example", 10, "b.example")
        .unwrap()
        .cname("a.example", 10, "c.example")
        .unwrap()
        .build();
    assert_eq!(resolve_chain(&Message::parse(&forked).unwrap()), None);
    let chain = |links: usize| {
        let mut b = ResponseBuilder::new(1, "n0.example", TYPE_A).unwrap();
        for i in 0..links {
            b = b
                .cname(&format!("n{i}.example"), 10, &format!("n{}.example", i + 1))
                .unwrap();
        }
        b = b
            .addr(&format!("n{links}.example"), 10, v4(1, 2, 3, 4))
            .unwrap();
        Message::parse(&b.build()).unwrap()
    };
    let longest = resolve_chain(&chain(CHAIN_MAX)).unwrap();
    assert_eq!(longest.names.len(), CHAIN_MAX + 1);
    assert_eq!(longest.addrs, [(v4(1, 2, 3, 4), 10)]);
    assert_eq!(resolve_chain(&chain(CHAIN_MAX + 1)), None);
}

#[test]
fn only_complete_noerror_answers_to_one_address_question_are_learnable() {
    let answer = |flags: u16, qtype: u16| {
        let raw = ResponseBuilder::new(1, "pypi.org", qtype)
            .unwrap()
            .flags(flags)
            .addr("pypi.org", 10, v4(1, 2, 3, 4))
            .unwrap()
            .build();
        Message::parse(&raw).unwrap()
    };
    assert!(answer(FLAG_QR, TYPE_A).is_learnable());
    assert!(!answer(FLAG_QR | FLAG_TC, TYPE_A).is_learnable());
    assert!(!answer(FLAG_QR | u16::from(RCODE_NXDOMAIN), TYPE_A).is_learnable());
    assert!(
        !answer(FLAG_QR | (5 << 11), TYPE_A).is_learnable(),
        "opcode UPDATE"
    );
    assert!(!answer(0, TYPE_A).is_learnable(), "a query");
    assert!(!answer(FLAG_QR, 16).is_learnable(), "TXT");
    assert_eq!(answer(FLAG_QR, TYPE_AAAA).rcode(), RCODE_NOERROR);
}

/// A hand-written response: compression pointers, two questions or an OPT record.
fn raw_response(questions: u8, additional: &[u8], additional_count: u8) -> Vec<u8> {
    let mut raw = vec![
        0,
        9,
        0x81,
        0x80,
        0,
        questions,
        0,
        2,
        0,
        0,
        0,
        additional_count,
    ];
    // Question at 12: pypi.org A IN.
    raw.extend_from_slice(b"\x04pypi\x03org\x00\x00\x01\x00\x01");
    for _ in 1..questions {
        raw.extend_from_slice(b"\x03www\xc0\x0c\x00\x01\x00\x01");
    }
    // CNAME: owner -> pointer to the question; target "cdn" + pointer to "org" (offset 17).
    raw.extend_from_slice(b"\xc0\x0c\x00\x05\x00\x01\x00\x00\x00\x3c\x00\x06\x03cdn\xc0\x11");
    let cdn = (raw.len() - 6) as u8;
    raw.extend_from_slice(&[0xc0, cdn, 0, 1, 0, 1, 0, 0, 0, 20, 0, 4, 10, 1, 2, 3]);
    raw.extend_from_slice(additional);
    raw
}

#[test]
fn compression_pointers_are_followed() {
    let msg = Message::parse(&raw_response(1, &[], 0)).unwrap();
    let r = resolve_chain(&msg).unwrap();
    assert_eq!(r.names, ["pypi.org", "cdn.org"]);
    assert_eq!(r.addrs, [(v4(10, 1, 2, 3), 20)]);
}

#[test]
fn edns_is_skipped_and_several_questions_are_not_learnt() {
    // OPT: root owner, type 41, UDP size 1232, extended flags, one option (cookie, 8 bytes).
    let opt = b"\x00\x00\x29\x04\xd0\x00\x00\x80\x00\x00\x0c\x00\x0a\x00\x08\x01\x02\x03\x04\x05\x06\x07\x08";
    let msg = Message::parse(&raw_response(1, opt, 1)).unwrap();
    assert_eq!(resolve_chain(&msg).unwrap().names, ["pypi.org", "cdn.org"]);
    let two = Message::parse(&raw_response(2, &[], 0)).unwrap();
    assert_eq!((two.question_count, two.question), (2, None));
    assert!(!two.is_learnable());
}

#[test]
fn malformed_names_and_pointers_are_errors() {
    let with_question = |name: &[u8]| {
        let mut raw = vec![0, 1, 0x81, 0x80, 0, 1, 0, 0, 0, 0, 0, 0];
        raw.extend_from_slice(name);
        raw.extend_from_slice(&[0, 1, 0, 1]);
        Message::parse(&raw)
    };
    assert_eq!(
        with_question(b"\xc0\x0c").unwrap_err(),
        WireError::BadPointer
    );
    assert_eq!(
        with_question(b"\xc0\x20").unwrap_err(),
        WireError::BadPointer
    );
    assert_eq!(with_question(b"\x40a\x00").unwrap_err(), WireError::BadName);
    assert_eq!(
        with_question(b"\x03a.b\x00").unwrap_err(),
        WireError::BadName
    );
    assert_eq!(
        with_question(b"\x03a b\x00").unwrap_err(),
        WireError::BadName
    );
    assert_eq!(with_question(b"\x09ab").unwrap_err(), WireError::Truncated);
    let long: Vec<u8> = (0..5)
        .flat_map(|_| std::iter::once(63).chain([b'a'; 63]))
        .chain([0])
        .collect();
    assert_eq!(with_question(&long).unwrap_err(), WireError::BadName);
    assert_eq!(
        Name::from_text(&"a.".repeat(127)).unwrap().as_str().len(),
        253
    );
    assert!(Name::from_text(&"a.".repeat(128)).is_err());
}

#[test]
fn a_ttl_with_the_top_bit_reads_as_zero() {
    let raw = ResponseBuilder::new(1, "x.example", TYPE_A)
        .unwrap()
        .addr("x.example", 0x8000_0000, v4(1, 1, 1, 1))
        .unwrap()
        .build();
    let r = resolve_chain(&Message::parse(&raw).unwrap()).unwrap();
    assert_eq!(r.addrs, [(v4(1, 1, 1, 1), 0)]);
}

#[test]
fn every_truncation_of_an_answer_is_an_error() {
    let raw = raw_response(1, &[], 0);
    for len in 0..raw.len() {
        assert!(Message::parse(&raw[..len]).is_err(), "{len}");
    }
}

#[test]
fn a_reply_answers_a_query_with_its_id_and_question() {
    let q = Message::parse(&query(5, "pypi.org", TYPE_A).unwrap()).unwrap();
    let reply = |id: u16, name: &str| {
        Message::parse(&ResponseBuilder::new(id, name, TYPE_A).unwrap().build()).unwrap()
    };
    assert!(answers_query(&q, &reply(5, "PYPI.org")));
    assert!(!answers_query(&q, &reply(6, "pypi.org")));
    assert!(!answers_query(&q, &reply(5, "evil.example")));
    assert!(!answers_query(&q, &q), "a query is no reply");
}

#[test]
fn answer_ttls_are_capped_in_place() {
    let mut raw = raw_response(1, &[], 0);
    cap_ttls(&mut raw, 30).unwrap();
    let r = resolve_chain(&Message::parse(&raw).unwrap()).unwrap();
    assert_eq!(
        r.addrs,
        [(v4(10, 1, 2, 3), 20)],
        "20 stays, 60 (the CNAME) becomes 30"
    );
    let msg = Message::parse(&raw).unwrap();
    assert_eq!(msg.answers[0].ttl, 30);
    assert!(cap_ttls(&mut raw[..20], 30).is_err());
}

#[test]
fn tcp_framing() {
    assert_eq!(tcp_prefix(&[0; 300]).unwrap(), [1, 44]);
    assert_eq!(tcp_length([1, 44]), 300);
    assert_eq!(tcp_prefix(&[0; 65536]).unwrap_err(), WireError::TooLong);
}

proptest! {
    #[test]
    fn any_bytes_parse_or_fail_without_panic(raw in proptest::collection::vec(any::<u8>(), 0..600)) {
        if let Some(r) = Message::parse(&raw).ok().and_then(|m| resolve_chain(&m)) {
            prop_assert!(!r.names.is_empty() && r.names.len() <= CHAIN_MAX + 1);
        }
    }

    #[test]
    fn mutated_answers_parse_or_fail_without_panic(at in 0usize..80, byte in any::<u8>()) {
        let mut raw = raw_response(1, &[], 0);
        let at = at % raw.len();
        raw[at] = byte;
        if let Ok(msg) = Message::parse(&raw) {
            let _ = resolve_chain(&msg);
        }
    }
}
