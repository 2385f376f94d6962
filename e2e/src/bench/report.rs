//! The benchmark's output: the table of medians with both systems and their ratio (printed and written to
//! `table.md`), and `results.json` with every repetition's value or error (read back by `--merge` and
//! `--table-only`).

use std::{collections::BTreeMap, fmt::Write as _, path::Path};

use anyhow::{Context, Result};
use serde_json::json;

use super::{Args, METRICS, SYSTEMS, Series, System};

/// The median of the finite values, if there is one.
pub fn median(values: &[f64]) -> Option<f64> {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

/// The table of medians (Markdown).
pub fn table(results: &BTreeMap<&'static str, Series>) -> String {
    let systems: Vec<&System> = SYSTEMS
        .iter()
        .filter(|s| results.contains_key(s.id))
        .collect();
    let cell = |s: &System, key: &str| -> Option<f64> {
        let vals: Vec<f64> = results
            .get(s.id)?
            .get(key)?
            .iter()
            .filter_map(|v| v.as_ref().ok().copied())
            .collect();
        median(&vals)
    };
    let fmt = |v: Option<f64>| {
        v.map_or_else(
            || "n/a".to_owned(),
            |x| {
                if x >= 100.0 {
                    format!("{x:.0}")
                } else {
                    format!("{x:.2}")
                }
            },
        )
    };
    let mut out = String::new();
    let mut header = format!("| {:<50} |", "median of the repetitions");
    let mut rule = format!("|{}|", "-".repeat(52));
    for s in &systems {
        let _ = write!(header, " {} |", s.label);
        let _ = write!(rule, "{}|", "-".repeat(s.label.len() + 2));
    }
    let pgpilot = SYSTEMS.iter().find(|s| s.id == "pgpilot");
    let ratios: Vec<&&System> = systems.iter().filter(|s| s.patroni).collect();
    for s in &ratios {
        let _ = write!(header, " {} / pgpilot |", short(s));
        let _ = write!(rule, "{}|", "-".repeat(short(s).len() + 12));
    }
    out.push_str(&header);
    out.push('\n');
    out.push_str(&rule);
    out.push('\n');
    for (key, unit, label) in METRICS {
        let _ = write!(out, "| {:<50} |", format!("{label} ({unit})"));
        for s in &systems {
            let _ = write!(out, " {:>w$} |", fmt(cell(s, key)), w = s.label.len());
        }
        for s in &ratios {
            let ratio = pgpilot
                .and_then(|p| Some(cell(s, key)? / cell(p, key)?))
                .filter(|r| r.is_finite());
            let _ = write!(
                out,
                " {:>w$} |",
                ratio.map_or_else(|| "n/a".to_owned(), |r| format!("{r:.1}x")),
                w = short(s).len() + 10
            );
        }
        out.push('\n');
    }
    out
}

fn short(s: &System) -> &'static str {
    if s.id == "patroni-defaults" {
        "Patroni defaults"
    } else {
        "Patroni same timings"
    }
}

/// The results of an earlier run, as series (every value `Ok`, every recorded error `Err`).
pub fn read_results(out: &Path) -> Result<BTreeMap<&'static str, Series>> {
    let path = out.join("results.json");
    let doc: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?,
    )?;
    let mut results = BTreeMap::new();
    for sys in doc["systems"].as_array().into_iter().flatten() {
        let Some(id) = SYSTEMS.iter().map(|s| s.id).find(|id| sys["id"] == *id) else {
            continue;
        };
        let mut series = Series::new();
        for (key, _, _) in METRICS {
            let m = &sys["metrics"][key];
            let mut vals: Vec<Result<f64, String>> = m["values"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|v| v.as_f64())
                .map(Ok)
                .collect();
            vals.extend(
                m["errors"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|e| e.as_str())
                    .map(|e| Err(e.to_owned())),
            );
            if !vals.is_empty() {
                series.insert(key, vals);
            }
        }
        results.insert(id, series);
    }
    Ok(results)
}

pub fn write_results(args: &Args, results: &BTreeMap<&'static str, Series>) -> Result<()> {
    std::fs::create_dir_all(&args.out)?;
    let systems: Vec<serde_json::Value> = SYSTEMS
        .iter()
        .filter_map(|s| {
            let series = results.get(s.id)?;
            let metrics: serde_json::Map<String, serde_json::Value> = series
                .iter()
                .map(|(k, vals)| {
                    let ok: Vec<f64> = vals
                        .iter()
                        .filter_map(|v| v.as_ref().ok().copied())
                        .collect();
                    let errors: Vec<&String> =
                        vals.iter().filter_map(|v| v.as_ref().err()).collect();
                    (
                        (*k).to_owned(),
                        json!({"median": median(&ok), "values": ok, "errors": errors}),
                    )
                })
                .collect();
            Some(json!({"id": s.id, "label": s.label, "timings": s.timings, "metrics": metrics}))
        })
        .collect();
    let doc = json!({
        "generated_at": k8s_openapi::jiff::Timestamp::now().to_string(),
        "reps": args.reps,
        "metrics": METRICS.iter().map(|(k, unit, label)| json!({"key": k, "unit": unit, "label": label})).collect::<Vec<_>>(),
        "systems": systems,
    });
    std::fs::write(
        args.out.join("results.json"),
        serde_json::to_string_pretty(&doc)?,
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_median_skips_what_is_not_finite() {
        assert_eq!(median(&[]), None);
        assert_eq!(median(&[3.0, f64::NAN, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), Some(2.5));
    }
}
