//! The one output convention of every command that prints data: `-o text|json|yaml|wide`
//! (`--output`). text is for people; json and yaml are the same data for programs (one
//! serde value, printed two ways); wide is text with the extra columns a command has
//! (the same as text where it has none). The spellings used before are kept as
//! deprecated aliases: `--format` (report, simulate) and `-o table` (events).

use serde::Serialize;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    #[default]
    #[value(alias = "table")]
    Text,
    Json,
    Yaml,
    Wide,
}

/// `-o`, flattened into each command that prints data.
#[derive(clap::Args, Debug, Clone, Copy)]
pub struct OutputArgs {
    /// Output format: text (default), json, yaml, or wide (text with extra columns).
    /// `--format` is a deprecated alias.
    #[arg(
        short = 'o',
        long = "output",
        alias = "format",
        global = true,
        value_enum,
        default_value_t
    )]
    pub output: Output,
}

impl Output {
    /// Prints `value`: as JSON or YAML, or as the command's text (`text(wide)`).
    pub fn print(self, value: &impl Serialize, text: impl FnOnce(bool) -> String) {
        print!("{}", self.render(value, text));
    }

    /// What `print` prints.
    pub fn render(self, value: &impl Serialize, text: impl FnOnce(bool) -> String) -> String {
        match self {
            Output::Text => text(false),
            Output::Wide => text(true),
            Output::Json => {
                serde_json::to_string_pretty(value).expect("plain data serialises") + "\n"
            }
            Output::Yaml => serde_saphyr::to_string(value).expect("plain data serialises"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Serialize)]
    struct Sample {
        workload: &'static str,
        entries: Vec<u32>,
    }

    #[test]
    fn json_and_yaml_print_the_same_data_and_text_is_the_commands() {
        let value = Sample {
            workload: "ml/trainer",
            entries: vec![1, 2],
        };
        let text = |wide: bool| if wide { "wide\n" } else { "text\n" }.to_string();
        assert_eq!(Output::Text.render(&value, text), "text\n");
        assert_eq!(Output::Wide.render(&value, text), "wide\n");
        let json: serde_json::Value =
            serde_json::from_str(&Output::Json.render(&value, text)).unwrap();
        assert_eq!(json["workload"], "ml/trainer");
        let yaml: serde_json::Value =
            serde_saphyr::from_str(&Output::Yaml.render(&value, text)).unwrap();
        assert_eq!(yaml, json);
    }
}
