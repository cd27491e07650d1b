//! Hot reload: watch the policy directory and swap in a new bundle when a
//! change validates; keep the last good one (and say why) when it does not.

use std::{path::Path, sync::Arc, time::Duration};

use notify::{RecursiveMode, Watcher};
use tokio_util::sync::CancellationToken;

use super::Engine;
use crate::records::{Event, EventKind, Recorder, Verdict};

/// Editors write files in several steps; wait this long after the last
/// change before loading.
const SETTLE: Duration = Duration::from_millis(300);

/// Watches `engine.dir()` until `stop`; every settled change is a reload
/// attempt, recorded as `policy_reloaded` or `policy_rejected`. The
/// built-in policies have nothing to watch.
pub fn watch(
    engine: Arc<Engine>,
    recorder: Recorder,
    stop: CancellationToken,
) -> notify::Result<()> {
    let Some(dir) = engine.dir().map(Path::to_path_buf) else {
        return Ok(());
    };
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        if let Ok(e) = res {
            if !e.kind.is_access() {
                let _ = tx.send(());
            }
        }
    })?;
    watcher.watch(&dir, RecursiveMode::Recursive)?;
    tokio::spawn(async move {
        // Owned by the task: dropping it stops the watch.
        let _watcher = watcher;
        loop {
            tokio::select! {
                got = rx.recv() => if got.is_none() { return },
                _ = stop.cancelled() => return,
            }
            // Debounce: wait until the directory has been quiet for SETTLE.
            loop {
                match tokio::time::timeout(SETTLE, rx.recv()).await {
                    Ok(Some(())) => continue,
                    Ok(None) => return,
                    Err(_) => break,
                }
            }
            let e = engine.clone();
            let result = tokio::task::spawn_blocking(move || e.reload()).await;
            let event = match result {
                Ok(Ok(n)) => {
                    tracing::info!(policies = n, dir = %dir.display(), "policies reloaded");
                    Event::daemon(
                        EventKind::PolicyReloaded,
                        Verdict::Allow,
                        format!("{n} policies loaded from {}", dir.display()),
                    )
                }
                Ok(Err(problems)) => {
                    let text: Vec<String> = problems.iter().map(|d| d.to_string()).collect();
                    tracing::error!(
                        dir = %dir.display(),
                        "policy change rejected; the previous policies stay in force:\n{}",
                        text.join("\n")
                    );
                    Event::daemon(
                        EventKind::PolicyRejected,
                        Verdict::Error,
                        format!(
                            "policy change rejected, previous policies kept: {}",
                            text.join("; ")
                        ),
                    )
                }
                Err(join) => Event::daemon(
                    EventKind::PolicyRejected,
                    Verdict::Error,
                    format!("policy reload crashed, previous policies kept: {join}"),
                ),
            };
            if let Err(e) = recorder.record(event).await {
                tracing::error!(error = %e, "policy reload event not recorded");
            }
        }
    });
    Ok(())
}
