//! Port ranges as prefixes: `endPort` ranges become the fewest aligned power-of-two
//! blocks, so a range costs at most 30 map entries instead of one per port.

/// A block of ports: the `bits` leading bits of `value` are fixed, the rest are free.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PortPrefix {
    pub value: u16,
    pub bits: u8,
}

impl PortPrefix {
    /// The first and last port of the block.
    pub fn range(self) -> (u16, u16) {
        let free = 16 - u32::from(self.bits.min(16));
        let mask = (u32::MAX << free) as u16;
        let first = self.value & mask;
        (first, first | !mask)
    }
}

#[cfg(test)]
impl PortPrefix {
    pub fn contains(self, port: u16) -> bool {
        let shift = 16 - self.bits as u32;
        (port as u32) >> shift == (self.value as u32) >> shift
    }
}

#[test]
fn a_block_spans_the_ports_its_free_bits_allow() {
    assert_eq!(
        PortPrefix {
            value: 443,
            bits: 16
        }
        .range(),
        (443, 443)
    );
    assert_eq!(
        PortPrefix {
            value: 8192,
            bits: 10
        }
        .range(),
        (8192, 8255)
    );
    assert_eq!(PortPrefix { value: 0, bits: 0 }.range(), (0, 65535));
}

/// The aligned blocks that exactly cover `lo..=hi`.
pub fn port_prefixes(lo: u16, hi: u16) -> Vec<PortPrefix> {
    let (mut lo, hi) = (lo as u32, hi as u32);
    let mut out = Vec::new();
    while lo <= hi {
        // The largest block that starts at `lo` (aligned) and does not pass `hi`.
        let mut size: u32 = if lo == 0 {
            1 << 16
        } else {
            1 << lo.trailing_zeros().min(16)
        };
        while lo + size - 1 > hi {
            size >>= 1;
        }
        out.push(PortPrefix {
            value: lo as u16,
            bits: (16 - size.trailing_zeros()) as u8,
        });
        lo += size;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn single_port_is_one_full_prefix() {
        assert_eq!(
            port_prefixes(8080, 8080),
            vec![PortPrefix {
                value: 8080,
                bits: 16
            }]
        );
    }

    #[test]
    fn whole_range_is_one_empty_prefix() {
        assert_eq!(
            port_prefixes(0, 65535),
            vec![PortPrefix { value: 0, bits: 0 }]
        );
    }

    #[test]
    fn worst_case_stays_small() {
        // 1..=65534 is the classic worst case: 15 blocks up, 15 down.
        assert_eq!(port_prefixes(1, 65534).len(), 30);
    }

    proptest! {
        #[test]
        fn prefixes_cover_exactly_the_range(lo in 0u16..=65535, len in 0u16..=3000, probe in 0u16..=65535) {
            let hi = lo.saturating_add(len);
            let prefixes = port_prefixes(lo, hi);
            prop_assert!(prefixes.len() <= 30);
            let covered = prefixes.iter().filter(|p| p.contains(probe)).count();
            prop_assert_eq!(covered, usize::from((lo..=hi).contains(&probe)));
        }
    }
}
