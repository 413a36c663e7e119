//! `qm admin audit`: the audit trail, newest last, with filters; `--json` for scripts.

use super::connect::call;
use super::words::table;
use super::{admin_client, print_or_json, Target};
use crate::out::Failure;
use anyhow::Result;
use clap::Args;
use qm_proto::v1::*;
use serde_json::json;
use std::time::{SystemTime, UNIX_EPOCH};

/// Flags of `qm admin audit`.
#[derive(Debug, Args)]
pub struct AuditArgs {
    /// Only this token's changes.
    #[arg(long, value_name = "NAME")]
    token: Option<String>,
    /// Only changes since this long ago (`90s`, `15m`, `2h`, `7d`) or this time (RFC 3339,
    /// `2026-12-06T09:00:00Z`).
    #[arg(long, value_name = "WHEN")]
    since: Option<String>,
    /// Only changes before this long ago or this time.
    #[arg(long, value_name = "WHEN")]
    until: Option<String>,
    /// Only changes the cluster refused.
    #[arg(long)]
    refused: bool,
    /// The newest this many (at most 10,000).
    #[arg(long, default_value_t = 100)]
    limit: u32,
}

/// A time given as a duration ago or an RFC 3339 time, in ms since the Unix epoch.
pub(super) fn when(flag: &str, text: &str) -> Result<u64> {
    let at = match humantime::parse_duration(text) {
        Ok(ago) => SystemTime::now().checked_sub(ago).unwrap_or(UNIX_EPOCH),
        Err(_) => humantime::parse_rfc3339_weak(text).map_err(|_| {
            Failure::usage(format!(
                "{flag}: {text:?} is neither a duration (15m, 2h) nor a time (2026-12-06T09:00:00Z)"
            ))
        })?,
    };
    Ok(at.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64))
}

/// Runs `qm admin audit`.
pub async fn audit(t: &Target, args: &AuditArgs) -> Result<()> {
    let req = ListAuditRequest {
        token: args.token.clone().unwrap_or_default(),
        since_ms: args.since.as_deref().map(|s| when("--since", s)).transpose()?.unwrap_or(0),
        until_ms: args.until.as_deref().map(|s| when("--until", s)).transpose()?.unwrap_or(0),
        refused_only: args.refused,
        limit: args.limit,
    };
    let r = call(t, |c| {
        let req = req.clone();
        async move { admin_client(c).list_audit(req).await }
    })
    .await?;
    let json = json!({
        "kept": r.kept,
        "records": r.records.iter().map(|a| json!({
            "index": a.index,
            "at_ms": a.at_ms,
            "at": super::words::time(a.at_ms),
            "token": a.token,
            "role": a.role,
            "what": a.what,
            "error": a.error,
        })).collect::<Vec<_>>(),
    });
    print_or_json(t, json, || {
        let rows = r.records.iter().map(|a| {
            let result = a.error.as_ref().map_or_else(|| "ok".to_owned(), |e| format!("refused: {e}"));
            vec![super::words::time(a.at_ms), a.token.clone(), a.role.clone(), a.what.clone(), result]
        });
        table(&["TIME", "TOKEN", "ROLE", "WHAT", "RESULT"], &[], rows)
    });
    Ok(())
}
