//! `cargo xtask aws-models`: the data blastgate routes AWS requests with
//! (`userspace/src/protocols/http/aws/models.tsv.gz`), derived from
//! botocore's service models so that every service is attributed the way
//! its server dispatches, not from hand-written tables.
//!
//! The file is TSV, gzip-compressed because the REST routes of 455
//! services come to ~820 KB of text (read it with `zcat`). It keeps only
//! what routing needs: per service its signing name, endpoint prefix,
//! protocols and JSON target prefix, then its operations: a name alone
//! for RPC protocols (JSON, query, EC2, RPCv2 CBOR), or name, method and
//! request URI for REST ones, labels reduced to `{}` and greedy labels to
//! `{+}`.

use std::{
    fs,
    io::{Read, Write},
    path::{Path, PathBuf},
};

use anyhow::{bail, Context, Result};
use serde_json::Value;

/// Where the checked-in data lives, from the workspace root.
pub const OUTPUT: &str = "userspace/src/protocols/http/aws/models.tsv.gz";

/// The botocore `cargo xtask setup` installs with moto and the AWS CLI.
const VENV_LIB: &str = "/opt/blastgate-tools/moto-venv/lib";

pub fn run(root: &Path, botocore: Option<PathBuf>, check: bool) -> Result<()> {
    let data = match botocore {
        Some(d) => d,
        None => default_data_dir()?,
    };
    let text = generate(&data)?;
    let out = root.join(OUTPUT);
    if check {
        let have = read_gz(&out)?;
        if have != text {
            bail!(
                "{} is not what botocore's models at {} give: run `cargo xtask aws-models`",
                out.display(),
                data.display()
            );
        }
        println!("{} is up to date", out.display());
        return Ok(());
    }
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    enc.write_all(text.as_bytes())?;
    fs::write(&out, enc.finish()?).with_context(|| format!("writing {}", out.display()))?;
    println!(
        "{}: {} bytes of TSV ({} lines)",
        out.display(),
        text.len(),
        text.lines().count()
    );
    Ok(())
}

fn read_gz(path: &Path) -> Result<String> {
    let bytes = fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let mut text = String::new();
    flate2::read::GzDecoder::new(bytes.as_slice())
        .read_to_string(&mut text)
        .with_context(|| format!("decompressing {}", path.display()))?;
    Ok(text)
}

/// `…/moto-venv/lib/python3.X/site-packages/botocore/data`.
pub fn default_data_dir() -> Result<PathBuf> {
    let mut found = Vec::new();
    for e in fs::read_dir(VENV_LIB).with_context(|| format!("reading {VENV_LIB}"))? {
        let d = e?.path().join("site-packages/botocore/data");
        if d.is_dir() {
            found.push(d);
        }
    }
    found.sort();
    found
        .pop()
        .with_context(|| format!("no botocore under {VENV_LIB} (cargo xtask setup)"))
}

/// botocore's version, from its dist-info beside the package.
fn botocore_version(data: &Path) -> String {
    let site = data.parent().and_then(Path::parent);
    let Some(site) = site else {
        return "unknown".into();
    };
    let Ok(entries) = fs::read_dir(site) else {
        return "unknown".into();
    };
    let mut names: Vec<String> = entries
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("botocore-") && n.ends_with(".dist-info"))
        .collect();
    names.sort();
    names
        .pop()
        .and_then(|n| {
            n.strip_prefix("botocore-")
                .and_then(|v| v.strip_suffix(".dist-info"))
                .map(str::to_string)
        })
        .unwrap_or_else(|| "unknown".into())
}

/// The newest `service-2.json(.gz)` of a service directory.
fn newest_model(service_dir: &Path) -> Result<Option<Value>> {
    let mut versions: Vec<PathBuf> = fs::read_dir(service_dir)?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.join("service-2.json").is_file() || p.join("service-2.json.gz").is_file())
        .collect();
    versions.sort();
    let Some(dir) = versions.pop() else {
        return Ok(None);
    };
    let plain = dir.join("service-2.json");
    let text = if plain.is_file() {
        fs::read_to_string(&plain)?
    } else {
        read_gz(&dir.join("service-2.json.gz"))?
    };
    let v = serde_json::from_str(&text)
        .with_context(|| format!("parsing the model in {}", dir.display()))?;
    Ok(Some(v))
}

/// `{Name}` → `{}`, `{Name+}` → `{+}`: routing needs where labels are and
/// which are greedy, not what the SDK calls them.
fn anonymous_labels(uri: &str) -> String {
    let mut out = String::with_capacity(uri.len());
    let mut in_label = false;
    let mut greedy = false;
    for c in uri.chars() {
        match (in_label, c) {
            (false, '{') => {
                in_label = true;
                greedy = false;
                out.push('{');
            }
            (true, '}') => {
                in_label = false;
                if greedy {
                    out.push('+');
                }
                out.push('}');
            }
            (true, '+') => greedy = true,
            (true, _) => greedy = false,
            (false, c) => out.push(c),
        }
    }
    out
}

