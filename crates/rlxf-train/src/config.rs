//! Reading run configs: TOML files plus `section.field=value` overrides from the command line.

use std::path::Path;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::error::{Result, TrainError};

/// Parses `text` (from `path`, for messages) into `T` after applying `overrides` (each
/// `dotted.key=value`, the value in TOML syntax, or a bare string). Returns the config and its
/// complete TOML form (every field, defaults filled in), which the run stores.
pub fn parse_config<T: DeserializeOwned + Serialize>(
    text: &str,
    path: &Path,
    overrides: &[String],
) -> Result<(T, String)> {
    let invalid = |field: &str, reason: String| TrainError::InvalidConfig {
        path: path.to_path_buf(),
        field: field.to_string(),
        reason,
    };
    let mut root: toml::Table = text.parse().map_err(|err: toml::de::Error| {
        invalid(
            &err.span()
                .map_or("(file)".into(), |span| format!("at byte {}", span.start)),
            err.message().to_string(),
        )
    })?;
    for item in overrides {
        let (key, value) = item.split_once('=').ok_or_else(|| {
            invalid(
                item,
                "an override must look like section.field=value".into(),
            )
        })?;
        set_dotted(&mut root, key.trim(), parse_value(value.trim()))
            .map_err(|reason| invalid(key, reason))?;
    }
    let config: T = serde_path_to_error::deserialize(toml::Value::Table(root)).map_err(|err| {
        let field = err.path().to_string();
        invalid(&field, err.into_inner().to_string())
    })?;
    let resolved = toml::to_string(&config).map_err(|err| invalid("(file)", err.to_string()))?;
    Ok((config, resolved))
}

/// Reads and parses a config file (see [`parse_config`]).
pub fn read_config<T: DeserializeOwned + Serialize>(
    path: &Path,
    overrides: &[String],
) -> Result<(T, String)> {
    let text = std::fs::read_to_string(path).map_err(|err| TrainError::InvalidConfig {
        path: path.to_path_buf(),
        field: "(file)".into(),
        reason: format!("cannot read it: {err}"),
    })?;
    parse_config(&text, path, overrides)
}

/// A TOML value, or the text itself as a string when it is not one (`model=random:gpt-neo-tiny`).
fn parse_value(text: &str) -> toml::Value {
    format!("value = {text}")
        .parse::<toml::Table>()
        .ok()
        .and_then(|mut table| table.remove("value"))
        .unwrap_or_else(|| toml::Value::String(text.to_string()))
}

fn set_dotted(
    root: &mut toml::Table,
    key: &str,
    value: toml::Value,
) -> std::result::Result<(), String> {
    let mut parts: Vec<&str> = key.split('.').collect();
    let last = parts
        .pop()
        .filter(|last| !last.is_empty())
        .ok_or("empty key")?;
    let mut table = root;
    for part in parts {
        let entry = table
            .entry(part.to_string())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        table = entry
            .as_table_mut()
            .ok_or_else(|| format!("`{part}` is not a table"))?;
    }
    table.insert(last.to_string(), value);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sft::{SftConfig, Target};

    #[test]
    fn overrides_apply_and_defaults_fill_the_rest() {
        let text = "model = \"x\"\n[train]\nepochs = 2\n";
        let overrides = [
            "train.learning_rate=1e-4".to_string(),
            "target=rejected".to_string(),
            "data.max_pairs=10".to_string(),
        ];
        let (config, resolved): (SftConfig, String) =
            parse_config(text, Path::new("c.toml"), &overrides).unwrap();
        assert_eq!(config.model, "x");
        assert_eq!(config.train.epochs, 2);
        assert_eq!(config.train.learning_rate, Some(1e-4));
        assert_eq!(config.target, Target::Rejected);
        assert_eq!(config.data.max_pairs, Some(10));
        assert_eq!(config.train.batch_size, 8);
        let (again, _): (SftConfig, String) =
            parse_config(&resolved, Path::new("r.toml"), &[]).unwrap();
        assert_eq!(again, config);
    }

    #[test]
    fn unknown_and_mistyped_fields_name_the_field() {
        let err = parse_config::<SftConfig>("[train]\nepoch = 2\n", Path::new("c.toml"), &[])
            .unwrap_err();
        assert!(
            err.to_string().contains("train") && err.to_string().contains("epoch"),
            "{err}"
        );
        let err =
            parse_config::<SftConfig>("[train]\nepochs = \"two\"\n", Path::new("c.toml"), &[])
                .unwrap_err();
        assert!(err.to_string().contains("train.epochs"), "{err}");
        assert!(err.is_bad_input());
    }

    #[test]
    fn shipped_configs_parse() {
        let dir = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../../configs"));
        for name in ["sft-tiny.toml", "seed-replication.toml"] {
            read_config::<SftConfig>(&dir.join(name), &[]).unwrap();
        }
        read_config::<crate::reward::RewardConfig>(&dir.join("rm-tiny.toml"), &[]).unwrap();
        read_config::<crate::dpo::DpoConfig>(&dir.join("dpo-tiny.toml"), &[]).unwrap();
    }
}
