//! The cache commands, as the admin API clients they are: preload, export, import and
//! `cache ls|rm|pin|unpin|verify|gc`. Each returns whether everything succeeded.

use super::render::Render;
use super::session::Session;
use crate::bundle;
use crate::config::ByteSize;
use anyhow::{Context, bail};
use futures_util::StreamExt;
use serde_json::{Value, json};
use std::io::Write;
use std::path::Path;

/// Image references from the arguments: each is a reference, or a file listing them one per
/// line (`#` starts a comment).
pub fn references(args: &[String]) -> anyhow::Result<Vec<String>> {
    let mut out = Vec::new();
    for arg in args {
        let path = Path::new(arg);
        if path.is_file() {
            let text = std::fs::read_to_string(path).with_context(|| format!("reading {arg}"))?;
            out.extend(
                text.lines()
                    .map(|l| l.split('#').next().unwrap_or("").trim())
                    .filter(|l| !l.is_empty())
                    .map(str::to_string),
            );
        } else {
            out.push(arg.clone());
        }
    }
    if out.is_empty() {
        bail!("no image references given");
    }
    Ok(out)
}

/// `airlock preload`: download, pin, and print the offline readiness report.
pub async fn preload(
    session: &Session,
    images: Vec<String>,
    platforms: Option<String>,
    signatures: bool,
) -> anyhow::Result<bool> {
    let mut render = Render::new();
    let body = serde_json::to_vec(
        &json!({ "images": images, "platforms": platforms, "signatures": signatures }),
    )?;
    let (ok, report) = session
        .events("/admin/preload", body.into(), |e| render.on(e))
        .await?;
    render.finish();
    if let Some(e) = report.get("error").and_then(Value::as_str) {
        bail!("{e}");
    }
    let report: crate::preload::Report = serde_json::from_value(report)?;
    println!(
        "{:<60} {:<16} {:<6} {:<6} {:<6} OFFLINE",
        "IMAGE", "PLATFORM", "SIGNED", "ATTEST", "SBOM"
    );
    for image in &report.images {
        let name = image
            .reference
            .clone()
            .unwrap_or_else(|| image.image.clone());
        let a = &image.attached;
        let attached = format!(
            "{:<6} {:<6} {:<6}",
            count(a.signatures),
            count(a.attestations),
            count(a.sboms)
        );
        if let Some(e) = &image.error {
            println!("{name:<60} {:<16} {attached} NO: {e}", "-");
        }
        for p in &image.platforms {
            let state = if p.ready {
                "ready".to_string()
            } else {
                format!("NO: {}", p.reason.clone().unwrap_or_default())
            };
            println!("{name:<60} {:<16} {attached} {state}", p.platform);
        }
    }
    println!(
        "downloaded {}; {}",
        ByteSize(report.downloaded),
        if ok {
            "every image is ready offline"
        } else {
            "NOT everything is ready offline"
        }
    );
    Ok(ok)
}

/// A count for a column: `-` for none.
fn count(n: usize) -> String {
    if n == 0 { "-".into() } else { n.to_string() }
}

/// `airlock export`: write a bundle to `output` (through a temporary file, renamed when whole).
pub async fn export(
    session: &Session,
    selection: bundle::Selection,
    since: Option<&Path>,
    output: &Path,
) -> anyhow::Result<bool> {
    let exclude: Vec<String> = match since {
        Some(prev) => {
            let mut f =
                std::fs::File::open(prev).with_context(|| format!("opening {}", prev.display()))?;
            bundle::bundle_digests(&mut f)
                .with_context(|| format!("reading {}", prev.display()))?
                .iter()
                .map(|d| d.to_string())
                .collect()
        }
        None => Vec::new(),
    };
    let tmp = output.with_extension("tar.part");
    let mut file =
        std::fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    let mut partial = Partial(Some(tmp.clone()));
    let render = std::cell::RefCell::new(Render::new());
    let body = json!({ "images": selection.images, "all": selection.all, "pinned": selection.pinned, "exclude": exclude });
    let mut written = 0u64;
    let result = session
        .download(
            "/admin/export",
            &body,
            |summary| {
                let total = summary["total_bytes"].as_u64();
                render.borrow_mut().on(&crate::progress::Event::Begin {
                    id: "export".into(),
                    label: format!("{}", output.display()),
                    total,
                });
            },
            |chunk| {
                file.write_all(chunk)?;
                written += chunk.len() as u64;
                render.borrow_mut().on(&crate::progress::Event::Advance {
                    id: "export".into(),
                    done: written,
                    total: None,
                });
                Ok(())
            },
        )
        .await;
    let mut render = render.into_inner();
    result.and_then(|()| file.sync_all().map_err(Into::into))?;
    std::fs::rename(&tmp, output)?;
    partial.0 = None;
    render.on(&crate::progress::Event::End {
        id: "export".into(),
        ok: true,
        message: None,
    });
    render.finish();
    println!("wrote {} ({})", output.display(), ByteSize(written));
    Ok(true)
}

