//! `kanary models`: every registered model, its parameters, their defaults and one line each.

use anyhow::Result;
use kanary_core::registry::{Build, ModelKind};

use crate::cli::ModelsArgs;

pub fn run(args: ModelsArgs) -> Result<()> {
    for kind in ModelKind::all() {
        let spec = kind.spec();
        let shape = match spec.build {
            Build::Fitted { .. } => "fitted",
            Build::Streaming { .. } => "streaming",
        };
        let defaults = spec.params.defaults();
        if args.json {
            let params: Vec<serde_json::Value> = spec
                .params
                .help()
                .iter()
                .map(|(key, help)| {
                    serde_json::json!({
                        "key": key,
                        "default": defaults.get(*key),
                        "help": help,
                    })
                })
                .collect();
            let line = serde_json::json!({
                "model": spec.name,
                "aliases": spec.aliases,
                "shape": shape,
                "summary": spec.summary,
                "default_threshold": spec.default_threshold.to_string(),
                "params": params,
            });
            println!("{line}");
            continue;
        }
        println!("{} ({shape}): {}", spec.name, spec.summary);
        if !spec.aliases.is_empty() {
            println!("  aliases: {}", spec.aliases.join(", "));
        }
        println!("  default threshold: {}", spec.default_threshold);
        if spec.params.help().is_empty() {
            println!("  no parameters");
        }
        for (key, help) in spec.params.help() {
            let default = defaults
                .get(*key)
                .map(|v| v.to_string())
                .unwrap_or_default();
            println!("  --param {}.{key}={default}", spec.name);
            println!("      {help}");
        }
        println!();
    }
    Ok(())
}
