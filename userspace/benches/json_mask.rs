//! Masking the 100 KB JSON list of `cargo xtask bench --only http` (its
//! "masking adds" figure), in process: the streaming masker against the
//! tree walk it replaced, as `mask::json_body` ran each (the tree: a copy
//! of the body, `serde_json::Value`, the walk, serialized again when
//! anything was masked), with the bench's `json_paths` rule and with the
//! shipped detectors. The two alternate, one document at a time.
//!
//! `cargo bench -p blastgate --bench json_mask --features
//! json-mask-reference [-- --iters N]`; prints p50/p99 in µs and a JSON
//! object on the last line.

use std::{hint::black_box, path::Path, time::Instant};

use blastgate::policy::masking::{tree::sample_list, MaskPlan, Masking};

fn arg(name: &str) -> Option<String> {
    let mut args = std::env::args();
    while let Some(a) = args.next() {
        if a == name {
            return args.next();
        }
    }
    None
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted.get(i).copied().unwrap_or(0.0)
}

/// The tree walk, as `json_body` ran it.
fn tree(plan: &MaskPlan, raw: &[u8]) -> (usize, u64) {
    let text = raw.to_vec();
    let Ok(mut doc) = serde_json::from_slice::<serde_json::Value>(&text) else {
        return (0, 0);
    };
    let fields = plan.mask_json(&mut doc);
    let out = if fields == 0 {
        text
    } else {
        serde_json::to_vec(&doc).unwrap_or_default()
    };
    (out.len(), fields)
}

fn streaming(plan: &MaskPlan, raw: &[u8]) -> (usize, u64) {
    match plan.mask_json_bytes(raw) {
        Ok(m) => (m.body.len(), m.fields),
        Err(_) => (0, 0),
    }
}

fn main() -> anyhow::Result<()> {
    let iters: usize = arg("--iters").map_or(Ok(400), |s| s.parse())?;
    let field_rule = "[[field]]\nid = \"bench-item-email\"\njson_paths = [\"$.items[*].email\"]\nstyle = \"hash\"\n";
    let shipped = include_str!("../../policies/masking.toml");
    let load = |text: &str, target: &str| -> anyhow::Result<MaskPlan> {
        let m = Masking::parse(Path::new("masking.toml"), text)
            .map_err(|p| anyhow::anyhow!("{p:?}"))?;
        Ok(m.plan("bench", target))
    };
    let cases = [
        ("json_paths rule", load(field_rule, "bench-field")?),
        ("shipped detectors", load(shipped, "bench-detectors")?),
    ];
    let doc = sample_list();
    let raw = doc.as_bytes();
    let mut results = Vec::new();
    for (name, plan) in &cases {
        let (old_len, old_n) = tree(plan, raw);
        let (new_len, new_n) = streaming(plan, raw);
        anyhow::ensure!(
            old_n == new_n,
            "{name}: {old_n} fields masked by the tree, {new_n} streaming"
        );
        let (mut old, mut new) = (Vec::new(), Vec::new());
        for _ in 0..iters {
            let t = Instant::now();
            black_box(tree(plan, black_box(raw)));
            old.push(t.elapsed().as_secs_f64() * 1e6);
            let t = Instant::now();
            black_box(streaming(plan, black_box(raw)));
            new.push(t.elapsed().as_secs_f64() * 1e6);
        }
        old.sort_by(f64::total_cmp);
        new.sort_by(f64::total_cmp);
        println!(
            "{name}: {} bytes, {old_n} fields; tree p50 {:.0} µs p99 {:.0} µs ({old_len} bytes out); \
             streaming p50 {:.0} µs p99 {:.0} µs ({new_len} bytes out)",
            raw.len(),
            percentile(&old, 0.5),
            percentile(&old, 0.99),
            percentile(&new, 0.5),
            percentile(&new, 0.99),
        );
        results.push(serde_json::json!({
            "case": name,
            "bytes": raw.len(),
            "fields": old_n,
            "tree_p50_us": percentile(&old, 0.5),
            "tree_p99_us": percentile(&old, 0.99),
            "streaming_p50_us": percentile(&new, 0.5),
            "streaming_p99_us": percentile(&new, 0.99),
        }));
    }
    println!("{}", serde_json::Value::Array(results));
    Ok(())
}