/// A file being written that is removed unless it is finished (errors, Ctrl-C).
struct Partial(Option<std::path::PathBuf>);

impl Drop for Partial {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// `airlock import`: upload a bundle; nothing becomes visible unless all of it verifies.
pub async fn import(session: &Session, bundle: &Path) -> anyhow::Result<bool> {
    let file = tokio::fs::File::open(bundle)
        .await
        .with_context(|| format!("opening {}", bundle.display()))?;
    let size = file.metadata().await?.len();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<u64>();
    let mut sent = 0u64;
    let stream = tokio_util::io::ReaderStream::with_capacity(file, 256 << 10).map(move |chunk| {
        if let Ok(c) = &chunk {
            sent += c.len() as u64;
            let _ = tx.send(sent);
        }
        chunk
    });
    let mut render = Render::new();
    render.on(&crate::progress::Event::Begin {
        id: "upload".into(),
        label: bundle.display().to_string(),
        total: Some(size),
    });
    let (ok, report) = {
        let events = session.events("/admin/import", reqwest::Body::wrap_stream(stream), |e| {
            while let Ok(n) = rx.try_recv() {
                render.on(&crate::progress::Event::Advance {
                    id: "upload".into(),
                    done: n,
                    total: None,
                });
            }
            render.on(e);
        });
        events.await?
    };
    render.on(&crate::progress::Event::End {
        id: "upload".into(),
        ok,
        message: None,
    });
    render.finish();
    if !ok {
        bail!(
            "import refused, the cache is unchanged: {}",
            report["error"].as_str().unwrap_or("see the log")
        );
    }
    let report: bundle::ImportReport = serde_json::from_value(report)?;
    for image in &report.images {
        println!("imported {image} (pinned)");
    }
    println!(
        "{} new blobs, {} already cached, {} read",
        report.new_blobs,
        report.known_blobs,
        ByteSize(report.bytes)
    );
    Ok(true)
}

/// `airlock cache ls`.
pub async fn list(session: &Session, as_json: bool) -> anyhow::Result<bool> {
    let images: Vec<Value> = session.get("/admin/images").await?;
    if as_json {
        println!("{}", serde_json::to_string_pretty(&images)?);
        return Ok(true);
    }
    println!(
        "{:<60} {:<28} {:>10} {:<14} {:<6} {:<5} PINNED",
        "IMAGE", "PLATFORMS", "SIZE", "LAST PULLED", "SIGNED", "SBOM"
    );
    for i in &images {
        let platforms: Vec<&str> = i["platforms"]
            .as_array()
            .map(|a| a.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        let last = i["last_access_ms"].as_u64().or(i["fetched_at_ms"].as_u64());
        let attached = |k: &str| count(i["attached"][k].as_u64().unwrap_or(0) as usize);
        println!(
            "{:<60} {:<28} {:>10} {:<14} {:<6} {:<5} {}",
            i["image"].as_str().unwrap_or("?"),
            if platforms.is_empty() {
                "incomplete".to_string()
            } else {
                platforms.join(",")
            },
            ByteSize(i["size"].as_u64().unwrap_or(0)).to_string(),
            last.map_or("-".to_string(), ago),
            attached("signatures"),
            attached("sboms"),
            if i["pinned"].as_bool().unwrap_or(false) {
                "yes"
            } else {
                ""
            }
        );
    }
    if let Ok(usage) = session.get::<Value>("/admin/usage").await {
        println!(
            "{} in {} blobs, {} pinned",
            ByteSize(usage["bytes"].as_u64().unwrap_or(0)),
            usage["blobs"].as_u64().unwrap_or(0),
            ByteSize(usage["pinned_bytes"].as_u64().unwrap_or(0))
        );
    }
    Ok(true)
}

/// `airlock verify-signatures [IMAGE…]`: the policy's verdict for each image.
pub async fn verify_signatures(session: &Session, images: Vec<String>) -> anyhow::Result<bool> {
    let reports: Vec<Value> = session
        .post("/admin/verify-signatures", &json!({ "images": images }))
        .await?;
    println!("{:<60} {:<16} {:<8} VERDICT", "IMAGE", "RULE", "MODE");
    let mut ok = true;
    for r in &reports {
        let field = |k: &str| r[k].as_str().unwrap_or("-").to_string();
        let verdict = match (r["error"].as_str(), r["verdict"].as_str()) {
            (Some(e), _) => {
                ok = false;
                format!("NOT CHECKED: {e}")
            }
            (None, Some("verified")) => format!("verified ({})", field("by")),
            (None, Some("not_required")) => "not required".to_string(),
            (None, Some(v)) => {
                ok = false;
                format!("{}: {}", v.to_uppercase(), field("reason"))
            }
            (None, None) => "?".to_string(),
        };
        println!(
            "{:<60} {:<16} {:<8} {verdict}",
            field("image"),
            field("rule"),
            field("mode")
        );
    }
    Ok(ok)
}

/// `airlock cache pin|unpin IMAGE`.
pub async fn pin(session: &Session, image: &str, pinned: bool) -> anyhow::Result<bool> {
    let path = if pinned { "/admin/pin" } else { "/admin/unpin" };
    let answer: Value = session.post(path, &json!({ "image": image })).await?;
    let verb = if pinned { "pinned" } else { "unpinned" };
    let already = if answer["changed"].as_bool() == Some(false) {
        " (it already was)"
    } else {
        ""
    };
    println!(
        "{verb} {}{already}",
        answer["image"].as_str().unwrap_or(image)
    );
    Ok(true)
}

/// `airlock cache rm IMAGE` and `airlock cache gc`.
pub async fn remove(session: &Session, image: Option<&str>) -> anyhow::Result<bool> {
    let removal: Value = match image {
        Some(i) => session.post("/admin/rm", &json!({ "image": i })).await?,
        None => session.post("/admin/gc", &json!({})).await?,
    };
    for i in removal["images"].as_array().into_iter().flatten() {
        println!("removed {}", i.as_str().unwrap_or("?"));
    }
    println!(
        "{} blobs removed, {} freed",
        removal["blobs"].as_u64().unwrap_or(0),
        ByteSize(removal["bytes"].as_u64().unwrap_or(0))
    );
    Ok(true)
}

/// `airlock cache verify`: false when corrupt blobs were found (and quarantined).
pub async fn verify(session: &Session) -> anyhow::Result<bool> {
    let mut render = Render::new();
    let (_, report) = session
        .events("/admin/verify", "{}".into(), |e| render.on(e))
        .await?;
    render.finish();
    if let Some(e) = report.get("error").and_then(Value::as_str) {
        bail!("{e}");
    }
    let corrupt: Vec<&str> = report["corrupt"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    for d in &corrupt {
        println!("CORRUPT {d}: quarantined; the next pull fetches it again");
    }
    let unreadable: Vec<&str> = report["unreadable"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    for d in &unreadable {
        println!("UNREADABLE {d}: kept; see the log, and run verify again");
    }
    println!(
        "{} blobs checked ({}), {} corrupt",
        report["checked"].as_u64().unwrap_or(0),
        ByteSize(report["bytes"].as_u64().unwrap_or(0)),
        corrupt.len()
    );
    Ok(corrupt.is_empty() && unreadable.is_empty())
}

fn ago(ms: u64) -> String {
    let secs = crate::store::now_ms().saturating_sub(ms) / 1000;
    match secs {
        s if s < 60 => format!("{s}s ago"),
        s if s < 3600 => format!("{}m ago", s / 60),
        s if s < 86400 => format!("{}h ago", s / 3600),
        s => format!("{}d ago", s / 86400),
    }
}