fn field(s: &str, what: &str, service: &str) -> Result<String> {
    if s.is_empty() || s.contains(['\t', '\n']) {
        bail!("{service}: {what} {s:?} cannot be written as a TSV field");
    }
    Ok(s.to_string())
}

/// The whole file's text, from botocore's `data` directory.
pub fn generate(data: &Path) -> Result<String> {
    let mut services: Vec<PathBuf> = fs::read_dir(data)
        .with_context(|| format!("reading {}", data.display()))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_dir())
        .collect();
    services.sort();
    let mut out = format!(
        "# AWS service models reduced to what blastgate routes requests with\n\
         # (userspace/src/protocols/http/aws/rest.rs). Generated by\n\
         # `cargo xtask aws-models` from botocore {}'s service models\n\
         # (botocore/data/<service>/<newest version>/service-2.json; botocore is\n\
         # https://github.com/boto/botocore, Copyright Amazon.com, Inc. or its\n\
         # affiliates, licensed under the Apache License 2.0,\n\
         # https://www.apache.org/licenses/LICENSE-2.0). Do not edit by hand.\n\
         #\n\
         # @ model signing-name endpoint-prefix protocols target-prefix\n\
         #   protocols: the model's `protocols` (else `protocol`), plus `query`\n\
         #   when it is `awsQueryCompatible` (its server still takes Action=).\n\
         # an RPC operation: Name\n\
         # a REST operation: Name METHOD request-URI ({{}} a label, {{+}} a greedy one)\n",
        botocore_version(data)
    );
    for dir in services {
        let id = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let Some(model) = newest_model(&dir)? else {
            continue;
        };
        let md = &model["metadata"];
        let s = |k: &str| md[k].as_str().unwrap_or_default();
        let endpoint = field(s("endpointPrefix"), "endpointPrefix", &id)?;
        let signing = match s("signingName") {
            "" => endpoint.clone(),
            n => field(n, "signingName", &id)?,
        };
        let mut protocols: Vec<String> = match md["protocols"].as_array() {
            Some(list) => list
                .iter()
                .filter_map(|p| p.as_str().map(str::to_string))
                .collect(),
            None => vec![field(s("protocol"), "protocol", &id)?],
        };
        if md.get("awsQueryCompatible").is_some() && !protocols.iter().any(|p| p == "query") {
            protocols.push("query".into());
        }
        let rest = protocols.iter().any(|p| p.starts_with("rest-"));
        if rest && protocols.len() > 1 {
            bail!("{id}: REST and other protocols at once ({protocols:?}) is not modelled");
        }
        let target = match s("targetPrefix") {
            "" => "-".to_string(),
            t => field(t, "targetPrefix", &id)?,
        };
        out += &format!(
            "@\t{id}\t{signing}\t{endpoint}\t{}\t{target}\n",
            protocols.join(",")
        );
        let Some(ops) = model["operations"].as_object() else {
            bail!("{id}: no operations");
        };
        let mut names: Vec<&String> = ops.keys().collect();
        names.sort();
        for name in names {
            let name = field(name, "operation", &id)?;
            if !rest {
                out += &format!("{name}\n");
                continue;
            }
            let http = &ops[&name]["http"];
            let method = field(http["method"].as_str().unwrap_or_default(), "method", &id)?;
            let uri = field(
                http["requestUri"].as_str().unwrap_or_default(),
                "requestUri",
                &id,
            )?;
            out += &format!("{name}\t{method}\t{}\n", anonymous_labels(&uri));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_reduced_to_their_kind() {
        assert_eq!(
            anonymous_labels("/{Bucket}/{Key+}?x-id=GetObject"),
            "/{}/{+}?x-id=GetObject"
        );
        assert_eq!(
            anonymous_labels("/2015-03-31/functions/{FunctionName}/invocations"),
            "/2015-03-31/functions/{}/invocations"
        );
    }

    /// The checked-in data is what the installed botocore gives (the
    /// generator and the file cannot drift apart unnoticed).
    #[test]
    fn checked_in_data_is_generated() {
        let Ok(data) = default_data_dir() else {
            assert!(
                std::env::var_os("CI").is_none(),
                "botocore is not installed in {VENV_LIB} (cargo xtask setup)"
            );
            return;
        };
        let root = Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default();
        let have = read_gz(&root.join(OUTPUT)).expect("the checked-in models");
        let want = generate(&data).expect("generate");
        assert!(
            have == want,
            "{OUTPUT} differs from botocore's models: run `cargo xtask aws-models`"
        );
    }
}
