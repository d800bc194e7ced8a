//! The scale table: what was measured, its value, and the target it is held to.

/// One line of the table.
pub struct Line {
    pub what: String,
    pub value: String,
    pub target: Option<Target>,
}

/// A target of issue 20 and whether the measured value meets it.
pub struct Target {
    pub text: &'static str,
    pub met: bool,
}

impl Line {
    pub fn figure(what: impl Into<String>, value: impl Into<String>) -> Line {
        Line {
            what: what.into(),
            value: value.into(),
            target: None,
        }
    }

    pub fn held_to(
        what: impl Into<String>,
        value: impl Into<String>,
        text: &'static str,
        met: bool,
    ) -> Line {
        Line {
            what: what.into(),
            value: value.into(),
            target: Some(Target { text, met }),
        }
    }
}

pub fn print(lines: &[Line]) {
    println!("| measured | value | target | met |");
    println!("|---|---|---|---|");
    for l in lines {
        let (target, met) = match &l.target {
            Some(t) => (t.text, if t.met { "met" } else { "**missed**" }),
            None => ("", ""),
        };
        println!("| {} | {} | {target} | {met} |", l.what, l.value);
    }
}

pub fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}
